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
from torch import Tensor, nn

from colorize.models.attention import Scale, apply_scale, attend_heads
from colorize.models.split_attention import SplitOptions, combine_split, resize_mask_tokens
from colorize.models.v2_unet import tile_batch
from colorize.models.v2_unet import warp_skip as warp_decoder_skip
from colorize.native.extras import AttentionLora

Attend = Callable[[Tensor, Tensor, Tensor], Tensor]


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
    return tile_batch(resize_mask_tokens(mask, h, w), batch, "mask")


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

    bg = branch(slice(n, None), "bg")
    return combine_split(branch(slice(0, n), "fg"), bg, mask, o, scale, lora is not None)


def warp_skip(warp: nn.Module, skip: Tensor, bg_tokens: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """v2 skip warping (:func:`colorize.models.v2_unet.warp_skip`) with the background tokens tiled over the
    skip's batch (CFG chunks) and cast to it, as :class:`~colorize.models.v2_unet.V2UNet` does."""
    bg = tile_batch(bg_tokens, skip.shape[0], "hs_bg").to(skip.device, skip.dtype)
    return warp_decoder_skip(warp, skip, bg, mask, threshold)


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
