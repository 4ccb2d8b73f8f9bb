"""Reference image → CLIP tokens: the embedding node and the two reference-encoder adapters.

Thesis §5.3: the colorizer's cross-attention reads the 256 patch tokens of the reference after OpenCLIP
ViT-H/14's ``ln_post`` and projection. Either the pack's own OpenCLIP loader or ComfyUI's ``CLIP_VISION``
model (the file IPAdapter users have) provides them; both use the core's squash-resize preprocessing.
Reference Embed keeps the CLS token and the encoder's text path too, so that text edits (thesis §5.8,
:mod:`nodes.manipulation`) act on all 257 tokens before the sampler drops CLS.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from inspect import cleandoc
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from colorize.errors import InputError
from colorize.families import get_family
from colorize.generate import module_device
from colorize.manipulation import TextEncoder
from colorize.models.clip import ReferenceEncoder as OpenClipEncoder
from colorize.preprocess import check_image, prepare_reference
from colorize.weights import DEFAULT_CLIP, manifest_entry

from .host import ManagedModule, intermediate_device, model_management, ready_all
from .schema import io, output
from .sockets import ColorizeModel, ReferenceEncoderSocket, ReferenceSocket, ReferenceTokens, image_to_bchw


def no_text_tower(what: str) -> str:
    """The error for text edits on an encoder without the CLIP text tower, naming the fix."""
    name = manifest_entry(DEFAULT_CLIP)["filename"]
    return (f"{what} has no CLIP text tower, which text edits and the control heatmap need to encode their "
            f"prompts. Fix: load {name} (the open_clip file: vision + text tower) with the ColorizeDiffusion "
            "Reference Encoder Loader and embed the reference with that encoder.")


@dataclass(frozen=True)
class EncodedReference(ReferenceTokens):
    """Reference tokens as Reference Embed makes them: the 256 patch tokens (``tokens``, what the sampler
    reads), the CLS token (B, 1, C) and the text encoder of the CLIP model that made them.

    Text edits need the CLS token (it sets the edit strength, Eq. 5.12) and text directions in the same
    CLIP space, so both travel with the tokens: edit nodes take a reference and return one.
    """

    cls: Tensor
    encode_text: TextEncoder

    @property
    def full(self) -> Tensor:
        """All tokens (B, 1 + 256, C), CLS first (CLIP's "full" output)."""
        return torch.cat([self.cls, self.tokens], dim=1)

    def with_full(self, full: Tensor) -> EncodedReference:
        """The same reference with new (B, 1 + 256, C) tokens, CLS first."""
        return EncodedReference(full[:, 1:], full[:, :1], self.encode_text)


class OpenClipReference:
    """The pack's OpenCLIP reference encoder, placed by ComfyUI's model management.

    ``encoder`` is the vision tower. The text tower (used only by text edits; 354 M parameters, 1.4 GB in
    fp32 for ViT-H) is not kept beside it: ``load_text`` loads it on the first :meth:`encode_text` call,
    as a separately placed model; ``None`` means the file has none (vision-only clip_vision file).
    """

    def __init__(self, encoder: OpenClipEncoder, load_text: Callable[[], nn.Module] | None = None,
                 name: str = "this reference encoder") -> None:
        self.managed = ManagedModule(encoder, "clip")
        self.embed_dim = int(encoder.cfg.embed_dim)
        self.load_text, self.name = load_text, name
        self.text: ManagedModule | None = None

    def full_tokens(self, reference: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] → all (B, 1 + 256, C) tokens, CLS first."""
        module = self.managed.ready()
        image = check_image(reference, "reference", value_range=(-1.0, 1.0))
        return module.encode_image(image.to(module_device(module)), "full")

    def tokens(self, reference: Tensor) -> Tensor:
        return self.full_tokens(reference)[:, 1:]

    def encode_text(self, prompts: list[str]) -> Tensor:
        """Prompts → (n, 1, C) unit text directions (the text tower is loaded on first use)."""
        if self.load_text is None:
            raise InputError(no_text_tower(f"{self.name} (a vision-only CLIP file)"))
        if self.text is None:
            self.text = ManagedModule(self.load_text(), "clip")
        return self.text.ready().encode_text(list(prompts))


class ClipVisionReference:
    """Adapter from ComfyUI's ``CLIP_VISION`` (``comfy.clip_vision.ClipVisionModel``) to reference tokens.

    ComfyUI's own ``encode_image`` returns the hidden states *before* ``post_layernorm`` and only the CLS
    projection, so the tokens are computed here as ``visual_projection(post_layernorm(last_hidden_state))``
    over all 257 tokens; the image is squash-resized exactly as the core does (no centre crop, no 8-bit
    quantisation).
    """

    preprocess = OpenClipEncoder.preprocess  # squash-resize to image_size + CLIP normalisation ([-1,1] input)
    #: the CLIP vision model the colorizer needs (named in the error for a model without projection)
    wanted = "the OpenCLIP ViT-H/14 laion2b_s32b_b79k vision model (CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors)"

    def __init__(self, clip_vision: Any) -> None:
        model = getattr(clip_vision, "model", None)
        proj = getattr(model, "visual_projection", None)
        if not isinstance(proj, nn.Linear) or not hasattr(getattr(model, "vision_model", None), "post_layernorm"):
            raise InputError(f"this CLIP_VISION model has no CLIP vision projection; ColorizeDiffusion needs "
                             f"{self.wanted}")
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

    def full_tokens(self, reference: Tensor) -> Tensor:
        return self.encode_image(check_image(reference, "reference", value_range=(-1.0, 1.0)), "full")

    def tokens(self, reference: Tensor) -> Tensor:
        return self.full_tokens(reference)[:, 1:]

    def encode_text(self, prompts: list[str]) -> Tensor:
        raise InputError(no_text_tower("ComfyUI's CLIP_VISION model (vision tower only)"))


class ClipVisionBigG(ClipVisionReference):
    """ComfyUI's ``CLIP_VISION`` of CLIP ViT-bigG/14 (``clip_vision_g.safetensors``) as XL's CLIP tower: the same
    squash-resize (bicubic, align_corners, antialias, CLIP normalisation) and all 257 tokens after
    ``post_layernorm`` and the visual projection, which ClusterConcat reads with the tagger's grid."""

    wanted = "CLIP ViT-bigG/14 (clip_vision_g.safetensors) for ColorizeDiffusion XL"

    def __init__(self, clip_vision: Any) -> None:
        super().__init__(clip_vision)
        self.cfg = SimpleNamespace(projection_dim=self.embed_dim)  # what the ClusterConcat check reads

    def reference_tokens(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] → (B, 257, projection) tokens, CLS first."""
        return self.encode_image(image, "full")


class XLReference:
    """ColorizeDiffusion XL's reference encoder for one checkpoint: CLIP-bigG and the WD tagger (``encoder``, an
    :class:`colorize.families.xl.encoders.XLReferenceEncoder`) fused by that checkpoint's ClusterConcat
    (``model.extras["proj"]``) into the (B, 196, 2048) context the XL U-Net reads.

    The context has no CLS token (ClusterConcat keeps the tagger's 14×14 grid), so :meth:`embed` gives plain
    reference tokens and text edits are refused.
    """

    def __init__(self, encoder: nn.Module, model: ColorizeModel, name: str) -> None:
        self.managed = ManagedModule(encoder, "clip")
        self.proj = model.extras["proj"]
        self.family = get_family(model.config.version)
        self.embed_dim = int(model.config.unet.context_dim)
        self.model_name, self.name = model.name, name

    def tokens(self, reference: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] → the XL context (B, 196, C)."""
        image = check_image(reference, "reference", value_range=(-1.0, 1.0))
        encoder, proj = ready_all(self.managed, self.proj)
        return self.family.encode_reference(encoder, {"proj": proj}, image)

    full_tokens = tokens  # no CLS token: every token is context

    def embed(self, reference: Tensor) -> ReferenceTokens:
        """What Reference Embed outputs for XL: the context tokens, fp32, on the intermediate device."""
        return ReferenceTokens(self.tokens(reference).float().to(intermediate_device()))

    def encode_text(self, prompts: list[str]) -> Tensor:
        raise InputError(f"{self.family.label} has no text edits or control heatmap (its reference encoder, "
                         "CLIP-bigG + WD tagger, has no text tower): use an SD2.1 checkpoint (v1, v1.5, v2) for them")


class ReferenceEmbed(io.ComfyNode):
    """IMAGE → COLORIZE_REFERENCE."""

    HELP = cleandoc("""
        The colorizer's cross-attention reads the 256 CLIP ViT-H/14 patch tokens of the reference (thesis §5.3).
        The CLS token is kept as well, for text edits (**Text Edit**, **Control Heatmap**).

        The image is squashed to 224×224 (no crop), so a reference whose subject fills the frame works best. A
        batch of references gives a batch of results.

        **XL** (encoder from **XL Reference Encoder Loader**): the tokens are the checkpoint's ClusterConcat
        context, 196 tokens of width 2048 fused from CLIP ViT-bigG/14 and the WD v1.4 SwinV2 tagger (448×448).
        They have no CLS token: text edits do not apply to XL.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionReferenceEmbed", display_name="Reference Embed",
            category="ColorizeDiffusion/reference", description=(
                "Encodes the colour reference image into the CLIP tokens the colorizer reads. The image is squashed to "
                "224×224 without cropping: use a reference whose subject fills the frame."
            ),
            inputs=[
                ReferenceEncoderSocket.Input("encoder", tooltip="The reference encoder: OpenCLIP ViT-H/14 for v1, "
                                                                "v1.5 and v2 (Reference Encoder Loader or Encoder "
                                                                "from CLIP Vision); CLIP-bigG + WD tagger for XL (XL "
                                                                "Reference Encoder Loader)."),
                io.Image.Input("image", tooltip="The colour reference image (any size; squashed to the encoder's "
                                                "224×224)."),
            ],
            outputs=[output(ReferenceSocket, "reference",
                            "Reference tokens for the ColorizeDiffusion Sampler or a Text Edit: (B, 256, 1024) for "
                            "v1/v1.5/v2, (B, 196, 2048) for XL.")],
        )

    @classmethod
    def execute(cls, encoder: Any, image: Tensor) -> io.NodeOutput:
        embed = getattr(encoder, "embed", None)
        if embed is not None:  # an encoder whose tokens have no CLS (XL)
            return io.NodeOutput(embed(prepare_reference(image_to_bchw(image))))
        full = encoder.full_tokens(prepare_reference(image_to_bchw(image))).float().to(intermediate_device())
        return io.NodeOutput(EncodedReference(full[:, 1:], full[:, :1], encoder.encode_text))


__all__ = ["ClipVisionBigG", "ClipVisionReference", "EncodedReference", "OpenClipReference", "ReferenceEmbed", "XLReference",
           "no_text_tower"]
