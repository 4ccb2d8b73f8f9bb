"""Advanced controls of the official app on tiny weights: the guidance start/end and no-guidance window (official
``refnet/models/basemodel.py:273-280``; here for every version), the reference padding scale
(``backend/functool.py:120-128``), and the crop of the result to the sketch area and background removal of the
result (the app's post-processing, ``app.py``), all at commit c9bd9fb."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from colorize.errors import InputError
from colorize.generate import sample_latent
from colorize.pipeline import Colorizer
from colorize.preprocess import (
    content_box,
    crop_to_box,
    fit_and_pad,
    pad_reference,
    pad_width,
    prepare_reference,
    prepare_sketch,
    remove_background,
)
from colorize.settings import EnhanceSettings, GenerationSettings, reference_off
from colorize.tiny import VERSIONS, write_tiny_weights

S = GenerationSettings(steps=2, width=64, height=64, sketch_cfg=2.0)  # all three CFG row groups
ALL_OFF = {"no_guidance": (0.0, 1.0)}  # tr = 1 - t/999 is always in [0, 1]


def outline_sketch(h: int = 64, w: int = 64) -> Tensor:
    s = torch.ones(1, 3, h, w)
    s[..., h // 4:3 * h // 4, w // 4] = s[..., h // 4, w // 4:3 * w // 4] = 0
    s[..., h // 4:3 * h // 4, 3 * w // 4 - 1] = s[..., 3 * h // 4 - 1, w // 4:3 * w // 4] = 0
    return s


def reference() -> Tensor:
    return torch.rand(1, 3, 80, 60, generator=torch.Generator().manual_seed(7))


def enhance_for(version: str) -> dict[str, Any]:
    """v1.5/v2/XL on their split-attention path (doubled context; xlv2 also the ReferenceNet bank) so the window is
    tested there too (XL has background enhance only)."""
    if version == "mult":
        return {}
    m = torch.zeros(1, 64, 64)
    m[:, 16:48, 16:48] = 1
    rm = torch.zeros(1, 80, 60)
    rm[:, 20:60, 15:45] = 1
    xl = version in ("sdxl", "xlv2")
    return {"enhance": EnhanceSettings(background_enhance=True, foreground_enhance=not xl),
            "sketch_mask": m, "reference_mask": rm}


def run(model: Colorizer, settings: GenerationSettings, version: str, zero_context: bool = False) -> Tensor:
    """Conditioning → sampling → decode; ``zero_context`` = the reference switched off by hand."""
    kw = enhance_for(version)
    sketch = prepare_sketch(outline_sketch(), (64, 64))
    cond = model.conditioning(sketch, prepare_reference(reference()), settings, sketch_hw=(64, 64), **kw)
    if zero_context:
        cond = replace(cond, context=torch.zeros_like(cond.context))
    return model.decode(model.sample(cond, (64, 64), settings))


# ------------------------------------------------------------------ guidance window
def test_reference_off_follows_tr() -> None:
    t = torch.tensor([999.0, 749.25, 500.0, 499.0, 0.0])  # tr = 0, 0.25, ~0.4995, ~0.5005, 1
    assert not reference_off(t).any()  # app defaults: never
    assert not reference_off(torch.linspace(0, 999, 1001)).any()
    assert reference_off(t, start=0.5).tolist() == [True, True, True, False, False]
    assert reference_off(t, end=0.25).tolist() == [False, False, True, True, True]
    assert reference_off(t, no_guidance=(0.2, 0.5)).tolist() == [False, True, True, False, False]
    assert reference_off(t, **ALL_OFF).all()


def test_window_settings_are_validated() -> None:
    for bad in ({"guidance_start": 0.6, "guidance_end": 0.4}, {"guidance_end": 1.5}, {"guidance_start": -0.1},
                {"no_guidance": (0.5, 0.2)}, {"no_guidance": (0.1,)}, {"guidance_start": float("nan")},
                {"reference_pad_scale": 2.5}, {"reference_pad_scale": 0.9}):
        with pytest.raises(InputError):
            replace(S, **bad).validate()
    assert not S.guidance_window_active
    assert replace(S, guidance_start=0.1).guidance_window_active
    assert replace(S, no_guidance=(0.9, 0.95)).guidance_window_active


@pytest.mark.parametrize("version", VERSIONS)
def test_full_window_equals_the_plain_path(models: dict[str, Colorizer], version: str) -> None:
    """Start 0 / end 1 with a no-guidance interval that no sampled step reaches runs the window code
    at every call and still gives exactly the plain result."""
    model = models[version]
    plain = run(model, S, version)
    active = replace(S, guidance_start=0.0, guidance_end=1.0, no_guidance=(0.999, 1.0))
    assert active.guidance_window_active
    assert torch.equal(run(model, active, version), plain)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("sampler", ["dpm_solver", "euler"])  # discrete and continuous t
def test_window_excluding_every_step_is_reference_off(models: dict[str, Colorizer], version: str, sampler: str) -> None:
    model, s = models[version], replace(S, sampler=sampler)
    off = run(model, s, version, zero_context=True)
    # (start 1 alone would leave tr = 1, i.e. a final t = 0 of the uniform schedule, on)
    for window in (ALL_OFF, {"guidance_end": 0.0, "no_guidance": (0.0, 0.5)}):
        torch.testing.assert_close(run(model, replace(s, **window), version), off, rtol=0, atol=1e-6)
    assert (run(model, s, version) - off).abs().max() > 1e-3  # the reference matters, so the test can fail


def test_window_off_matches_zero_reference_strength(models: dict[str, Colorizer]) -> None:
    """v1: an empty context and cross-attention strength 0 in every block are the same computation."""
    model = models["mult"]
    zero = replace(S, block_strengths=[0.0] * 16)
    torch.testing.assert_close(run(model, replace(S, **ALL_OFF), "mult"), run(model, zero, "mult"),
                               rtol=0, atol=1e-5)


class _Recorder(nn.Module):
    """Wraps a U-Net and records, per call, the timesteps and which rows got a non-zero context."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet, self.calls = unet, []

    def forward(self, x: Tensor, t: Tensor, context: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        self.calls.append((t.clone(), context.flatten(1).abs().amax(1) > 0))
        return self.unet(x, t, context, *args, **kwargs)


@pytest.mark.parametrize("version", VERSIONS)
def test_partial_window_switches_per_call(models: dict[str, Colorizer], version: str) -> None:
    model = models[version]
    s = replace(S, steps=4, sampler="euler", guidance_start=0.3, guidance_end=0.8)
    sketch = prepare_sketch(outline_sketch(), (64, 64))
    cond = model.conditioning(sketch, prepare_reference(reference()), s, sketch_hw=(64, 64), **enhance_for(version))
    rec = _Recorder(model.unet)
    partial = sample_latent(rec, model.schedule, model.config, cond, (64, 64), s)
    seen = set()
    for t, has_ref in rec.calls:
        tr = 1 - t / 999
        inside = (tr >= 0.3) & (tr <= 0.8)
        # rows inside the window keep their context (the reference-unconditional rows are zero anyway)
        assert torch.equal(has_ref[0::3], inside[0::3]) and not has_ref[1::3].any()
        assert torch.equal(has_ref[2::3], inside[2::3])
        seen.update(inside.tolist())
    assert seen == {True, False}
    plain = sample_latent(model.unet, model.schedule, model.config, cond, (64, 64), replace(s, guidance_start=0.0,
                                                                                                guidance_end=1.0))
    assert (partial - plain).abs().max() > 1e-4


# ------------------------------------------------------------------ reference padding scale
def test_pad_width_centres_the_content_on_white() -> None:
    ref = torch.rand(2, 3, 10, 20)
    out = pad_reference(ref, 1.5)
    assert out.shape == (2, 3, 10, 30)
    assert torch.equal(out[..., 5:25], ref)
    assert (out[..., :5] == 1).all() and (out[..., 25:] == 1).all()
    assert torch.equal(pad_reference(ref, 1.0), ref)
    assert pad_width(torch.zeros(1, 4, 7), 2.0, 0.5).shape == (1, 4, 14)
    with pytest.raises(InputError):
        pad_reference(ref, 2.01)


def test_padding_scale_feeds_the_padded_reference(models: dict[str, Colorizer]) -> None:
    model, sketch, ref = models["mult"], outline_sketch(), reference()
    s = replace(S, steps=1)
    padded = model.colorize(sketch, ref, replace(s, reference_pad_scale=1.5))
    by_hand = torch.cat([torch.ones(1, 3, 80, 15), ref, torch.ones(1, 3, 80, 15)], dim=-1)
    torch.testing.assert_close(padded, model.colorize(sketch, by_hand, s), rtol=0, atol=0)
    assert (padded - model.colorize(sketch, ref, s)).abs().max() > 1e-3


# ------------------------------------------------------------------ crop to the sketch area
def test_content_box_is_where_fit_and_pad_puts_the_sketch() -> None:
    for hw, size in (((30, 60), (64, 128)), ((100, 40), (128, 64)), ((64, 64), (64, 64)), ((50, 51), (128, 192))):
        x = torch.ones(1, 3, *hw)
        top, left, h, w = box = content_box(hw, size)
        out = fit_and_pad(x, size, fill=-1.0)
        inside = torch.zeros(size, dtype=torch.bool)
        inside[top:top + h, left:left + w] = True
        assert (out[..., inside] > -1).all() and (out[..., ~inside] == -1).all()
        assert crop_to_box(out, box).shape[-2:] == (h, w)
    with pytest.raises(InputError):
        crop_to_box(torch.zeros(1, 3, 8, 8), (0, 0, 9, 8))


def test_crop_result_returns_the_sketch_area(models: dict[str, Colorizer]) -> None:
    model, sketch = models["mult"], outline_sketch(64, 32)  # fitted into 64x64: columns 16..47
    s = replace(S, steps=1)
    full = model.colorize(sketch, reference(), s)
    cropped = model.colorize(sketch, reference(), replace(s, crop_result=True))
    assert full.shape == (1, 3, 64, 64) and cropped.shape == (1, 3, 64, 32)
    assert torch.equal(cropped, full[..., :, 16:48])


# ------------------------------------------------------------------ background removal of the result
def test_remove_background_keeps_pixels_at_or_above_the_threshold() -> None:
    image = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 8, 8)
    mask[:, 2:6, 2:6] = 0.5
    mask[1, 0, 0] = 0.49
    out = remove_background(image, mask, threshold=0.5)
    keep = (mask >= 0.5)[:, None].expand_as(image)
    assert torch.equal(out[keep], image[keep]) and (out[~keep] == 1).all()
    assert torch.equal(remove_background(image, mask, threshold=0.0), image)
    # a mask from another frame (batch 1) is resized to the image
    small = torch.zeros(1, 4, 4)
    small[:, :, :2] = 1
    out = remove_background(image, small, threshold=0.5)
    assert torch.equal(out[..., :4], image[..., :4]) and (out[..., 5:] == 1).all()
    assert (remove_background(image, mask[:, None], 0.5, white=0.0)[~keep] == 0).all()
    with pytest.raises(InputError):
        remove_background(image, torch.zeros(3, 8, 8))
    with pytest.raises(InputError):
        remove_background(image, mask, threshold=1.5)


# ------------------------------------------------------------------ command line
def test_cli_advanced_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    from PIL import Image

    from colorize.cli import main

    write_tiny_weights(tmp_path / "models", versions=("mult",))
    sketch = (outline_sketch(64, 32)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(sketch).save(tmp_path / "sketch.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 60, 3), dtype=np.uint8)).save(tmp_path / "ref.png")
    mask = np.zeros((64, 32), dtype=np.uint8)
    mask[:, :16] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")

    def run_cli(name: str, *flags: str) -> np.ndarray:
        out = tmp_path / f"{name}.png"
        assert main(["run", "--sketch", str(tmp_path / "sketch.png"), "--reference", str(tmp_path / "ref.png"),
                     "--out", str(out), "--models-dir", str(tmp_path / "models"), "--no-download", "--steps", "1",
                     "--width", "64", "--height", "64", *flags]) == 0
        with Image.open(out) as im:
            return np.asarray(im).astype(int)

    plain = run_cli("plain")
    same = run_cli("window", "--guidance-start", "0", "--guidance-end", "1", "--no-guidance", "0.999", "1")
    assert np.array_equal(plain, same)
    assert not np.array_equal(plain, run_cli("off", "--no-guidance", "0", "1"))
    assert not np.array_equal(plain, run_cli("pad", "--ref-pad-scale", "1.5"))
    assert not np.array_equal(plain, run_cli("inject", "--injection", "--injection-fidelity", "0.3"))
    assert np.array_equal(plain, run_cli("inject-late", "--injection", "--injection-start", "1"))
    assert np.array_equal(plain, run_cli("low-vram", "--low-vram", "--vae-tiling", "on"))  # one tile at 64²
    cropped = run_cli("crop", "--crop-result")
    assert cropped.shape == (64, 32, 3) and np.array_equal(cropped, plain[:, 16:48])
    cut = run_cli("rmbg", "--crop-result", "--remove-result-bg", "--sketch-mask", str(tmp_path / "mask.png"))
    assert np.array_equal(cut[:, :15], cropped[:, :15]) and (cut[:, 17:] == 255).all()
    assert main(["run", "--sketch", str(tmp_path / "sketch.png"), "--reference", str(tmp_path / "ref.png"),
                 "--out", str(tmp_path / "bad.png"), "--models-dir", str(tmp_path / "models"), "--no-download",
                 "--guidance-start", "0.9", "--guidance-end", "0.1"]) != 0
    assert "guidance_start <= guidance_end" in capsys.readouterr().err
