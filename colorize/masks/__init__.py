"""Foreground masks for v1.5 foreground/background separation (thesis §5.5).

All masks are ``(B, H, W)`` float tensors in [0, 1] with 1 = foreground (ComfyUI's MASK layout);
images are channel-first ``(B, C, H, W)`` in [0, 1].

- :func:`sketch_foreground_mask`: silhouette of line art, no weights.
- :func:`sam_foreground_mask` / :func:`load_sam`: reference mask with segment-anything.
- :func:`overlay_masks`: tinted preview of masks over images.
- :func:`anime_mask` / :func:`line_art_mask` / :func:`load_isnet`: the apps' ISNet reference and sketch masks
  (:mod:`colorize.masks.isnet`, :mod:`colorize.masks.anime_segment`, which also holds the official ``proceed``).

``segment_anything`` is imported only when a SAM model is built.
"""
from __future__ import annotations

from colorize.masks.anime_segment import anime_mask, background_reference, line_art_mask, threshold_mask
from colorize.masks.isnet import (
    TINY_ISNET,
    ISNetConfig,
    ISNetDIS,
    infer_isnet_config,
    is_isnet_state_dict,
    isnet_from_state_dict,
    isnet_layout,
    load_isnet,
)
from colorize.masks.morphology import dilate, erode, flood_from_border
from colorize.masks.preview import overlay_masks
from colorize.masks.sam import (
    DEFAULT_SAM,
    SAM_VARIANTS,
    build_sam,
    build_tiny_sam,
    centre_prompt,
    infer_sam_variant,
    load_sam,
    place_sam,
    resolve_sam_path,
    sam_foreground_mask,
    sam_from_state_dict,
    sam_logits,
)
from colorize.masks.sketch import line_strength, sketch_foreground_mask

__all__ = [
    "DEFAULT_SAM",
    "ISNetConfig",
    "ISNetDIS",
    "SAM_VARIANTS",
    "TINY_ISNET",
    "anime_mask",
    "background_reference",
    "build_sam",
    "build_tiny_sam",
    "centre_prompt",
    "dilate",
    "erode",
    "flood_from_border",
    "infer_isnet_config",
    "infer_sam_variant",
    "is_isnet_state_dict",
    "isnet_from_state_dict",
    "isnet_layout",
    "line_art_mask",
    "line_strength",
    "load_isnet",
    "load_sam",
    "overlay_masks",
    "place_sam",
    "resolve_sam_path",
    "sam_foreground_mask",
    "sam_from_state_dict",
    "sam_logits",
    "sketch_foreground_mask",
    "threshold_mask",
]
