"""v2 size embedding: the reference-to-target size ratios as a sinusoid (thesis §5.6; reference notes §1.10).

The v2 background and style encoders are told how the reference relates to the output canvas: for a
reference of pixel size ``(oh, ow)`` and a target ``(H, W)``

* if the reference is smaller than the target in either side, it is first "biased" to
  ``ih = oh + max(H, W)``, ``iw = ow / oh · ih`` (aspect kept); otherwise ``ih, iw = oh, ow``;
* ``rh = ih / H``, ``rw = iw / W`` (float32);
* ``y = [sinusoid_d(rh), sinusoid_d(rw)]`` with the parameter-free ``[cos, sin]`` sinusoid of width
  ``d`` (256 released, so ``y`` has 512 entries = the encoders' ``adm_in_channels``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from colorize.models.unet import timestep_embedding

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


__all__ = ["RATIO_EMBED_DIM", "embed_ratios", "ratio_tensor", "size_embedding", "size_ratios"]
