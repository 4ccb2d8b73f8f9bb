"""Native bridge nodes that start a graph: the checkpoint as a native MODEL + VAE, the reference as CONDITIONING.

The U-Net of a ColorizeDiffusion checkpoint is an SD2.1 U-Net (thesis §5.3.1) whose keys are the official
``model.diffusion_model.*`` names, so it becomes ComfyUI's own SD2.x model (eps for v1 / v1.5, v for v2, read
from the keys) and works with KSampler, custom samplers, LoRA loaders, model merging, previews and model
management; the colorizer's own modules travel beside it (:mod:`.model`).
"""
from __future__ import annotations

from inspect import cleandoc

from colorize.device import PRECISIONS
from colorize.errors import InputError
from colorize.families import get_family
from colorize.native.build import read_native_checkpoint

from ..host import offload_device
from ..loaders import PARAMETERIZATION_CHOICES, SUPPORTED_VERSIONS, default_file
from ..models import CHECKPOINT_FOLDER, list_files, resolve_file
from ..schema import io, output, ui
from ..sockets import ReferenceSocket, ReferenceTokens
from .model import COLORIZE_NATIVE, NativeParts, host_dtype, native_model, native_vae, reference_conditioning

NativeSocket = io.Custom(COLORIZE_NATIVE)  # the colorizer's own parts beside the native MODEL


class NativeLoader(io.ComfyNode):
    """models/colorizediffusion file → MODEL, VAE, COLORIZE_NATIVE."""

    HELP = cleandoc("""
        - **MODEL**: the U-Net as ComfyUI's own SD2.x model, eps-prediction for v1 / v1.5 and v-prediction for v2,
          detected from the file's keys; for ColorizeDiffusion XL an SDXL-shaped model whose adm input (the
          output size and the aesthetic score 7.0) the bridge supplies. KSampler, SamplerCustomAdvanced, LoRA
          loaders and model-merge nodes work on it. XL v2 runs its plain path here: its background separation
          needs **Colorize Sampler**.
        - **colorizer**: the colorizer's own parts (sketch encoder, v1.5/v2 split LoRA, v2 warp and style modules,
          background encoders) for the Native patch nodes (**Native Sketch**, **Native Reference Strength**,
          **Native Enhance**), which must be applied for colorization (thesis §5.3).
        - A listed file that is missing is downloaded when the node first runs. Non-commercial weights
          (CC-BY-NC-SA-4.0).
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionNativeLoader", display_name="Native Loader", category="ColorizeDiffusion/native",
            description=(
                "Loads a ColorizeDiffusion checkpoint as a core SD2.x MODEL and VAE (for KSampler, LoRA and merge "
                "nodes), plus the colorizer's own parts. The MODEL colorizes only once Native Sketch has patched it."
            ),
            inputs=[
                io.Combo.Input("ckpt_name", options=list_files(CHECKPOINT_FOLDER, SUPPORTED_VERSIONS),
                               default=default_file("mult-eps-ft"),
                               tooltip="Checkpoint in models/colorizediffusion (mult-eps-ft = v1, switch-eps = v1.5, "
                                       "v2-full = v2, sdxl* / xlv2* = XL); a missing listed file is downloaded when "
                                       "the node first runs."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                               tooltip="U-Net precision. auto = ComfyUI's choice for the device (fp16 on most GPUs, "
                                       "fp32 on CPU); the colorizer's modules follow it."),
                io.Combo.Input("parameterization", options=list(PARAMETERIZATION_CHOICES), default="auto",
                               optional=True,
                               tooltip="Prediction type. auto = what the file says, else its family's: XL files do "
                                       "not record it, so the official rule decides (eps when the file name "
                                       "contains 'eps', else v). eps / v override it."),
            ],
            outputs=[
                output(io.Model, "model",
                       "The U-Net as a native SD2.x MODEL: patch it with Native Sketch (and Native Enhance / Reference "
                       "Strength), then sample with KSampler or SamplerCustomAdvanced."),
                output(io.Vae, "vae", "The checkpoint's VAE (core VAE Decode / Encode)."),
                output(NativeSocket, "colorizer", "The colorizer's own modules, for the Native patch nodes."),
                output(io.String, "info", "File, detected version, prediction type and precision."),
            ],
        )

    @classmethod
    def execute(cls, ckpt_name: str, precision: str, parameterization: str = "auto") -> io.NodeOutput:
        if parameterization not in PARAMETERIZATION_CHOICES:
            raise InputError(f"parameterization must be one of {', '.join(PARAMETERIZATION_CHOICES)}, "
                             f"got {parameterization!r}")
        path = resolve_file(CHECKPOINT_FOLDER, ckpt_name)
        ck = read_native_checkpoint(path, None if parameterization == "auto" else parameterization)
        model = native_model(ck, precision)
        vae = native_vae(ck)
        dtype = host_dtype(model)
        ck.extras.to(offload_device("unet"), dtype)
        get_family(ck.config.version).cast_extras(ck.encoders, offload_device("unet"), dtype)
        parts = NativeParts(ckpt_name, path, ck.config, ck.extras, ck.encoders, dtype)
        info = parts.describe()
        return io.NodeOutput(model, vae, parts, info, ui=ui.PreviewText(info))


class NativeConditioning(io.ComfyNode):
    """COLORIZE_REFERENCE → positive / negative CONDITIONING."""

    HELP = cleandoc("""
        Positive = the reference's 256 CLIP ViT-H/14 tokens (from **Reference Embed** or a **Text Edit**);
        negative = an empty (all-zero) reference, the official unconditional input of reference CFG. **Native
        Guider** adds sketch CFG on top of reference CFG.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionNativeConditioning", display_name="Native Conditioning",
            category="ColorizeDiffusion/native", description=(
                "Turns reference tokens into positive/negative conditioning for KSampler (its cfg is the reference "
                "guidance scale) or Native Guider. For v1.5/v2 background or style enhance use Native Enhance instead."
            ),
            inputs=[ReferenceSocket.Input("reference",
                                          tooltip="Reference tokens from Reference Embed (or a Text Edit).")],
            outputs=[
                output(io.Conditioning, "positive", "The reference tokens as conditioning."),
                output(io.Conditioning, "negative", "The empty reference (zero context)."),
            ],
        )

    @classmethod
    def execute(cls, reference: ReferenceTokens) -> io.NodeOutput:
        return io.NodeOutput(*reference_conditioning(reference.tokens))


__all__ = ["NativeConditioning", "NativeLoader", "NativeSocket"]
