"""Reference image → CLIP patch tokens: the embedding node and the two reference-encoder adapters.

Thesis §5.3: the colorizer's cross-attention reads the 256 patch tokens of the reference after OpenCLIP
ViT-H/14's ``ln_post`` and projection. Either the pack's own OpenCLIP loader or ComfyUI's ``CLIP_VISION``
model (the file IPAdapter users have) provides them; both use the core's squash-resize preprocessing.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from colorize.models.clip import ReferenceEncoder as OpenClipEncoder
from colorize.pipeline import reference_tokens
from colorize.preprocess import InputError, prepare_reference

from .host import ManagedModule, intermediate_device, model_management
from .types import COLORIZE_REFERENCE, COLORIZE_REFERENCE_ENCODER, ReferenceTokens, image_to_bchw


class OpenClipReference:
    """The pack's OpenCLIP reference encoder, placed by ComfyUI's model management."""

    def __init__(self, encoder: OpenClipEncoder) -> None:
        self.managed = ManagedModule(encoder, "clip")
        self.embed_dim = int(encoder.cfg.embed_dim)

    def tokens(self, reference: Tensor) -> Tensor:
        return reference_tokens(self.managed.ready(), reference)


class ClipVisionReference:
    """Adapter from ComfyUI's ``CLIP_VISION`` (``comfy.clip_vision.ClipVisionModel``) to reference tokens.

    ComfyUI's own ``encode_image`` returns the hidden states *before* ``post_layernorm`` and only the CLS
    projection, so the tokens are computed here as ``visual_projection(post_layernorm(last_hidden_state))``
    over all 257 tokens; the image is squash-resized exactly as the core does (no centre crop, no 8-bit
    quantisation).
    """

    preprocess = OpenClipEncoder.preprocess  # squash-resize to image_size + CLIP normalisation ([-1,1] input)

    def __init__(self, clip_vision: Any) -> None:
        model = getattr(clip_vision, "model", None)
        proj = getattr(model, "visual_projection", None)
        if not isinstance(proj, nn.Linear) or not hasattr(getattr(model, "vision_model", None), "post_layernorm"):
            raise InputError(
                "this CLIP_VISION model has no CLIP vision projection; ColorizeDiffusion needs the OpenCLIP "
                "ViT-H/14 laion2b_s32b_b79k vision model (CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors)"
            )
        self.clip_vision = clip_vision
        self.image_size = int(getattr(clip_vision, "image_size", 224))
        self.embed_dim = int(proj.out_features)

    def encode_image(self, image: Tensor, output: str = "full") -> Tensor:
        """(B, 3, H, W) in [-1, 1] → (B, 257, C) projected tokens (``output`` must be "full")."""
        if output != "full":
            raise ValueError("only 'full' token output is supported for CLIP_VISION models")
        mm = model_management()
        if mm is not None:
            mm.load_model_gpu(self.clip_vision.patcher)
        device = getattr(self.clip_vision, "load_device", None) or next(self.clip_vision.model.parameters()).device
        pixels = self.preprocess(image.to(device)).float()
        model = self.clip_vision.model
        hidden = model(pixel_values=pixels, intermediate_output=-2)[0]  # last layer, before post_layernorm
        return model.visual_projection(model.vision_model.post_layernorm(hidden))

    def tokens(self, reference: Tensor) -> Tensor:
        return reference_tokens(self, reference)


class ReferenceEmbed:
    """IMAGE → COLORIZE_REFERENCE."""

    DESCRIPTION = (
        "Encodes the colour reference image into the 256 CLIP ViT-H/14 patch tokens that the colorizer's "
        "cross-attention reads (thesis §5.3). The image is squashed to 224×224 (no crop): use a reference "
        "whose subject fills the frame. A batch of references gives a batch of results."
    )
    CATEGORY = "ColorizeDiffusion/reference"
    FUNCTION = "embed"
    RETURN_TYPES = (COLORIZE_REFERENCE,)
    RETURN_NAMES = ("reference",)
    OUTPUT_TOOLTIPS = ("Reference tokens (B, 256, 1024) for the ColorizeDiffusion Sampler.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "encoder": (COLORIZE_REFERENCE_ENCODER, {
                "tooltip": "The OpenCLIP ViT-H/14 reference encoder (from a ColorizeDiffusion reference encoder loader)."}),
            "image": ("IMAGE", {"tooltip": "The colour reference image (any size; squashed to the encoder's 224×224)."}),
        }}

    def embed(self, encoder: Any, image: Tensor) -> tuple[ReferenceTokens]:
        tokens = encoder.tokens(prepare_reference(image_to_bchw(image)))
        return (ReferenceTokens(tokens.float().to(intermediate_device())),)


__all__ = ["ClipVisionReference", "OpenClipReference", "ReferenceEmbed"]
