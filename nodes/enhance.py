"""v1.5/v2 separation nodes: Background Encode (BG/FG enhance) and Style Encode (v2), which feed the sampler.

Thesis §5.5–5.6. Each node adds its part to a COLORIZE_ENHANCE request (the settings, the reference image and
encoder, the masks); the sampler's optional ``enhance`` input turns it into the generation's context and U-Net
inputs with :func:`colorize.generate.separation_inputs`, once per generation at the output size, so wiring
(or bypassing) a node switches its enhancement on (or off). The v2 VAE latents are posterior samples seeded
from the sampler's seed, exactly as :meth:`colorize.pipeline.Colorizer.colorize` draws them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from inspect import cleandoc
from typing import Any

import torch
from torch import Tensor

from colorize.errors import InputError
from colorize.families import UNetInputs
from colorize.generate import separation_inputs
from colorize.models.vae import SeededLatentEncoder
from colorize.preprocess import check_image, prepare_reference, to_signed
from colorize.settings import DEFAULT_REFERENCE_THRESHOLD, DEFAULT_SKETCH_THRESHOLD, MAX_SEED, EnhanceSettings

from .host import ready_all
from .schema import io, output
from .sockets import ColorizeModel, EnhanceSocket, ReferenceEncoderSocket, image_to_bchw
from .widgets import unit_input


@dataclass(frozen=True)
class EnhanceRequest:
    """What the sampler needs for v1.5/v2 separation: settings, the reference (prepared, [-1, 1]) and the
    encoder that embeds it (for background-only references and separate backgrounds), and the masks."""

    settings: EnhanceSettings
    encoder: Any
    reference: Tensor
    sketch_mask: Tensor | None = None
    reference_mask: Tensor | None = None
    background: Tensor | None = None
    background_mask: Tensor | None = None

    def unet_inputs(self, model: ColorizeModel, tokens: Tensor, sketch: Tensor, seed: int,
                    device: torch.device) -> UNetInputs:
        """The U-Net inputs of one generation on ``device`` (the library's separation inputs)."""
        extras = dict(zip(model.extras, ready_all(*model.extras.values())))
        sketch_hw = tuple(self.sketch_mask.shape[-2:]) if self.sketch_mask is not None else tuple(sketch.shape[-2:])
        return separation_inputs(
            model.config, extras, self.settings, tokens=tokens.to(device), reference=self.reference.to(device),
            sketch=sketch.to(device), sketch_hw=sketch_hw,  # type: ignore[arg-type]
            encode_tokens=lambda image: self.encoder.tokens(image).float().to(device),
            encode_latent=SeededLatentEncoder(model.vae.ready(), (int(seed) + 2) % (MAX_SEED + 1)),
            sketch_mask=self.sketch_mask, reference_mask=self.reference_mask,
            background=self.background.to(device) if self.background is not None else None,
            background_mask=self.background_mask)


def add_to(previous: EnhanceRequest | None, encoder: Any, reference: Tensor, settings: dict[str, Any],
           **masks: Tensor | None) -> EnhanceRequest:
    """``previous`` (or a new request) with these settings turned on and these masks/images set."""
    if previous is None:
        previous = EnhanceRequest(EnhanceSettings(), encoder, reference)
    elif previous.reference.shape != reference.shape or not torch.equal(previous.reference, reference.to(previous.reference)):
        raise InputError("the chained Background Encode / Style Encode nodes were given different reference "
                         "images: connect the same reference image to both")
    given = {k: v for k, v in masks.items() if v is not None}
    return replace(previous, settings=replace(previous.settings, **settings), encoder=encoder, **given)


def reference_inputs() -> list[Any]:
    return [
        ReferenceEncoderSocket.Input("encoder", tooltip="The reference encoder that embedded the reference (it also "
                                                        "embeds the background-only reference and a separate "
                                                        "background)."),
        io.Image.Input("reference", tooltip="The colour reference image: the same one given to Reference Embed."),
    ]


def enhance_input() -> Any:
    """The optional ``enhance`` input that chains Background Encode and Style Encode."""
    return EnhanceSocket.Input("enhance", optional=True, tooltip="Optional: the output of another Background/Style "
                                                                 "Encode node, to combine both enhancements.")


def enhance_output(tooltip: str) -> Any:
    """The ``enhance`` output (shown as "enhance"; no id, as the chaining input already has that one)."""
    return output(EnhanceSocket, "enhance", tooltip, id="enhance_request")


def strength(name: str, default: float, tooltip: str) -> Any:
    """A strength in [0, 2] with 0.01 steps."""
    return io.Float.Input(name, default=default, min=0.0, max=2.0, step=0.01, tooltip=tooltip)


class BackgroundEncode(io.ComfyNode):
    """Reference (+ masks / background) → COLORIZE_ENHANCE with BG (and/or FG) enhance on."""

    HELP = cleandoc("""
        Foreground/background separation (thesis §5.5–5.6) of v1.5 (switch-eps) and v2 (v2-full):

        - **FG enhance**: the sketch mask splits the cross-attention so that reference features colour only the
          figure.
        - **BG enhance**: the background is painted from the background-only reference or a separate background
          image; v2 encodes it with its background encoder, v1.5 with its background transformer.
        - Connect the output to the `enhance` input of **Colorize Sampler** (or **Native Enhance**); the encoding
          runs there, once per generation, at the output size.
        - Without a sketch mask, one is computed from the line art. Without a reference mask (and no background
          image), the whole reference counts as foreground: plain background, with a warning.
        - Chain it with **Style Encode (v2)** (either order) for both enhancements.
        - **XL** (sdxl, xlv2): background enhance only (FG enhance, style, background factor and
          remove-background-foreground are v1.5/v2 controls; the sampler names them). Use the XL reference encoder
          here; xlv2 also encodes the background image with its ReferenceNet.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionBackgroundEncode", display_name="Background Encode",
            category="ColorizeDiffusion/enhance", description=(
                "v1.5/v2/XL only: separates figure and background, so the reference colours only the figure and "
                "the background comes from the reference's background or a separate image. Connect it to the "
                "sampler's 'enhance' input."
            ),
            inputs=[
                *reference_inputs(),
                io.Boolean.Input("background_enhance", default=True,
                                 tooltip="BG enhance: take the background from the background-only reference (or the "
                                         "background image)."),
                io.Boolean.Input("foreground_enhance", default=False,
                                 tooltip="FG enhance: the foreground LoRA strengthens reference colours on the "
                                         "figure."),
                strength("fg_strength", 1.0, "Foreground strength: scales the reference attention inside the mask."),
                strength("bg_strength", 1.0, "Background strength: scales the background attention outside the mask."),
                unit_input("merge_scale", 0.0, "Merging scale: blends the background branch into the foreground "
                                               "(0 = hard split; v2 also merges style vectors with a background "
                                               "image)."),
                strength("background_factor", 1.0, "v2 Background factor: multiplies the background-encoder "
                                                   "features (leave 1 for v1.5)."),
                unit_input("sketch_threshold", DEFAULT_SKETCH_THRESHOLD, "Sketch-mask threshold: latent mask values "
                                                                         "above it count as foreground."),
                unit_input("reference_threshold", DEFAULT_REFERENCE_THRESHOLD, "Reference-mask threshold: reference "
                           "pixels with mask below it form the background-only reference."),
                io.Boolean.Input("remove_background_foreground", default=False,
                                 tooltip="Whiten the foreground of the separate background image (needs "
                                         "background_mask)."),
                enhance_input(),
                io.Mask.Input("sketch_mask", optional=True,
                              tooltip="Foreground mask of the line art (Sketch Mask or any MASK, in the sketch's "
                                      "frame). Default: computed from the lines."),
                io.Mask.Input("reference_mask", optional=True,
                              tooltip="Foreground mask of the reference (SAM Mask, Sketch Mask on the reference, or "
                                      "any MASK)."),
                io.Image.Input("background", optional=True,
                               tooltip="Optional separate background image (replaces the background-only "
                                       "reference)."),
                io.Mask.Input("background_mask", optional=True,
                              tooltip="Foreground mask of the background image (for remove_background_foreground)."),
            ],
            outputs=[enhance_output("Separation request for the ColorizeDiffusion Sampler's 'enhance' input (or a "
                                    "Style Encode).")],
        )

    @classmethod
    def execute(cls, encoder: Any, reference: Tensor, background_enhance: bool, foreground_enhance: bool,
                fg_strength: float, bg_strength: float, merge_scale: float, background_factor: float,
                sketch_threshold: float, reference_threshold: float, remove_background_foreground: bool,
                enhance: EnhanceRequest | None = None, sketch_mask: Tensor | None = None,
                reference_mask: Tensor | None = None, background: Tensor | None = None,
                background_mask: Tensor | None = None) -> io.NodeOutput:
        if not (background_enhance or foreground_enhance):
            raise InputError("Background Encode with both BG and FG enhance off does nothing: switch one on, or "
                             "bypass the node")
        settings = {"background_enhance": bool(background_enhance), "foreground_enhance": bool(foreground_enhance),
                    "fg_scale": fg_strength, "bg_scale": bg_strength, "merge_scale": merge_scale,
                    "background_factor": background_factor, "sketch_threshold": sketch_threshold,
                    "reference_threshold": reference_threshold,
                    "remove_background_foreground": bool(remove_background_foreground)}
        bg = to_signed(check_image(image_to_bchw(background), "background")) if background is not None else None
        request = add_to(enhance, encoder, prepare_reference(image_to_bchw(reference)), settings,
                         sketch_mask=sketch_mask, reference_mask=reference_mask, background=bg,
                         background_mask=background_mask)
        return io.NodeOutput(request)


class StyleEncode(io.ComfyNode):
    """Reference → COLORIZE_ENHANCE with v2 style enhance on."""

    HELP = cleandoc("""
        Style enhance of v2 (v2-full, thesis §5.6): the style encoder reads the reference's VAE latent and CLIP
        tokens once per generation and modulates the U-Net decoder, carrying the reference's rendering style.

        Chain it with **Background Encode** (either order) for both enhancements; with a separate background image
        there, the style of both images is merged by its `merge_scale`.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionStyleEncode", display_name="Style Encode (v2)",
            category="ColorizeDiffusion/enhance", description=(
                "v2 only: carries the reference's rendering style into the result through the style encoder. No mask "
                "needed. Connect it to the sampler's 'enhance' input, alone or chained with Background Encode."
            ),
            inputs=[*reference_inputs(), enhance_input()],
            outputs=[enhance_output("Separation request for the ColorizeDiffusion Sampler's 'enhance' input (or a "
                                    "Background Encode).")],
        )

    @classmethod
    def execute(cls, encoder: Any, reference: Tensor, enhance: EnhanceRequest | None = None) -> io.NodeOutput:
        return io.NodeOutput(add_to(enhance, encoder, prepare_reference(image_to_bchw(reference)),
                                    {"style_enhance": True}))


__all__ = ["BackgroundEncode", "EnhanceRequest", "StyleEncode", "add_to"]
