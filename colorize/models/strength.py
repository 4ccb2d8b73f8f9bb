"""Reference strength: the 16 cross-attention blocks, their level groups, and the app's slider rules.

The reference strength scales the cross-attention result softmax(qkᵀ/√d)·v before ``to_out`` (thesis §5.2,
Fig. 5.1; reference notes §2.6).  ``DualCondUNet.forward(reference_scales=...)`` takes the 16 values built here.
"""
from __future__ import annotations

from typing import Mapping, Sequence

#: Official attention-block order (depth-first through input, middle, output blocks of the SD2.1 U-Net).
ATTENTION_BLOCK_ORDER: tuple[str, ...] = (
    "input_blocks.1.1",
    "input_blocks.2.1",
    "input_blocks.4.1",
    "input_blocks.5.1",
    "input_blocks.7.1",
    "input_blocks.8.1",
    "middle_block.1",
    "output_blocks.3.1",
    "output_blocks.4.1",
    "output_blocks.5.1",
    "output_blocks.6.1",
    "output_blocks.7.1",
    "output_blocks.8.1",
    "output_blocks.9.1",
    "output_blocks.10.1",
    "output_blocks.11.1",
)
NUM_ATTENTION_BLOCKS = len(ATTENTION_BLOCK_ORDER)

#: Level groups of the official app (indices into ``ATTENTION_BLOCK_ORDER``); ``encoder`` overlaps the others.
LEVEL_GROUPS: dict[str, tuple[int, ...]] = {
    "high": (0, 1, 13, 14, 15),
    "middle": (2, 3, 10, 11, 12),
    "low": (4, 5, 7, 8, 9),
    "bottom": (6,),
    "encoder": (0, 1, 2, 3, 4, 5),
}

#: Token-grid size of each block relative to the latent (used to resize masks for split attention).
BLOCK_SCALE_FACTORS: tuple[float, ...] = (
    1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.25, 0.25, 0.25, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0,
)

#: The app's three level sliders, in the order it applies them (later groups overwrite earlier ones).
APP_LEVELS: tuple[str, ...] = ("encoder", "middle", "low")
#: Groups the app has no slider for; applied after ``APP_LEVELS`` and only when given.
EXTRA_LEVELS: tuple[str, ...] = ("high", "bottom")


def level_reference_scales(strength: float = 1.0, levels: Mapping[str, float] | None = None) -> list[float]:
    """16 per-block scales from the reference strength and per-level multipliers, as the official app does.

    Each of ``encoder``, ``middle``, ``low`` (missing = 1, like an untouched slider) sets its blocks to
    ``strength · level`` in that order, later groups overwriting earlier ones.  Blocks 6, 13, 14, 15 (the
    middle block and the top decoder level) are never touched by these sliders and stay 1, whatever the
    strength — this matches the released app.  ``high`` / ``bottom`` are an extension: when given they set
    their blocks (also times ``strength``) after the app's groups.
    """
    levels = dict(levels or {})
    unknown = set(levels) - set(LEVEL_GROUPS)
    if unknown:
        raise ValueError(f"unknown level group(s) {sorted(unknown)}; known: {sorted(LEVEL_GROUPS)}")
    scales = [1.0] * NUM_ATTENTION_BLOCKS
    order = list(APP_LEVELS) + [name for name in EXTRA_LEVELS if name in levels]
    for name in order:
        value = float(levels.get(name, 1.0)) * strength
        for i in LEVEL_GROUPS[name]:
            scales[i] = value
    return scales


def block_reference_scales(scales: Sequence[float], strength: float = 1.0) -> list[float]:
    """16 explicit per-block scales ("accurate" mode) times ``strength``.

    Unlike the released app, which assigns its 16 sliders shifted by one (slider 0 dropped, block 15
    untouched; reference notes §7.13), value ``i`` goes to block ``i``.
    """
    if len(scales) != NUM_ATTENTION_BLOCKS:
        raise ValueError(f"expected {NUM_ATTENTION_BLOCKS} per-block scales, got {len(scales)}")
    return [float(s) * strength for s in scales]


__all__ = [
    "APP_LEVELS",
    "ATTENTION_BLOCK_ORDER",
    "BLOCK_SCALE_FACTORS",
    "EXTRA_LEVELS",
    "LEVEL_GROUPS",
    "NUM_ATTENTION_BLOCKS",
    "block_reference_scales",
    "level_reference_scales",
]
