"""Widget definitions shared by several nodes (one definition each: same range, default and tooltip everywhere)."""
from __future__ import annotations

from typing import Any

from colorize.settings import MAX_SEED

Widget = tuple[str, dict[str, Any]]


def seed_input(tooltip: str) -> Widget:
    """A 64-bit seed with ComfyUI's control-after-generate menu."""
    return ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True, "tooltip": tooltip})


def level_input(level: str, blocks: str) -> Widget:
    return ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.01,
                      "tooltip": f"Per-level reference strength for the {level} cross-attention blocks ({blocks}), "
                                 "multiplied by reference_strength (the official app's level sliders)."})


def level_inputs() -> dict[str, Widget]:
    """The official app's three per-level reference-strength sliders (``encoder_strength`` ... ``low_strength``)."""
    return {
        "encoder_strength": level_input("encoder", "the six down-sampling blocks"),
        "middle_strength": level_input("middle", "the middle-resolution blocks"),
        "low_strength": level_input("low", "the low-resolution blocks"),
    }


def level_strengths(encoder_strength: float, middle_strength: float, low_strength: float) -> dict[str, float]:
    """The level sliders as ``GenerationSettings.level_strengths`` names them."""
    return {"encoder": encoder_strength, "middle": middle_strength, "low": low_strength}


__all__ = ["Widget", "level_input", "level_inputs", "level_strengths", "seed_input"]
