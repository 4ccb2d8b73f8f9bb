"""End to end on tiny random weights: the library pipeline and ``python -m colorize``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from colorize.cli import main
from colorize.errors import InputError, NonFiniteResultError
from colorize.pipeline import Colorizer
from colorize.sampling import SAMPLERS
from colorize.settings import GenerationSettings
from colorize.tiny import write_tiny_weights

REPO = Path(__file__).resolve().parents[2]
SKETCH, REFERENCE = REPO / "workflows" / "colorizediffusion_sketch.png", REPO / "workflows" / "colorizediffusion_reference.png"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    write_tiny_weights(d)
    return d


@pytest.fixture(scope="module")
def tiny_files(tiny_dir: Path) -> tuple[Path, Path]:
    (ckpt,) = (tiny_dir / "colorizediffusion").glob("*.safetensors")
    (clip,) = (tiny_dir / "clip_vision").glob("*.safetensors")
    return ckpt, clip


@pytest.fixture(scope="module")
def model(tiny_files: tuple[Path, Path]) -> Colorizer:
    return Colorizer.from_files(*tiny_files, device="cpu")


def S(**kw: object) -> GenerationSettings:
    """Settings for a small, fast generation (64×64 unless given)."""
    return GenerationSettings(**{"width": 64, "height": 64, **kw})  # type: ignore[arg-type]


def _run(*args: str) -> int:
    return main(["run", "--sketch", str(SKETCH), "--reference", str(REFERENCE), *args])


def test_cli_end_to_end_writes_png(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.png"
    assert _run("--out", str(out), "--models-dir", str(tiny_dir), "--steps", "4", "--width", "256", "--height", "256") == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (256, 256) and im.mode == "RGB"
        assert np.asarray(im).std() > 0  # not a blank image


@pytest.mark.parametrize("out, needle", [
    ("{tmp}", "is a folder"),
    ("{tmp}/o.bmp", "unknown image type '.bmp'"),
    ("{tmp}/o", "(no extension)"),
    ("/proc/colorized.png", "cannot write in /proc"),
], ids=["folder", "unknown-extension", "no-extension", "unwritable"])
def test_cli_checks_the_output_path_before_loading_anything(out: str, needle: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # an empty models folder: a late check would fail on the missing weights instead
    code = _run("--out", out.format(tmp=tmp_path), "--models-dir", str(tmp_path / "empty"), "--no-download")
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err and "mult-eps-ft" not in err, err


def test_cli_names_folders_given_for_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_folder = tmp_path / "models.txt"
    not_a_folder.write_text("x")
    assert _run("--out", str(tmp_path / "o.png"), "--models-dir", str(not_a_folder), "--no-download") == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["run", "--sketch", str(tmp_path), "--reference", str(REFERENCE), "--out", str(tmp_path / "o.png")]) == 2
    assert "is a folder, not an image file" in capsys.readouterr().err
    assert _run("--out", str(tmp_path / "o.png"), "--checkpoint", str(tmp_path), "--models-dir", str(tmp_path)) == 2
    assert "a folder, not a weights file" in capsys.readouterr().err


def test_cli_bad_settings_are_reported_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = _run("--out", str(tmp_path / "o.png"), "--models-dir", str(tmp_path / "empty"), "--no-download",
                "--sampler", "no_such_sampler")
    err = capsys.readouterr().err
    assert code == 2 and "unknown sampler" in err and "mult-eps-ft" not in err, err


def test_cli_writes_the_format_its_extension_names(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.jpg"
    assert _run("--out", str(out), "--models-dir", str(tiny_dir), "--steps", "1", "--width", "64", "--height", "64") == 0
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.size == (64, 64)


def test_cli_missing_weights_names_every_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = _run("--out", str(tmp_path / "o.png"), "--models-dir", str(tmp_path / "empty"), "--no-download")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for needle in ("mult-eps-ft.safetensors", "open_clip-ViT-H-14", str(tmp_path / "empty"), "tellurion/ColorizeDiffusion"):
        assert needle in err
    assert not (tmp_path / "o.png").exists()


def test_cli_never_overwrites_output(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.png"
    out.write_bytes(b"precious")
    assert _run("--out", str(out), "--models-dir", str(tiny_dir), "--steps", "1") == 2
    assert out.read_bytes() == b"precious" and "--overwrite" in capsys.readouterr().err


def test_renamed_checkpoint_still_detected(tiny_files: tuple[Path, Path], tmp_path: Path) -> None:
    renamed = tmp_path / "some-v-prediction-model.safetensors"
    renamed.write_bytes(tiny_files[0].read_bytes())
    m = Colorizer.from_files(renamed, tiny_files[1], device="cpu")
    assert m.config.version == "mult" and m.config.parameterization == "eps"


@pytest.mark.parametrize("kind", ["foreign", "truncated", "missing"])
def test_bad_checkpoints_give_clear_cli_errors(
    kind: str, tiny_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.safetensors"
    if kind == "foreign":
        save_file({"encoder.layer.0.weight": torch.zeros(4, 4)}, str(bad))
    elif kind == "truncated":
        data = tiny_files[0].read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    code = _run("--out", str(tmp_path / "o.png"), "--checkpoint", str(bad), "--clip", str(tiny_files[1]), "--no-download")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "Traceback" not in err
    assert {"foreign": "not a ColorizeDiffusion", "truncated": "truncated", "missing": "bad.safetensors"}[kind] in err


def test_odd_sizes_are_rounded_to_multiples_of_64(model: Colorizer) -> None:
    sketch = torch.rand(1, 3, 90, 130)
    out = model.colorize(sketch, torch.rand(1, 3, 50, 50), GenerationSettings(steps=1, width=100, height=70))
    assert out.shape == (1, 3, 64, 128)


def test_image_modes_through_the_cli(tiny_dir: Path, tmp_path: Path) -> None:
    """Grayscale, RGBA, 16-bit and palette files all run; the same picture gives the same result."""
    with Image.open(SKETCH) as im:
        src = im.convert("L").resize((96, 96))
    images = {"L": src, "RGBA": src.convert("RGBA"), "I16": Image.fromarray(np.asarray(src, np.uint16) * 257),
              "P": src.convert("P")}
    outs = {}
    for mode, img in images.items():
        path, out = tmp_path / f"s_{mode}.png", tmp_path / f"o_{mode}.png"
        img.save(path)
        code = main(["run", "--sketch", str(path), "--reference", str(REFERENCE), "--out", str(out),
                     "--models-dir", str(tiny_dir), "--steps", "1", "--width", "64", "--height", "64"])
        assert code == 0
        outs[mode] = np.asarray(Image.open(out)).astype(int)
    assert np.array_equal(outs["L"], outs["RGBA"])
    assert np.abs(outs["L"] - outs["I16"]).max() <= 1


def test_nan_inputs_rejected(model: Colorizer) -> None:
    ref = torch.rand(1, 3, 64, 64)
    ref[0, 1, 3, 3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        model.colorize(torch.rand(1, 3, 64, 64), ref, S(steps=1))


def test_seed_determinism(model: Colorizer) -> None:
    s, r = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    a = model.colorize(s, r, S(steps=2, seed=3))
    b = model.colorize(s, r, S(steps=2, seed=3))
    c = model.colorize(s, r, S(steps=2, seed=4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_runs(model: Colorizer, sampler: str) -> None:
    scheduler = "leading" if sampler == "dpm_solver" else "karras"
    steps = []
    out = model.colorize(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64),
                         S(steps=3, sampler=sampler, scheduler=scheduler, sketch_cfg=2.0),
                         callback=lambda info: steps.append(info["i"]))
    assert torch.isfinite(out).all() and out.shape == (1, 3, 64, 64) and steps == [0, 1, 2]


def test_interrupt_from_callback(model: Colorizer) -> None:
    class Stop(Exception):
        pass

    def cb(info: dict) -> None:
        raise Stop

    with pytest.raises(Stop):
        model.colorize(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64), S(steps=5), callback=cb)


def test_bf16_precision_runs(tiny_files: tuple[Path, Path]) -> None:
    m = Colorizer.from_files(*tiny_files, device="cpu", precision="bf16")
    assert m.unet.input_blocks[0][0].weight.dtype == torch.bfloat16
    # time embedding and output head stay fp32, as in the official app
    assert m.unet.out[2].weight.dtype == m.unet.time_embed[0].weight.dtype == torch.float32
    s, r = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    out = m.colorize(s, r, S(steps=2))
    ref = Colorizer.from_files(*tiny_files, device="cpu", precision="fp32").colorize(s, r, S(steps=2))
    assert torch.isfinite(out).all() and (out - ref).abs().mean() < 0.05


def test_reference_and_sketch_cfg_change_the_result(model: Colorizer) -> None:
    s, r = torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)
    kw = {"steps": 2, "width": 128, "height": 128}  # single-row batches need > 1 value per GroupNorm group
    base = model.colorize(s, r, S(reference_cfg=1.0, **kw))
    assert not torch.equal(base, model.colorize(s, r, S(reference_cfg=5.0, **kw)))
    assert not torch.equal(base, model.colorize(s, r, S(sketch_cfg=3.0, reference_cfg=1.0, **kw)))
    assert not torch.equal(base, model.colorize(s, r, S(reference_cfg=1.0, reference_strength=0.0, **kw)))


def test_make_tiny_weights_refuses_to_overwrite_user_files(tmp_path: Path) -> None:
    user = tmp_path / "colorizediffusion" / "mult-eps-ft.safetensors"
    user.parent.mkdir(parents=True)
    user.write_bytes(b"a real checkpoint")
    assert main(["make-tiny-weights", str(tmp_path)]) == 2
    assert user.read_bytes() == b"a real checkpoint"


def test_decode_divides_by_the_latent_scale(model: Colorizer) -> None:
    z = torch.randn(1, 4, 8, 8)
    expected = model.vae.decode(z / model.config.vae.scale_factor).clamp(-1, 1)
    assert torch.allclose(model.decode(z), expected)


def test_non_finite_decode_is_an_error(model: Colorizer) -> None:
    z = torch.randn(1, 4, 8, 8)
    z[0, 0, 3, 3] = float("nan")
    with pytest.raises(NonFiniteResultError, match="lower the guidance scales"):
        model.decode(z)
    assert torch.isnan(model.decode(z, check_finite=False)).any()  # the benchmark reports it instead


def test_cli_refuses_to_save_a_non_finite_result(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An overflow in sampling (a huge guidance scale, fp16) used to be saved as an all-black PNG with exit 0."""
    real_sample = Colorizer.sample

    def overflowing(self: Colorizer, *args: object, **kwargs: object) -> torch.Tensor:
        return real_sample(self, *args, **kwargs) * float("inf")

    monkeypatch.setattr(Colorizer, "sample", overflowing)
    out = tmp_path / "o.png"
    assert _run("--out", str(out), "--models-dir", str(tiny_dir), "--steps", "1", "--width", "64", "--height", "64") == 2
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and "Traceback" not in err and not out.exists()


def test_reference_tokens_drop_the_class_token(model: Colorizer) -> None:
    ref = torch.rand(1, 3, 64, 48) * 2 - 1
    full = model.reference_encoder.encode_image(ref, "full")
    tokens = model.encode_reference(ref)
    assert tokens.shape[1] == full.shape[1] - 1 and torch.equal(tokens, full[:, 1:])


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("steps", 1000, "steps"), ("steps", 2.5, "steps"), ("reference_cfg", float("nan"), "finite"),
     ("seed", -1, "seed"), ("seed", 2**64, "seed"), ("sampler", "plms", "sampler"), ("scheduler", "x", "scheduler"),
     ("reference_cfg", -3.0, "at least 1"), ("sketch_cfg", 0.5, "at least 1"), ("width", -64, "width"),
     ("height", 64.5, "height")],
)
def test_settings_are_validated(field: str, value: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        S(**{field: value}).validate()


def test_auto_scheduler_follows_the_sampler() -> None:
    assert S(sampler="dpm_solver").resolved_scheduler == "leading"
    assert S(sampler="dpmpp_2m").resolved_scheduler == "karras"
    assert S(sampler="euler").resolved_scheduler == "uniform"
    assert S(sampler="euler", scheduler="karras").resolved_scheduler == "karras"


def test_ddim_leading_uses_the_diffusers_ddim_timesteps(model: Colorizer) -> None:
    from colorize.sampling import sampler_sigmas

    s = S(sampler="ddim", scheduler="leading", steps=20)
    sig = sampler_sigmas(s.sampler, s.scheduler, s.steps, model.schedule, torch.device("cpu"))
    t = model.schedule.sigma_to_t(sig[:-1])
    assert torch.allclose(t, torch.arange(951, 0, -50).float(), atol=1e-2) and sig[-1] == 0


@pytest.mark.parametrize(("case", "sampler", "scheduler", "param"), [
    ("euler_karras", "euler", "karras", "eps"), ("dpmpp_2m_karras", "dpmpp_2m", "karras", "eps"),
    ("diffuser_dpm", "dpm_solver", "leading", "eps"), ("euler_karras_v", "euler", "karras", "v"),
])
def test_pipeline_sampling_matches_the_official_loop(fixture_dir: Path, case: str, sampler: str, scheduler: str, param: str) -> None:
    """The pipeline's own CFG wiring (Conditioning rows, guidance, schedule) reproduces the official final latent."""
    from dataclasses import replace as dc_replace

    from colorize.config import TINY_MULT
    from colorize.generate import Conditioning, noise_schedule, sample_latent
    from colorize.models.unet import DualCondUNet, config_from_official
    from colorize.parity.core import load_fixture

    fx = load_fixture(fixture_dir / "sampler.json")
    ucfg = config_from_official(fx.config["unet_config"]["params"])
    unet = DualCondUNet(ucfg)
    unet.load_state_dict(fx.weights("model.diffusion_model."), strict=True)
    config = dc_replace(TINY_MULT, unet=ucfg, parameterization=param)
    cond = Conditioning(fx.inputs["context"], [fx.inputs[f"hint_cond{i}"] for i in range(5)],
                        [fx.inputs[f"hint_uncond{i}"] for i in range(5)])
    g_ref, g_sketch = fx.scalars["cfg_scale"]
    settings = GenerationSettings(steps=fx.scalars["steps"], sampler=sampler, scheduler=scheduler,
                                  reference_cfg=g_ref, sketch_cfg=g_sketch)
    noise = fx.inputs["noise"]
    size = (noise.shape[-2] * 8, noise.shape[-1] * 8)
    out = sample_latent(unet, noise_schedule(config), config, cond, size, settings, noise=noise)
    assert (out - fx.outputs[f"{case}.final"]).abs().max() <= fx.tolerance(f"{case}.final")
