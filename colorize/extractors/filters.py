"""Image filters shared by the line extractors: OpenCV-compatible Gaussian blur and padding to a multiple.

Border handling follows OpenCV's default ``BORDER_REFLECT_101`` (mirror without repeating the edge pixel,
PyTorch's ``"reflect"``), extended periodically when the pad is wider than the image, so small images
and the wide pads of the 256-multiple U-Net behave like a mirrored continuation of the picture.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

Pad = tuple[int, int, int, int]  # (left, right, top, bottom), F.pad order


def gaussian_kernel1d(sigma: float, radius: int | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 1-D Gaussian taps; ``radius`` defaults to ⌈3σ⌉."""
    radius = max(1, math.ceil(3 * sigma)) if radius is None else radius
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def opencv_radius(sigma: float, eight_bit: bool) -> int:
    """Radius OpenCV's ``GaussianBlur(img, (0, 0), σ)`` picks: ksize = round(σ·(3 if uint8 else 4)·2 + 1) | 1."""
    ksize = math.floor(sigma * (3 if eight_bit else 4) * 2 + 1 + 0.5) | 1
    return ksize // 2


def reflect_pad(x: Tensor, pad: Pad) -> Tensor:
    """``F.pad(..., mode="reflect")`` for any pad width (mirrors repeatedly when the pad exceeds the size)."""
    left, right, top, bottom = pad
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        if (h < 2 and (top or bottom)) or (w < 2 and (left or right)):  # nothing to mirror: repeat the pixel
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = (a - b for a, b in zip((left, right, top, bottom), step))
    return x


def gaussian_blur(x: Tensor, sigma: float, radius: int | None = None) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W) with mirrored borders (``BORDER_REFLECT_101``)."""
    k = gaussian_kernel1d(sigma, radius, dtype=x.dtype).to(x.device)
    r, c = k.numel() // 2, x.shape[1]
    x = reflect_pad(x, (r, r, r, r))
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def multiple_pad(height: int, width: int, multiple: int) -> Pad:
    """Centred (left, right, top, bottom) padding that brings ``height × width`` to multiples of ``multiple``."""
    ph, pw = -height % multiple, -width % multiple
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, Pad]:
    """Mirror-pad (B, C, H, W) so H and W are multiples of ``multiple``; returns the pad for :func:`crop`."""
    pad = multiple_pad(x.shape[-2], x.shape[-1], multiple)
    return (reflect_pad(x, pad) if any(pad) else x), pad


def crop(x: Tensor, pad: Pad) -> Tensor:
    """Undo :func:`pad_to_multiple`."""
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic, antialiased resize of (B, C, H, W) to ``size`` (no-op when already that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


__all__ = [
    "Pad", "crop", "gaussian_blur", "gaussian_kernel1d", "multiple_pad", "opencv_radius", "pad_to_multiple",
    "reflect_pad", "resize",
]
