"""v2 per-generation conditioning: background / style encoders at t = 0, masks, LoRA flags (thesis §5.6).

Official recipe (``refnet/models/v2-colorizer.py:82-268`` and ``backend/appfunc.py:250-266`` at commit ``c9bd9fb``;
all computed once per generation, never per step):

* size embedding ``y = size_embedding(image size, target size)`` of the image an encoder sees;
* **style enhance**: ``style = style_encoder(VAE(squash(reference, H×W)), t=0, context=emb, y)``; with a
  separate background image the same is done for the background and the two are merged
  ``fg·(1 − merge_scale) + bg·merge_scale``;
* **background enhance** (needs the sketch mask): the background image is a separate background (optionally
  with its own foreground whitened: "remove foreground from background") or the background-only reference
  ``where(rmask < τ_ref, reference, white)``; ``hs_bg = bg_encoder(VAE(squash(bg, H×W)), t=0,
  context=CLIP_local(bg), y) × background_factor``; LoRA (fg on, bg on);
* with a mask (foreground or background enhance): context ``[emb | bg tokens, or emb when there are none]``,
  split attention with the sketch-mask threshold τ_s, which also selects the warped skips.

Which tokens the background encoder cross-attends to (``EnhanceSettings.background_context``): the official app
gives it ``bg_emb`` (CLIP tokens of the background image) except that, with a separate background image *and*
style enhance, it feeds the reference tokens (a quirk of ``prepare_conditions``); the thesis' stage-2 formula
``z_bg = φ_bg(E(r_bg), e)`` uses the reference embedding ``e``. ``"background"`` (default) always uses the
background's tokens, ``"official"`` reproduces the app, ``"reference"`` follows the thesis formula. The sticky
decoder LoRA of the official app does not exist here: everything a generation needs is in the returned
:class:`V2Conditioning` and is passed to every U-Net call.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colorize.errors import InputError
from colorize.families.base import SeparationInputs, UNetInputs
from colorize.families.v2.encoders import RATIO_EMBED_DIM, UNetEncoder, size_embedding
from colorize.masks.inputs import background_only_reference
from colorize.models.split_attention import SplitAttention, SplitOptions
from colorize.settings import EnhanceSettings

#: image in [-1, 1] (b, 3, H, W) → diffusion latent (VAE posterior sample × scale factor), as the app.
LatentEncoder = Callable[[Tensor], Tensor]
#: image in [-1, 1] → CLIP local tokens (b, N, c) (CLS dropped).
TokenEncoder = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class V2Conditioning:
    """Everything a v2 generation passes to :class:`~colorize.families.v2.unet.V2UNet` at every step.

    context: ``(b, N, c)`` (no mask) or ``(b, 2N, c)`` ``[reference | background]``; split: options with the
    latent sketch mask (``None`` without masks); hs_bg / style: one tensor per decoder block or ``None``.
    The reference-unconditional CFG rows use a zero context with the same split / hs_bg / style (official).
    """

    context: Tensor
    split: SplitOptions | None = None
    hs_bg: tuple[Tensor, ...] | None = None
    style: tuple[Tensor, ...] | None = None

    def unet_inputs(self, lora_scale: float = 1.0) -> UNetInputs:
        """The context, the split-attention processor (with masks) and the ``V2UNet.forward`` arguments."""
        kwargs: dict[str, Any] = {}
        if self.style is not None:
            kwargs["style"] = self.style
        if self.split is None:
            return UNetInputs(self.context, None, kwargs)
        split = self.split if lora_scale == 1.0 else replace(self.split, lora_scale=lora_scale)
        processor = SplitAttention(split)
        if self.hs_bg is not None:  # the skip warp reads the same resized masks as the split attention
            kwargs.update(hs_bg=self.hs_bg, warp_mask=processor.mask_tokens, warp_threshold=self.split.threshold)
        return UNetInputs(self.context, processor, kwargs)


def squash(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic resize to exactly ``size`` (aspect not kept), as the app does before the VAE."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)


def image_hw(image: Tensor) -> tuple[int, int]:
    return int(image.shape[-2]), int(image.shape[-1])


def encoder_inputs(image: Tensor, target_hw: tuple[int, int], encode_latent: LatentEncoder,
                   ratio_dim: int = RATIO_EMBED_DIM) -> tuple[Tensor, Tensor]:
    """``(latent of the image squashed to the target, size embedding of image size vs target)``."""
    y = size_embedding(image_hw(image), target_hw, ratio_dim, device=image.device)
    return encode_latent(squash(image, target_hw)), y.expand(image.shape[0], -1)


@torch.no_grad()
def encode_style(encoder: UNetEncoder, latent: Tensor, tokens: Tensor, y: Tensor) -> list[Tensor]:
    """Style vectors (one per decoder block), style encoder at t = 0."""
    return encoder(latent, tokens, y)


@torch.no_grad()
def encode_background(encoder: UNetEncoder, latent: Tensor, tokens: Tensor, y: Tensor,
                      background_factor: float = 1.0) -> list[Tensor]:
    """Background tokens (one map per decoder block), background encoder at t = 0, × the background factor."""
    hs = encoder(latent, tokens, y)
    return hs if background_factor == 1.0 else [h * background_factor for h in hs]


def merge_styles(fg: Sequence[Tensor], bg: Sequence[Tensor], merge_scale: float) -> list[Tensor]:
    """``fg · (1 − merge_scale) + bg · merge_scale`` per decoder block."""
    return [f * (1.0 - merge_scale) + b * merge_scale for f, b in zip(fg, bg)]


def background_image(
    settings: EnhanceSettings,
    reference: Tensor,
    reference_mask: Tensor | None = None,
    background: Tensor | None = None,
    background_mask: Tensor | None = None,
) -> Tensor:
    """The image the background path encodes: the separate background (foreground whitened when asked) or the
    background-only reference ``where(rmask < τ_ref, reference, white)``."""
    tau = settings.reference_threshold
    if background is not None:
        if not settings.remove_background_foreground:
            return background
        if background_mask is None:
            raise ValueError("removing the foreground from the background image needs its foreground mask")
        return background_only_reference(background, background_mask, tau)
    if reference_mask is None:
        raise ValueError("background enhance without a background image needs the reference foreground mask")
    return background_only_reference(reference, reference_mask, tau)


def v2_conditioning(
    settings: EnhanceSettings,
    target_hw: tuple[int, int],
    reference: Tensor,
    reference_tokens: Tensor,
    encode_latent: LatentEncoder,
    encode_tokens: TokenEncoder,
    *,
    bg_encoder: UNetEncoder | None = None,
    style_encoder: UNetEncoder | None = None,
    sketch_mask: Tensor | None = None,
    reference_mask: Tensor | None = None,
    background: Tensor | None = None,
    background_mask: Tensor | None = None,
    ratio_dim: int = RATIO_EMBED_DIM,
) -> V2Conditioning:
    """Assemble the v2 conditioning of one generation (see the module docstring).

    target_hw: output size in pixels.  reference / background: images in [-1, 1] at their own size (their
    sizes drive the size embedding).  reference_tokens: CLIP local tokens ``emb`` (after any manipulation).
    sketch_mask: foreground mask at latent resolution (``colorize.masks.inputs.sketch_mask_to_latent``), needed by
    foreground/background enhance.  reference_mask / background_mask: pixel foreground masks in [0, 1].
    """
    if settings.masked and sketch_mask is None:
        raise ValueError("foreground/background enhance needs the sketch foreground mask")
    if settings.background_enhance and bg_encoder is None:
        raise ValueError("background enhance needs the background encoder")
    if settings.style_enhance and style_encoder is None:
        raise ValueError("style enhance needs the style encoder")
    emb = reference_tokens
    bg: _Encoded | None = None
    if settings.background_enhance or (settings.style_enhance and background is not None):
        image = background_image(settings, reference, reference_mask, background, background_mask)
        bg = _Encoded(encode_tokens(image).to(emb.dtype), *encoder_inputs(image, target_hw, encode_latent, ratio_dim))

    style: list[Tensor] | None = None
    if style_encoder is not None and settings.style_enhance:
        latent, y = encoder_inputs(reference, target_hw, encode_latent, ratio_dim)
        style = encode_style(style_encoder, latent, emb, y)
        if background is not None and bg is not None:
            style = merge_styles(style, encode_style(style_encoder, bg.latent, bg.tokens, bg.y), settings.merge_scale)

    hs_bg: list[Tensor] | None = None
    if bg_encoder is not None and bg is not None and settings.background_enhance:
        mode = settings.background_context
        use_ref = mode == "reference" or (mode == "official" and background is not None and settings.style_enhance)
        hs_bg = encode_background(bg_encoder, bg.latent, emb if use_ref else bg.tokens, bg.y, settings.background_factor)

    style_t = tuple(style) if style is not None else None
    if not settings.masked or sketch_mask is None:
        return V2Conditioning(emb, None, None, style_t)
    second = bg.tokens if bg is not None and settings.background_enhance else emb
    context = torch.cat([emb, second.expand(emb.shape[0], -1, -1)], dim=1)
    use_fg, use_bg = lora_flags(settings)
    split = SplitOptions(mask=sketch_mask, threshold=settings.sketch_threshold, fg_scale=settings.fg_scale,
                         bg_scale=settings.bg_scale, merge_scale=settings.merge_scale,
                         use_fg_lora=use_fg, use_bg_lora=use_bg)
    return V2Conditioning(context, split, tuple(hs_bg) if hs_bg is not None else None, style_t)


@dataclass(frozen=True)
class _Encoded:
    """An image prepared for the encoders: CLIP tokens, latent at the target size, size embedding."""

    tokens: Tensor
    latent: Tensor
    y: Tensor


def lora_flags(settings: EnhanceSettings) -> tuple[bool, bool]:
    """``(use_fg_lora, use_bg_lora)``: background enhance → both (official); foreground only → fg (as v1.5; the
    official v2 app does not state it)."""
    return settings.masked, settings.background_enhance


def ratio_dim(encoder: nn.Module) -> int:
    """Sinusoid width per ratio of an encoder's size embedding (half its ``label_emb`` input)."""
    return int(encoder.label_emb[0][0].in_features) // 2  # type: ignore[index]


@torch.no_grad()
def separation(extras: Mapping[str, nn.Module], enhance: EnhanceSettings, inputs: SeparationInputs) -> UNetInputs:
    """The U-Net inputs of one v2 generation: split attention, background tokens ``hs_bg`` and style vectors as
    enabled (masks as :class:`~colorize.families.base.SeparationInputs` says)."""
    if enhance.remove_background_foreground and inputs.background is not None and inputs.background_mask is None:
        raise InputError("removing the foreground from the background image needs its mask")
    if enhance.background_enhance and inputs.background is None and inputs.reference_mask is None:
        raise InputError("background enhance needs the reference mask or a background image")
    bg_encoder, st_encoder = extras.get("bg_encoder"), extras.get("style_encoder")
    cond = v2_conditioning(
        enhance, inputs.size, inputs.reference, inputs.tokens, inputs.encode_latent, inputs.encode_tokens,
        bg_encoder=bg_encoder, style_encoder=st_encoder,  # type: ignore[arg-type]
        sketch_mask=inputs.latent_mask if enhance.masked else None, reference_mask=inputs.reference_mask,
        background=inputs.background, background_mask=inputs.background_mask,
        ratio_dim=ratio_dim(st_encoder if st_encoder is not None else bg_encoder),  # type: ignore[arg-type]
    )
    return cond.unet_inputs(enhance.lora_scale)


__all__ = [
    "LatentEncoder",
    "TokenEncoder",
    "V2Conditioning",
    "background_image",
    "encode_background",
    "encode_style",
    "encoder_inputs",
    "lora_flags",
    "merge_styles",
    "ratio_dim",
    "separation",
    "squash",
    "v2_conditioning",
]
