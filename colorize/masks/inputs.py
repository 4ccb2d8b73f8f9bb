"""The masks of one generation with foreground/background separation (v1.5, v2): checked, fitted to their frames.

Masks are ``(B, H, W)`` (or ``(B, 1, H, W)``) floats in [0, 1], 1 = foreground (ComfyUI's MASK layout), each in the
frame of its own image: a sketch mask is fitted and padded exactly like the sketch
(:func:`colorize.preprocess.fit_and_pad`) and brought to latent resolution, a reference / background mask is
resized to its image and selects the background-only copy of it.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from colorize.errors import InputError
from colorize.masks.sketch import sketch_foreground_mask
from colorize.preprocess import fit_and_pad
from colorize.settings import DEFAULT_REFERENCE_THRESHOLD

ASPECT_TOLERANCE = 0.02


def check_mask(mask: Tensor, what: str) -> Tensor:
    """A mask as ``(B, 1, H, W)`` float32 in [0, 1] (clear errors for other shapes or ranges)."""
    if not isinstance(mask, Tensor):
        raise InputError(f"{what} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise InputError(f"{what} must have shape (B, H, W) or (B, 1, H, W); got {tuple(mask.shape)}")
    mask = mask.float()
    if not torch.isfinite(mask).all() or float(mask.min()) < -1e-3 or float(mask.max()) > 1 + 1e-3:
        raise InputError(f"{what} values must lie in [0, 1] (1 = foreground)")
    return mask.clamp(0, 1)[:, None]


def fit_sketch_mask(mask: Tensor, sketch_hw: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """A user sketch mask (sketch frame, any resolution of the sketch's aspect) → ``(B, 1, H, W)`` at the
    target size, fitted and centre-padded (as background) exactly like the sketch."""
    mask = check_mask(mask, "sketch mask")
    mh, mw = mask.shape[-2:]
    if abs(mw / mh - sketch_hw[1] / sketch_hw[0]) > ASPECT_TOLERANCE * sketch_hw[1] / sketch_hw[0]:
        raise InputError(f"the sketch mask ({mh}x{mw}) does not have the sketch's aspect ({sketch_hw[0]}x"
                         f"{sketch_hw[1]}); give it in the sketch's frame")
    return (fit_and_pad(mask * 2 - 1, size, fill=-1.0) + 1) / 2


def sketch_mask_from_prepared(sketch: Tensor) -> Tensor:
    """Sketch foreground mask ``(B, 1, H, W)`` of a prepared sketch (lines +1, background -1), no weights
    (:func:`colorize.masks.sketch_foreground_mask`; the padding counts as background)."""
    paper = ((1 - sketch.float().cpu()) / 2).clamp(0, 1)  # dark lines on white paper
    return sketch_foreground_mask(paper, polarity="dark_lines")[:, None].to(sketch.device)


def reference_mask_or_fallback(mask: Tensor | None, reference: Tensor) -> Tensor:
    """The reference foreground mask ``(B, 1, h, w)``; without one, an all-foreground mask and a warning.

    A weight-free reference mask does not exist: compute one with SAM (``colorize.masks.sam_foreground_mask``,
    needs the ``sam-vit-*`` weights) or any segmenter. All foreground makes the background-only reference
    blank (white), so background enhance then paints a plain background.
    """
    if mask is not None:
        return check_mask(mask, "reference mask").to(reference.device)
    warnings.warn(
        "background enhance without a reference mask or background image: treating the whole reference as "
        "foreground (the background is taken from a white image). Pass reference_mask (e.g. from "
        "colorize.masks.sam_foreground_mask with SAM weights) or a background image for a real background.",
        UserWarning,
        stacklevel=3,
    )
    return torch.ones(reference.shape[0], 1, *reference.shape[-2:], device=reference.device)


def background_only_reference(reference: Tensor, reference_mask: Tensor,
                              threshold: float | Tensor = DEFAULT_REFERENCE_THRESHOLD) -> Tensor:
    """``where(rmask < threshold, reference, white)`` for a reference in [-1, 1] ``(b, 3, H, W)`` and its
    foreground mask ``(b|1, 1, H, W)`` (resized bilinearly first if its size differs); a ``(b, 1, 1, 1)``
    threshold tensor gives per-sample thresholds (training)."""
    if reference_mask.ndim == 3:
        reference_mask = reference_mask[:, None]
    if reference_mask.shape[-2:] != reference.shape[-2:]:
        reference_mask = F.interpolate(reference_mask.float(), size=reference.shape[-2:], mode="bilinear",
                                       align_corners=False)
    keep = reference_mask.to(reference.device) < threshold
    return torch.where(keep, reference, torch.ones_like(reference))

def sketch_mask_to_latent(mask: Tensor, factor: int = 8) -> Tensor:
    """Pixel-resolution sketch mask ``(b, 1, H, W)`` → latent resolution by bicubic ×1/factor (official
    ``backend/appfunc.py:264``)."""
    if mask.ndim == 3:
        mask = mask[:, None]
    return F.interpolate(mask.float(), scale_factor=1.0 / factor, mode="bicubic", align_corners=False)


__all__ = [
    "background_only_reference",
    "check_mask",
    "fit_sketch_mask",
    "reference_mask_or_fallback",
    "sketch_mask_from_prepared",
    "sketch_mask_to_latent",
]
