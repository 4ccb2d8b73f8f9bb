"""v2 background and style encoders (official ``UNetEncoder``, ``refnet/modules/unet.py:391-596`` at commit
``c9bd9fb``) and the size embedding they read (``refnet/models/v2-colorizer.py:64-77``), thesis §5.6.

Each is a copy of the U-Net's encoder half (``input_blocks`` 0..11 with cross-attention to the reference
tokens; no middle block, no decoder) with its own time embedding and a size embedding
``label_emb(y)`` of the reference/target ratio (:func:`size_embedding`).  They run once per
generation, at timestep 0, on the VAE latent of the reference (or background) squashed to the output size.
After every input block ``j`` a ``zero_layers[j]`` projection gives one output; the list is returned
**reversed**, so entry ``i`` belongs to decoder (output) block ``i`` — the block that consumes input block
``11 - i``'s skip:

* background encoder: ``zero_layers[j]`` = 1×1 conv ``ch → ch``; output = token map ``(b, h·w, ch)``, the
  keys/values of warp module ``i`` (same grid and width as that block's skip);
* style encoder: ``zero_layers[j]`` = Linear of the spatial mean; width ``2·ch`` (conv_in and ResBlocks) or
  ``min(cap, 4·ch)`` (Downsample blocks), which for the released widths equals ``2·ch`` of the matching
  decoder block (the style modulation's scale/shift width).

Keys equal the official ``bg_encoder.*`` / ``style_encoder.*`` ones without the prefix: ``time_embed.{0,2}``,
``label_emb.0.{0,2}``, ``input_blocks.*`` (as the U-Net's), ``zero_layers.{j}``.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from colorize.config import UNetConfig
from colorize.families.v2.config import FULL_V2
from colorize.models.attention import SpatialTransformer
from colorize.models.unet import (
    Downsample,
    build_input_blocks,
    timestep_embedding,
    zero_residual_outputs,
)

# ------------------------------------------------------------------------------------------ size embedding
# The encoders are told how the reference relates to the output canvas: for a reference of pixel size (oh, ow) and
# a target (H, W), if the reference is smaller than the target in either side it is first "biased" to
# ih = oh + max(H, W), iw = ow / oh · ih (aspect kept), else ih, iw = oh, ow; then rh = ih / H, rw = iw / W
# (float32) and y = [sinusoid_d(rh), sinusoid_d(rw)] with the parameter-free [cos, sin] sinusoid of width d
# (256 released, so y has 512 entries = the encoders' adm_in_channels).

Size = tuple[int, int]
#: Sinusoid width per ratio of the released v2 model (``TimestepEmbedding(256)``).
RATIO_EMBED_DIM = 256


def size_ratios(reference_hw: Sequence[int], target_hw: Sequence[int]) -> tuple[float, float]:
    """``(rh, rw)`` for a reference of pixel size ``(oh, ow)`` and a target ``(H, W)``, with the small-reference bias."""
    oh, ow = (float(v) for v in reference_hw)
    h, w = (float(v) for v in target_hw)
    if oh <= 0 or ow <= 0 or h <= 0 or w <= 0:
        raise ValueError(f"sizes must be positive, got reference {tuple(reference_hw)} and target {tuple(target_hw)}")
    if oh < h or ow < w:
        ih = oh + max(h, w)
        iw = ow / oh * ih
    else:
        ih, iw = oh, ow
    return ih / h, iw / w


def _as_pairs(sizes: Sequence[int] | Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    if len(sizes) and isinstance(sizes[0], (int, float)):
        return [(int(sizes[0]), int(sizes[1]))]  # type: ignore[arg-type]
    return [(int(s[0]), int(s[1])) for s in sizes]  # type: ignore[index]


def ratio_tensor(
    reference_hw: Sequence[int] | Sequence[Sequence[int]],
    target_hw: Sequence[int] | Sequence[Sequence[int]],
    device: torch.device | str | None = None,
) -> Tensor:
    """``(b, 2)`` float32 ratios ``[rh, rw]``; one size pair or a list of them (a single pair on either side is
    paired with every entry of the other)."""
    refs, targets = _as_pairs(reference_hw), _as_pairs(target_hw)
    b = max(len(refs), len(targets))
    if len(refs) not in (1, b) or len(targets) not in (1, b):
        raise ValueError(f"{len(refs)} reference sizes cannot be paired with {len(targets)} target sizes")
    refs, targets = refs * (b // len(refs)), targets * (b // len(targets))
    return torch.tensor([size_ratios(r, t) for r, t in zip(refs, targets)], dtype=torch.float32, device=device)


def embed_ratios(ratios: Tensor, dim: int = RATIO_EMBED_DIM) -> Tensor:
    """``(b, 2)`` ratios → ``(b, 2·dim)`` = ``[sinusoid_dim(rh), sinusoid_dim(rw)]``."""
    b = ratios.shape[0]
    return timestep_embedding(ratios.reshape(-1), dim).reshape(b, 2 * dim)


def size_embedding(
    reference_hw: Sequence[int] | Sequence[Sequence[int]],
    target_hw: Sequence[int] | Sequence[Sequence[int]],
    dim: int = RATIO_EMBED_DIM,
    device: torch.device | str | None = None,
) -> Tensor:
    """The encoders' ``y``: ``(b, 2·dim)`` size embedding of reference size(s) relative to target size(s)."""
    return embed_ratios(ratio_tensor(reference_hw, target_hw, device), dim)


# ------------------------------------------------------------------------------------------ encoders


def style_widths(skip_channels: list[int], downsample: list[bool], cap: int = FULL_V2.style_width_cap) -> list[int]:
    """Style-encoder output width per input block: ``min(cap, 4·ch)`` after a Downsample, else ``2·ch``."""
    return [min(cap, 4 * ch) if down else 2 * ch for ch, down in zip(skip_channels, downsample)]


class UNetEncoder(nn.Module):
    """U-Net encoder copy with time + size embedding; ``style=False`` → background tokens, ``True`` → style vectors.

    ``forward(x, context, y, timesteps=None)`` returns 12 tensors (for the SD2.1 layout) in decoder order.
    """

    def __init__(
        self,
        cfg: UNetConfig,
        adm_in_channels: int = FULL_V2.adm_in_channels,
        style: bool = False,
        style_width_cap: int = FULL_V2.style_width_cap,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.style = style
        self._attn_count = 0
        with torch.device(device) if device is not None else nullcontext():
            emb_dim = 4 * cfg.model_channels
            self.time_embed = nn.Sequential(
                nn.Linear(cfg.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )
            self.label_emb = nn.Sequential(
                nn.Sequential(nn.Linear(adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            )
            self.input_blocks, channels, _, _ = build_input_blocks(cfg, emb_dim, self._attention)
            if style:
                down = [isinstance(block[0], Downsample) for block in self.input_blocks]
                widths = style_widths(channels, down, style_width_cap)
                self.zero_layers = nn.ModuleList(nn.Linear(c, w) for c, w in zip(channels, widths))
            else:
                self.zero_layers = nn.ModuleList(nn.Conv2d(c, c, 1) for c in channels)
            zero_residual_outputs(self)
            for layer in self.zero_layers:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        if dtype is not None:
            self.to(dtype)

    def _attention(self, channels: int) -> SpatialTransformer:
        cfg = self.cfg
        block = SpatialTransformer(channels, channels // cfg.num_head_channels, cfg.num_head_channels,
                                   cfg.context_dim, cfg.transformer_depth, self._attn_count)
        self._attn_count += 1
        return block

    @property
    def dtype(self) -> torch.dtype:
        return self.input_blocks[0][0].weight.dtype

    @property
    def output_widths(self) -> list[int]:
        """Width of each output, in decoder order (token channels or style-vector length)."""
        return [layer.out_features if self.style else layer.out_channels for layer in self.zero_layers][::-1]

    def embed(self, y: Tensor, timesteps: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """``time_embed(sinusoid(t)) + label_emb(y)`` in the blocks' dtype (``t`` = 0 when not given)."""
        if timesteps is None:
            timesteps = torch.zeros(batch, device=device)
        t = timesteps.reshape(-1).to(device)
        if t.numel() == 1:
            t = t.expand(batch)
        wdtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(wdtype))
        emb = emb + self.label_emb(y.to(device=device, dtype=self.label_emb[0][0].weight.dtype)).to(wdtype)
        return emb.to(self.dtype)

    def _project(self, layer: nn.Module, h: Tensor) -> Tensor:
        if self.style:
            return layer(h.mean(dim=(2, 3)))
        tokens = h.flatten(2).transpose(1, 2)  # the 1x1 conv as a matmul on the (b, h*w, c) token layout
        return F.linear(tokens, layer.weight.flatten(1), layer.bias)

    def forward(self, x: Tensor, context: Tensor | None, y: Tensor, timesteps: Tensor | None = None) -> list[Tensor]:
        """Latent ``x`` (b, C, h, w), reference tokens ``context`` (b, N, context_dim), size embedding ``y``
        (b or 1, adm_in_channels) → outputs in decoder order (entry ``i`` for output block ``i``)."""
        emb = self.embed(y, timesteps, x.shape[0], x.device)
        if context is not None:
            context = context.to(device=x.device, dtype=self.dtype)
        h, outs = x.to(self.dtype), []
        for block, layer in zip(self.input_blocks, self.zero_layers):
            h = block(h, emb, context)
            outs.append(self._project(layer, h))
        return outs[::-1]


def background_encoder(cfg: UNetConfig, adm_in_channels: int = FULL_V2.adm_in_channels, **kw) -> UNetEncoder:
    """The official ``bg_encoder``."""
    return UNetEncoder(cfg, adm_in_channels, style=False, **kw)


def style_encoder(cfg: UNetConfig, adm_in_channels: int = FULL_V2.adm_in_channels,
                  style_width_cap: int = FULL_V2.style_width_cap, **kw) -> UNetEncoder:
    """The official ``style_encoder``."""
    return UNetEncoder(cfg, adm_in_channels, style=True, style_width_cap=style_width_cap, **kw)


__all__ = [
    "RATIO_EMBED_DIM",
    "UNetEncoder",
    "background_encoder",
    "embed_ratios",
    "ratio_tensor",
    "size_embedding",
    "size_ratios",
    "style_encoder",
    "style_widths",
]
