"""Text Edit and Control Heatmap nodes without ComfyUI, on tiny random weights (the tiny CLIP has a text tower)."""
from __future__ import annotations

from _helpers import require_node_api

require_node_api()  # the nodes import ComfyUI's comfy_api

import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import colorize.weights as w
from colorize.checkpoint import read_metadata
from colorize.errors import InputError
from colorize.loader import load_reference_encoder
from colorize.manipulation import Edit, control_heatmap, local_manipulate
from colorize.models.clip_convert import open_clip_to_hf
from colorize.tiny import write_tiny_weights
from nodes import NODE_CLASSES as M
from nodes.manipulation import ControlHeatmap, TextEdit
from nodes.reference import EncodedReference, OpenClipReference
from nodes.sockets import ReferenceTokens

REPO = Path(__file__).resolve().parents[2]
CKPT, CLIP = "mult-eps-ft.safetensors", "open_clip_model.safetensors"
VISION_ONLY = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
THRESHOLDS = (0.5, 0.55, 0.65, 0.95)


def load_image(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]


REFERENCE = load_image(REPO / "workflows" / "colorizediffusion_reference.png")  # (1, 448, 384, 3)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("models")
    write_tiny_weights(d)
    src = d / "clip_vision" / CLIP  # the IPAdapter-style file: HF clip_vision names, vision tower only
    save_file(open_clip_to_hf(load_file(src)), d / "clip_vision" / VISION_ONLY, metadata=read_metadata(src))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(w.MODELS_DIR_ENV, str(d))
        yield d


@pytest.fixture()
def encoder(tiny_dir: Path) -> OpenClipReference:
    """A fresh loader output per test (the text tower is loaded lazily, per encoder)."""
    return M["ColorizeDiffusionReferenceEncoderLoader"].execute(CLIP)[0]


@pytest.fixture(scope="module")
def text_encoder(tiny_dir: Path) -> Any:
    """The tiny CLIP loaded directly by the core (vision + text), independent of the nodes."""
    return load_reference_encoder(tiny_dir / "clip_vision" / CLIP, with_text=True)


def embed(encoder: Any, image: torch.Tensor = REFERENCE) -> EncodedReference:
    return M["ColorizeDiffusionReferenceEmbed"].execute(encoder, image)[0]


def edit(reference: Any, target: str = "the girl's blonde hair", anchor: str = "", control: str = "hair",
         target_scale: float = 10.0, enhance: bool = False, thresholds: tuple[float, ...] = THRESHOLDS,
         strength_ratio: float = 2.0, enabled: bool = True) -> Any:
    return TextEdit.execute(reference, enabled, target, anchor, control, target_scale, enhance, *thresholds,
                           strength_ratio)[0]


def heatmap(reference: Any, control: str = "hair", image: torch.Tensor = REFERENCE,
            thresholds: tuple[float, ...] = THRESHOLDS) -> tuple[torch.Tensor, torch.Tensor]:
    return ControlHeatmap.execute(reference, image, control, *thresholds)


# ------------------------------------------------------------------------------------- reference type


def test_reference_keeps_all_257_tokens_and_the_sampler_view(encoder: OpenClipReference, text_encoder: Any) -> None:
    ref = embed(encoder)
    assert isinstance(ref, ReferenceTokens) and ref.tokens.shape == (1, 256, 64) and ref.cls.shape == (1, 1, 64)
    with torch.no_grad():
        want = text_encoder.encode_image(REFERENCE.permute(0, 3, 1, 2) * 2 - 1, "full")
    torch.testing.assert_close(ref.full, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref.tokens, want[:, 1:], atol=1e-5, rtol=1e-5)  # the sampler's input, as before


def test_text_tower_is_loaded_on_first_edit_only(encoder: OpenClipReference) -> None:
    assert not encoder.managed.module.has_text and encoder.text is None  # colorization alone pays nothing
    ref = embed(encoder)
    assert encoder.text is None
    edit(ref)
    tower = encoder.text
    assert tower is not None and tower.module.has_text and not hasattr(tower.module, "visual")
    edit(ref, target="the girl's green dress", control="dress")
    assert encoder.text is tower  # loaded once


# ------------------------------------------------------------------------------------- edits


def test_chained_edits_equal_local_manipulate_over_the_list(encoder: OpenClipReference, text_encoder: Any) -> None:
    ref0 = embed(encoder)
    ref1 = edit(ref0, "the girl's blonde hair", "the girl's purple hair", "hair", 10.0, True, (0.4, 0.5, 0.6, 0.9), 3.0)
    ref2 = edit(ref1, "the girl's green dress", "", "dress", -4.0, False, THRESHOLDS, 2.0)
    edits = [Edit("the girl's blonde hair", 10.0, "the girl's purple hair", "hair", True, (0.4, 0.5, 0.6, 0.9), 3.0),
             Edit("the girl's green dress", -4.0, None, "dress", False, THRESHOLDS, 2.0)]
    with torch.no_grad():
        want = local_manipulate(ref0.full, edits, text_encoder.encode_text)
    torch.testing.assert_close(ref2.full, want, atol=1e-5, rtol=1e-5)
    assert isinstance(ref2, EncodedReference) and ref2.encode_text == ref0.encode_text
    assert torch.equal(ref2.cls, ref0.cls)  # CLS is never edited
    assert not torch.allclose(ref1.tokens, ref0.tokens) and not torch.allclose(ref2.tokens, ref1.tokens)
    assert ref0.full.shape == ref2.full.shape == (1, 257, 64)


def test_everything_control_and_empty_anchor(encoder: OpenClipReference, text_encoder: Any) -> None:
    ref = embed(encoder)
    out = edit(ref, control="", anchor="none", target_scale=3.0)
    e = text_encoder.encode_text(["the girl's blonde hair"])[0, 0]
    d = 3.0 - ref.cls[0, 0] @ e
    torch.testing.assert_close(out.tokens, ref.tokens + d * e, atol=1e-5, rtol=1e-5)  # uniform shift (Eq. 5.14)


def test_disabled_edit_is_identity_and_scale_zero_is_an_edit(encoder: OpenClipReference) -> None:
    ref = embed(encoder)
    assert edit(ref, target="", enabled=False) is ref  # skipped: no prompt needed, nothing encoded
    assert encoder.text is None
    assert not torch.allclose(edit(ref, target_scale=0.0).tokens, ref.tokens)  # hence the toggle


def test_edit_input_errors(encoder: OpenClipReference) -> None:
    ref = embed(encoder)
    with pytest.raises(ValueError, match="non-empty target"):
        edit(ref, target="  ")
    with pytest.raises(ValueError, match="non-decreasing"):
        edit(ref, thresholds=(0.6, 0.5, 0.65, 0.95))
    with pytest.raises(InputError, match="Reference Embed"):
        edit(ReferenceTokens(ref.tokens))  # patch tokens only: no CLS, no text encoder


def test_edited_tokens_reach_the_sampler(tiny_dir: Path, encoder: OpenClipReference) -> None:
    model = M["ColorizeDiffusionCheckpointLoader"].execute(CKPT, "fp32").result[0]
    sketch = M["ColorizeDiffusionSketchPreprocess"].execute(torch.zeros(1, 64, 64, 3), "keep", 64, 64)[0]
    hints = M["ColorizeDiffusionSketchHints"].execute(model, sketch, 1.0)[0]
    args = {"seed": 1, "steps": 1, "sampler": "ddim", "scheduler": "auto", "reference_cfg": 4.0, "sketch_cfg": 1.0,
            "reference_strength": 1.0, "encoder_strength": 1.0, "middle_strength": 1.0, "low_strength": 1.0,
            "width": 0, "height": 0}
    ref = embed(encoder)
    plain = M["ColorizeDiffusionSampler"].execute(model, ref, hints, **args)[0]["samples"]
    edited = M["ColorizeDiffusionSampler"].execute(model, edit(ref, control="everything"), hints, **args)[0]["samples"]
    assert plain.shape == edited.shape == (1, 4, 8, 8) and not torch.allclose(plain, edited)


# ------------------------------------------------------------------------------------- heatmap


def test_heatmap_has_the_reference_size_and_the_core_levels(encoder: OpenClipReference, text_encoder: Any) -> None:
    ref0 = embed(encoder)
    ref1 = edit(ref0)
    image, levels = heatmap(ref1, "dress")
    assert image.shape == (1, 448, 384, 3) and levels.shape == (1, 448, 384)  # IMAGE (B, H, W, C), MASK (B, H, W)
    assert image.min() >= 0 and image.max() <= 1
    assert set(levels.unique().tolist()) <= {0.0, 0.25, 0.5, 0.75, 1.0} and levels.unique().numel() > 1
    # the core's heatmap with the edit queued (official "Visualize": queued edits, then the current control)
    with torch.no_grad():
        want = control_heatmap(ref0.full, REFERENCE.permute(0, 3, 1, 2), "dress", text_encoder.encode_text,
                               THRESHOLDS, edits=[Edit("the girl's blonde hair", 10.0, control="hair")])
    torch.testing.assert_close(levels, want.levels)
    torch.testing.assert_close(image, want.image.permute(0, 2, 3, 1), atol=1e-5, rtol=1e-5)


def test_heatmap_follows_thresholds_and_image_size(encoder: OpenClipReference) -> None:
    ref = embed(encoder)
    _, default = heatmap(ref)
    _, low = heatmap(ref, thresholds=(0.1, 0.2, 0.3, 0.4))
    assert low.mean() > default.mean()  # lower thresholds: more of the image reaches each level
    rgba = torch.cat([REFERENCE[:, :200, :300], torch.ones(1, 200, 300, 1)], dim=-1)
    image, levels = heatmap(ref, image=rgba)
    assert image.shape == (1, 200, 300, 3) and levels.shape == (1, 200, 300)
    _, everything = heatmap(ref, control="everything")
    assert torch.equal(everything, torch.ones_like(everything))  # every token selected


# ------------------------------------------------------------------------------------- encoders without text


def test_vision_only_file_names_the_fix(tiny_dir: Path) -> None:
    vision_only = M["ColorizeDiffusionReferenceEncoderLoader"].execute(VISION_ONLY)[0]
    ref = embed(vision_only)
    assert ref.tokens.shape == (1, 256, 64)  # colorization still works
    for run in (lambda: edit(ref), lambda: heatmap(ref)):
        with pytest.raises(InputError) as e:
            run()
        msg = str(e.value)
        assert VISION_ONLY in msg and "no CLIP text tower" in msg and CLIP in msg and "Reference Encoder Loader" in msg


def test_clip_vision_bridge_names_the_fix() -> None:
    model = types.SimpleNamespace(visual_projection=torch.nn.Linear(8, 8),
                                  vision_model=types.SimpleNamespace(post_layernorm=torch.nn.LayerNorm(8)))
    bridge = M["ColorizeDiffusionReferenceEncoderFromCLIPVision"].execute(types.SimpleNamespace(model=model))[0]
    ref = EncodedReference(torch.randn(1, 256, 8), torch.randn(1, 1, 8), bridge.encode_text)
    with pytest.raises(InputError, match=f"CLIP_VISION.*no CLIP text tower.*{CLIP}"):
        edit(ref)
    with pytest.raises(InputError, match="CLIP_VISION"):
        heatmap(ref)
    assert edit(ref, enabled=False) is ref
