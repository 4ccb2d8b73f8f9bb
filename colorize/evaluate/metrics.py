"""Image-quality metrics of the thesis' evaluation (§3.3.2, Tab. 5.4): FID, PSNR, MS-SSIM, CLIP similarity.

All images are (B, C, H, W) tensors in [0, 1] unless stated; per-image metrics return a (B,) tensor.
Statistics are accumulated in float64 on the inputs' device.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Wang, Simoncelli & Bovik (2003), "Multi-scale structural similarity for image quality assessment".
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


# ------------------------------------------------------------------------------------------ FID


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance (N − 1, Eq. 3.1) of (N, D) features, in float64."""
    f = features.detach().reshape(features.shape[0], -1).double()
    if f.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 feature vectors per set, got {f.shape[0]}")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def sqrtm_psd(matrix: Tensor) -> Tensor:
    """Principal square root of a symmetric positive semi-definite matrix (eigen-decomposition;
    round-off negative eigenvalues are clipped to 0)."""
    sym = 0.5 * (matrix + matrix.T)
    vals, vecs = torch.linalg.eigh(sym)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def trace_sqrt_product(sigma1: Tensor, sigma2: Tensor) -> Tensor:
    """Tr((Σ1 Σ2)^½) for covariance matrices Σ1, Σ2.

    Σ1Σ2 is similar to the PSD matrix Σ1^½ Σ2 Σ1^½ (same eigenvalues, all ≥ 0), so the trace of the
    principal root is the sum of the square roots of that symmetric matrix's eigenvalues.
    """
    root1 = sqrtm_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    return torch.linalg.eigvalsh(0.5 * (inner + inner.T)).clamp_min(0).sqrt().sum()


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Fréchet distance of two Gaussians (Eq. 3.2): ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½)."""
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    diff = mu1 - mu2
    value = diff @ diff + torch.trace(sigma1) + torch.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(value.clamp_min(0))


def fid_from_features(features_a: Tensor, features_b: Tensor) -> float:
    """FID between two sets of feature vectors (N, D) and (M, D); order of the rows does not matter."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


# ------------------------------------------------------------------------------------------ PSNR


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB: 10·log10(R² / MSE), MSE over H, W and C (Eq. 3.3); +inf when equal."""
    _check_pair(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


# ------------------------------------------------------------------------------------------ SSIM


def _gaussian_taps(size: int, sigma: float, like: Tensor) -> Tensor:
    x = torch.arange(size, dtype=torch.float64, device=like.device) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).to(like.dtype)


def _ssim_terms(x: Tensor, y: Tensor, data_range: float, win_size: int, sigma: float) -> tuple[Tensor, Tensor]:
    """Per-image means of l·cs (SSIM) and cs (contrast-structure) over 'valid' Gaussian windows.

    The separable window shrinks to the image when the image is smaller than ``win_size`` (small test
    images). The five local moments go through one separable float64 convolution."""
    b, c, h, w = x.shape
    size = min(win_size, h, w)
    stack = torch.cat([x, y, x * x, y * y, x * y]).double().reshape(5 * b * c, 1, h, w)
    g = _gaussian_taps(size, sigma, stack)
    filtered = F.conv2d(F.conv2d(stack, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
    mx, my, exx, eyy, exy = filtered.reshape(5, b, c, *filtered.shape[-2:]).unbind(0)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    vx, vy, cxy = exx - mx * mx, eyy - my * my, exy - mx * my
    cs = (2 * cxy + c2) / (vx + vy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return (lum * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0, win_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """Per-image SSIM (Eq. 3.4–3.5, α = β = γ = 1, 11×11 Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03)."""
    _check_pair(a, b)
    return _ssim_terms(a.double(), b.double(), data_range, win_size, sigma)[0]


def ms_ssim(
    a: Tensor,
    b: Tensor,
    data_range: float = 1.0,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    win_size: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
) -> Tensor:
    """Per-image multi-scale SSIM: ∏_{j<M} cs_j^{w_j} · ssim_M^{w_M} over M = len(weights) dyadic scales.

    Scales are 2×2 average-pooled; contrast-structure is taken at every scale, luminance at the coarsest
    (Wang et al. 2003). Negative per-scale terms are clipped to 0 before the fractional powers, as common
    implementations do. Identical images give exactly 1.
    """
    _check_pair(a, b)
    x, y = a.double(), b.double()
    out = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
    for j, weight in enumerate(weights):
        full, cs = _ssim_terms(x, y, data_range, win_size, sigma)
        last = j == len(weights) - 1
        out = out * (full if last else cs).clamp_min(0) ** weight
        if not last:
            if min(x.shape[-2:]) < 2:
                raise ValueError(f"image too small for {len(weights)} MS-SSIM scales: {tuple(a.shape[-2:])}")
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return out


# ------------------------------------------------------------------------------------------ CLIP


@torch.no_grad()
def clip_embeddings(encoder: nn.Module, images01: Tensor) -> Tensor:
    """Unit-norm CLIP image embeddings (B, D): the projected CLS token of ``encoder.encode_image``."""
    device = next(encoder.parameters()).device
    cls = encoder.encode_image(images01.to(device, torch.float32) * 2.0 - 1.0, "cls")
    return F.normalize(cls.reshape(cls.shape[0], -1).double(), dim=-1)


def clip_similarity(encoder: nn.Module, a: Tensor, b: Tensor) -> Tensor:
    """Per-image cosine similarity of CLIP image embeddings (Eq. 3.6–3.7), in [−1, 1]."""
    _check_pair(a, b, same_size=False)
    return (clip_embeddings(encoder, a) * clip_embeddings(encoder, b)).sum(-1)


def _check_pair(a: Tensor, b: Tensor, same_size: bool = True) -> None:
    if a.ndim != 4 or b.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W); got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0] or (same_size and a.shape != b.shape):
        raise ValueError(f"image batches do not match: {tuple(a.shape)} vs {tuple(b.shape)}")


def mean_finite(values: Sequence[float]) -> float:
    """Mean of the finite values (PSNR of identical images is +inf); NaN when there are none."""
    vals = [v for v in values if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


__all__ = [
    "MS_SSIM_WEIGHTS",
    "clip_embeddings",
    "clip_similarity",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "mean_finite",
    "ms_ssim",
    "psnr",
    "sqrtm_psd",
    "ssim",
    "trace_sqrt_product",
]
