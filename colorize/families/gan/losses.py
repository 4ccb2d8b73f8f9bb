"""Losses of the thesis' chapter-4 GAN framework (thesis §4.2.1 Eq. 4.1-4.2, §4.2.2 Eq. 4.3-4.6).

Equation numbers are the thesis': Eq. 4.1 multi-label BCE, Eq. 4.2 focal loss (reference-embedder fine-tuning);
Eq. 4.3 the weighted total, Eq. 4.4 the cGAN loss, Eq. 4.5 the L1 loss, Eq. 4.6 the isotropic TV loss (η = 1).

The classification losses take **logits** (log ŷ = logsigmoid(z), log(1 - ŷ) = logsigmoid(-z): the same value as
the equations, without log(0)). Each equation sums over the C tags; a batch is averaged over its samples.

The cGAN loss (Eq. 4.4) is the vanilla log form of pix2pix [37] -- not LSGAN, not hinge. D maximises it:
:func:`discriminator_loss` minimises ``BCE(D(x, y), 1) + BCE(D(x, G), 0)`` averaged over the patch map (pix2pix
additionally halves it; pass ``scale=0.5`` for that). G minimises ``log(1 - D(x, G))``; like pix2pix we use the
non-saturating equivalent ``-log D(x, G)`` (:func:`generator_adversarial_loss`, ``saturating=True`` gives the
literal form).

The thesis gives no λ values for Eq. 4.3. :class:`GANLossWeights` defaults to λ_cGAN = 1 and λ_L1 = 100 (pix2pix)
and λ_tv = 1e-5 for the summed TV term (a conventional small weight, our placeholder, not the thesis').
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F


def multilabel_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 4.1: ``-Σ_i [y_i log ŷ_i + (1 - y_i) log(1 - ŷ_i)]`` over the C tags, averaged over the batch.

    ``logits`` and ``targets`` (0/1, or soft labels) are (B, C); ŷ = sigmoid(logits).
    """
    per_tag = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    return per_tag.sum(dim=-1).mean()


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: torch.Tensor | float, gamma: float = 2.0
) -> torch.Tensor:
    """Eq. 4.2: ``-Σ_i [α_i (1 - ŷ_i)^γ y_i log ŷ_i + (1 - α_i) ŷ_i^γ (1 - y_i) log(1 - ŷ_i)]``, batch mean.

    ``alpha`` is the per-tag weight (C,) -- :func:`focal_alpha_from_counts` -- or one scalar; γ = 2 (thesis).
    """
    targets = targets.to(logits.dtype)
    alpha = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device)
    p = torch.sigmoid(logits)
    positive = alpha * (1 - p).pow(gamma) * targets * F.logsigmoid(logits)
    negative = (1 - alpha) * p.pow(gamma) * (1 - targets) * F.logsigmoid(-logits)
    return -(positive + negative).sum(dim=-1).mean()


def focal_alpha_from_counts(tag_counts: torch.Tensor) -> torch.Tensor:
    """α_i inversely proportional to the frequency of tag i (thesis §4.2.1), normalised into (0, 1].

    ``α_i = min_j n_j / n_i`` for the per-tag positive counts n (C,), the minimum taken over the tags that occur:
    α ∝ 1/n_i, the rarest tag gets α = 1 and the others proportionally less, so the ``(1 - α_i)`` weight of the
    negative term grows with frequency. A tag that never occurs (n_i = 0) gets α = 1 (and does not set the
    scale). The thesis does not say how α is normalised; the alternative ``(1/n_i) / Σ_j (1/n_j)`` would make
    every α tiny for C = 6000.
    """
    counts = torch.as_tensor(tag_counts, dtype=torch.float64)
    if (counts < 0).any():
        raise ValueError("tag counts must be non-negative")
    seen = counts > 0
    if not seen.any():
        return torch.ones_like(counts, dtype=torch.float32)
    alpha = torch.where(seen, counts[seen].min() / counts.clamp_min(1e-300), torch.ones_like(counts))
    return alpha.to(torch.float32)


def tag_classification_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: torch.Tensor | float,
    gamma: float = 2.0,
    bce_weight: float = 1.0,
    focal_weight: float = 1.0,
) -> torch.Tensor:
    """The fine-tuning objective of §4.2.1, BCE (Eq. 4.1) + focal (Eq. 4.2); the thesis gives no weights (1 and 1)."""
    return bce_weight * multilabel_bce_loss(logits, targets) + focal_weight * focal_loss(logits, targets, alpha, gamma)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """D's side of Eq. 4.4: ``-(log D(x, y) + log(1 - D(x, G(x, φ(r)))))``, averaged over the patch map."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return scale * (real + fake)


def generator_adversarial_loss(fake_logits: torch.Tensor, saturating: bool = False) -> torch.Tensor:
    """G's side of Eq. 4.4: ``-log D(x, G)`` (non-saturating, pix2pix) or literally ``log(1 - D(x, G))``."""
    if saturating:
        return -F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def l1_loss(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 4.5: ``E ||y - G(x, φ(r))||_1``, as the mean absolute error over all elements (pix2pix's L1Loss)."""
    return (target - generated).abs().mean()


def total_variation_loss(
    image: torch.Tensor, eta: float = 1.0, eps: float = 1e-8, reduction: Literal["sum", "mean"] = "sum"
) -> torch.Tensor:
    """Eq. 4.6, isotropic TV: ``Σ_{i,j} (||G_{i+1,j} - G_{i,j}||² + ||G_{i,j+1} - G_{i,j}||²)^(η/2)``, η = 1.

    ``image`` is (B, C, H, W); G_{i,j} is the C-vector (RGB) at pixel (i, j), so the squared norms sum over the
    channels. The sum runs over i < H - 1, j < W - 1 (both differences defined). ``eps`` is added inside the power
    so the gradient at a flat region stays finite (the value moves by at most eps^(η/2) per position).
    ``reduction="sum"``: sum over positions (the equation), mean over the batch; ``"mean"``: mean over both.
    """
    dy = image[:, :, 1:, :-1] - image[:, :, :-1, :-1]
    dx = image[:, :, :-1, 1:] - image[:, :, :-1, :-1]
    per_position = (dy.pow(2).sum(dim=1) + dx.pow(2).sum(dim=1) + eps).pow(eta / 2)
    if reduction == "mean":
        return per_position.mean()
    return per_position.flatten(1).sum(dim=1).mean()


@dataclass(frozen=True)
class GANLossWeights:
    """λ of Eq. 4.3 (the thesis gives none: λ_cGAN = 1 and λ_L1 = 100 are pix2pix's, λ_tv a placeholder)."""

    cgan: float = 1.0
    l1: float = 100.0
    tv: float = 1e-5


def generator_total_loss(
    fake_logits: torch.Tensor,
    generated: torch.Tensor,
    target: torch.Tensor,
    weights: GANLossWeights = GANLossWeights(),
    tv_reduction: Literal["sum", "mean"] = "sum",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 4.3 for G: ``λ_cGAN L_cGAN + λ_L1 L_L1 + λ_tv L_tv``; returns the total and the unweighted terms."""
    terms = {
        "cgan": generator_adversarial_loss(fake_logits),
        "l1": l1_loss(generated, target),
        "tv": total_variation_loss(generated, reduction=tv_reduction),
    }
    total = weights.cgan * terms["cgan"] + weights.l1 * terms["l1"] + weights.tv * terms["tv"]
    return total, terms
