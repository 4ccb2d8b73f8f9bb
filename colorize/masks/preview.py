"""Previews of masks over images: a tinted overlay, optionally with the mask outline."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from colorize.masks.morphology import erode

DEFAULT_COLOURS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.2, 0.2),  # red
    (0.2, 0.5, 1.0),  # blue
    (0.2, 0.9, 0.3),  # green
    (1.0, 0.8, 0.1),  # yellow
)


def _as_bhw(mask: torch.Tensor, batch: int, size: tuple[int, int]) -> torch.Tensor:
    """(B|1, H', W') or (B|1, 1, H', W') mask → (batch, H, W) float in [0, 1], bilinear resized."""
    m = mask.float()
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"mask must be (B, H, W) or (B, 1, H, W); got shape {tuple(mask.shape)}")
    if m.shape[0] not in (1, batch):
        raise ValueError(f"mask batch {m.shape[0]} does not match image batch {batch} (or 1)")
    if tuple(m.shape[-2:]) != size:
        m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return m.clamp(0.0, 1.0).expand(batch, *size)


def overlay_masks(
    images: torch.Tensor,
    masks: torch.Tensor | Sequence[torch.Tensor],
    colours: Sequence[Sequence[float]] | None = None,
    alpha: float = 0.5,
    outline: int = 2,
    dim_background: float = 0.0,
) -> torch.Tensor:
    """Tint ``images`` ``(B, 3, H, W)`` in [0, 1] where ``masks`` are on; returns ``(B, 3, H, W)``.

    ``masks``: one ``(B|1, H', W')`` mask or a list of them (one colour each, drawn in order;
    other sizes are resized to the image). ``alpha``: tint strength at mask = 1 (soft masks tint
    proportionally). ``outline``: width in pixels of a solid line just inside the mask boundary
    (``mask > 0.5``; not drawn along the image border), 0 for none. ``dim_background``: darken pixels outside every mask by
    this fraction, so what is *not* selected stands out too.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) in [0, 1]; got shape {tuple(images.shape)}")
    mask_list = [masks] if isinstance(masks, torch.Tensor) else list(masks)
    colours = list(colours) if colours is not None else [DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)] for i in range(len(mask_list))]
    if len(colours) < len(mask_list):
        raise ValueError(f"{len(mask_list)} masks but only {len(colours)} colours")
    b, _, h, w = images.shape
    out = images.float().clamp(0.0, 1.0)
    union = torch.zeros(b, h, w, device=out.device)
    for mask, colour in zip(mask_list, colours):
        m = _as_bhw(mask.to(out.device), b, (h, w))
        c = torch.tensor([float(v) for v in colour], device=out.device).view(1, 3, 1, 1)
        a = (alpha * m)[:, None]
        out = out * (1.0 - a) + c * a
        if outline > 0:
            hard = m > 0.5
            edge = hard & ~erode(hard, 2 * outline + 1)  # band of `outline` px inside the boundary
            out = torch.where(edge[:, None], c.expand_as(out), out)
        union = torch.maximum(union, m)
    if dim_background > 0:
        out = out * (1.0 - dim_background * (1.0 - union))[:, None]
    return out.to(images.dtype if images.is_floating_point() else torch.float32)
