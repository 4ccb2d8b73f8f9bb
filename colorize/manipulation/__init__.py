"""Text-based manipulation of reference tokens (thesis §5.8): local (Alg. 2), global (Alg. 1), PWV, heatmap.

Pure tensor functions; text is encoded by an injected ``encode_text(list[str]) -> (n, 1, d)``
(``colorize.models.clip.ReferenceEncoder.encode_text`` in the pipeline). See :mod:`.edits` for the
official quirks that are fixed here.
"""
from colorize.manipulation.edits import (
    DEFAULT_RATIO,
    DEFAULT_THRESHOLDS,
    EVERYTHING,
    Edit,
    TextEncoder,
    check_thresholds,
    encode_prompts,
    normalize_control,
    parse_bool,
    project,
)
from colorize.manipulation.global_ import global_edit, global_manipulate
from colorize.manipulation.heatmap import (
    Heatmap,
    control_heatmap,
    correlation_map,
    draw_grid,
    jet_colormap,
    levels_to_uint8,
    overlay_heatmap,
    stratify,
    token_grid,
    upsample_map,
)
from colorize.manipulation.local import local_edit, local_manipulate
from colorize.manipulation.pwv import compute_pwv, minmax_normalize, pwv_from_normalized

__all__ = [
    "DEFAULT_RATIO",
    "DEFAULT_THRESHOLDS",
    "EVERYTHING",
    "Edit",
    "Heatmap",
    "TextEncoder",
    "check_thresholds",
    "compute_pwv",
    "control_heatmap",
    "correlation_map",
    "draw_grid",
    "encode_prompts",
    "global_edit",
    "global_manipulate",
    "jet_colormap",
    "levels_to_uint8",
    "local_edit",
    "local_manipulate",
    "minmax_normalize",
    "normalize_control",
    "overlay_heatmap",
    "parse_bool",
    "project",
    "pwv_from_normalized",
    "stratify",
    "token_grid",
    "upsample_map",
]
