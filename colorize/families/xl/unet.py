"""The SDXL denoising U-Net of ColorizeDiffusion XL and its adm vector ``y``.

Facts from the official repository tellurion-kanata/ColorizeDiffusionXL at commit ``ec78784``:

* ``DualCondUNetXL`` (``refnet/modules/unet.py:364``) is the SDXL U-Net: in/out 4 channels, model_channels 320,
  channel_mult (1, 2, 4), 2 ResBlocks per level, attention at downsample factors 2 and 4, transformer depth
  (1, 2, 10) per level (the middle block uses 10), head width 64, Linear ``proj_in/out``, context width 2048,
  GEGLU feed-forward ×4, GroupNorm(32); 70 transformer blocks in all.
* Its adm input is the "sequential" kind with ``adm_in_channels`` 512 (not SDXL's 2816): ``label_emb`` =
  Linear(512, 1280), SiLU, Linear(1280, 1280), added to the time embedding.
* The sketch hints are added after input blocks 0, 3, 6 and 8 (``unet.py:367, 384-389``): strides 8, 16, 32,
  32 px of the image, channels 320, 320, 640, 1280 at full size.
* ``y`` (``refnet/models/colorizerXL.py:145-146``): the parameter-free ``TimestepEmbedding(256)`` sinusoid
  (``refnet/modules/embedder.py:470``) of √(H·W) (the output's pixel size) and of the constant 7.0 (the
  "aesthetic score"), concatenated to 512 values.

There is no separate XL U-Net class: :class:`colorize.models.unet.DualCondUNet` builds it from an
:class:`~colorize.config.UNetConfig` with the SDXL fields, so the attention processors, reference strengths and
hints work exactly as for SD2.1. State-dict keys equal the official ``model.diffusion_model.*`` keys without the
prefix.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from colorize.config import UNetConfig
from colorize.models.unet import DualCondUNet, timestep_embedding

#: Full-size ColorizeDiffusion XL U-Net (official ``configs/inference/sdxl.yaml`` ``unet_config``).
XL_UNET = UNetConfig(
    in_channels=4,
    out_channels=4,
    model_channels=320,
    channel_mult=(1, 2, 4),
    num_res_blocks=2,
    attention_resolutions=(4, 2),
    num_head_channels=64,
    transformer_depth=(1, 2, 10),
    context_dim=2048,
    transformer_depth_middle=10,
    use_linear_in_transformer=True,
    adm_in_channels=512,
    hint_blocks=(0, 3, 6, 8),
)

#: The tiny U-Net of the ``xl_unet`` fixture (model_channels 32, channel_mult (1, 2, 1), head width 16, context
#: 32): same topology and 70 transformer blocks, so the official hard-coded block lists apply unchanged.
TINY_XL_UNET = replace(XL_UNET, model_channels=32, channel_mult=(1, 2, 1), num_head_channels=16, context_dim=32)

#: Width of each of the two sinusoids of ``y`` (``TimestepEmbedding(256)``).
ADM_SINUSOID_WIDTH = 256
#: The constant "aesthetic score" the official wrapper embeds as the second half of ``y``.
AESTHETIC_SCORE = 7.0


def xl_unet_config(**overrides: Any) -> UNetConfig:
    """The full-size XL U-Net config with some fields replaced (e.g. ``model_channels=32`` for tests)."""
    return replace(XL_UNET, **overrides)


def adm_vector(height: int, width: int, batch: int = 1, score: float = AESTHETIC_SCORE,
               device: torch.device | str | None = None, embed_dim: int = ADM_SINUSOID_WIDTH) -> Tensor:
    """The adm input ``y`` (batch, 512) for an output of ``height × width`` pixels: the 256-wide sinusoids
    ``[cos, sin]`` of √(H·W) and of ``score``, concatenated (float32; rows identical)."""
    values = torch.tensor([math.sqrt(height * width), float(score)], dtype=torch.float32, device=device)
    emb = timestep_embedding(values, embed_dim)  # (2, 256)
    return emb.reshape(1, 2 * embed_dim).expand(batch, -1).contiguous()


def build_xl_unet(cfg: UNetConfig = XL_UNET, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> DualCondUNet:
    """The XL U-Net (``device="meta"`` builds it without memory, for loading or checking layouts).

    ``cfg`` must have an adm input (``adm_in_channels``): the XL U-Net's forward takes ``y``."""
    if cfg.adm_in_channels is None:
        raise ValueError("an XL U-Net config needs adm_in_channels (512 for ColorizeDiffusion XL)")
    return DualCondUNet(cfg, device=device, dtype=dtype)


__all__ = [
    "ADM_SINUSOID_WIDTH",
    "AESTHETIC_SCORE",
    "TINY_XL_UNET",
    "XL_UNET",
    "adm_vector",
    "build_xl_unet",
    "xl_unet_config",
]
