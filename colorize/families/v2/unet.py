"""The v2 denoising U-Net: split attention + decoder LoRA, skip warping, style modulation (thesis §5.6).

``V2UNet`` is the shared ``DualCondUNet`` with the v2 LoRA layout (rank 4/4 on the decoder's cross-attention
only) plus ``warp_modules`` and ``style_modules`` (official ``refnet/modules/unet.py:233-282`` and
``refnet/modules/reference_net.py:49-102`` at commit ``c9bd9fb``). The decoder loop, for output block ``i``:

1. with background tokens ``hs_bg`` and a mask: the popped skip is replaced, where the mask (bicubic-resized
   to the skip's grid) is **not above** the threshold, by ``warp_modules[i](skip, hs_bg[i])`` (foreground
   keeps its skip, background takes the skip cross-attending to the background encoder's tokens);
2. ``h = output_block_i(cat[h, skip])`` (split cross-attention when a mask is given);
3. with style vectors: ``h = h · (1 + scale) + shift`` from ``style_modules[i](style[i], t_emb)``.

Every per-generation input is a forward argument; nothing is stored on the module. In particular the official
app's sticky LoRA mode (``switch_lora`` sets the decoder's LoRA mode as module state: after a masked run the
decoder keeps the foreground LoRA on, so a later unmasked run differs) cannot happen: LoRA is applied only inside
the split-attention processor of the call that asks for it.

* :class:`WarpBlock` (official ``SelfTransformerBlock``, key ``warp_modules.{i}``): the skip tokens of decoder
  block ``i`` cross-attend to the background encoder's tokens for that block, ``x += Attn(LN₁ x, bg_tokens)``
  (context not normalised, bias-free q/k/v, ``to_out.0`` with bias), then ``x += MLP(LN₂ x)`` (Linear ``c → 4c``,
  SiLU, Linear ``4c → c``). Where the sketch mask says "background" the warped skip replaces the plain one.
* :class:`StyleModulation` (key ``style_modules.{i}`` = ``[LayerNorm(2c), Linear(emb → 2c), Linear(2c → 2c)]``):
  ``m = style_i + Linear(t_emb)``, ``(scale, shift) = chunk(Linear(LN(m)))`` (scale first), and the output of
  decoder block ``i`` becomes ``h · (1 + scale) + shift``.

Keys equal the official ``model.diffusion_model.*`` ones (incl. ``warp_modules.*``, ``style_modules.*``,
``…attn2.to_{q,k,v}.lora_{down,up}_{fg,bg}``).
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from colorize.config import UNetConfig
from colorize.families.v2.config import FULL_V2, V2_LORA
from colorize.models.attention import AttentionPatches, CrossAttention
from colorize.models.lora import SplitLoraConfig
from colorize.models.split_attention import MaskTokens, tile_batch
from colorize.models.unet import DualCondUNet


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


class V2UNet(DualCondUNet):
    """v2 ``DualCondUNet``: decoder-only split LoRA, ``warp_modules`` on the skips, ``style_modules`` on the outputs."""

    def __init__(
        self,
        cfg: UNetConfig,
        lora: SplitLoraConfig | None = V2_LORA,
        *,
        warp_dim_head: int = FULL_V2.warp_dim_head,
        use_checkpoint: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(cfg, lora, use_checkpoint=use_checkpoint, device=device)
        with torch.device(device) if device is not None else nullcontext():
            self.warp_modules = warp_modules(cfg, warp_dim_head)
            self.style_modules = style_modules(cfg)
            for last in [w.ff[2] for w in self.warp_modules] + [s[2] for s in self.style_modules]:
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
        if dtype is not None:
            self.to(dtype)

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor | None,
        hints: Sequence[Tensor | None] | None = None,
        attention: AttentionPatches | None = None,
        hs_bg: Sequence[Tensor] | None = None,
        style: Sequence[Tensor] | None = None,
        warp_mask: Tensor | MaskTokens | None = None,
        warp_threshold: float | Tensor | None = None,
    ) -> Tensor:
        """As :meth:`DualCondUNet.forward`, plus the v2 decoder inputs (computed once per generation).

        hs_bg: background-encoder tokens, one ``(b, h_i·w_i, c_i)`` per decoder block (already × the background
        factor); needs ``warp_mask``, the latent sketch mask (or the split-attention processor's
        :class:`~colorize.models.split_attention.MaskTokens`, whose resized masks it then shares), whose values not
        above ``warp_threshold`` select the warped skips (the split-attention mask and threshold, as the app).
        style: one ``(b, 2·c_i)`` vector per decoder block. A batch dividing the model batch is tiled (CFG rows).
        With neither, the computation is exactly :class:`DualCondUNet`'s.
        """
        n = len(self.output_blocks)
        if hs_bg is not None:
            if warp_mask is None or warp_threshold is None:
                raise ValueError("hs_bg (background warping) needs the split attention's latent sketch mask and "
                                 "threshold (warp_mask, warp_threshold)")
            check_lengths("hs_bg", hs_bg, n)
        if style is not None:
            check_lengths("style", style, n)
        context, emb, h, skips = self._begin(x, timesteps, context, attention, hints)
        b, dtype = x.shape[0], self.dtype
        bg = [tile_batch(t, b, "hs_bg").to(x.device, dtype) for t in hs_bg] if hs_bg is not None else None
        st = [tile_batch(s, b, "style").to(x.device) for s in style] if style is not None else None
        masks = warp_mask if isinstance(warp_mask, MaskTokens) or warp_mask is None else MaskTokens(warp_mask)
        for i, block in enumerate(self.output_blocks):
            skip = skips.pop()
            if bg is not None:
                mask = masks(tuple(skip.shape[-2:]), b, x.device)  # type: ignore[misc,arg-type]
                skip = warp_skip(self.warp_modules[i], skip, bg[i], mask, warp_threshold)  # type: ignore[arg-type]
            size = tuple(skips[-1].shape[-2:]) if skips else None
            h = self._run(block, torch.cat([h, skip], dim=1), emb, context, attention, size)
            if st is not None:
                h = self.style_modules[i](h, st[i], emb)
        return self._head(h, x)


def warp_skip(warp: nn.Module, skip: Tensor, bg_tokens: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """``where(mask > threshold, skip, warp(skip, bg_tokens))`` on the skip's token grid: ``skip`` (b, c, h, w),
    ``bg_tokens`` (b or a divisor of it, m, c; tiled and cast to the skip), ``mask`` (b, h·w, 1) (thesis §5.6:
    background warping of the decoder skips)."""
    b, c, hh, ww = skip.shape
    bg_tokens = tile_batch(bg_tokens, b, "hs_bg").to(skip.device, skip.dtype)
    tokens = skip.flatten(2).transpose(1, 2)
    out = torch.where(mask > threshold, tokens, warp(tokens, bg_tokens))
    return out.transpose(1, 2).reshape(b, c, hh, ww)


__all__ = [
    "StyleModulation",
    "V2UNet",
    "WarpBlock",
    "check_lengths",
    "decoder_out_channels",
    "decoder_skip_channels",
    "style_modules",
    "warp_modules",
    "warp_skip",
]
