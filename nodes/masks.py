"""Mask nodes for v1.5/v2 separation: the no-weight sketch mask, the SAM reference mask and a mask preview.

All produce or take ComfyUI MASKs (``(B, H, W)`` in [0, 1], 1 = foreground), so masks from other packs work
too. The computations are :mod:`colorize.masks`; SAM files live in ``models/sams`` (downloaded on first use).
"""
from __future__ import annotations

import re
from inspect import cleandoc
from typing import Any

import torch
from torch import Tensor

from colorize.errors import InputError
from colorize.masks import DEFAULT_SAM, load_sam, overlay_masks, sam_foreground_mask, sketch_foreground_mask
from colorize.weights import manifest_entry

from .host import ManagedModule, check_interrupted, intermediate_device, offload_device
from .models import SAM_FOLDER, list_files, load_model_file
from .schema import io, output
from .sockets import bchw_to_image, image_to_bchw
from .widgets import unit_input

SKETCH_POLARITIES = ("auto", "dark_lines", "light_lines")
AUTO_PROMPTS = ("point+box", "point", "box")


def pixels_input(name: str, default: int, tooltip: str, high: int = 64) -> Any:
    """A pixel count in [0, high]."""
    return io.Int.Input(name, default=default, min=0, max=high, tooltip=tooltip)


def text_input(name: str, tooltip: str) -> Any:
    """An optional one-line text widget, empty by default (``multiline=None``: no multiline option is sent, as
    before the V3 conversion; the frontend's default is one line)."""
    return io.String.Input(name, optional=True, default="", multiline=None, tooltip=tooltip)


class SketchMask(io.ComfyNode):
    """IMAGE (line art) → MASK (figure silhouette), no weights."""

    HELP = cleandoc("""
        Everything the paper around the drawing cannot reach from the image borders is the figure; outlines with
        gaps up to `gap` pixels count as closed.

        Works on the raw line art or the prepared sketch, and on a reference on a plain light background: lower the
        threshold (e.g. 0.1) so that every coloured pixel blocks the fill. An image without lines gives an empty
        mask and a warning.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionSketchMask", display_name="Sketch Mask", category="ColorizeDiffusion/masks",
            description=(
                "Foreground mask of line art without any model: whatever the paper around the drawing cannot reach "
                "from the image borders is the figure. Small gaps in outlines are bridged."
            ),
            inputs=[
                io.Image.Input("image", tooltip="Line art (black on white or white on black), or a flat-background "
                                                "image."),
                unit_input("threshold", 0.5, "Ink level from which a pixel counts as a line (blocks the background "
                                             "fill). Lower = fainter strokes block too."),
                pixels_input("gap", 4, "Breaks in an outline up to this many pixels are bridged."),
                pixels_input("dilation", 0, "Grow the mask by this many pixels."),
                io.Combo.Input("polarity", options=list(SKETCH_POLARITIES), default="auto",
                               tooltip="dark_lines = black lines on white paper; light_lines = white lines on black "
                                       "(prepared sketches, line extractors); auto = per image."),
            ],
            outputs=[output(io.Mask, "mask", "Foreground mask (1 = figure) in the image's frame, for Background "
                                             "Encode or Mask Preview.")],
        )

    @classmethod
    def execute(cls, image: Tensor, threshold: float, gap: int, dilation: int, polarity: str) -> io.NodeOutput:
        out = sketch_foreground_mask(image_to_bchw(image), line_threshold=threshold, gap=gap,
                                     polarity=polarity, dilation=dilation)  # type: ignore[arg-type]
        return io.NodeOutput(out.float().to(intermediate_device()))


def load_sam_file(name: str) -> ManagedModule:
    """SAM from ``models/sams`` (downloaded first if it is a missing manifest file), read once per file."""
    return load_model_file(SAM_FOLDER, name, lambda path: load_sam(path, device=offload_device("unet"),
                                                                   dtype=torch.float32))


def parse_numbers(text: str, group: int, what: str) -> list[list[float]]:
    """``"x,y; x,y"`` → ``[[x, y], [x, y]]`` (groups of ``group`` numbers; empty text → [])."""
    numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", text)]
    if len(numbers) % group:
        raise InputError(f"{what}: expected groups of {group} numbers, got {len(numbers)} numbers in {text!r}")
    return [numbers[i:i + group] for i in range(0, len(numbers), group)]


class SamMask(io.ComfyNode):
    """IMAGE (reference) → MASK with segment-anything."""

    HELP = cleandoc("""
        Prompt: foreground points, background points and/or a box, in pixels of the image. When points and box are
        all empty, an automatic prompt at the image centre is used (`auto_prompt`): the subject of a reference
        usually fills the frame. Background points alone are refused: add a point or a box.

        Feed the mask to **Background Encode**'s `reference_mask`.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionSAMMask", display_name="SAM Mask", category="ColorizeDiffusion/masks",
            description=(
                "Foreground mask of the colour reference with Segment Anything (models/sams; sam_vit_b is downloaded "
                "on first use). Without points or a box it prompts at the image centre. Feed it to Background "
                "Encode's reference_mask."
            ),
            inputs=[
                io.Combo.Input("sam_name", options=list_files(SAM_FOLDER),
                               default=str(manifest_entry(DEFAULT_SAM)["filename"]),
                               tooltip="SAM checkpoint in models/sams (vit_b, vit_l or vit_h; the variant is read "
                                       "from the file). A missing listed file is downloaded when the node first runs."),
                io.Image.Input("image", tooltip="The image to segment (usually the colour reference)."),
                io.Combo.Input("auto_prompt", options=list(AUTO_PROMPTS), default="point+box",
                               tooltip="Prompt used when no points and no box are given: a point at the centre, a "
                                       "centred box (5% margin), or both."),
                unit_input("threshold", 0.5, "SAM probability above which a pixel is foreground (0.5 = SAM's own "
                                             "cut)."),
                pixels_input("dilation", 0, "Grow the mask by this many pixels."),
                text_input("points", "Foreground points in pixels: 'x,y; x,y'. Empty = none."),
                text_input("negative_points", "Background points in pixels: 'x,y; x,y'."),
                text_input("box", "Box in pixels: 'x0,y0,x1,y1'. Empty = none."),
            ],
            outputs=[output(io.Mask, "mask", "Foreground mask (1 = subject) in the image's frame.")],
        )

    @classmethod
    def execute(cls, sam_name: str, image: Tensor, auto_prompt: str, threshold: float, dilation: int,
                points: str = "", negative_points: str = "", box: str = "") -> io.NodeOutput:
        pos, neg = parse_numbers(points, 2, "points"), parse_numbers(negative_points, 2, "negative_points")
        boxes = parse_numbers(box, 4, "box")
        if len(boxes) > 1:
            raise InputError(f"box: give one box 'x0,y0,x1,y1', got {len(boxes)}")
        if neg and not pos and not boxes:
            raise InputError("negative_points alone do not say what to keep: add a point or a box")
        sam = load_sam_file(sam_name).ready()
        check_interrupted()
        pts = pos + neg
        out = sam_foreground_mask(
            sam, image_to_bchw(image), points=pts or None,
            point_labels=[1.0] * len(pos) + [0.0] * len(neg) if pts else None,
            box=boxes[0] if boxes else None, auto_prompt=auto_prompt,  # type: ignore[arg-type]
            threshold=threshold, dilation=dilation)
        return io.NodeOutput(out.float().to(intermediate_device()))


class MaskPreview(io.ComfyNode):
    """IMAGE + MASK → IMAGE (tinted overlay)."""

    HELP = cleandoc("""
        Any MASK works (1 = foreground). Connect the output to **Preview Image** or **Save Image**.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionMaskPreview", display_name="Mask Preview Overlay",
            category="ColorizeDiffusion/masks", description=(
                "Shows a mask over its image: the masked region tinted, its outline drawn and the rest dimmed, to check "
                "a sketch or reference mask before colorizing. A mask of another size is resized to the image."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The image the mask belongs to."),
                io.Mask.Input("mask", tooltip="The mask (1 = foreground), any MASK."),
                unit_input("alpha", 0.5, "Tint strength inside the mask."),
                pixels_input("outline", 2, "Outline width in pixels (0 = none).", 16),
                unit_input("dim_background", 0.3, "Darken the unmasked part by this fraction."),
            ],
            outputs=[output(io.Image, "image", "The image with the mask overlaid: connect Preview Image or Save Image.",
                            id="overlay")],
        )

    @classmethod
    def execute(cls, image: Tensor, mask: Tensor, alpha: float, outline: int, dim_background: float) -> io.NodeOutput:
        images = image_to_bchw(image)
        if images.shape[1] != 3:
            images = images[:, :3] if images.shape[1] > 3 else images.expand(-1, 3, -1, -1)
        try:
            out = overlay_masks(images, mask.to(images.device), alpha=alpha, outline=outline,
                                dim_background=dim_background)
        except ValueError as e:
            raise InputError(str(e)) from None
        return io.NodeOutput(bchw_to_image(out).to(intermediate_device()))


__all__ = ["MaskPreview", "SamMask", "SketchMask", "load_sam_file", "parse_numbers"]
