"""v2 integration: building its modules from a checkpoint and its per-generation U-Net inputs.

Loading (reference notes §1.10): ``V2UNet`` (decoder LoRA, warp and style modules; warp head width from
``config.extras["warp_dim_head"]``, else :func:`~colorize.models.v2_config.default_warp_dim_head`) and the
background / style encoders (size-embedding width and style-width cap read from the shapes).
Generation (§2.4, :func:`colorize.v2.v2_conditioning`): context, split options, background tokens ``hs_bg``
and style vectors, computed once per generation and passed to every U-Net call (no sticky state).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from colorize.config import ColorizerConfig
from colorize.errors import InputError
from colorize.loader import materialize, require_components
from colorize.models.unet_encoder import UNetEncoder, background_encoder, style_encoder
from colorize.models.v2_config import V2Config, default_warp_dim_head, infer_v2_config
from colorize.models.v2_unet import V2UNet
from colorize.v2 import v2_conditioning
from colorize.variants.settings import EnhanceSettings

#: Checkpoint components besides U-Net, sketch encoder and VAE.
COMPONENTS: tuple[str, ...] = ("bg_encoder", "style_encoder")
#: v2 is trained at the 768 level (official readme); used when the caller gives no output size.
BASE_RESOLUTION = 768
Encoder = Callable[[Tensor], Tensor]


def v2_config(config: ColorizerConfig, parts: Mapping[str, Mapping[str, Any]]) -> V2Config:
    """The v2 extras' config from the checkpoint's shapes (prefixes stripped) and ``config.extras``."""
    warp = int(config.extras.get("warp_dim_head", default_warp_dim_head(config.unet)))
    return infer_v2_config(parts["unet"], parts["style_encoder"] or None, warp_dim_head=warp)


def build_modules(config: ColorizerConfig, parts: dict[str, dict[str, Tensor]],
                  name: str) -> tuple[nn.Module, dict[str, nn.Module]]:
    """``(V2UNet, {"bg_encoder", "style_encoder"})`` filled from the checkpoint's tensors (consumed)."""
    require_components(parts, COMPONENTS, name)
    vcfg = v2_config(config, parts)
    unet = materialize(lambda: V2UNet(config.unet, vcfg.lora, warp_dim_head=vcfg.warp_dim_head),
                       parts.pop("unet"), f"{name} (U-Net)")
    bg = materialize(lambda: background_encoder(config.unet, vcfg.adm_in_channels), parts.pop("bg_encoder"),
                     f"{name} (background encoder)")
    st = materialize(lambda: style_encoder(config.unet, vcfg.adm_in_channels, vcfg.style_width_cap),
                     parts.pop("style_encoder"), f"{name} (style encoder)")
    return unet, {"bg_encoder": bg, "style_encoder": st}


def cast_extras(extras: Mapping[str, nn.Module], device: torch.device, dtype: torch.dtype) -> None:
    """Both encoders in ``dtype`` with their time embedding in fp32, as the official app (§2.1)."""
    for module in extras.values():
        module.to(device, dtype).eval().requires_grad_(False)
        if dtype != torch.float32 and isinstance(module, UNetEncoder):
            module.time_embed.float()


def ratio_dim(encoder: nn.Module) -> int:
    """Sinusoid width per ratio of an encoder's size embedding (half its ``label_emb`` input)."""
    return int(encoder.label_emb[0][0].in_features) // 2  # type: ignore[index]


@torch.no_grad()
def unet_inputs(
    extras: Mapping[str, nn.Module],
    enhance: EnhanceSettings,
    size: tuple[int, int],
    tokens: Tensor,
    reference: Tensor,
    encode_tokens: Encoder,
    encode_latent: Encoder,
    *,
    latent_mask: Tensor | None = None,
    reference_mask: Tensor | None = None,
    background: Tensor | None = None,
    background_mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """``(context, U-Net kwargs)`` of one v2 generation: ``split`` / ``hs_bg`` / ``style`` as enabled.

    size: output ``(H, W)`` in pixels; tokens: CLIP local tokens of the reference; reference / background:
    images in [-1, 1] at their own sizes (they drive the size embedding); encode_latent: image → diffusion
    latent (seeded posterior sample, :class:`~colorize.variants.inputs.SeededLatentEncoder`); latent_mask:
    sketch foreground mask at latent resolution (needed by BG/FG enhance); reference_mask / background_mask:
    pixel foreground masks.
    """
    settings = enhance.v2_settings()
    if settings.remove_background_foreground and background is not None and background_mask is None:
        raise InputError("removing the foreground from the background image needs its mask")
    if settings.background_enhance and background is None and reference_mask is None:
        raise InputError("background enhance needs the reference mask or a background image")
    bg_encoder, st_encoder = extras.get("bg_encoder"), extras.get("style_encoder")
    cond = v2_conditioning(
        settings, size, reference, tokens, encode_latent, encode_tokens,
        bg_encoder=bg_encoder, style_encoder=st_encoder,  # type: ignore[arg-type]
        sketch_mask=latent_mask if settings.masked else None, reference_mask=reference_mask,
        background=background, background_mask=background_mask,
        ratio_dim=ratio_dim(st_encoder if st_encoder is not None else bg_encoder),  # type: ignore[arg-type]
    )
    kwargs = {k: v for k, v in cond.unet_kwargs().items() if v is not None}
    if "split" in kwargs and enhance.lora_scale != 1.0:
        kwargs["split"] = replace(kwargs["split"], lora_scale=enhance.lora_scale)
    return cond.context, kwargs


__all__ = ["BASE_RESOLUTION", "COMPONENTS", "build_modules", "cast_extras", "ratio_dim", "unet_inputs", "v2_config"]
