"""The colorizer's per-step math as pure functions a host's U-Net patches call (no host import).

A host that replaces the attention *product* hands over ``q, k, v`` already projected by the layer's own
``to_q / to_k / to_v`` (and applies ``to_out`` afterwards). From those, plus the raw layer inputs for the
LoRA deltas, these functions compute exactly what :class:`~colorize.models.split_attention.SplitCrossAttention`
and :class:`~colorize.models.v2_unet.V2UNet` compute (thesis §5.2 reference strength, Eq. 5.4 split
cross-attention, §5.6 skip warping), and pick the sketch hints of each CFG chunk (Eq. 5.1; official rows
``cond`` / ``uncond_ref`` with the sketch's hints, ``uncond_sketch`` with the blank sketch's).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from colorize.models.attention import Scale, apply_scale
from colorize.models.split_attention import SplitOptions
from colorize.models.v2_unet import tile_batch
from colorize.models.warp import WarpBlock
from colorize.native.extras import AttentionLora

Attend = Callable[[Tensor, Tensor, Tensor], Tensor]


def attend_heads(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """softmax(q kᵀ/√d) v per head: (b, n, h·d), (b, m, h·d) ×2 → (b, n, h·d) (one SDPA call)."""
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, inner)


def token_grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) grid of a block with ``tokens`` positions under a latent of ``height × width`` (each
    Downsample halves a side, rounding up)."""
    h, w = height, width
    while h * w > tokens:
        h, w = (h + 1) // 2, (w + 1) // 2
    if h * w != tokens:
        raise ValueError(f"{tokens} tokens do not form a grid under a {height}x{width} latent")
    return h, w


def mask_tokens(mask: Tensor, h: int, w: int, batch: int) -> Tensor:
    """A latent mask ``(b, 1, H, W)`` bicubic-resized to an ``h×w`` token grid, ``(batch, h·w, 1)`` float32,
    tiled over a model batch that ``b`` divides (as :meth:`SplitContext.mask_tokens`)."""
    mask = mask.float()
    if tuple(mask.shape[-2:]) != (h, w):
        mask = F.interpolate(mask, size=(h, w), mode="bicubic", align_corners=False)
    return tile_batch(mask.flatten(2).transpose(1, 2), batch, "mask")


def scaled_attention(q: Tensor, k: Tensor, v: Tensor, scale: Scale, attend: Attend) -> Tensor:
    """Plain cross-attention with the block's reference strength on softmax(qkᵀ/√d)·v (before ``to_out``)."""
    return apply_scale(attend(q, k, v), scale)


def split_attention(
    q: Tensor, k: Tensor, v: Tensor, *, x: Tensor | None, context: Tensor | None, mask: Tensor,
    options: SplitOptions, scale: Scale, lora: AttentionLora | None, attend: Attend,
) -> Tensor:
    """Eq. 5.4 from base projections: the context is ``[fg N | bg N]``; each half is attended separately
    (with its LoRA branch when enabled: deltas of the raw query input ``x`` and raw ``context``), scaled by
    reference × fg/bg strength, merged, and picked per position by the mask ``(b, n, 1)``. Tie rule as
    :class:`~colorize.models.split_attention.SplitCrossAttention` (LoRA layers: ``mask > t`` is foreground)."""
    n = k.shape[1] // 2
    o = options
    use = {"fg": lora is not None and o.use_fg_lora, "bg": lora is not None and o.use_bg_lora}
    if (use["fg"] or use["bg"]) and (x is None or context is None):
        raise ValueError("split attention with LoRA needs the raw query input and context")

    def branch(part: slice, name: str) -> Tensor:
        qq, kk, vv = q, k[:, part], v[:, part]
        if use[name]:
            tokens = context[:, part]  # type: ignore[index]
            qq = qq + lora.to_q.delta(x, name, o.lora_scale).to(q.dtype)  # type: ignore[union-attr,arg-type]
            kk = kk + lora.to_k.delta(tokens, name, o.lora_scale).to(k.dtype)  # type: ignore[union-attr,arg-type]
            vv = vv + lora.to_v.delta(tokens, name, o.lora_scale).to(v.dtype)  # type: ignore[union-attr,arg-type]
        return attend(qq, kk, vv)

    bg = apply_scale(branch(slice(n, None), "bg"), scale * o.bg_scale)
    fg = apply_scale(branch(slice(0, n), "fg"), scale * o.fg_scale)
    if o.merge_scale != 0.0:
        fg = fg * (1.0 - o.merge_scale) + bg * o.merge_scale
    if lora is not None:
        return torch.where(mask > o.threshold, fg, bg)
    return torch.where(mask < o.threshold, bg, fg)


def warp_skip(warp: WarpBlock, skip: Tensor, bg_tokens: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """v2: the skip ``(b, c, h, w)`` where the mask (``(b, h·w, 1)``) is not above the threshold is replaced by
    ``warp(skip tokens, background tokens)`` (as :meth:`V2UNet._warp`)."""
    b, c, h, w = skip.shape
    tokens = skip.flatten(2).transpose(1, 2)
    bg = tile_batch(bg_tokens, b, "hs_bg").to(skip.device, skip.dtype)
    warped = warp(tokens, bg)
    return torch.where(mask > threshold, tokens, warped).transpose(1, 2).reshape(b, c, h, w)


def chunk_hints(hints: Sequence[Tensor], blank: Sequence[Tensor], sketch_uncond: Sequence[bool],
                chunk: int) -> list[Tensor]:
    """The hints of a model batch made of chunks of ``chunk`` rows: the blank sketch's hints for chunks that
    are sketch-unconditional, the sketch's for every other chunk (a batch-1 hint is expanded to ``chunk``)."""
    out = []
    for h, u in zip(hints, blank):
        parts = [(u if flag else h) for flag in sketch_uncond]
        parts = [p.expand(chunk, *p.shape[1:]) if p.shape[0] == 1 else p for p in parts]
        if any(p.shape[0] != chunk for p in parts):
            raise ValueError(f"sketch batch {h.shape[0]} cannot be paired with a latent batch of {chunk}")
        out.append(torch.cat(parts))
    return out


__all__ = [
    "Attend",
    "attend_heads",
    "chunk_hints",
    "mask_tokens",
    "scaled_attention",
    "split_attention",
    "token_grid",
    "warp_skip",
]
