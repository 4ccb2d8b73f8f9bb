"""Widget definitions shared by several nodes (one definition each: same range, default and tooltip everywhere)."""
from __future__ import annotations

import math
from typing import Any

from colorize.errors import InputError
from colorize.preprocess import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_MAX_OUTPUT_SIDE, output_limits
from colorize.settings import MAX_SEED

from .schema import io

#: Widget maximum of the width/height inputs: the library's output side limit (``colorize.preprocess.output_limits``
#: 4096, or ``$COLORIZE_MAX_SIDE`` as set when ComfyUI starts; ComfyUI's own 16384 when that is 0 = no limit). The
#: pixel limit (2048² by default, ``$COLORIZE_MAX_PIXELS``) is checked when the node runs, before any work. A bad
#: variable never stops the pack from loading: the widgets keep the default and the nodes name the variable.
try:
    MAX_SIZE = output_limits().side or 16384
except InputError:
    MAX_SIZE = DEFAULT_MAX_OUTPUT_SIDE
_DEFAULT_PIXELS = f"{math.isqrt(DEFAULT_MAX_OUTPUT_PIXELS)}×{math.isqrt(DEFAULT_MAX_OUTPUT_PIXELS)} px"


def seed_input(tooltip: str, name: str = "seed") -> Any:
    """A 64-bit seed with ComfyUI's control-after-generate menu."""
    return io.Int.Input(name, default=0, min=0, max=MAX_SEED, control_after_generate=True, tooltip=tooltip)


def level_input(name: str, level: str, blocks: str) -> Any:
    return io.Float.Input(name, default=1.0, min=0.0, max=2.0, step=0.01,
                          tooltip=f"Per-level reference strength for the {level} cross-attention blocks ({blocks}), "
                                  "multiplied by reference_strength (the official app's level sliders).")


def level_inputs() -> list[Any]:
    """The official app's three per-level reference-strength sliders (``encoder_strength`` ... ``low_strength``)."""
    return [
        level_input("encoder_strength", "encoder", "the six down-sampling blocks"),
        level_input("middle_strength", "middle", "the middle-resolution blocks"),
        level_input("low_strength", "low", "the low-resolution blocks"),
    ]


def level_strengths(encoder_strength: float, middle_strength: float, low_strength: float) -> dict[str, float]:
    """The level sliders as ``GenerationSettings.level_strengths`` names them."""
    return {"encoder": encoder_strength, "middle": middle_strength, "low": low_strength}


def size_inputs(what: str) -> list[Any]:
    """Width/height widgets in steps of 32: 0 = automatic; v1-v2 round to the nearest multiple of 64, XL needs
    multiples of 32 (``Family.output_size``)."""
    return [
        io.Int.Input("width", default=0, min=0, max=MAX_SIZE, step=32,
                     tooltip=f"{what} width in pixels (v1-v2: rounded to a multiple of 64; XL: a multiple of 32). "
                             "0 = follow the sketch's aspect ratio (about 512×512 in area when both are 0; XL: "
                             "about 1024×1024). Width × height may be at most "
                             f"{_DEFAULT_PIXELS} by default (environment variable COLORIZE_MAX_PIXELS)."),
        io.Int.Input("height", default=0, min=0, max=MAX_SIZE, step=32,
                     tooltip=f"{what} height in pixels (v1-v2: rounded to a multiple of 64; XL: a multiple of 32). "
                             "0 = follow the sketch's aspect ratio."),
    ]


def unit_input(name: str, default: float, tooltip: str) -> Any:
    """A fraction in [0, 1] with 0.01 steps."""
    return io.Float.Input(name, default=default, min=0.0, max=1.0, step=0.01, tooltip=tooltip)


__all__ = ["MAX_SIZE", "level_input", "level_inputs", "level_strengths", "seed_input", "size_inputs", "unit_input"]
