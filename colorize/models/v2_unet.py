"""The v2 denoising U-Net: split attention + decoder LoRA, skip warping, style modulation (thesis §5.6).

``V2UNet`` is :class:`~colorize.models.split_attention.SwitchUNet` with the v2 LoRA layout (rank 4/4 on the
decoder's cross-attention only) plus ``warp_modules`` and ``style_modules`` (reference notes §1.10; fixture
README §4).  The decoder loop, for output block ``i``:

1. with background tokens ``hs_bg`` and a mask: the popped skip is replaced, where the mask (bicubic-resized
   to the skip's grid) is **not above** the threshold, by ``warp_modules[i](skip, hs_bg[i])`` (foreground
   keeps its skip, background takes the skip cross-attending to the background encoder's tokens);
2. ``h = output_block_i(cat[h, skip])`` (split cross-attention when a mask is given);
3. with style vectors: ``h = h · (1 + scale) + shift`` from ``style_modules[i](style[i], t_emb)``.

Every per-generation input is a forward argument; nothing is stored on the module.  In particular the
official app's sticky LoRA mode (§7.12: after a masked run the decoder keeps the foreground LoRA on, so a
later unmasked run differs) cannot happen: LoRA is applied only inside the masked split branches of the call
that asks for it.  Keys equal the official ``model.diffusion_model.*`` ones (incl. ``warp_modules.*``,
``style_modules.*``, ``…attn2.to_{q,k,v}.lora_{down,up}_{fg,bg}``).
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from colorize.config import UNetConfig
from colorize.models.split_attention import SplitContext, SplitOptions, SwitchUNet
from colorize.models.switch_config import SplitLoraConfig
from colorize.models.unet import ReferenceScales
from colorize.models.v2_config import FULL_V2
from colorize.models.warp import check_lengths, style_modules, warp_modules


def tile_batch(t: Tensor, batch: int, what: str) -> Tensor:
    """Repeat a per-image tensor over a model batch it divides (CFG batches stack ``[cond, uncond…]``)."""
    if t.shape[0] == batch:
        return t
    if batch % t.shape[0]:
        raise ValueError(f"{what} batch {t.shape[0]} does not divide the model batch {batch}")
    return t.repeat(batch // t.shape[0], *([1] * (t.ndim - 1)))


class V2UNet(SwitchUNet):
    """v2 ``DualCondUNet``: decoder-only split LoRA, ``warp_modules`` on the skips, ``style_modules`` on the outputs."""

    def __init__(
        self,
        cfg: UNetConfig,
        lora: SplitLoraConfig | None = FULL_V2.lora,
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
        reference_scales: ReferenceScales = None,
        split: SplitOptions | None = None,
        hs_bg: Sequence[Tensor] | None = None,
        style: Sequence[Tensor] | None = None,
        warp_threshold: float | None = None,
    ) -> Tensor:
        """As :meth:`SwitchUNet.forward`, plus the v2 decoder inputs (computed once per generation).

        hs_bg: background-encoder tokens, one ``(b, h_i·w_i, c_i)`` per decoder block (already × the
        background factor); needs ``split`` (its mask selects where the skip is warped).  style: one
        ``(b, 2·c_i)`` vector per decoder block.  A batch dividing the model batch is tiled (CFG rows).
        warp_threshold: mask threshold of the skip selection (default: ``split.threshold``, as the app).
        With neither, the computation is exactly :class:`SwitchUNet`'s.
        """
        n = len(self.output_blocks)
        if hs_bg is not None:
            if split is None:
                raise ValueError("hs_bg (background warping) needs split options with the sketch mask")
            check_lengths("hs_bg", hs_bg, n)
        if style is not None:
            check_lengths("style", style, n)
        ctx: Tensor | SplitContext | None = context
        if split is not None:
            if context is None:
                raise ValueError("split attention needs a context tensor (b, 2N, c); use zeros for an empty one")
            ctx = SplitContext(context, split)
        if ctx is not None:
            ctx = ctx.to(self.dtype)
        emb = self._embed(timesteps, x)
        scales = self._scales(reference_scales, x.device)
        h, skips = self._encode(x, emb, ctx, scales, hints)
        b, dtype = x.shape[0], self.dtype
        bg = [tile_batch(t, b, "hs_bg").to(x.device, dtype) for t in hs_bg] if hs_bg is not None else None
        st = [tile_batch(s, b, "style").to(x.device) for s in style] if style is not None else None
        threshold = warp_threshold if warp_threshold is not None else split.threshold if split is not None else 0.0
        for i, block in enumerate(self.output_blocks):
            skip = skips.pop()
            if bg is not None:
                skip = self._warp(i, skip, bg[i], ctx, threshold)  # type: ignore[arg-type]
            size = tuple(skips[-1].shape[-2:]) if skips else None
            h = self._run(block, torch.cat([h, skip], dim=1), emb, ctx, scales, size)
            if st is not None:
                h = self.style_modules[i](h, st[i], emb)
        return self._head(h, x)

    def _warp(self, i: int, skip: Tensor, bg_tokens: Tensor, ctx: SplitContext, threshold: float) -> Tensor:
        return warp_skip(self.warp_modules[i], skip, bg_tokens, ctx.mask_tokens(*skip.shape[-2:]), threshold)


def warp_skip(warp: nn.Module, skip: Tensor, bg_tokens: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """``where(mask > threshold, skip, warp(skip, bg_tokens))`` on the skip's token grid: ``skip`` (b, c, h, w),
    ``bg_tokens`` (b, m, c), ``mask`` (b, h·w, 1) (thesis §5.6: background warping of the decoder skips)."""
    b, c, hh, ww = skip.shape
    tokens = skip.flatten(2).transpose(1, 2)
    out = torch.where(mask > threshold, tokens, warp(tokens, bg_tokens))
    return out.transpose(1, 2).reshape(b, c, hh, ww)


__all__ = ["V2UNet", "tile_batch", "warp_skip"]
