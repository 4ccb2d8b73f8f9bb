"""ColorizeDiffusion XL (``sdxl``, ``xlv2``) end to end on tiny weights: loading, the library pipeline, the CLI,
background separation, named errors for wrong files and sizes, no state between generations."""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import tiny_colorizer
from PIL import Image
from safetensors.torch import load_file, save_file

from colorize.cli import main
from colorize.errors import CheckpointError, InputError
from colorize.families import detect_family, get_family
from colorize.families.xl.bank import BankSelfAttention, MergedLoraSplitAttention
from colorize.families.xl.encoders import XL_TAGGER_CLASSES, XLReferenceEncoder
from colorize.families.xl.split_attention import XLSplitAttention
from colorize.loader import load_checkpoint_modules, read_checkpoint_info
from colorize.pipeline import Colorizer
from colorize.preprocess import prepare_reference, prepare_sketch
from colorize.settings import EnhanceSettings, GenerationSettings
from colorize.tiny import tiny_config, write_tiny_weights

XL = ("sdxl", "xlv2")
S = GenerationSettings(steps=2, width=64, height=96, sampler="dpmpp_3m_sde", sketch_cfg=2.0, seed=3)
BG = EnhanceSettings(background_enhance=True)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("xl-models")
    write_tiny_weights(d, versions=("mult", *XL), masks=True)
    return d


@pytest.fixture(scope="module")
def xl(tiny_dir: Path) -> dict[str, Colorizer]:
    return {v: tiny_colorizer(tiny_dir, v) for v in XL}


def files(tiny_dir: Path) -> dict[str, Path]:
    return {"sdxl": tiny_dir / "colorizediffusion" / "sdxl.safetensors",
            "xlv2": tiny_dir / "colorizediffusion" / "xlv2.safetensors",
            "clip": tiny_dir / "clip_vision" / "clip_vision_g.safetensors",
            "tagger": tiny_dir / "wd_tagger" / "wd-v1-4-swinv2-tagger-v2.safetensors",
            "v1_clip": tiny_dir / "clip_vision" / "open_clip_model.safetensors"}


def sketch() -> torch.Tensor:
    s = torch.ones(1, 3, 96, 64)
    s[..., 20:76, 16] = s[..., 20:76, 47] = s[..., 20, 16:48] = s[..., 75, 16:48] = 0
    return s


def reference() -> torch.Tensor:
    return torch.rand(1, 3, 80, 60, generator=torch.Generator().manual_seed(7))


def masks() -> dict[str, torch.Tensor]:
    sm = torch.zeros(1, 96, 64)
    sm[:, 24:72, 16:48] = 1
    rm = torch.zeros(1, 80, 60)
    rm[:, 20:60, 15:45] = 1
    return {"sketch_mask": sm, "reference_mask": rm}


# ------------------------------------------------------------------ loading
@pytest.mark.parametrize("version", XL)
def test_tiny_files_load_as_their_family(tiny_dir: Path, version: str) -> None:
    info = read_checkpoint_info(files(tiny_dir)[version])
    assert info.family is get_family(version) and info.config == tiny_config(version)
    assert (info.config.parameterization, info.parameterization_rule) == ("v", "metadata")
    mods = load_checkpoint_modules(files(tiny_dir)[version])
    assert set(mods.extras) == ({"proj"} if version == "sdxl" else {"proj", "bg_encoder"})
    assert mods.config.vae.scale_factor == 0.13025 and mods.unet.num_attention_blocks == 70


def test_parameterization_override_and_file_name_rule(tiny_dir: Path, tmp_path: Path) -> None:
    src = files(tiny_dir)["sdxl"]
    assert read_checkpoint_info(src, parameterization="eps").parameterization_rule == "override"
    assert read_checkpoint_info(src, parameterization="eps").config.parameterization == "eps"
    bare = load_file(str(src))  # the same tensors without our metadata: the official file-name rule decides
    for name, expected in (("sdxl-eps.safetensors", "eps"), ("sdxl.safetensors", "v")):
        save_file(bare, str(tmp_path / name))
        info = read_checkpoint_info(tmp_path / name, num_head_channels=16)
        assert (info.config.parameterization, info.parameterization_rule) == (expected, "file name")
    with pytest.raises(InputError, match="parameterization must be 'eps' or 'v'"):
        read_checkpoint_info(src, parameterization="x0")


def test_the_reference_encoders_come_from_their_own_files(xl: dict[str, Colorizer]) -> None:
    enc = xl["sdxl"].reference_encoder
    assert isinstance(enc, XLReferenceEncoder) and enc.tagger.cfg.num_classes == XL_TAGGER_CLASSES
    ctx = xl["sdxl"].encode_reference(prepare_reference(reference()))
    assert ctx.shape == (1, 196, 32)


def test_wrong_reference_files_are_one_line_named_errors(tiny_dir: Path, tmp_path: Path) -> None:
    f = files(tiny_dir)
    cases = []
    cases.append((f["v1_clip"], f["tagger"], "open_clip-format CLIP file"))  # a v1 file given as the XL CLIP
    hf_h = {"vision_model.embeddings.patch_embedding.weight": torch.zeros(1280, 3, 14, 14),
            "visual_projection.weight": torch.zeros(1024, 1280)}
    save_file(hf_h, str(tmp_path / "vit-h.safetensors"))
    cases.append((tmp_path / "vit-h.safetensors", f["tagger"], "1280-wide CLIP vision tower, not ViT-bigG-14"))
    tagger = load_file(str(f["tagger"]))
    tagger["head.fc.weight"], tagger["head.fc.bias"] = tagger["head.fc.weight"][:10], tagger["head.fc.bias"][:10]
    save_file(tagger, str(tmp_path / "other-tagger.safetensors"))
    cases.append((f["clip"], tmp_path / "other-tagger.safetensors", "tagger with 10 classes, not the WD v1.4"))
    cases.append((f["clip"], f["clip"], "not a SwinV2 tagger"))
    for clip, tag, message in cases:
        with pytest.raises(CheckpointError, match=message) as e:
            Colorizer.from_files(f["sdxl"], clip, device="cpu", tagger=tag)
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="needs two reference-encoder files") as e:
        Colorizer.from_files(f["sdxl"], f["clip"], device="cpu")
    with pytest.raises(InputError, match="read no tagger"):
        Colorizer.from_files(tiny_dir / "colorizediffusion" / "mult-eps-ft.safetensors", f["v1_clip"], device="cpu",
                             tagger=f["tagger"])


@pytest.mark.parametrize("bad", [{"width": 100}, {"height": 1000}, {"width": 96, "height": 70}])
def test_sizes_not_multiples_of_32_are_named_errors(xl: dict[str, Colorizer], bad: dict[str, int]) -> None:
    with pytest.raises(InputError, match="multiples of 32") as e:
        xl["sdxl"].colorize(sketch(), reference(), replace(S, **bad))
    assert "\n" not in str(e.value)


def test_output_sizes_follow_the_xl_rules() -> None:
    fam = get_family("sdxl")
    assert fam.output_size((600, 800), None, None) == (896, 1184)  # autofit: 1024² area, multiples of 32
    assert fam.output_size((600, 800), 512, None) == (384, 512)
    assert fam.output_size((600, 800), None, 320) == (320, 416)
    assert fam.output_size((600, 800), 96, 64) == (64, 96)


# ------------------------------------------------------------------ generation
@pytest.mark.parametrize("version", XL)
def test_generation_with_and_without_background_separation(xl: dict[str, Colorizer], version: str) -> None:
    model = xl[version]
    plain = model.colorize(sketch(), reference(), S)
    sep = model.colorize(sketch(), reference(), S, enhance=BG, **masks())
    assert plain.shape == sep.shape == (1, 3, 96, 64) and torch.isfinite(sep).all()
    assert (plain - sep).abs().max() > 1e-4
    assert torch.equal(model.colorize(sketch(), reference(), S), plain)  # seeded: reproducible


def test_the_separation_processors_of_each_type(xl: dict[str, Colorizer]) -> None:
    s = prepare_sketch(sketch(), (96, 64))
    ref = prepare_reference(reference())
    sdxl = xl["sdxl"].conditioning(s, ref, S, enhance=BG, sketch_hw=(96, 64), **masks())
    assert isinstance(sdxl.cross_attention, XLSplitAttention) and sdxl.self_attention is None
    assert sdxl.context.shape == (1, 392, 32) and sdxl.unet_kwargs["y"].shape == (1, 512)
    v2 = xl["xlv2"].conditioning(s, ref, S, enhance=BG, sketch_hw=(96, 64), **masks())
    assert isinstance(v2.cross_attention, MergedLoraSplitAttention) and isinstance(v2.self_attention, BankSelfAttention)
    assert len(v2.self_attention.bank) == 36  # the ReferenceNet's decoder blocks
    plain = xl["xlv2"].conditioning(s, ref, S, sketch_hw=(96, 64))
    assert plain.cross_attention is None and plain.self_attention is None and plain.context.shape == (1, 196, 32)


def test_xl_refuses_the_controls_it_does_not_have(xl: dict[str, Colorizer]) -> None:
    for enhance in (EnhanceSettings(foreground_enhance=True), EnhanceSettings(style_enhance=True),
                    replace(BG, lora_scale=0.5)):
        with pytest.raises(InputError) as e:
            xl["sdxl"].colorize(sketch(), reference(), S, enhance=enhance, **masks())
        assert "\n" not in str(e.value)


def test_no_state_survives_an_xlv2_generation(tiny_dir: Path) -> None:
    """Masked, then unmasked, then masked again on one model: each equals its generation on a fresh model (the
    bank and the merged LoRA live in the generation's processors only)."""
    model = tiny_colorizer(tiny_dir, "xlv2")
    fresh = copy.deepcopy(model)

    def masked(m: Colorizer) -> torch.Tensor:
        return m.colorize(sketch(), reference(), S, enhance=BG, **masks())

    def plain(m: Colorizer) -> torch.Tensor:
        return m.colorize(sketch(), reference(), S)

    alone_masked, alone_plain = masked(fresh), plain(copy.deepcopy(model))
    assert (alone_masked - alone_plain).abs().max() > 1e-4
    weights = {k: v.clone() for k, v in model.unet.state_dict().items()}
    assert torch.equal(masked(model), alone_masked)
    assert torch.equal(plain(model), alone_plain)
    assert torch.equal(masked(model), alone_masked)
    assert all(torch.equal(v, model.unet.state_dict()[k]) for k, v in weights.items())  # no LoRA merged in


def test_sdxl_reference_strength_rules(xl: dict[str, Colorizer]) -> None:
    """Official rule: only the encoder slider acts; the ``levels`` rule lets the low slider act too."""
    model = xl["sdxl"]
    base = model.colorize(sketch(), reference(), S)
    low = replace(S, level_strengths={"low": 0.0})
    assert torch.equal(model.colorize(sketch(), reference(), low), base)
    assert (model.colorize(sketch(), reference(), replace(low, level_rule="levels")) - base).abs().max() > 1e-4
    blocks = replace(S, block_strengths=[1.0] * 70)
    assert torch.equal(model.colorize(sketch(), reference(), blocks), base)
    with pytest.raises(InputError, match="70 values"):
        model.colorize(sketch(), reference(), replace(S, block_strengths=[1.0] * 16))


# ------------------------------------------------------------------ CLI
def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("version", XL)
@pytest.mark.parametrize("separation", [False, True])
def test_cli_end_to_end(tiny_dir: Path, tmp_path: Path, version: str, separation: bool) -> None:
    sk = _png(tmp_path / "sketch.png", (sketch()[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    ref = _png(tmp_path / "ref.png", (reference()[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    out = tmp_path / "out.png"
    args = ["run", "--sketch", str(sk), "--reference", str(ref), "--out", str(out), "--checkpoint", version,
            "--models-dir", str(tiny_dir), "--no-download", "--steps", "2", "--width", "64", "--height", "96",
            "--device", "cpu"]
    assert main(args + (["--bg-enhance"] if separation else [])) == 0
    assert Image.open(out).size == (64, 96)


def test_cli_bad_xl_inputs_are_one_line_errors(tiny_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    sk = _png(tmp_path / "sketch.png", np.full((96, 64, 3), 255, np.uint8))
    base = ["run", "--sketch", str(sk), "--reference", str(sk), "--out", str(tmp_path / "o.png"),
            "--checkpoint", "sdxl", "--models-dir", str(tiny_dir), "--no-download", "--steps", "1", "--device", "cpu"]
    for extra, message in (
        (["--width", "100", "--height", "96"], "multiples of 32: width 100"),
        (["--clip", str(files(tiny_dir)["v1_clip"])], "open_clip-format CLIP file"),
        (["--tagger", str(files(tiny_dir)["clip"])], "not a SwinV2 tagger"),
    ):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error:") and message in err[-1], err


def test_xl_files_are_detected_before_the_sd21_families(tiny_dir: Path) -> None:
    for version in XL:
        assert detect_family(load_file(str(files(tiny_dir)[version]))).name == version


# ------------------------------------------------------------------ precision and memory
def test_low_vram_xlv2_is_bit_identical_and_offloads_the_reference_net(tiny_dir: Path, xl: dict[str, Colorizer]
                                                                      ) -> None:
    """Every large piece (CLIP-bigG + tagger, U-Net, ReferenceNet, VAE) alone on the device; same result."""
    from colorize.offload import enable_low_vram

    before = xl["xlv2"].colorize(sketch(), reference(), S, enhance=BG, **masks())
    model = tiny_colorizer(tiny_dir, "xlv2")
    off = enable_low_vram(model, keep_below_bytes=0)
    seen: list[set[str]] = []
    hook = model.extras["bg_encoder"].register_forward_pre_hook(lambda *_: seen.append(off.active()))
    after = model.colorize(sketch(), reference(), S, enhance=BG, **masks())
    hook.remove()
    assert torch.equal(before, after)
    assert seen and "extra_bg_encoder" in seen[0] and "unet" not in seen[0] and "reference_encoder" not in seen[0]
    moved = [n for n, where in off.log if where == "device"]
    assert {"reference_encoder", "unet", "vae", "extra_bg_encoder", "extra_proj"} <= set(moved)
    assert not off.active()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_runs_the_unet_and_sketch_encoder_only(tiny_dir: Path, precision: str) -> None:
    model = tiny_colorizer(tiny_dir, "sdxl", precision=precision)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert model.unet.input_blocks[1][0].in_layers[2].weight.dtype == half
    assert model.unet.label_emb[0][0].weight.dtype == torch.float32  # adm and time embeddings stay fp32
    assert next(model.sketch_encoder.parameters()).dtype == half
    assert next(model.vae.parameters()).dtype == torch.float32
    assert next(model.reference_encoder.parameters()).dtype == torch.float32
    out = model.colorize(sketch(), reference(), replace(S, steps=1))
    assert torch.isfinite(out).all()


def test_a_separate_vae_file_and_its_precision(tiny_dir: Path, tmp_path: Path) -> None:
    """A VAE in its own file (original keys, as ComfyUI's models/vae) replaces the checkpoint's; a
    diffusers-format file is a named error."""
    full = load_file(str(files(tiny_dir)["sdxl"]))
    vae = {k[len("first_stage_model."):]: v.float() for k, v in full.items() if k.startswith("first_stage_model.")}
    save_file(vae, str(tmp_path / "sdxl_vae.safetensors"))
    plain = tiny_colorizer(tiny_dir, "sdxl")
    own = tiny_colorizer(tiny_dir, "sdxl", vae=tmp_path / "sdxl_vae.safetensors")
    assert torch.equal(own.colorize(sketch(), reference(), S), plain.colorize(sketch(), reference(), S))
    bf16 = tiny_colorizer(tiny_dir, "sdxl", vae=tmp_path / "sdxl_vae.safetensors", vae_precision="bf16")
    assert next(bf16.vae.parameters()).dtype == torch.bfloat16
    assert torch.isfinite(bf16.colorize(sketch(), reference(), S)).all()
    save_file({"decoder.up_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}, str(tmp_path / "diffusers.safetensors"))
    with pytest.raises(CheckpointError, match="diffusers-format VAE"):
        tiny_colorizer(tiny_dir, "sdxl", vae=tmp_path / "diffusers.safetensors")


def test_per_hint_sketch_strengths(xl: dict[str, Colorizer]) -> None:
    """Each hint × its own strength (the XL app's four per-level sketch strengths); all 1 = the plain result."""
    model = xl["sdxl"]
    s = prepare_sketch(sketch(), (96, 64))
    plain, plain_u = model.encode_sketch(s, 0.5)
    scaled, scaled_u = model.encode_sketch(s, 0.5, [1.0, 0.0, 2.0, 1.0])
    for i, factor in enumerate([1.0, 0.0, 2.0, 1.0]):
        torch.testing.assert_close(scaled[i], plain[i] * factor)
        torch.testing.assert_close(scaled_u[i], plain_u[i] * factor)
    base = model.colorize(sketch(), reference(), S)
    assert torch.equal(model.colorize(sketch(), reference(), replace(S, hint_strengths=[1.0] * 4)), base)
    assert (model.colorize(sketch(), reference(), replace(S, hint_strengths=[1.0, 1.0, 0.0, 1.0])) - base).abs().max() > 1e-4
    with pytest.raises(InputError, match="one value per sketch hint"):
        model.colorize(sketch(), reference(), replace(S, hint_strengths=[1.0] * 5))
