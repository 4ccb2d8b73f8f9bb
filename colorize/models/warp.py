"""v2 decoder extras: skip-feature warping and style modulation (thesis §5.6; reference notes §1.10).

* :class:`WarpBlock` (official ``SelfTransformerBlock``, key ``warp_modules.{i}``): the skip tokens of decoder
  block ``i`` cross-attend to the background encoder's tokens for that block,
  ``x += Attn(LN₁ x, bg_tokens)`` (context not normalised, bias-free q/k/v, ``to_out.0`` with bias), then
  ``x += MLP(LN₂ x)`` (Linear ``c → 4c``, SiLU, Linear ``4c → c``).  Where the sketch mask says
  "background" the warped skip replaces the plain one.
* :class:`StyleModulation` (key ``style_modules.{i}`` = ``[LayerNorm(2c), Linear(emb → 2c), Linear(2c → 2c)]``):
  ``m = style_i + Linear(t_emb)``, ``(scale, shift) = chunk(Linear(LN(m)))`` (scale first), and the output of
  decoder block ``i`` becomes ``h · (1 + scale) + shift``.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from colorize.config import UNetConfig
from colorize.models.attention import CrossAttention


class WarpBlock(nn.Module):
    """Skip tokens ``(b, n, c)`` cross-attending to background tokens ``(b, m, c)``, plus an MLP (both residual)."""

    def __init__(self, channels: int, dim_head: int = 64) -> None:
        super().__init__()
        if channels % dim_head:
            raise ValueError(f"warp width {channels} is not a multiple of the head width {dim_head}")
        # Registration order = official state_dict order (attn, ff, norm1, norm2).
        self.attn = CrossAttention(channels, channels, channels // dim_head, dim_head)
        self.ff = nn.Sequential(nn.Linear(channels, 4 * channels), nn.SiLU(), nn.Linear(4 * channels, channels))
        self.norm1 = nn.LayerNorm(channels)
        self.norm2 = nn.LayerNorm(channels)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), context)
        return x + self.ff(self.norm2(x))


class StyleModulation(nn.Sequential):
    """``h · (1 + scale) + shift`` with ``(scale, shift)`` from ``LN → Linear`` of ``style + Linear(t_emb)``."""

    def __init__(self, channels: int, emb_dim: int) -> None:
        width = 2 * channels
        super().__init__(nn.LayerNorm(width), nn.Linear(emb_dim, width), nn.Linear(width, width))

    def forward(self, h: Tensor, style: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        norm, time_proj, out = self[0], self[1], self[2]
        m = style.to(emb.dtype) + time_proj(emb)
        scale, shift = out(norm(m)).to(h.dtype).chunk(2, dim=1)
        return h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


def decoder_skip_channels(cfg: UNetConfig) -> list[int]:
    """Width of the skip consumed by each decoder block (= input block ``11 - i`` for the SD2.1 layout)."""
    mc, ch = cfg.model_channels, cfg.model_channels
    widths = [ch]
    for level, mult in enumerate(cfg.channel_mult):
        widths += [mult * mc] * cfg.num_res_blocks
        if level != len(cfg.channel_mult) - 1:
            widths.append(mult * mc)
    return widths[::-1]


def decoder_out_channels(cfg: UNetConfig) -> list[int]:
    """Output width of each decoder block (the style modulation acts on ``2×`` this)."""
    return [mult * cfg.model_channels for mult in reversed(cfg.channel_mult) for _ in range(cfg.num_res_blocks + 1)]


def warp_modules(cfg: UNetConfig, dim_head: int = 64) -> nn.ModuleList:
    return nn.ModuleList(WarpBlock(c, dim_head) for c in decoder_skip_channels(cfg))


def style_modules(cfg: UNetConfig) -> nn.ModuleList:
    emb_dim = 4 * cfg.model_channels
    return nn.ModuleList(StyleModulation(c, emb_dim) for c in decoder_out_channels(cfg))


def check_lengths(name: str, values: Sequence[Tensor], n: int) -> None:
    if len(values) != n:
        raise ValueError(f"expected {n} {name} entries (one per decoder block), got {len(values)}")


__all__ = [
    "StyleModulation",
    "WarpBlock",
    "check_lengths",
    "decoder_out_channels",
    "decoder_skip_channels",
    "style_modules",
    "warp_modules",
]
