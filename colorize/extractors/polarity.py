"""Input polarity: find white-on-black line art and turn it into dark lines on paper before extraction.

Every extractor here expects what a page looks like: dark strokes on a light background. A sketch
exported as white lines on black is detected per image and inverted first. The test is the one
:func:`colorize.preprocess.is_dark_on_light` uses (median brightness) plus a colour check: a dark
*colour* illustration (night scene) is not line art and is left alone; pass
``input_polarity="dark_on_light"`` to never invert, ``"light_on_dark"`` to always invert.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from colorize.errors import InputError
from colorize.preprocess import is_dark_on_light

InputPolarity = Literal["auto", "dark_on_light", "light_on_dark"]
INPUT_POLARITIES: tuple[str, ...] = ("auto", "dark_on_light", "light_on_dark")
GREY_CHROMA = 0.08  # median (max_c − min_c) below which an image counts as monochrome


def looks_inverted(image01: Tensor) -> bool:
    """True for one (C, H, W) or (1, C, H, W) image that looks like light lines on a dark background."""
    x = image01.float().reshape(-1, *image01.shape[-2:])
    if is_dark_on_light(x[None]):
        return False
    chroma = (x.amax(0) - x.amin(0)).median() if x.shape[0] > 1 else torch.zeros(())
    return bool(chroma < GREY_CHROMA)


def to_dark_on_light(image01: Tensor, input_polarity: InputPolarity = "auto") -> tuple[Tensor, list[bool]]:
    """(B, C, H, W) in [0, 1] → the same with inverted images flipped (``1 − x``), and which were flipped."""
    if input_polarity not in INPUT_POLARITIES:
        raise InputError(f"unknown input_polarity {input_polarity!r}; use one of {', '.join(INPUT_POLARITIES)}")
    if input_polarity == "dark_on_light":
        flips = [False] * image01.shape[0]
    elif input_polarity == "light_on_dark":
        flips = [True] * image01.shape[0]
    else:
        flips = [looks_inverted(img) for img in image01]
    if not any(flips):
        return image01, flips
    mask = torch.tensor(flips, device=image01.device).view(-1, 1, 1, 1)
    return torch.where(mask, 1.0 - image01, image01), flips


__all__ = ["GREY_CHROMA", "INPUT_POLARITIES", "InputPolarity", "looks_inverted", "to_dark_on_light"]
