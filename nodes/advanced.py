"""Advanced controls of the official app as small nodes (official ``backend/functool.py:120-128``,
``refnet/models/basemodel.py:273-280``, ``refnet/sampling/hook.py:284-383`` and ``app.py`` at commit ``c9bd9fb``).

Guidance Window, Attention Injection and XL Level Rule each add their settings to a chainable COLORIZE_ADVANCED
value that feeds the sampler's optional ``advanced`` input (unconnected = the plain path). Reference Pad, Crop To
Sketch and Remove Background work on images before or after the sampler.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from inspect import cleandoc
from typing import Any

from torch import Tensor

from colorize.injection import InjectionInputs, generation_injection
from colorize.preprocess import (
    check_image,
    content_box,
    crop_to_box,
    pad_reference,
    pad_width,
    remove_background,
    to_signed,
)
from colorize.settings import LEVEL_RULES, GenerationSettings

from .host import intermediate_device
from .schema import io, output
from .sockets import AdvancedSocket, ColorizeModel, bchw_to_image, image_to_bchw
from .widgets import unit_input

CATEGORY = "ColorizeDiffusion/advanced"


@dataclass(frozen=True)
class AdvancedOptions:
    """Generation-setting overrides (:class:`colorize.pipeline.GenerationSettings` field names) and the
    attention-injection reference image ([-1, 1], (B, 3, H, W)) when injection is on."""

    settings: dict[str, Any] = field(default_factory=dict)
    injection_reference: Tensor | None = None

    def apply(self, settings: GenerationSettings) -> GenerationSettings:
        return replace(settings, **self.settings)

    def injection(self, model: ColorizeModel, size: tuple[int, int],
                  settings: GenerationSettings) -> InjectionInputs | None:
        """The generation's injection inputs (reference latent seeded from ``settings.seed``), or ``None``."""
        if not settings.injection or self.injection_reference is None:
            return None
        sketch = model.sketch_encoder.ready() if settings.injection_control else None
        return generation_injection(self.injection_reference, size, model.vae.ready(), sketch, settings)


def _chain(previous: AdvancedOptions | None, **settings: Any) -> AdvancedOptions:
    base = previous or AdvancedOptions()
    return replace(base, settings={**base.settings, **settings})


def chain_input() -> Any:
    """The optional ``advanced`` input of the nodes that add to COLORIZE_ADVANCED (chaining)."""
    return AdvancedSocket.Input("advanced", optional=True, tooltip="Optional: advanced options from another "
                                "Guidance Window / Attention Injection node (chained).")


def advanced_output() -> Any:
    """The shared output of the nodes that add to COLORIZE_ADVANCED (shown as "advanced"; another id, as the
    chain input has that one)."""
    return output(AdvancedSocket, "advanced", "Advanced options for the sampler's 'advanced' input (or another "
                                              "advanced node).", id="advanced_options")


class GuidanceWindow(io.ComfyNode):
    """Reference guidance only inside a window of the denoising trajectory."""

    HELP = cleandoc("""
        The official app's 'Guidance start/end step' and 'No guidance' sliders. Positions are tr = 1 − t/999
        (0 = the first, noisiest step; 1 = the last). Every U-Net call outside [start, end] or inside
        [no-guidance start, no-guidance end] gets an empty reference.

        Start 0 / end 1 and a negative no-guidance interval change nothing. Works for v1, v1.5 and v2 (the official
        app only honours it for v1), on **Colorize Sampler** and on **Native Guider**.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionGuidanceWindow", display_name="Guidance Window", category=CATEGORY,
            description=(
                "Limits the reference to part of the denoising: outside [start, end], or inside the no-guidance "
                "interval, the U-Net gets an empty reference. Connect it to the sampler's 'advanced' input."
            ),
            inputs=[
                unit_input("start", 0.0, "The reference is used from this tr on (0 = from the first step)."),
                unit_input("end", 1.0, "The reference is used up to this tr (1 = to the last step)."),
                io.Float.Input("no_guidance_start", default=-0.05, min=-0.05, max=1.0, step=0.01,
                               tooltip="Start of an interval without reference (negative = none)."),
                io.Float.Input("no_guidance_end", default=-0.05, min=-0.05, max=1.0, step=0.01,
                               tooltip="End of the interval without reference (negative = none)."),
                chain_input(),
            ],
            outputs=[advanced_output()],
        )

    @classmethod
    def execute(cls, start: float, end: float, no_guidance_start: float, no_guidance_end: float,
                advanced: AdvancedOptions | None = None) -> io.NodeOutput:
        opts = _chain(advanced, guidance_start=start, guidance_end=end,
                      no_guidance=(no_guidance_start, no_guidance_end))
        opts.apply(GenerationSettings()).validate()  # bad windows fail here, naming the field
        return io.NodeOutput(opts)


class AttentionInjection(io.ComfyNode):
    """The official 'Attention injection': self-attention also reads the reference's own U-Net features."""

    HELP = cleandoc("""
        The official app's 'Attention injection' (about 2× the sampling time). At every step the U-Net first runs
        on the reference image's latent (noised to the same step) and records its self-attention inputs; the real
        step then lets every self-attention read them too, which transfers more of the reference's look.

        `fidelity` blends the plain self-attention into the reference-free guidance rows (1 = plain there, which
        strengthens the effect through guidance).

        Only **Colorize Sampler** supports it; **Native Guider** refuses it.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionAttentionInjection", display_name="Attention Injection", category=CATEGORY,
            description=(
                "Transfers more of the reference's look: self-attention also reads the reference image's own U-Net "
                "features. About doubles the sampling time. Connect it to Colorize Sampler's 'advanced' input."
            ),
            inputs=[
                io.Image.Input("reference", tooltip="The reference image (squashed to the output size, as the "
                                                    "official app)."),
                unit_input("fidelity", 0.5, "Injection fidelity (reference), official default 0.5."),
                io.Float.Input("sketch_fidelity", default=0.0, min=0.0, max=3.0, step=0.01,
                               tooltip="Injection fidelity (sketch): strength of the reference's own lines in the "
                                       "recording pass (official default 0)."),
                unit_input("start", 0.0, "Inject from this tr on (0 = every step)."),
                chain_input(),
            ],
            outputs=[advanced_output()],
        )

    @classmethod
    def execute(cls, reference: Tensor, fidelity: float, sketch_fidelity: float, start: float,
                advanced: AdvancedOptions | None = None) -> io.NodeOutput:
        image = to_signed(check_image(image_to_bchw(reference), "injection reference"))
        opts = _chain(advanced, injection=True, injection_fidelity=fidelity, injection_control=sketch_fidelity,
                      injection_start=start)
        opts.apply(GenerationSettings()).validate()
        return io.NodeOutput(replace(opts, injection_reference=image.to(intermediate_device())))


class XLLevelRule(io.ComfyNode):
    """How an XL sdxl checkpoint turns the sampler's level sliders into block strengths."""

    HELP = cleandoc("""
        The sdxl app has three level sliders but only `encoder_strength` acts there, on every transformer block
        (`official`, the default without this node). `levels` uses all three: the high-resolution blocks ←
        `encoder_strength`, the bottom blocks ← `middle_strength`, the low-resolution blocks ← `low_strength`.

        Only sdxl reads it: xlv2 always uses its own rule (encoder and low sliders), v1-v2 their app's rule.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionXLLevelRule", display_name="XL Level Rule", category=CATEGORY,
            description=(
                "For XL sdxl checkpoints: whether the sampler's level sliders follow the sdxl app (only "
                "encoder_strength acts) or act per level. Connect it to Colorize Sampler's 'advanced' input."
            ),
            inputs=[
                io.Combo.Input("level_rule", options=list(LEVEL_RULES), default="official",
                               tooltip="official = the sdxl app: only encoder_strength acts, on every block; "
                                       "levels = encoder → high-resolution, middle → bottom, low → low-resolution "
                                       "blocks."),
                chain_input(),
            ],
            outputs=[advanced_output()],
        )

    @classmethod
    def execute(cls, level_rule: str, advanced: AdvancedOptions | None = None) -> io.NodeOutput:
        opts = _chain(advanced, level_rule=level_rule)
        opts.apply(GenerationSettings()).validate()
        return io.NodeOutput(opts)


class ReferencePad(io.ComfyNode):
    """Pads the reference (and its mask) in width with white, before Reference Embed."""

    HELP = cleandoc("""
        The official app's 'Reference padding scale': the width becomes scale × width. A reference mask is padded
        with 0 (no foreground) so that it still matches; without a mask, the mask output is all zero.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionReferencePad", display_name="Reference Pad", category=CATEGORY,
            description=(
                "Pads the reference's width with white (centred) before Reference Embed, which makes the character "
                "smaller in the frame. A reference mask, if given, is padded to match."
            ),
            inputs=[
                io.Image.Input("reference", tooltip="The reference image."),
                io.Float.Input("scale", default=1.0, min=1.0, max=2.0, step=0.05,
                               tooltip="New width / old width (official 1-2, default 1 = unchanged)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional reference mask (1 = foreground) to pad alike."),
            ],
            outputs=[
                output(io.Image, "reference", "The padded reference.", id="padded_reference"),
                output(io.Mask, "mask", "The padded mask (all zero when no mask was given).", id="padded_mask"),
            ],
        )

    @classmethod
    def execute(cls, reference: Tensor, scale: float, mask: Tensor | None = None) -> io.NodeOutput:
        image = pad_reference(image_to_bchw(reference), scale)
        m = pad_width(mask if mask.ndim == 3 else mask[None], scale, 0.0) if mask is not None else \
            image.new_zeros(image.shape[0], *image.shape[-2:])
        return io.NodeOutput(bchw_to_image(image), m.float())


class CropToSketch(io.ComfyNode):
    """Crops a result to the area the sketch covered before it was fitted and padded."""

    HELP = cleandoc("""
        The official app's 'Crop result'. **Sketch Preprocess** fits the line art into the output size and pads the
        rest; connect the original line art (before Sketch Preprocess) as `sketch`, so that its area can be found.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionCropToSketch", display_name="Crop To Sketch", category=CATEGORY,
            description=(
                "Crops the decoded result back to the line art's own area, removing the padding Sketch Preprocess "
                "added (same aspect ratio as the original line art)."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The decoded result."),
                io.Image.Input("sketch", tooltip="The original line art (before Sketch Preprocess)."),
            ],
            outputs=[output(io.Image, "image", "The result without the padding.", id="cropped")],
        )

    @classmethod
    def execute(cls, image: Tensor, sketch: Tensor) -> io.NodeOutput:
        x = image_to_bchw(image)
        hw = (int(sketch.shape[-3]), int(sketch.shape[-2]))
        return io.NodeOutput(bchw_to_image(crop_to_box(x, content_box(hw, (int(x.shape[-2]), int(x.shape[-1]))))))


class RemoveBackground(io.ComfyNode):
    """Whitens the result where a foreground mask is below the threshold."""

    HELP = cleandoc("""
        The official app's 'Remove background in result'; the threshold is its reference-mask threshold (default
        0.5). Pixels where the mask is at least the threshold are kept. Any MASK works (e.g. **Sketch Mask** of the
        line art, **SAM Mask** of the result); it is resized to the image.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionRemoveBackground", display_name="Remove Background", category=CATEGORY,
            description=(
                "Paints the result white wherever the mask is below the threshold (default 0.5) and keeps the rest. "
                "Any MASK works, e.g. Sketch Mask of the line art; it is resized to the image."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The result image."),
                io.Mask.Input("mask", tooltip="Foreground mask (1 = keep)."),
                unit_input("threshold", 0.5, "Pixels with mask >= threshold are kept."),
            ],
            outputs=[output(io.Image, "image", "The result on a white background.", id="without_background")],
        )

    @classmethod
    def execute(cls, image: Tensor, mask: Tensor, threshold: float) -> io.NodeOutput:
        m = mask if mask.ndim == 3 else mask[None]
        return io.NodeOutput(bchw_to_image(remove_background(image_to_bchw(image), m, threshold)))


__all__ = ["AdvancedOptions", "AttentionInjection", "CropToSketch", "GuidanceWindow", "ReferencePad",
           "RemoveBackground", "XLLevelRule"]
