"""Correlation map and stratified threshold heatmap of a control prompt (thesis §5.8.2–5.8.3, Fig. 5.23;
official "Visualize" button, ``refnet/sampling/manipulation.py:98-135`` and ``backend/functool.py:246-272``).

The patch tokens are projected on the control direction (``v·c``), the 16×16 map is bicubically resized
to the reference size, min-max normalised and cut at ts0..ts3 (0.25 per threshold reached), so the user
sees which regions each threshold of Eq. 5.11 selects. Low levels (blue) are the regions most related to
the control prompt (``m ≤ ts0`` gets the ``−r·d`` weight).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from colorize.manipulation.edits import (
    DEFAULT_THRESHOLDS,
    EVERYTHING,
    Edit,
    TextEncoder,
    check_thresholds,
    encode_prompts,
    normalize_control,
    project,
)
from colorize.manipulation.local import local_manipulate
from colorize.manipulation.pwv import minmax_normalize

#: What the app adds per threshold reached before colour mapping: ``uint8(0.25 · 255)``.
UINT8_STEP = 63


def token_grid(n: int, grid: int | tuple[int, int] | None = None) -> tuple[int, int]:
    """(rows, cols) of ``n`` patch tokens: ``grid`` if given (checked), else the square root of ``n``."""
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} patch tokens do not form a square grid; pass grid=(rows, cols)")
        return side, side
    gh, gw = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    if gh * gw != n:
        raise ValueError(f"grid {gh}x{gw} does not match {n} patch tokens")
    return gh, gw


def correlation_map(patches: Tensor, direction: Tensor, grid: int | tuple[int, int] | None = None) -> Tensor:
    """Projection of the patch tokens (b, n, d) on a unit ``direction`` (d,) → (b, rows, cols), row-major."""
    if patches.ndim != 3:
        raise ValueError(f"patch tokens must be (b, n, d); got {tuple(patches.shape)}")
    gh, gw = token_grid(patches.shape[1], grid)
    return project(patches.to(torch.float32), direction.to(patches.device, torch.float32)).reshape(-1, gh, gw)


def upsample_map(scores: Tensor, size: tuple[int, int]) -> Tensor:
    """(b, h, w) → (b, H, W) bicubic, ``align_corners=False``, no antialias (as the app)."""
    return F.interpolate(scores[:, None], size=tuple(size), mode="bicubic", align_corners=False)[:, 0]


def stratify(scores: Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Tensor:
    """Min-max normalise each (H, W) map, then ``0.25 · #{ts_i ≤ m}`` → levels in {0, .25, .5, .75, 1}.

    A constant map normalises to 1 (see :func:`minmax_normalize`), i.e. level 1 everywhere.
    """
    m = minmax_normalize(scores, dim=(-2, -1))
    return sum((0.25 * (m >= t).to(m.dtype) for t in check_thresholds(thresholds)), torch.zeros_like(m))


def levels_to_uint8(levels: Tensor) -> Tensor:
    """Levels → what the app colour-maps: the sum of ``uint8(0.25·255) = 63`` per level (0, 63, …, 252)."""
    return (torch.round(levels * 4) * UINT8_STEP).to(torch.uint8)


def jet_colormap(x: Tensor) -> Tensor:
    """JET colour map (as OpenCV ``COLORMAP_JET``, RGB order): values in [0, 1] (...) → (..., 3) in [0, 1].

    Dark blue at 0, cyan, yellow, dark red at 1 (piecewise linear; not bit-identical to OpenCV's LUT).
    """
    x = x.to(torch.float32).clamp(0, 1)
    channel = lambda centre: (1.5 - (4 * x - centre).abs()).clamp(0, 1)
    return torch.stack([channel(3.0), channel(2.0), channel(1.0)], dim=-1)


def draw_grid(image: Tensor, grid: tuple[int, int], value: float = 0.0) -> Tensor:
    """Copy of ``image`` (b, c, H, W) with 1-px lines at the token-cell borders (``i·H // rows``, interior only)."""
    out = image.clone()
    h, w = out.shape[-2:]
    gh, gw = grid
    rows = sorted({i * h // gh for i in range(1, gh)})
    cols = sorted({j * w // gw for j in range(1, gw)})
    out[..., rows, :] = value
    out[..., :, cols] = value
    return out


def overlay_heatmap(
    reference: Tensor, levels: Tensor, grid: tuple[int, int], heat_weight: float = 0.7
) -> Tensor:
    """``(1−α)·reference + α·JET(levels)`` with black grid lines; reference (b, 3, H, W) in [0, 1] → same shape.

    ``α = 0.7`` as the app; the colours come from the app's uint8 values (multiples of 63).
    """
    colours = jet_colormap(levels_to_uint8(levels).float() / 255.0).permute(0, 3, 1, 2)
    mixed = (1.0 - heat_weight) * reference.to(colours) + heat_weight * colours
    return draw_grid(mixed.clamp(0, 1), grid)


@dataclass(frozen=True)
class Heatmap:
    """scores: (b, H, W) resized projection map (ones for ``"everything"``); levels: (b, H, W) in
    {0, .25, .5, .75, 1}; image: (b, 3, H, W) overlay in [0, 1] at the reference's size."""

    scores: Tensor
    levels: Tensor
    image: Tensor


def control_heatmap(
    tokens: Tensor,
    reference: Tensor,
    control: str,
    encode_text: TextEncoder,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    edits: Sequence[Edit] = (),
    grid: int | tuple[int, int] | None = None,
) -> Heatmap:
    """The "Visualize" heatmap: apply ``edits`` (local) to ``tokens`` (b, 1+n, d, CLS first), project the
    patch tokens on ``control``, resize to the reference (b, 3, H, W) in [0, 1], stratify at ``thresholds``
    and overlay. A batch of 1 on either side is broadcast to the other."""
    if reference.ndim != 4 or reference.shape[1] != 3:
        raise ValueError(f"reference must be (b, 3, H, W) in [0, 1]; got {tuple(reference.shape)}")
    if tokens.ndim != 3 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be (b, 1+n, d) with the CLS token first; got {tuple(tokens.shape)}")
    bt, br = tokens.shape[0], reference.shape[0]
    if bt != br and 1 not in (bt, br):
        raise ValueError(f"batch sizes differ: {bt} token sets vs {br} reference images")
    check_thresholds(thresholds)
    cells = token_grid(tokens.shape[1] - 1, grid)
    size = tuple(reference.shape[-2:])
    control = normalize_control(control)
    x = local_manipulate(tokens, edits, encode_text).to(torch.float32)
    if control == EVERYTHING:
        scores = torch.ones(bt, *size, device=x.device)
    else:
        direction = encode_prompts(encode_text, [control], x)[control]
        scores = upsample_map(correlation_map(x[:, 1:], direction, cells), size)
    b = max(bt, br)
    scores = scores.expand(b, *size)
    levels = stratify(scores, thresholds)
    image = overlay_heatmap(reference.to(scores.device).expand(b, -1, -1, -1), levels, cells)
    return Heatmap(scores, levels, image)


__all__ = [
    "UINT8_STEP",
    "Heatmap",
    "control_heatmap",
    "correlation_map",
    "draw_grid",
    "jet_colormap",
    "levels_to_uint8",
    "overlay_heatmap",
    "stratify",
    "token_grid",
    "upsample_map",
]
