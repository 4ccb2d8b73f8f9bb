"""Per-generation inputs of v1.5 / v2: masks in the sketch's target frame, and seeded VAE latents.

Masks are ``(B, H, W)`` (or ``(B, 1, H, W)``) floats in [0, 1], 1 = foreground (ComfyUI's MASK layout),
each in the frame of its own image: a sketch mask is fitted and padded exactly like the sketch
(:func:`colorize.preprocess.fit_and_pad`), a reference / background mask is resized to its image.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from colorize.errors import InputError
from colorize.masks import sketch_foreground_mask
from colorize.preprocess import fit_and_pad

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


class SeededLatentEncoder:
    """``image in [-1, 1] → scale_factor · z`` with ``z`` a VAE posterior sample (as the official v2 app),
    its noise drawn from a CPU generator seeded per generation so results reproduce on any device."""

    def __init__(self, vae: nn.Module, seed: int) -> None:
        self.vae = vae
        self.generator = torch.Generator().manual_seed(int(seed))

    @torch.no_grad()
    def __call__(self, image: Tensor) -> Tensor:
        w = next(self.vae.parameters())
        post = self.vae.encode(image.to(w.device, w.dtype))
        noise = torch.randn(post.mean.shape, generator=self.generator).to(post.mean)
        return (post.mean + post.std * noise) * self.vae.cfg.scale_factor


__all__ = [
    "SeededLatentEncoder",
    "check_mask",
    "fit_sketch_mask",
    "reference_mask_or_fallback",
    "sketch_mask_from_prepared",
]
