"""v1.5/v2 nodes without ComfyUI on tiny weights: loaders keep the extras, Background/Style Encode equal the
library, masks change the result, mask nodes (sketch, SAM, preview): shapes and errors."""
from __future__ import annotations

from _helpers import combo_choices, require_node_api

require_node_api()  # the nodes import ComfyUI's comfy_api

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_nodes import REFERENCE, SKETCH

import colorize.weights as w
from colorize.errors import InputError
from colorize.masks import build_tiny_sam, sketch_foreground_mask
from colorize.pipeline import Colorizer
from colorize.preprocess import prepare_reference
from colorize.settings import EnhanceSettings, GenerationSettings
from colorize.tiny import write_tiny_weights
from nodes import NODE_CLASSES as M

CKPTS = {"mult": "mult-eps-ft.safetensors", "switch": "switch-eps.safetensors", "v2": "v2-full.safetensors"}
CLIP = "open_clip_model.safetensors"
SIZE = 64


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("models")
    write_tiny_weights(d, versions=("mult", "switch", "v2"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(w.MODELS_DIR_ENV, str(d))
        yield d


@pytest.fixture(scope="module")
def models(tiny_dir: Path) -> dict[str, Any]:
    return {v: M["ColorizeDiffusionCheckpointLoader"].execute(name, "fp32").result[0] for v, name in CKPTS.items()}


@pytest.fixture(scope="module")
def encoder(tiny_dir: Path) -> Any:
    return M["ColorizeDiffusionReferenceEncoderLoader"].execute(CLIP)[0]


def chain(model: Any, encoder: Any, enhance: Any = None, seed: int = 5) -> torch.Tensor:
    """Sketch Preprocess → Hints, Reference Embed → Sampler (+ enhance) → Decode: IMAGE (1, H, W, 3)."""
    sketch = M["ColorizeDiffusionSketchPreprocess"].execute(SKETCH, "auto", SIZE, SIZE)[0]
    hints = M["ColorizeDiffusionSketchHints"].execute(model, sketch, 1.0)[0]
    reference = M["ColorizeDiffusionReferenceEmbed"].execute(encoder, REFERENCE)[0]
    latent = M["ColorizeDiffusionSampler"].execute(
        model, reference, hints, seed, 2, "dpm_solver", "leading", 4.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0, 0, enhance)[0]
    return M["ColorizeDiffusionDecode"].execute(model, latent)[0]


def background(encoder: Any, **kw: Any) -> Any:
    args = {"background_enhance": True, "foreground_enhance": False, "fg_strength": 1.0, "bg_strength": 1.0,
            "merge_scale": 0.0, "background_factor": 1.0, "sketch_threshold": 0.05, "reference_threshold": 0.5,
            "remove_background_foreground": False, **kw}
    return M["ColorizeDiffusionBackgroundEncode"].execute(encoder, REFERENCE, **args)[0]


def reference_mask() -> torch.Tensor:
    return M["ColorizeDiffusionSketchMask"].execute(REFERENCE, 0.1, 4, 0, "dark_lines")[0]


def test_loaders_keep_the_version_modules(models: dict[str, Any]) -> None:
    assert set(models["mult"].extras) == set()
    assert set(models["switch"].extras) == {"thresh_embedder", "transformer"}
    assert set(models["v2"].extras) == {"bg_encoder", "style_encoder"}
    assert "v1.5 (switch)" in models["switch"].describe() and "v-prediction" in models["v2"].describe()
    for model in models.values():
        assert all(m.module.training is False for m in model.extras.values())
    ckpts = combo_choices(M["ColorizeDiffusionCheckpointLoader"], "ckpt_name")
    assert {"switch-eps.safetensors", "v2-full.safetensors"} <= set(ckpts)


@pytest.mark.parametrize("version, style", [("switch", False), ("v2", True)])  # style enhance is v2's alone
def test_background_and_style_nodes_equal_the_library(version: str, style: bool, tiny_dir: Path,
                                                      models: dict[str, Any], encoder: Any) -> None:
    rmask = reference_mask()
    enhance = background(encoder, reference_mask=rmask, foreground_enhance=True, bg_strength=0.8)
    kw: dict[str, Any] = {"background_enhance": True, "foreground_enhance": True, "bg_scale": 0.8}
    if style:
        enhance = M["ColorizeDiffusionStyleEncode"].execute(encoder, REFERENCE, enhance)[0]
        kw["style_enhance"] = True
    image = chain(models[version], encoder, enhance)

    lib = Colorizer.from_files(tiny_dir / "colorizediffusion" / CKPTS[version], tiny_dir / "clip_vision" / CLIP,
                               "cpu", "fp32")
    settings = GenerationSettings(steps=2, seed=5, scheduler="leading", width=SIZE, height=SIZE)
    expected = lib.colorize(SKETCH.permute(0, 3, 1, 2), REFERENCE.permute(0, 3, 1, 2), settings,
                            enhance=EnhanceSettings(**kw), reference_mask=rmask)
    # Sketch Preprocess hands the prepared sketch on as an IMAGE in [0, 1] (a 6e-8 round trip), which the tiny
    # random split-attention U-Net amplifies to ~1e-3: same computation, looser tolerance ...
    torch.testing.assert_close(image, ((expected + 1) / 2).permute(0, 2, 3, 1), atol=3e-3, rtol=0)
    # ... and exact with the node's own prepared sketch
    prepared = M["ColorizeDiffusionSketchPreprocess"].execute(SKETCH, "auto", SIZE, SIZE)[0].permute(0, 3, 1, 2)
    cond = lib.conditioning(prepared * 2 - 1, prepare_reference(REFERENCE.permute(0, 3, 1, 2)), settings,
                            enhance=EnhanceSettings(**kw), sketch_hw=tuple(SKETCH.shape[1:3]), reference_mask=rmask)
    exact = (lib.decode(lib.sample(cond, (SIZE, SIZE), settings)) + 1) / 2
    torch.testing.assert_close(image, exact.permute(0, 2, 3, 1), atol=1e-5, rtol=1e-5)


def test_enhancement_and_masks_change_the_result(models: dict[str, Any], encoder: Any) -> None:
    model = models["switch"]
    plain = chain(model, encoder)
    rmask = reference_mask()
    with_mask = chain(model, encoder, background(encoder, reference_mask=rmask))
    full_sketch = chain(model, encoder, background(encoder, reference_mask=rmask,
                                                   sketch_mask=torch.ones(1, *SKETCH.shape[1:3])))
    assert (plain - with_mask).abs().max() > 1e-3
    assert (with_mask - full_sketch).abs().max() > 1e-3
    style_only = chain(models["v2"], encoder, M["ColorizeDiffusionStyleEncode"].execute(encoder, REFERENCE)[0])
    assert (style_only - chain(models["v2"], encoder)).abs().max() > 1e-3


def test_enhance_errors_name_the_fix(models: dict[str, Any], encoder: Any) -> None:
    with pytest.raises(InputError, match="v1"):
        chain(models["mult"], encoder, background(encoder))
    with pytest.raises(InputError, match="v2"):
        chain(models["switch"], encoder, M["ColorizeDiffusionStyleEncode"].execute(encoder, REFERENCE)[0])
    with pytest.raises(InputError, match="does nothing"):
        background(encoder, background_enhance=False)
    other = REFERENCE.flip(1)
    with pytest.raises(InputError, match="same reference"):
        M["ColorizeDiffusionStyleEncode"].execute(encoder, other, background(encoder))


def test_sketch_mask_node() -> None:
    mask = M["ColorizeDiffusionSketchMask"].execute(SKETCH, 0.5, 4, 0, "auto")[0]
    assert mask.shape == SKETCH.shape[:3] and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert 0 < float(mask.mean()) < 1
    expected = sketch_foreground_mask(SKETCH.permute(0, 3, 1, 2), line_threshold=0.5, gap=4, polarity="auto")
    assert torch.equal(mask, expected)
    grown = M["ColorizeDiffusionSketchMask"].execute(SKETCH, 0.5, 4, 3, "auto")[0]
    assert grown.sum() > mask.sum() and bool((grown >= mask).all())
    with pytest.warns(UserWarning, match="no line pixels"):
        empty = M["ColorizeDiffusionSketchMask"].execute(torch.ones(1, 32, 48, 3), 0.5, 4, 0, "dark_lines")[0]
    assert empty.shape == (1, 32, 48) and not empty.any()


def test_sam_mask_node_with_a_tiny_sam(tiny_dir: Path) -> None:
    from safetensors.torch import save_file

    sam = build_tiny_sam()
    (tiny_dir / "sams").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, str(tiny_dir / "sams" / "tiny_sam.safetensors"))
    assert "tiny_sam.safetensors" in combo_choices(M["ColorizeDiffusionSAMMask"], "sam_name")
    node = M["ColorizeDiffusionSAMMask"]
    auto = node.execute("tiny_sam.safetensors", REFERENCE, "point+box", 0.5, 0)[0]
    assert auto.shape == REFERENCE.shape[:3] and set(auto.unique().tolist()) <= {0.0, 1.0}
    soft = node.execute("tiny_sam.safetensors", REFERENCE, "point+box", 0.0, 0)[0]
    assert bool((soft >= auto).all())  # a lower threshold keeps at least as much
    prompted = node.execute("tiny_sam.safetensors", REFERENCE, "point", 0.5, 0, "10,20", "30,40", "0,0,50,60")[0]
    assert prompted.shape == auto.shape
    with pytest.raises(InputError, match="groups of 2"):
        node.execute("tiny_sam.safetensors", REFERENCE, "point", 0.5, 0, "10")
    with pytest.raises(InputError, match="negative_points alone"):
        node.execute("tiny_sam.safetensors", REFERENCE, "point", 0.5, 0, "", "3,4")
    with pytest.raises(w.WeightsMissingError, match="sams"):
        node.execute("absent.safetensors", REFERENCE, "point", 0.5, 0)


def test_mask_preview_node() -> None:
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:12, 4:12] = 1
    image = torch.full((1, 32, 32, 3), 0.5)
    out = M["ColorizeDiffusionMaskPreview"].execute(image, mask, 0.5, 0, 0.0)[0]
    assert out.shape == image.shape
    assert torch.equal(out[:, 0, 0], image[:, 0, 0]) and not torch.equal(out[:, 16, 16], image[:, 16, 16])
    with pytest.raises(InputError, match="batch"):
        M["ColorizeDiffusionMaskPreview"].execute(image, torch.zeros(3, 16, 16), 0.5, 0, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M["ColorizeDiffusionMaskPreview"].execute(image.expand(2, -1, -1, -1), mask, 0.5, 2, 0.3)
