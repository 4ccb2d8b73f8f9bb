"""Binary/grey morphology and the border flood fill (torch and numpy only; no scipy, no OpenCV).

All functions take and return ``(B, H, W)`` tensors. Square structuring elements are applied
separably, and each 1-D running max uses window doubling, so a k-wide square costs
O(log k) elementwise maxima per pixel. The flood fill labels horizontal runs of free pixels
and joins vertically touching runs with a vectorised union-find, so its cost does not grow
with the length or the number of turns of the paths.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _running_max(x: torch.Tensor, size: int, dim: int, reflect: bool) -> torch.Tensor:
    """``out[i] = max(x[i - lo .. i + hi])`` along ``dim`` with ``lo + hi = size - 1``.

    ``lo = size // 2`` (``reflect`` swaps lo and hi). Outside the tensor counts as 0 / False.
    """
    hi = size // 2
    lo = size - 1 - hi
    if reflect:
        lo, hi = hi, lo
    n = x.shape[dim]
    pad = [0, 0] * (x.ndim - 1 - (dim % x.ndim)) + [lo, hi]
    y = F.pad(x.float(), pad).to(x.dtype) if x.dtype == torch.bool else F.pad(x, pad)
    width = 1
    while 2 * width <= size:  # y[j] = max(y_orig[j .. j + width - 1]), valid for j < len - width + 1
        y = torch.maximum(y.narrow(dim, 0, y.shape[dim] - width), y.narrow(dim, width, y.shape[dim] - width))
        width *= 2
    if width < size:  # two overlapping windows of `width` cover `size`
        shift = size - width
        y = torch.maximum(y.narrow(dim, 0, y.shape[dim] - shift), y.narrow(dim, shift, y.shape[dim] - shift))
    return y.narrow(dim, 0, n)


def dilate(mask: torch.Tensor, size: int, reflect: bool = False) -> torch.Tensor:
    """Dilation of a bool or float ``(B, H, W)`` mask by a ``size`` x ``size`` square.

    Odd sizes are centred; even sizes reach one pixel further towards -x/-y (``reflect``
    mirrors that, so ``dilate(dilate(m, k), k, reflect=True)`` is a symmetric 2k-1 square). ``size <= 1`` returns the input unchanged.
    """
    if size <= 1:
        return mask
    return _running_max(_running_max(mask, size, -1, reflect), size, -2, reflect)


def erode(mask: torch.Tensor, size: int, reflect: bool = False) -> torch.Tensor:
    """Erosion by a ``size`` x ``size`` square (dual of :func:`dilate`). Outside the image counts
    as foreground, so a mask touching the border is not eaten away from the border."""
    if size <= 1:
        return mask
    if mask.dtype == torch.bool:
        return ~dilate(~mask, size, reflect)
    return 1.0 - dilate(1.0 - mask, size, reflect)


def flood_from_border(free: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Pixels of ``free`` that are 4-connected, through ``free`` pixels, to a ``seeds`` pixel.

    ``free`` and ``seeds`` are bool ``(B, H, W)``; the result is bool on ``free``'s device.
    """
    f = free.detach().to("cpu", torch.bool).numpy()
    s = seeds.detach().to("cpu", torch.bool).numpy()
    out = np.stack([_flood_one(f[i], s[i]) for i in range(f.shape[0])])
    return torch.from_numpy(out).to(free.device)


def _flood_one(free: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Connected-component flood of one (H, W) image: runs are nodes, vertical contacts edges."""
    start = free.copy()
    start[:, 1:] &= ~free[:, :-1]
    n = int(start.sum())
    if n == 0 or not (seeds & free).any():
        return np.zeros_like(free)
    run = (np.cumsum(start.ravel()) - 1).reshape(free.shape)  # run id of each free pixel
    both = free[:-1] & free[1:]  # a maximal horizontal segment of `both` joins exactly one run pair
    first = both.copy()
    first[:, 1:] &= ~both[:, :-1]
    u, v = run[:-1][first], run[1:][first]
    parent = np.arange(n)
    while u.size:
        pu, pv = parent[u], parent[v]  # roots: `parent` is fully compressed here
        keep = pu != pv
        u, v, pu, pv = u[keep], v[keep], pu[keep], pv[keep]
        if not u.size:
            break
        np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))  # hook the larger root
        while True:  # pointer jumping until every node points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    reached = np.zeros(n, dtype=bool)
    reached[parent[run[seeds & free]]] = True
    return reached[parent][run] & free
