"""The official apps' mask networks as nodes: Anime Mask (ISNet) for colour images, Sketch Mask (ISNet-sketch) for
line art. IMAGE → MASK of the input's exact size in [0, 1]; the pre/post-processing is
:mod:`colorize.masks.anime_segment`, the network :mod:`colorize.masks.isnet`. The files live in ``models/isnet``
and are downloaded (verified) on first use.
"""
from __future__ import annotations

from inspect import cleandoc
from typing import Any

import torch
from torch import Tensor

from colorize.masks import anime_mask, line_art_mask, load_isnet, threshold_mask
from colorize.masks.anime_segment import DEFAULT_CANVAS, DILATE_SD
from colorize.weights import manifest_entry

from .host import ManagedModule, check_interrupted, intermediate_device, offload_device
from .models import ISNET_FOLDER, list_files, load_model_file
from .schema import io, output
from .sockets import image_to_bchw
from .widgets import unit_input

ANIME_MODEL, SKETCH_MODEL = "isnet-anime", "isnet-sketch"
LINE_POLARITIES = ("dark_lines", "light_lines", "auto")


def load_isnet_file(name: str) -> ManagedModule:
    """An ISNet from ``models/isnet`` (downloaded first if it is a missing manifest file), read once per file."""
    return load_model_file(ISNET_FOLDER, name, lambda path: load_isnet(path, device=offload_device("unet")))


def model_input(default_name: str, what: str) -> Any:
    return io.Combo.Input("model_name", options=list_files(ISNET_FOLDER),
                          default=str(manifest_entry(default_name)["filename"]),
                          tooltip=f"ISNet file in models/isnet ({what}). A missing listed file is downloaded when the "
                                  "node first runs; the widths are read from the file.")


def canvas_input() -> Any:
    return io.Int.Input("canvas_size", default=DEFAULT_CANVAS, min=64, max=2048, step=32,
                        tooltip="Side of the square the network sees (1024 in the official apps). Smaller is faster "
                                "and coarser.")


def threshold_input(what: str) -> Any:
    return unit_input("threshold", 0.0, f"Values below this become 0 (the apps' preview of {what}). 0 = the soft mask "
                                        "the official apps hand to the colorizer, which applies its own threshold "
                                        "(Background Encode).")


def _run(net: ManagedModule, fn: Any, images: Tensor, threshold: float, **kwargs: Any) -> Tensor:
    module = net.ready()
    check_interrupted()
    device = next(module.parameters()).device
    with torch.inference_mode():
        masks = fn(module, image_to_bchw(images).to(device, torch.float32), **kwargs)
    return threshold_mask(masks, threshold).float().to(intermediate_device())


class AnimeMask(io.ComfyNode):
    """IMAGE (colour) → MASK with the ISNet anime segmenter."""

    HELP = cleandoc("""
        The official apps' reference mask: the image is fitted into a white square canvas (`canvas_size`), the
        network marks the character, the result is cropped back to the image, resized to its exact size and grown
        by `dilation` pixels (5, an 11×11 square, in the SD2.1 app; 10 in the XL app). Feed it to **Background Encode**'s
        `reference_mask` (or `background_mask`).

        A flat or empty image gives a (near) empty mask. For line art use **Sketch Mask (ISNet-sketch)**; without
        any weights, **Sketch Mask** finds the figure of a drawing on a plain background.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionAnimeMask", display_name="Anime Mask (ISNet)", category="ColorizeDiffusion/masks",
            description=(
                "Foreground mask of a colour image (the reference) with ISNet anime segmentation, as the official apps "
                "make it (isnetis.safetensors, models/isnet, downloaded on first use)."
            ),
            inputs=[
                model_input(ANIME_MODEL, "the anime segmenter isnetis.safetensors"),
                io.Image.Input("image", tooltip="The colour image to segment (usually the reference)."),
                threshold_input("the reference mask"),
                io.Int.Input("dilation", default=DILATE_SD // 2, min=0, max=32,
                             tooltip="Grow the mask by this many pixels (a square of 2·n+1): 5 as the SD2.1 app "
                                     "(11×11), 10 as the XL app (21×21), 0 = none."),
                canvas_input(),
            ],
            outputs=[output(io.Mask, "mask", "Foreground mask (1 = character), the image's exact size.")],
        )

    @classmethod
    def execute(cls, model_name: str, image: Tensor, threshold: float, dilation: int,
                canvas_size: int) -> io.NodeOutput:
        net = load_isnet_file(model_name)
        kernel = 2 * dilation + 1 if dilation else 0
        return io.NodeOutput(_run(net, anime_mask, image, threshold, canvas=canvas_size, dilate=kernel))


class SketchMaskIsnet(io.ComfyNode):
    """IMAGE (line art) → MASK with ISNet-sketch."""

    HELP = cleandoc("""
        The official apps' sketch mask: the line art is resized to the square canvas (`canvas_size`) as it is, the
        network marks the drawn figure and the result is resized back to the image's exact size. Unlike the
        weight-free **Sketch Mask** it does not leak through open outlines.

        `polarity`: the network was trained on black lines on white; white-on-black line art (a prepared sketch, most
        line extractors) is inverted first with `light_lines`, or per image with `auto`.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionSketchMaskISNet", display_name="Sketch Mask (ISNet-sketch)",
            category="ColorizeDiffusion/masks",
            description=(
                "Foreground mask of line art with ISNet-sketch, as the official apps make it (sketch-segment.safetensors"
                ", models/isnet, downloaded on first use)."
            ),
            inputs=[
                model_input(SKETCH_MODEL, "the sketch segmenter sketch-segment.safetensors"),
                io.Image.Input("image", tooltip="Line art (the raw drawing or the prepared sketch)."),
                threshold_input("the sketch mask"),
                io.Combo.Input("polarity", options=list(LINE_POLARITIES), default="dark_lines",
                               tooltip="dark_lines = black lines on white (as the network was trained); light_lines = "
                                       "white on black (inverted first); auto = per image."),
                canvas_input(),
            ],
            outputs=[output(io.Mask, "mask", "Foreground mask (1 = figure), the image's exact size.")],
        )

    @classmethod
    def execute(cls, model_name: str, image: Tensor, threshold: float, polarity: str,
                canvas_size: int) -> io.NodeOutput:
        net = load_isnet_file(model_name)
        return io.NodeOutput(_run(net, line_art_mask, image, threshold, canvas=canvas_size, polarity=polarity))


__all__ = ["AnimeMask", "SketchMaskIsnet", "load_isnet_file"]
