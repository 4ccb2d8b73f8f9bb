"""Output sizes and the latent scale of ColorizeDiffusion XL (official ``backend/appfunc.py:966-985``,
``refnet/models/colorizerXL.py`` at tellurion-kanata/ColorizeDiffusionXL commit ec78784).

* Sides are multiples of 32 (the app's sliders run 768–1536 in steps of 32); a size that is not is a named error
  here instead of being rounded silently, so a workflow says what it will produce.
* Autofit (off by default in the app): keep the sketch's aspect at an area of 1024², round each side to a multiple
  of 32 (add 16, then floor) and clamp it to [768, 1536].
* The VAE is SD's kl-f8 autoencoder with the latent scale 0.13025 (SD2.1: 0.18215).
"""
from __future__ import annotations

import math

from colorize.errors import InputError

#: Side multiple of XL outputs.
XL_SIZE_MULTIPLE = 32
#: The app's default side and the area autofit aims at (1024²).
XL_BASE_RESOLUTION = 1024
#: Autofit's side limits.
XL_AUTOFIT_MIN, XL_AUTOFIT_MAX = 768, 1536
#: The XL VAE's latent scale factor.
XL_VAE_SCALE = 0.13025


def check_xl_size(height: int | None, width: int | None) -> None:
    """A one-line :class:`InputError` unless every given side (``None`` = not given) is a positive multiple of 32."""
    sides = {"width": width, "height": height}
    bad = {name: value for name, value in sides.items() if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % XL_SIZE_MULTIPLE)}
    if bad:
        near = {name: max(XL_SIZE_MULTIPLE, round(v / XL_SIZE_MULTIPLE) * XL_SIZE_MULTIPLE)
                if isinstance(v, int) else "?" for name, v in sides.items() if v is not None}
        raise InputError(f"ColorizeDiffusion XL needs sides that are multiples of {XL_SIZE_MULTIPLE}: "
                         f"{', '.join(f'{k} {v}' for k, v in bad.items())}; use e.g. "
                         f"{', '.join(f'{k} {v}' for k, v in near.items())}")


def autofit_size(sketch_hw: tuple[int, int], area: int = XL_BASE_RESOLUTION ** 2) -> tuple[int, int]:
    """``(height, width)`` of the official autofit for a sketch of ``sketch_hw``: its aspect at ``area`` pixels,
    each side rounded to a multiple of 32 (``(side + 16) // 32 * 32``) and clamped to [768, 1536]."""
    h, w = sketch_hw
    if h <= 0 or w <= 0:
        raise InputError(f"the sketch has no pixels ({w}x{h})")
    scale = math.sqrt(area / (h * w))

    def fit(side: float) -> int:
        rounded = int(side * scale + XL_SIZE_MULTIPLE // 2) // XL_SIZE_MULTIPLE * XL_SIZE_MULTIPLE
        return min(XL_AUTOFIT_MAX, max(XL_AUTOFIT_MIN, rounded))

    return fit(h), fit(w)


__all__ = ["XL_AUTOFIT_MAX", "XL_AUTOFIT_MIN", "XL_BASE_RESOLUTION", "XL_SIZE_MULTIPLE", "XL_VAE_SCALE",
           "autofit_size", "check_xl_size"]
