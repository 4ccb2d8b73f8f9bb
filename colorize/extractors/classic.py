"""No-weight line extractors: the high-pass filter and A1111/ControlNet "lineart_standard".

Both take colour or grey images in [0, 1], (B, C, H, W), and return line art (B, 3, H, W) in [0, 1]
with **black lines on white** (the polarity :func:`colorize.preprocess.prepare_sketch` expects),
at the input's resolution.
"""
from __future__ import annotations

import torch
from torch import Tensor

from colorize.extractors.filters import gaussian_blur, opencv_radius
from colorize.preprocess import check_image

DEFAULT_SIGMA = 3.0
DEFAULT_THRESHOLD = 0.1
STANDARD_SIGMA = 6.0


@torch.no_grad()
def high_pass(image01: Tensor, sigma: float = DEFAULT_SIGMA, threshold: float = DEFAULT_THRESHOLD) -> Tensor:
    """Lines where a pixel is darker than its Gaussian (``sigma``) neighbourhood.

    SketchKeras' input filter (official ``lineart_keras``, ``preprocessor/__init__.py:81-92``) without the network:
    ``lines = max_c(blur(x) − x) / max(...)``, responses under ``threshold`` become paper,
    ``sketch = 1 − lines``. Each image is scaled so its strongest line is 1; a flat image gives a
    blank (all-white) sketch. The strongest channel counts, so coloured outlines are found too.
    """
    x = check_image(image01, "image")
    response = (gaussian_blur(x, sigma) - x).amax(dim=1, keepdim=True).clamp_min(0)
    peak = response.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    lines = torch.where(peak > 1e-6, response / peak.clamp_min(1e-6), torch.zeros_like(response))
    lines = torch.where(lines < threshold, torch.zeros_like(lines), lines)
    return (1.0 - lines).expand(-1, 3, -1, -1).contiguous()


def _numpy_median(values: Tensor) -> Tensor:
    """Median as ``np.median`` defines it (mean of the two middle values for an even count)."""
    n = values.numel()
    lo = values.kthvalue((n + 1) // 2).values
    return lo if n % 2 else (lo + values.kthvalue(n // 2 + 1).values) / 2


@torch.no_grad()
def lineart_standard(image01: Tensor, sigma: float = STANDARD_SIGMA) -> Tensor:
    """A1111/ControlNet "lineart_standard" (the official ``invert-webui`` preprocessor, ``backend/functool.py:71-87``).

    On 0..255 values: ``g = GaussianBlur(x, σ=6)`` (OpenCV float kernel, radius 4σ, mirrored borders),
    ``intensity = clip(min_c(g − x), 0, 255)``, divided by ``max(16, median(intensity[intensity > 8]))``
    (16 when no pixel exceeds 8), ×127, clipped to 0..255 and truncated to 8 bits. The official feeds
    that (lines bright) to the colorizer as is; here it is returned as ``1 − intensity/255`` (dark lines
    on white), which :func:`colorize.preprocess.prepare_sketch` maps back to the same signed sketch.
    """
    x = check_image(image01, "image") * 255.0
    g = gaussian_blur(x, sigma, radius=opencv_radius(sigma, eight_bit=False))
    intensity = (g - x).amin(dim=1, keepdim=True).clamp(0, 255)
    out = []
    for item in intensity:
        strong = item[item > 8]
        denom = max(16.0, float(_numpy_median(strong))) if strong.numel() else 16.0
        out.append(torch.floor((item / denom * 127.0).clamp(0, 255)))
    lines = torch.stack(out) / 255.0
    return (1.0 - lines).expand(-1, 3, -1, -1).contiguous()


__all__ = ["DEFAULT_SIGMA", "DEFAULT_THRESHOLD", "STANDARD_SIGMA", "high_pass", "lineart_standard"]
