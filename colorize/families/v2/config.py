"""Configuration of the v2 extras: background / style encoders, warp and style modules, decoder LoRA.

Released values (official ``configs/inference/v2.yaml`` and ``refnet/models/v2-colorizer.py:13-40`` at commit
``c9bd9fb``): the two encoders are copies
of the U-Net encoder half (same widths, context 1024) with a size embedding of ``adm_in_channels = 512``
(two ratio sinusoids of width 256); warp-module attention uses heads of width 64 (``ich / 64`` heads); the
style encoder's Downsample outputs are ``min(2560, 4·ch)`` wide; split LoRA rank 4/4 on the decoder only.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from colorize.checkpoint.common import shape_of
from colorize.config import ColorizerConfig, UNetConfig
from colorize.models.lora import SplitLoraConfig, infer_lora_config

#: v2's LoRA: rank 4/4, decoder attention blocks only.
V2_LORA = SplitLoraConfig(fg_rank=4, bg_rank=4, blocks="output")


@dataclass(frozen=True)
class V2Config:
    """The v2 additions on top of a v1 :class:`~colorize.config.ColorizerConfig` (whose ``unet`` they copy)."""

    lora: SplitLoraConfig = V2_LORA
    adm_in_channels: int = 512  # size-embedding width fed to the encoders' ``label_emb``
    ratio_embed_dim: int = 256  # sinusoid width per ratio (adm_in_channels = 2 · this)
    warp_dim_head: int = 64  # head width of the warp modules' attention
    style_width_cap: int = 2560  # style encoder: Downsample outputs are min(cap, 4·ch) wide


FULL_V2 = V2Config()


def default_warp_dim_head(unet: UNetConfig) -> int:
    """Warp head width for a U-Net: the released 64 when every skip width allows it, else the U-Net's own head
    width (tiny models; the fixtures' deviation uses 16 at width 32)."""
    return FULL_V2.warp_dim_head if unet.model_channels % FULL_V2.warp_dim_head == 0 else unet.num_head_channels



def infer_v2_config(unet: Mapping[str, Any], style_encoder: Mapping[str, Any] | None = None,
                    warp_dim_head: int = 64) -> V2Config:
    """:class:`V2Config` from shapes (keys without their ``model.diffusion_model.`` / ``style_encoder.`` prefix).

    The warp head width is not visible in shapes (``warp_dim_head``, 64 released).  The style-width cap is
    taken as the widest style output of a Downsample block (exact whenever the rule ``min(cap, 4·ch)`` holds).
    """
    lora = infer_lora_config(unet) or V2_LORA
    adm, cap = FULL_V2.adm_in_channels, FULL_V2.style_width_cap
    if style_encoder is not None:
        adm = shape_of(style_encoder["label_emb.0.0.weight"])[1]
        down = [int(m.group(1)) for k in style_encoder if (m := re.fullmatch(r"input_blocks\.(\d+)\.0\.op\.weight", k))]
        if down:
            cap = max(shape_of(style_encoder[f"zero_layers.{j}.weight"])[0] for j in down)
    return V2Config(lora=lora, adm_in_channels=adm, ratio_embed_dim=adm // 2, warp_dim_head=warp_dim_head,
                    style_width_cap=cap)


#: ``ColorizerConfig.extras`` key of our own exports: the warp modules' attention head width.
WARP_HEAD_KEY = "warp_dim_head"


def warp_head_width(config: ColorizerConfig) -> int:
    """The warp modules' head width: what our export recorded, else :func:`default_warp_dim_head`."""
    return int(config.extras.get(WARP_HEAD_KEY, default_warp_dim_head(config.unet)))


__all__ = ["FULL_V2", "V2_LORA", "WARP_HEAD_KEY", "V2Config", "default_warp_dim_head", "infer_v2_config",
           "warp_head_width"]
