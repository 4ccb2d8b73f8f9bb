"""A no-weight line extractor: colour image → black-on-white line art, for evaluation without sketch files.

The official app's default extractor (``lineart_keras``, reference §2.2) prepares its input with a
high-pass filter: the image minus its Gaussian blur (σ = 3), divided by the maximum, small responses
(< 0.1) cut; a SketchKeras network then draws the lines. Without those weights this module keeps the
filter and drops the network: a pixel darker than its blurred neighbourhood (ink, outlines) gives a
positive response

    lines = max_c(blur_σ(x) − x) / max(...),   lines < threshold → 0,   sketch = 1 − lines,

computed per image, strongest channel, so coloured outlines count as well as black ones. The result is
softer and noisier than a learned extractor's lines: good enough to run the thesis' protocol (§5.7.2:
"extracted sketches") on any folder of colour images, not a replacement for the SketchKeras model.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from colorize.preprocess import check_image

DEFAULT_SIGMA = 3.0
DEFAULT_THRESHOLD = 0.1


def gaussian_kernel1d(sigma: float, radius: int | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 1-D Gaussian taps; ``radius`` defaults to ⌈3σ⌉."""
    radius = max(1, math.ceil(3 * sigma)) if radius is None else radius
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W), reflect padding (replicate where the image is too small)."""
    k = gaussian_kernel1d(sigma, dtype=x.dtype).to(x.device)
    r, c = k.numel() // 2, x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    x = F.pad(x, (r, r, r, r), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@torch.no_grad()
def extract_sketch(image01: Tensor, sigma: float = DEFAULT_SIGMA, threshold: float = DEFAULT_THRESHOLD) -> Tensor:
    """Colour image(s) in [0, 1], (B, C, H, W) → line art (B, 3, H, W) in [0, 1], black lines on white.

    Lines are where a pixel is darker than its Gaussian (``sigma``) neighbourhood, scaled so each image's
    strongest line is 1; responses under ``threshold`` become paper. A flat image gives a blank sketch.
    """
    x = check_image(image01, "image")
    response = (gaussian_blur(x, sigma) - x).amax(dim=1, keepdim=True).clamp_min(0)
    peak = response.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    lines = torch.where(peak > 1e-6, response / peak.clamp_min(1e-6), torch.zeros_like(response))
    lines = torch.where(lines < threshold, torch.zeros_like(lines), lines)
    return (1.0 - lines).expand(-1, 3, -1, -1).contiguous()


__all__ = ["DEFAULT_SIGMA", "DEFAULT_THRESHOLD", "extract_sketch", "gaussian_blur", "gaussian_kernel1d"]
