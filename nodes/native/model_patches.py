"""The native bridge's MODEL patch nodes (each clones the MODEL, then patches the clone).

* Native Sketch — sketch hints at input blocks 0, 3, 6, 9, 11 (thesis Eq. 5.1) + an empty LATENT of the
  sketch's size;
* Native Reference Strength — the official per-level reference strength (thesis §5.2, Fig. 5.1);
* Native Enhance — v1.5/v2 foreground/background separation (split cross-attention with the fg/bg LoRA and
  the masks, Eq. 5.4; v2 skip warping and style modulation, §5.6) and its positive/negative conditioning.
"""
from __future__ import annotations

from inspect import cleandoc
from typing import Any

import torch
from torch import Tensor

from colorize.errors import InputError
from colorize.families import UNetInputs, get_family
from colorize.generate import separation_inputs
from colorize.models.vae import SeededLatentEncoder
from colorize.preprocess import check_image, fit_and_pad, to_signed
from colorize.settings import MAX_SEED, GenerationSettings

from ..enhance import EnhanceRequest
from ..host import intermediate_device, load_device, ready_all
from ..schema import io, output
from ..sockets import EnhanceSocket, ReferenceSocket, ReferenceTokens, image_to_bchw
from ..widgets import level_inputs, level_strengths, seed_input
from .decoder import WarpPatch, set_v2
from .loader import NativeSocket
from .model import NativeParts, reference_conditioning
from .patches import HintPatch, SplitState, attach, attention_patch, set_attention, set_patch


def model_input() -> Any:
    return io.Model.Input("model",
                          tooltip="The native MODEL from the ColorizeDiffusion Native Loader (or a patched one).")


def parts_input() -> Any:
    return NativeSocket.Input("colorizer",
                              tooltip="The 'colorizer' output of the same ColorizeDiffusion Native Loader.")


def sketch_input() -> Any:
    return io.Image.Input("sketch", tooltip="Prepared sketch (white lines on black) from ColorizeDiffusion Sketch "
                                            "Preprocess.")


def prepared_sketch(image: Tensor, parts: NativeParts) -> Tensor:
    """A prepared sketch IMAGE → (B, 3, H, W) in [-1, 1] at the size its family runs (SD2.1: fitted into
    multiples of 64, padding = no lines; XL: sides must be multiples of 32, a named error otherwise)."""
    x = to_signed(check_image(image_to_bchw(image), "sketch"))
    h, w = (int(v) for v in x.shape[-2:])
    size = get_family(parts.config.version).output_size((h, w), w, h)
    return x if size == (h, w) else fit_and_pad(x, size, fill=-1.0)


class LazyLatentEncoder:
    """One seeded posterior-sample encoder per generation (as the Sampler), the VAE read only if v2 needs it."""

    def __init__(self, parts: NativeParts, seed: int) -> None:
        self.parts, self.seed = parts, seed
        self.encoder: SeededLatentEncoder | None = None

    def __call__(self, image: Tensor) -> Tensor:
        if self.encoder is None:
            self.encoder = SeededLatentEncoder(self.parts.vae(), self.seed)
        return self.encoder(image)


def check_parts(model: Any, parts: NativeParts) -> None:
    """A clear error when the colorizer's modules and the MODEL come from different layouts."""
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    ch = getattr(unet, "model_channels", parts.config.unet.model_channels)
    if ch != parts.config.unet.model_channels:
        raise InputError(f"the 'colorizer' input ({parts.name}) does not belong to this MODEL: connect both "
                         "outputs of the same ColorizeDiffusion Native Loader")


class NativeSketch(io.ComfyNode):
    """MODEL + prepared sketch → MODEL with sketch hints, and an empty LATENT of the sketch's size."""

    HELP = cleandoc("""
        The checkpoint's sketch encoder turns the prepared line art (from **Sketch Preprocess**) into five hints
        added after U-Net input blocks 0, 3, 6, 9, 11 (thesis Eq. 5.1), on ComfyUI's device when sampling starts.
        The blank sketch's hints are used for the rows **Native Guider** marks sketch-unconditional (sketch CFG).

        A latent of another size re-fits the sketch. The MODEL is cloned: the input MODEL is unchanged.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionNativeSketch", display_name="Native Sketch", category="ColorizeDiffusion/native",
            description=(
                "Patches a native MODEL with the sketch hints and outputs an empty latent of the sketch's size: "
                "connect that latent to the sampler. Needed for colorization on the native path."
            ),
            inputs=[
                model_input(), parts_input(), sketch_input(),
                io.Float.Input("strength", default=1.0, min=0.0, max=3.0, step=0.05,
                               tooltip="Sketch strength: scales the hints (official range 0–3)."),
            ],
            outputs=[
                output(io.Model, "model", "The patched MODEL (a clone; the input MODEL is unchanged).",
                       id="patched_model"),
                output(io.Latent, "latent", "An empty latent of the sketch's size and batch."),
            ],
        )

    @classmethod
    def execute(cls, model: Any, colorizer: NativeParts, sketch: Tensor, strength: float) -> io.NodeOutput:
        check_parts(model, colorizer)
        x = prepared_sketch(sketch, colorizer)
        m = model.clone()
        attach(m, colorizer)
        set_patch(m, "input_block_patch", HintPatch(colorizer, x, strength), HintPatch)
        f = colorizer.config.vae.downsample_factor
        latent = torch.zeros(x.shape[0], colorizer.config.vae.z_channels, x.shape[-2] // f, x.shape[-1] // f)
        return io.NodeOutput(m, {"samples": latent.to(intermediate_device())})


class NativeReferenceStrength(io.ComfyNode):
    """MODEL → MODEL with the reference strength per level (scales the cross-attention result)."""

    HELP = cleandoc("""
        The cross-attention result softmax(QKᵀ/√d)·V is scaled per block (thesis §5.2), with the official app's
        level sliders. The MODEL is cloned: the input MODEL is unchanged.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionNativeReferenceStrength", display_name="Native Reference Strength",
            category="ColorizeDiffusion/native", description=(
                "Sets how strongly a native MODEL reads the reference, per block level (encoder, middle, low; each × "
                "reference_strength), as on Colorize Sampler. Combines with Native Enhance in either order."
            ),
            inputs=[
                model_input(), parts_input(),
                io.Float.Input("reference_strength", default=1.0, min=0.0, max=2.0, step=0.01,
                               tooltip="Scales how much the cross-attention reads the reference."),
                *level_inputs(),
            ],
            outputs=[output(io.Model, "model", "The patched MODEL (a clone).", id="patched_model")],
        )

    @classmethod
    def execute(cls, model: Any, colorizer: NativeParts, reference_strength: float, encoder_strength: float,
                middle_strength: float, low_strength: float) -> io.NodeOutput:
        check_parts(model, colorizer)
        family = get_family(colorizer.config.version)
        released = family.attention_block_count
        count = sum(b.depth for b in colorizer.blocks)
        if count != released:
            raise InputError(f"per-level strengths need the released layout of {released} transformer blocks; "
                             f"{colorizer.name} has {count}")
        levels = GenerationSettings(reference_strength=reference_strength,
                                    level_strengths=level_strengths(encoder_strength, middle_strength, low_strength))
        scales = family.reference_scales(colorizer.config.unet, levels)  # XL sdxl: the official encoder-only rule
        m = model.clone()
        set_attention(m, attention_patch(m, colorizer).with_(scales=tuple(scales)))
        return io.NodeOutput(m)


class NativeEnhance(io.ComfyNode):
    """MODEL + reference + COLORIZE_ENHANCE → MODEL with v1.5/v2 separation, and its CONDITIONING."""

    HELP = cleandoc("""
        Foreground/background separation (thesis §5.5–5.6): from **Background Encode** / **Style Encode (v2)** it
        builds the [foreground | background] reference context (positive; negative = its empty version) and
        patches the MODEL with split cross-attention (fg/bg LoRA, sketch mask), and for v2 with the background
        warping and style modulation of the decoder.

        The v2 latents of the reference/background are posterior samples seeded by `seed`: give it the sampler's
        seed to reproduce **Colorize Sampler** exactly. A later Native Enhance replaces an earlier one.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionNativeEnhance", display_name="Native Enhance",
            category="ColorizeDiffusion/native", description=(
                "v1.5/v2 figure/background separation for a native MODEL: patches it from Background Encode / Style "
                "Encode and gives its own positive/negative. Set seed to the sampler's seed to match Colorize Sampler."
            ),
            inputs=[
                model_input(), parts_input(),
                ReferenceSocket.Input("reference", tooltip="Reference tokens from Reference Embed."),
                sketch_input(),
                EnhanceSocket.Input("enhance", tooltip="Background Encode and/or Style Encode (v2) output."),
                seed_input("Seed of the v2 VAE posterior samples (use the sampler's seed)."),
            ],
            outputs=[
                output(io.Model, "model", "The patched MODEL (a clone).", id="patched_model"),
                output(io.Conditioning, "positive", "The separation context."),
                output(io.Conditioning, "negative", "Its empty (zero) version."),
            ],
        )

    @classmethod
    def execute(cls, model: Any, colorizer: NativeParts, reference: ReferenceTokens, sketch: Tensor,
                enhance: EnhanceRequest, seed: int) -> io.NodeOutput:
        check_parts(model, colorizer)
        inputs = cls.inputs(colorizer, reference.tokens, prepared_sketch(sketch, colorizer), enhance, seed)
        if inputs.self_attention is not None:
            raise InputError(f"{colorizer.name}: XL v2 background separation reads its ReferenceNet bank through the "
                             "layers' own projections, which the native MODEL does not expose: use Colorize Sampler "
                             "for it (the native path runs XL v2 without separation)")
        m = model.clone()
        attach(m, colorizer)
        processor, kw = inputs.cross_attention, inputs.kwargs  # (an earlier Native Enhance is replaced)
        state = SplitState(processor, int(inputs.context.shape[1])) if processor is not None else None
        set_attention(m, attention_patch(m, colorizer).with_(split=state))
        warp = WarpPatch(colorizer, kw["hs_bg"], kw["warp_mask"], kw["warp_threshold"]) if kw.get("hs_bg") else None
        set_v2(m, colorizer, warp, kw.get("style"))
        positive, negative = reference_conditioning(inputs.context.to(intermediate_device()))
        return io.NodeOutput(m, positive, negative)

    @staticmethod
    def inputs(parts: NativeParts, tokens: Tensor, sketch: Tensor, request: EnhanceRequest, seed: int) -> UNetInputs:
        """The family's U-Net inputs exactly as the ColorizeDiffusion Sampler computes them."""
        device = load_device("unet")
        encoders = dict(zip(parts.encoders, ready_all(*parts.encoders.values())))
        sketch_hw = tuple(request.sketch_mask.shape[-2:]) if request.sketch_mask is not None else tuple(sketch.shape[-2:])
        encode_latent = LazyLatentEncoder(parts, (int(seed) + 2) % (MAX_SEED + 1))
        return separation_inputs(
            parts.config, encoders, request.settings, tokens=tokens.to(device), reference=request.reference.to(device),
            sketch=sketch.to(device), sketch_hw=sketch_hw,  # type: ignore[arg-type]
            encode_tokens=lambda image: request.encoder.tokens(image).float().to(device),
            encode_latent=encode_latent, sketch_mask=request.sketch_mask, reference_mask=request.reference_mask,
            background=request.background.to(device) if request.background is not None else None,
            background_mask=request.background_mask)


__all__ = ["NativeEnhance", "NativeReferenceStrength", "NativeSketch", "model_input", "parts_input", "prepared_sketch",
           "sketch_input"]
