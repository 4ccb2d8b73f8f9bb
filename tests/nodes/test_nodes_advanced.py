"""Advanced nodes without ComfyUI on tiny weights: Guidance Window and Attention Injection through the sampler
equal the library, Reference Pad, Crop To Sketch and Remove Background do what the library does."""
from __future__ import annotations

from _helpers import require_node_api

require_node_api()  # the nodes import ComfyUI's comfy_api

from dataclasses import replace
from typing import Any

import pytest
import torch
from test_nodes import REFERENCE, SKETCH
from test_nodes_enhance import CKPTS, CLIP, SIZE, encoder, models, tiny_dir  # noqa: F401

from colorize.errors import InputError
from colorize.preprocess import content_box, prepare_reference
from colorize.settings import GenerationSettings
from nodes import NODE_CLASSES as M


def node_chain(model: Any, encoder: Any, advanced: Any = None, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: F811
    """Sketch Preprocess → Hints, Reference Embed → Sampler (+ advanced) → Decode; also the prepared sketch."""
    sketch = M["ColorizeDiffusionSketchPreprocess"].execute(SKETCH, "auto", SIZE, SIZE)[0]
    hints = M["ColorizeDiffusionSketchHints"].execute(model, sketch, 1.0)[0]
    reference = M["ColorizeDiffusionReferenceEmbed"].execute(encoder, REFERENCE)[0]
    latent = M["ColorizeDiffusionSampler"].execute(
        model, reference, hints, seed, 2, "euler", "karras", 4.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0, 0, None, advanced)[0]
    return M["ColorizeDiffusionDecode"].execute(model, latent)[0], sketch


def advanced_options() -> Any:
    window = M["ColorizeDiffusionGuidanceWindow"].execute(0.1, 0.9, -0.05, -0.05)[0]
    return M["ColorizeDiffusionAttentionInjection"].execute(REFERENCE, 0.3, 0.5, 0.0, window)[0]


@pytest.mark.parametrize("version", ["mult", "v2"])
def test_advanced_sampler_equals_the_library(version: str, tiny_dir: Any, models: dict[str, Any],  # noqa: F811
                                             encoder: Any) -> None:  # noqa: F811
    from colorize.pipeline import Colorizer

    image, prepared = node_chain(models[version], encoder, advanced_options())
    lib = Colorizer.from_files(tiny_dir / "colorizediffusion" / CKPTS[version], tiny_dir / "clip_vision" / CLIP,
                               "cpu", "fp32")
    settings = GenerationSettings(steps=2, seed=5, sampler="euler", scheduler="karras", width=SIZE, height=SIZE,
                                  guidance_start=0.1, guidance_end=0.9, injection=True, injection_fidelity=0.3,
                                  injection_control=0.5)
    cond = lib.conditioning(prepared.permute(0, 3, 1, 2) * 2 - 1, prepare_reference(REFERENCE.permute(0, 3, 1, 2)),
                            settings)
    expected = (lib.decode(lib.sample(cond, (SIZE, SIZE), settings)) + 1) / 2
    torch.testing.assert_close(image, expected.permute(0, 2, 3, 1), atol=1e-5, rtol=1e-5)
    plain, _ = node_chain(models[version], encoder)
    assert (image - plain).abs().max() > 1e-3  # the options act


def test_advanced_nodes_refuse_bad_values() -> None:
    with pytest.raises(InputError, match="guidance window"):
        M["ColorizeDiffusionGuidanceWindow"].execute(0.8, 0.2, -0.05, -0.05)
    with pytest.raises(InputError, match="no_guidance"):
        M["ColorizeDiffusionGuidanceWindow"].execute(0.0, 1.0, 0.6, 0.3)
    with pytest.raises(InputError, match="injection reference"):
        M["ColorizeDiffusionAttentionInjection"].execute(torch.full((1, 8, 8, 3), float("nan")), 0.5, 0.0, 0.0)


def test_chaining_keeps_both_nodes_settings() -> None:
    opts = advanced_options()
    s = opts.apply(GenerationSettings())
    assert (s.guidance_start, s.guidance_end, s.injection, s.injection_fidelity, s.injection_control) == \
        (0.1, 0.9, True, 0.3, 0.5)
    assert opts.injection_reference is not None and opts.injection_reference.min() >= -1
    assert replace(s, injection=False).validate() is None


def test_reference_pad_crop_and_remove_background() -> None:
    ref = torch.rand(1, 20, 30, 3)
    padded, mask = M["ColorizeDiffusionReferencePad"].execute(ref, 1.5)
    assert padded.shape == (1, 20, 45, 3) and torch.equal(padded[:, :, 7:37], ref)
    assert (padded[:, :, :7] == 1).all() and mask.shape == (1, 20, 45) and not mask.any()
    _, pmask = M["ColorizeDiffusionReferencePad"].execute(ref, 1.5, torch.ones(1, 20, 30))
    assert pmask[:, :, 7:37].all() and not pmask[:, :, :7].any()

    image, sketch = torch.rand(1, 64, 128, 3), torch.rand(1, 30, 60, 3)
    (cropped,) = M["ColorizeDiffusionCropToSketch"].execute(image, sketch)
    top, left, h, w = content_box((30, 60), (64, 128))
    assert torch.equal(cropped, image[:, top:top + h, left:left + w])

    rb = M["ColorizeDiffusionRemoveBackground"]
    m = torch.zeros(1, 64, 128)
    m[:, :, :64] = 1.0
    (out,) = rb.execute(image, m, 0.5).result
    assert torch.equal(out[:, :, :64], image[:, :, :64]) and (out[:, :, 64:] == 1).all()
