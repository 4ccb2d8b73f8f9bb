"""How a host's U-Net call maps onto the colorizer's inputs (no host import): token grids and CFG chunks.

A host that replaces the attention product hands over ``q, k, v`` and the latent's shape but not always the
block's token grid (:func:`token_grid` recovers it), and it may run the CFG rows in one batch or in several
chunks: :func:`chunk_hints` picks the sketch hints of each chunk (Eq. 5.1; official rows ``cond`` /
``uncond_ref`` with the sketch's hints, ``uncond_sketch`` with the blank sketch's). The attention itself is the
library's processors (:mod:`colorize.models.attention`, :mod:`colorize.models.split_attention`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def token_grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) grid of a block with ``tokens`` positions under a latent of ``height × width`` (each
    Downsample halves a side, rounding up)."""
    h, w = height, width
    while h * w > tokens:
        h, w = (h + 1) // 2, (w + 1) // 2
    if h * w != tokens:
        raise ValueError(f"{tokens} tokens do not form a grid under a {height}x{width} latent")
    return h, w


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


__all__ = ["chunk_hints", "token_grid"]
