"""What one ColorizeDiffusion XL generation gives the U-Net: the reference context, the adm vector and, with
background enhance ("Low-level injection"), the doubled context and the attention processors of each model type.

Official facts (tellurion-kanata/ColorizeDiffusionXL at commit ec78784):

* ``sdxl`` (``refnet/models/colorizerXL.py:148-180``): the context is ``[reference tokens | background tokens]``,
  the background being the separate background image or the reference with the character (reference mask ≥
  threshold) painted white; the sketch mask reaches the U-Net nearest-downsampled ×1/8 and each cross-attention
  selects the half its queries see (:class:`~.split_attention.XLSplitAttention`).
* ``xlv2`` (``refnet/models/v2-colorizerXL.py:212-338``): the same doubled context; the ReferenceNet encodes
  ``[VAE latent of that background image resized to the output size | sketch mask | reference mask]`` at t = 0
  with the crop-scale adm (``get_crop_scale`` of the output and the background image sizes); the U-Net decoder
  self-attends over ``[own tokens | bank]`` with the mask bias; the cross-attention is the soft blend with the
  background LoRA merged (:mod:`.bank`). The official writes the LoRA into the weights and stores the bank on
  modules; here both live in the processors of this generation only, so nothing carries over to the next one.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colorize.families.base import SeparationInputs, UNetInputs
from colorize.families.xl.bank import BankSelfAttention, MergedLoraSplitAttention
from colorize.families.xl.conditioning import paint_character_white
from colorize.families.xl.reference_net import crop_scale, reference_adm, reference_net_input
from colorize.families.xl.split_attention import XLSplitAttention, XLSplitOptions
from colorize.families.xl.unet import adm_vector


def _first_parameter(module: nn.Module) -> Tensor:
    return next(module.parameters())


@torch.no_grad()
def reference_context(encoder: Any, proj: nn.Module, reference: Tensor) -> Tensor:
    """Reference (b, 3, H, W) in [-1, 1] → ClusterConcat context (b, token_length, context width): CLIP-bigG's
    projected tokens and the tagger's grid tokens (``encoder.clip`` / ``encoder.tagger``) fused by ``proj``."""
    device = _first_parameter(encoder).device
    image = reference.to(device, torch.float32)
    clip_tokens = encoder.clip.reference_tokens(image)
    wd_tokens = encoder.tagger.features(image)
    w = _first_parameter(proj)
    return proj(clip_tokens.to(w.device, w.dtype), wd_tokens.to(w.device, w.dtype))


def adm_kwargs(size: tuple[int, int], device: torch.device) -> dict[str, Any]:
    """``{"y": adm vector}`` of an output of ``size`` (H, W) pixels (batch 1; the U-Net tiles it over the rows)."""
    return {"y": adm_vector(int(size[0]), int(size[1]), 1, device=device)}


def background_image(inputs: SeparationInputs, threshold: float) -> Tensor:
    """The image the background tokens (and the xlv2 ReferenceNet latent) come from: the separate background, or
    the reference with the character (reference mask ≥ ``threshold``) painted white."""
    if inputs.background is not None:
        return inputs.background
    assert inputs.reference_mask is not None  # separation_inputs supplies the fallback mask
    return paint_character_white(inputs.reference, inputs.reference_mask.to(inputs.reference.device), threshold)


def _split_context(inputs: SeparationInputs, background: Tensor) -> Tensor:
    bg_tokens = inputs.encode_tokens(background).to(inputs.tokens)
    tokens = inputs.tokens
    if bg_tokens.shape[0] != tokens.shape[0]:
        b = max(bg_tokens.shape[0], tokens.shape[0])
        tokens, bg_tokens = tokens.expand(b, -1, -1), bg_tokens.expand(b, -1, -1)
    return torch.cat([tokens, bg_tokens], dim=1)


def _options(enhance: Any, mask: Tensor, **kw: Any) -> XLSplitOptions:
    return XLSplitOptions(mask=mask, threshold=float(enhance.sketch_threshold), fg_scale=float(enhance.fg_scale),
                          bg_scale=float(enhance.bg_scale), merge_scale=float(enhance.merge_scale), **kw)


@torch.no_grad()
def sdxl_separation(extras: Mapping[str, nn.Module], enhance: Any, inputs: SeparationInputs) -> UNetInputs:
    """``sdxl`` background enhance: the doubled context and the masked split cross-attention (merge 0: one
    attention with the −∞ bias, the fg/bg strengths unused, as the official; merge > 0: the two-branch path)."""
    assert inputs.latent_mask is not None
    context = _split_context(inputs, background_image(inputs, float(enhance.reference_threshold)))
    return UNetInputs(context, XLSplitAttention(_options(enhance, inputs.latent_mask)))


@torch.no_grad()
def reference_bank(refnet: nn.Module, inputs: SeparationInputs, background: Tensor, reference_mask: Tensor):  # noqa: ANN201
    """Run the ReferenceNet once: ``[z_bg | sketch mask | reference mask]`` at t = 0 with the crop-scale adm →
    its :class:`~.bank.ReferenceBank`."""
    h, w = inputs.size
    ch, cw = crop_scale(h, w, int(background.shape[-2]), int(background.shape[-1]))
    resized = F.interpolate(background.float(), size=(h, w), mode="bicubic")
    latent = inputs.encode_latent(resized)
    assert inputs.sketch_mask is not None
    x = reference_net_input(latent.float(), inputs.sketch_mask.float().to(latent.device),
                            reference_mask.float().to(latent.device), (h, w))
    p = _first_parameter(refnet)
    return refnet(x.to(p.device, p.dtype), torch.zeros(1, device=p.device), reference_adm(ch, cw, device=p.device))


@torch.no_grad()
def xlv2_separation(extras: Mapping[str, nn.Module], enhance: Any, inputs: SeparationInputs) -> UNetInputs:
    """``xlv2`` background enhance: the doubled context, the ReferenceNet bank read by the decoder's
    self-attention (mask bias, threshold 0.05) and the soft-blend cross-attention with the merged background LoRA.
    Without a reference mask and with a separate background image, the ReferenceNet is told the reference has no
    character (an all-zero mask; the official requires a mask)."""
    assert inputs.latent_mask is not None
    threshold = float(enhance.reference_threshold)
    background = background_image(inputs, threshold)
    rmask = inputs.reference_mask
    if rmask is None:
        rmask = torch.zeros(1, 1, *inputs.reference.shape[-2:])
    bank = reference_bank(extras["bg_encoder"], inputs, background, rmask)
    context = _split_context(inputs, background)
    mask = inputs.latent_mask
    return UNetInputs(context, MergedLoraSplitAttention(_options(enhance, mask, soft=True, use_lora=True)),
                      self_attention=BankSelfAttention(bank, mask))


__all__ = ["adm_kwargs", "background_image", "reference_bank", "reference_context",
           "sdxl_separation", "xlv2_separation"]
