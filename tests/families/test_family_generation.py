"""v1.5 ("switch") and v2 end to end on tiny weights: loading, library pipeline, CLI, masks, no sticky state."""
from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from colorize.cli import main
from colorize.errors import InputError
from colorize.families import get_family
from colorize.families.v2.config import default_warp_dim_head
from colorize.families.v2.unet import V2UNet
from colorize.families.v15.recovery import HEAD_WIDTH_KEY, ClusterTransformer
from colorize.loader import load_checkpoint_modules, load_reference_encoder, read_checkpoint_info
from colorize.masks import build_tiny_sam, sketch_foreground_mask
from colorize.masks.inputs import fit_sketch_mask
from colorize.models.unet import DualCondUNet
from colorize.models.vae import SeededLatentEncoder
from colorize.pipeline import Colorizer
from colorize.preprocess import prepare_sketch
from colorize.settings import EnhanceSettings, GenerationSettings
from colorize.tiny import CHECKPOINT_NAMES, tiny_config, write_tiny_weights

VERSIONS = ("switch", "v2")
S = GenerationSettings(steps=1, width=64, height=64)
S3 = replace(S, sketch_cfg=2.0)  # all three CFG row groups (reference- and sketch-unconditional rows too)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    write_tiny_weights(d, versions=("mult", "switch", "v2"), masks=True)
    return d


def ckpt(tiny_dir: Path, version: str) -> Path:
    return tiny_dir / "colorizediffusion" / f"{CHECKPOINT_NAMES[version]}.safetensors"


def clip_file(tiny_dir: Path) -> Path:
    (clip,) = (tiny_dir / "clip_vision").glob("*.safetensors")
    return clip


@pytest.fixture(scope="module")
def models(tiny_dir: Path) -> dict[str, Colorizer]:
    return {v: Colorizer.from_files(ckpt(tiny_dir, v), clip_file(tiny_dir), device="cpu") for v in VERSIONS}


def outline_sketch(size: int = 64) -> torch.Tensor:
    """Black square outline on white, (1, 3, size, size) in [0, 1]."""
    s = torch.ones(1, 3, size, size)
    a, b = size // 4, 3 * size // 4
    s[..., a:b, a] = s[..., a:b, b - 1] = s[..., a, a:b] = s[..., b - 1, a:b] = 0
    return s


def reference() -> torch.Tensor:
    return torch.rand(1, 3, 80, 60, generator=torch.Generator().manual_seed(7))


def box_mask(h: int, w: int, top: float = 0.25, bottom: float = 0.75) -> torch.Tensor:
    m = torch.zeros(1, h, w)
    m[:, int(top * h):int(bottom * h), int(0.25 * w):int(0.75 * w)] = 1
    return m


# ------------------------------------------------------------------ tiny weights and loading
def test_tiny_checkpoints_load_with_their_version_and_settings(tiny_dir: Path) -> None:
    expected = {"switch": ("eps", DualCondUNet, {"thresh_embedder", "transformer"}),
                "v2": ("v", V2UNet, {"bg_encoder", "style_encoder"})}
    for version, (param, unet_type, extras) in expected.items():
        info = read_checkpoint_info(ckpt(tiny_dir, version))
        assert info.family is get_family(version) and info.family.parameterization == param
        assert (info.config.version, info.config.parameterization) == (version, param)
        mods = load_checkpoint_modules(ckpt(tiny_dir, version))
        assert mods.config == tiny_config(version) and mods.config.parameterization == param
        assert type(mods.unet) is unet_type and set(mods.extras) == extras
    # Head widths that shapes cannot show round-trip through the metadata (and differ from the defaults).
    switch = load_checkpoint_modules(ckpt(tiny_dir, "switch"))
    transformer = switch.extras["transformer"]
    assert isinstance(transformer, ClusterTransformer)
    head = switch.config.extras[HEAD_WIDTH_KEY]
    assert head != 64 and transformer.layers[0][2].heads == transformer.cfg.dim // head
    v2 = load_checkpoint_modules(ckpt(tiny_dir, "v2"))
    warp = v2.config.extras["warp_dim_head"]
    assert warp != default_warp_dim_head(v2.config.unet)
    assert [w.attn.heads for w in v2.unet.warp_modules] == [w.norm1.normalized_shape[0] // warp
                                                            for w in v2.unet.warp_modules]


def test_tiny_writer_refuses_user_files_before_writing_anything(tmp_path: Path) -> None:
    user = tmp_path / "colorizediffusion" / "v2-full.safetensors"
    user.parent.mkdir(parents=True)
    user.write_bytes(b"a real checkpoint")
    with pytest.raises(FileExistsError, match="v2-full"):
        write_tiny_weights(tmp_path, versions=("mult", "switch", "v2"))
    assert user.read_bytes() == b"a real checkpoint"
    assert not (tmp_path / "colorizediffusion" / "mult-eps-ft.safetensors").exists()
    # The default still writes the v1 files only (callers unpack exactly a checkpoint and a CLIP file).
    assert list(write_tiny_weights(tmp_path / "v1")) == ["mult-eps-ft", "clip-vit-h-14"]


# ------------------------------------------------------------------ library pipeline
@pytest.mark.parametrize("version", VERSIONS)
def test_masks_change_the_result(models: dict[str, Colorizer], version: str) -> None:
    model, sketch, ref = models[version], outline_sketch(), reference()
    plain = model.colorize(sketch, ref, S)
    enhance = EnhanceSettings(background_enhance=True, foreground_enhance=True)
    masked = model.colorize(sketch, ref, S, enhance=enhance, sketch_mask=box_mask(64, 64),
                            reference_mask=box_mask(80, 60))
    other = model.colorize(sketch, ref, S, enhance=enhance, sketch_mask=box_mask(64, 64, 0.0, 0.5),
                           reference_mask=box_mask(80, 60))
    assert plain.shape == masked.shape == (1, 3, 64, 64) and torch.isfinite(masked).all()
    assert (plain - masked).abs().max() > 1e-3 and (masked - other).abs().max() > 1e-3


@pytest.mark.parametrize("version", VERSIONS)
def test_all_foreground_without_lora_is_the_v1_path(tiny_dir: Path, models: dict[str, Colorizer], version: str) -> None:
    """FG enhance with an all-foreground sketch mask and the LoRA off computes exactly what a plain v1
    ``DualCondUNet`` holding the same base weights computes (thesis Eq. 5.4 with m_s = 1)."""
    mods = load_checkpoint_modules(ckpt(tiny_dir, version))
    v1_unet = DualCondUNet(mods.config.unet)
    v1_unet.load_state_dict({k: v for k, v in mods.unet.state_dict().items()
                             if ".lora_" not in k and not k.startswith(("warp_modules.", "style_modules."))})
    v1 = Colorizer(replace(mods.config, version="mult", extras={}), v1_unet, mods.sketch_encoder, mods.vae,
                   load_reference_encoder(clip_file(tiny_dir), with_text=False), device="cpu")
    sketch, ref, ones = outline_sketch(), reference(), torch.ones(1, 64, 64)
    expected = v1.colorize(sketch, ref, S3)
    off = EnhanceSettings(foreground_enhance=True, lora_scale=0.0)
    torch.testing.assert_close(models[version].colorize(sketch, ref, S3, enhance=off, sketch_mask=ones), expected,
                               rtol=0, atol=1e-5)
    with_lora = models[version].colorize(sketch, ref, S3, enhance=replace(off, lora_scale=1.0), sketch_mask=ones)
    assert (with_lora - expected).abs().max() > 1e-3  # the LoRA is real, so the comparison above can fail


def test_v2_generations_have_no_sticky_state(models: dict[str, Colorizer]) -> None:
    """The official app leaves the decoder LoRA on after a masked run (its LoRA mode is module state,
    refnet/modules/lora.py:134-196 at commit c9bd9fb); here each generation depends on its own inputs only, in
    any order."""
    model, sketch, ref = models["v2"], outline_sketch(), reference()
    masked = dict(enhance=EnhanceSettings(background_enhance=True, foreground_enhance=True, style_enhance=True),
                  sketch_mask=box_mask(64, 64), reference_mask=box_mask(80, 60))
    plain_alone = model.colorize(sketch, ref, S3)
    masked_first = model.colorize(sketch, ref, S3, **masked)
    plain_after = model.colorize(sketch, ref, S3)
    masked_after = model.colorize(sketch, ref, S3, **masked)
    assert torch.equal(plain_alone, plain_after) and torch.equal(masked_first, masked_after)
    assert not torch.equal(plain_alone, masked_first)


def test_v2_style_enhance_needs_no_mask(models: dict[str, Colorizer]) -> None:
    model, sketch, ref = models["v2"], outline_sketch(), reference()
    plain = model.colorize(sketch, ref, S)
    style = model.colorize(sketch, ref, S, enhance=EnhanceSettings(style_enhance=True))
    assert (style - plain).abs().max() > 1e-3  # the style vectors modulate the decoder


@pytest.mark.parametrize("version", VERSIONS)
def test_background_image_feeds_the_background_path(models: dict[str, Colorizer], version: str) -> None:
    model, sketch, ref = models[version], outline_sketch(), reference()
    bg_enhance = EnhanceSettings(background_enhance=True)
    backgrounds = [torch.rand(1, 3, 72, 96, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    outs = [model.colorize(sketch, ref, S, enhance=bg_enhance, background=b) for b in backgrounds]
    assert (outs[0] - outs[1]).abs().max() > 1e-3
    removed = model.colorize(sketch, ref, S, enhance=replace(bg_enhance, remove_background_foreground=True),
                             background=backgrounds[0], background_mask=box_mask(72, 96))
    assert (removed - outs[0]).abs().max() > 1e-3  # the background's own foreground was whitened
    # Reproducible: v2's VAE posterior samples are seeded from the generation seed.
    assert torch.equal(outs[0], model.colorize(sketch, ref, S, enhance=bg_enhance, background=backgrounds[0]))


def test_seeded_latent_encoder_samples_the_posterior(models: dict[str, Colorizer]) -> None:
    vae = models["v2"].vae
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    a, b, c = SeededLatentEncoder(vae, 5)(image), SeededLatentEncoder(vae, 5)(image), SeededLatentEncoder(vae, 6)(image)
    post = vae.encode(image)
    noise = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, (post.mean + post.std * noise) * vae.cfg.scale_factor)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_default_sketch_mask_comes_from_the_line_art(models: dict[str, Colorizer]) -> None:
    model, sketch, ref = models["switch"], outline_sketch(), reference()
    fg = EnhanceSettings(foreground_enhance=True)
    computed = model.colorize(sketch, ref, S, enhance=fg)
    explicit = model.colorize(sketch, ref, S, enhance=fg, sketch_mask=sketch_foreground_mask(sketch))
    torch.testing.assert_close(computed, explicit, rtol=0, atol=0)
    assert (computed - model.colorize(sketch, ref, S, enhance=fg, sketch_mask=torch.ones(1, 64, 64))).abs().max() > 1e-3


def test_missing_reference_mask_warns_and_uses_all_foreground(models: dict[str, Colorizer]) -> None:
    model, sketch, ref = models["switch"], outline_sketch(), reference()
    bg = EnhanceSettings(background_enhance=True)
    with pytest.warns(UserWarning, match="reference mask"):
        fallback = model.colorize(sketch, ref, S, enhance=bg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explicit = model.colorize(sketch, ref, S, enhance=bg, reference_mask=torch.ones(1, 80, 60))
    torch.testing.assert_close(fallback, explicit, rtol=0, atol=0)


def test_sketch_mask_is_fitted_like_the_sketch() -> None:
    """A mask in the sketch's frame lands where the sketch's own pixels land (aspect kept, centre padding)."""
    sketch = torch.ones(1, 3, 60, 90)
    sketch[..., 10:50, 20:22] = 0
    sketch[..., 30:32, 20:80] = 0
    ink = 1 - sketch[:, 0]
    fitted = fit_sketch_mask(ink, (60, 90), (128, 192))
    lines = (prepare_sketch(sketch, (128, 192), "invert")[:, :1] + 1) / 2
    torch.testing.assert_close(fitted, lines, rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="aspect"):
        fit_sketch_mask(torch.ones(1, 60, 60), (60, 90), (128, 192))


def test_settings_the_version_cannot_use_are_errors(models: dict[str, Colorizer]) -> None:
    sketch, ref = outline_sketch(), reference()
    with pytest.raises(InputError, match="v2"):
        models["switch"].colorize(sketch, ref, S, enhance=EnhanceSettings(style_enhance=True))
    with pytest.raises(InputError, match="no enhancement"):
        models["v2"].colorize(sketch, ref, S, sketch_mask=torch.ones(1, 64, 64))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        models["v2"].colorize(sketch, ref, S, enhance=EnhanceSettings(foreground_enhance=True),
                              sketch_mask=torch.full((1, 64, 64), 255.0))


# ------------------------------------------------------------------ command line
def _save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    sketch = (outline_sketch()[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    return {
        "sketch": _save(d / "sketch.png", sketch),
        "reference": _save(d / "reference.png", rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)),
        "background": _save(d / "background.png", rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)),
        "sketch_mask": _save(d / "sketch_mask.png", (box_mask(64, 64)[0].numpy() * 255).astype(np.uint8)),
        "reference_mask": _save(d / "reference_mask.png", (box_mask(80, 60)[0].numpy() * 255).astype(np.uint8)),
    }


def _run(images: dict[str, Path], tiny_dir: Path, out: Path, *args: str) -> int:
    return main(["run", "--sketch", str(images["sketch"]), "--reference", str(images["reference"]), "--out", str(out),
                 "--models-dir", str(tiny_dir), "--no-download", "--steps", "1", "--width", "64", "--height", "64",
                 *args])


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.size == (64, 64)
        return np.asarray(im).astype(int)


@pytest.mark.parametrize(("checkpoint", "flags"), [
    ("switch-eps", ("--bg-enhance", "--fg-enhance")),
    ("v2-full", ("--bg-enhance", "--style-enhance")),
])
def test_cli_runs_v15_and_v2_with_masks(images: dict[str, Path], tiny_dir: Path, tmp_path: Path,
                                        checkpoint: str, flags: tuple[str, ...]) -> None:
    plain, masked = tmp_path / "plain.png", tmp_path / "masked.png"
    assert _run(images, tiny_dir, plain, "--checkpoint", checkpoint) == 0
    assert _run(images, tiny_dir, masked, "--checkpoint", checkpoint, *flags, "--sketch-mask",
                str(images["sketch_mask"]), "--reference-mask", str(images["reference_mask"])) == 0
    assert np.abs(_png(plain) - _png(masked)).max() > 0


def test_cli_background_image_and_sam_reference_mask(images: dict[str, Path], tiny_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    out = tmp_path / "bg.png"
    assert _run(images, tiny_dir, out, "--checkpoint", "v2-full", "--bg-enhance", "--background",
                str(images["background"])) == 0
    sam = tmp_path / "tiny_sam.safetensors"
    save_file({k: v.contiguous() for k, v in build_tiny_sam().state_dict().items()}, str(sam))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SAM supplies the reference mask: no all-foreground fallback
        assert _run(images, tiny_dir, tmp_path / "sam.png", "--checkpoint", "switch-eps", "--bg-enhance",
                    "--sam", str(sam)) == 0
    for path in (out, tmp_path / "sam.png"):
        assert _png(path).std() > 0


def test_cli_computes_missing_masks_with_isnet_by_default(images: dict[str, Path], tiny_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """As the official apps: ISNet-sketch for the sketch mask, the anime segmenter for the reference mask; ``none``
    falls back to the whole reference (with the library's warning), ``flood`` to the weight-free fill."""
    import colorize.masks as masks

    calls: list[str] = []
    for name in ("anime_mask", "line_art_mask", "sketch_foreground_mask"):
        real = getattr(masks, name)
        monkeypatch.setattr(masks, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name), _real(*a, **k))[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both masks computed: no all-foreground fallback
        assert _run(images, tiny_dir, tmp_path / "isnet.png", "--checkpoint", "switch-eps", "--bg-enhance") == 0
    assert calls == ["line_art_mask", "anime_mask"]
    calls.clear()
    with pytest.warns(UserWarning, match="whole reference"):
        assert _run(images, tiny_dir, tmp_path / "none.png", "--checkpoint", "switch-eps", "--bg-enhance",
                    "--sketch-mask-model", "flood", "--reference-mask-model", "none") == 0
    assert "anime_mask" not in calls and "line_art_mask" not in calls


@pytest.mark.parametrize(("args", "needle"), [
    (("--checkpoint", "switch-eps", "--style-enhance"), "v2"),
    (("--checkpoint", "mult-eps-ft", "--bg-enhance"), "switch-eps"),
    (("--checkpoint", "v2-full", "--sketch-mask", "SKETCH_MASK"), "no enhancement"),
])
def test_cli_reports_unusable_settings(images: dict[str, Path], tiny_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str], args: tuple[str, ...], needle: str) -> None:
    args = tuple(str(images["sketch_mask"]) if a == "SKETCH_MASK" else a for a in args)
    assert _run(images, tiny_dir, tmp_path / "o.png", *args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and not (tmp_path / "o.png").exists()


def test_released_layouts_give_the_released_extras(layout_dir: Path) -> None:
    """What the loader builds for the real switch-eps / v2-full files, from their key shapes alone."""
    import json

    from colorize.config import FULL_MULT
    from colorize.families import split_checkpoint
    from colorize.families.v2 import v2_config
    from colorize.families.v2.config import FULL_V2
    from colorize.families.v15 import SWITCH_LORA
    from colorize.families.v15.recovery import ClusterTransformerConfig, ScalarEmbedderConfig, recovery_configs
    from colorize.models.lora import infer_lora_config

    def layout_parts(version: str) -> dict[str, dict[str, object]]:
        return split_checkpoint(json.loads((layout_dir / f"keys_{version}.json").read_text()))

    # v1.5: the LoRA, threshold-embedder and recovery-transformer configs its loader reads from the shapes
    # (ScalarEmbedderConfig() / ClusterTransformerConfig() are the released sizes).
    parts = layout_parts("switch")
    assert infer_lora_config(parts["unet"]) == SWITCH_LORA
    assert recovery_configs(replace(FULL_MULT, version="switch").extras, parts) == (ScalarEmbedderConfig(),
                                                                                  ClusterTransformerConfig())
    # v2: every extra's config from the shapes.
    assert v2_config(replace(FULL_MULT, version="v2"), layout_parts("v2")) == FULL_V2
