"""Sketch nodes: line-art preprocessing (polarity, fit and pad) and the sketch encoder's hints."""
from __future__ import annotations

from inspect import cleandoc

from torch import Tensor

from colorize.families import get_family
from colorize.generate import sketch_hints
from colorize.preprocess import (
    check_image,
    check_output_size,
    fit_and_pad,
    output_limits,
    prepare_sketch,
    target_size,
    to_signed,
)

from .host import intermediate_device
from .schema import io, output
from .sockets import ColorizeModel, HintsSocket, ModelSocket, SketchHints, bchw_to_image, image_to_bchw
from .widgets import size_inputs

POLARITIES = ("auto", "invert", "keep")


def encode_hints(model: ColorizeModel, sketch: Tensor, strength: float) -> SketchHints:
    """Prepared sketch (B, 3, H, W), lines +1 and background -1, H and W multiples of 64 → hints."""
    hints, uncond = sketch_hints(model.sketch_encoder.ready(), sketch, strength)
    dev = intermediate_device()
    return SketchHints(tuple(h.to(dev) for h in hints), tuple(h.to(dev) for h in uncond),
                       sketch.float().to(dev), float(strength), model)


class SketchPreprocess(io.ComfyNode):
    """IMAGE (line art) → IMAGE (white lines on black, fitted and padded to a multiple of 64)."""

    HELP = cleandoc("""
        - **Polarity**: `invert` for black lines on white paper (the official default); `keep` for drawings that
          already have white lines on black, such as line extractor outputs; `auto` decides from the median
          brightness (inverts when the image is mostly light).
        - **Size**: the line art is fitted inside the target size keeping its aspect ratio, and the rest is padded
          with black (no lines). The target size is a multiple of 64; with width and height 0 it follows the
          sketch's aspect ratio at about 512×512 in area.

        Preview the output to check it, then feed it to **Sketch Hints** (or **Native Sketch**).
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionSketchPreprocess", display_name="Sketch Preprocess",
            category="ColorizeDiffusion/sketch", description=(
                "Prepares line art for the sketch encoder: makes the lines white on black (black-on-white drawings are "
                "inverted) and fits it into a multiple of 64, keeping its aspect ratio and padding the rest with black."
            ),
            inputs=[
                io.Image.Input("image", tooltip="Line art (black lines on white, or white lines on black)."),
                io.Combo.Input("polarity", options=list(POLARITIES), default="auto",
                               tooltip="invert = black lines on white paper (the official default); keep = already "
                                       "white lines on black; auto = invert when the image is mostly light."),
                *size_inputs("Output"),
            ],
            outputs=[output(io.Image, "sketch", "The prepared sketch (white lines on black): feed it to Sketch Hints; "
                                                "preview it to check.")],
        )

    @classmethod
    def execute(cls, image: Tensor, polarity: str, width: int, height: int) -> io.NodeOutput:
        sketch01 = image_to_bchw(image)
        size = target_size(tuple(sketch01.shape[-2:]), width or None, height or None)
        check_output_size(*size, output_limits())  # no model here: the loosest family's limits
        prepared = prepare_sketch(sketch01, size, polarity)  # type: ignore[arg-type]
        return io.NodeOutput(bchw_to_image((prepared + 1) / 2).to(intermediate_device()))


class SketchHintsNode(io.ComfyNode):
    """Prepared sketch + strength → COLORIZE_HINTS."""

    HELP = cleandoc("""
        The sketch encoder turns the sketch into five hints, which are added to the U-Net features (thesis
        Eq. 5.1); `strength` scales them. The hints of a blank sketch are computed as well, for the sketch guidance
        scale (`sketch_cfg` on **Colorize Sampler**).

        A sketch whose size is not a multiple of 64 is fitted into the nearest one and padded with black. The hints
        also fix the output size.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionSketchHints", display_name="Sketch Hints",
            category="ColorizeDiffusion/sketch", description=(
                "Runs the checkpoint's sketch encoder on a prepared sketch (from Sketch Preprocess) and scales its hints by "
                "strength. Use the same checkpoint as the sampler."
            ),
            inputs=[
                ModelSocket.Input("model", tooltip="The ColorizeDiffusion checkpoint (its sketch encoder is used)."),
                io.Image.Input("sketch", tooltip="Prepared sketch: white lines on black, from Sketch Preprocess."),
                io.Float.Input("strength", default=1.0, min=0.0, max=3.0, step=0.05,
                               tooltip="Sketch strength: scales the hints. Lower lets the model deviate from the "
                                       "lines; higher follows them more strictly (official range 0–3)."),
            ],
            outputs=[output(HintsSocket, "hints",
                            "Sketch hints for the ColorizeDiffusion Sampler (they also fix the output size).")],
        )

    @classmethod
    def execute(cls, model: ColorizeModel, sketch: Tensor, strength: float) -> io.NodeOutput:
        x = to_signed(check_image(image_to_bchw(sketch), "sketch"))
        h, w = x.shape[-2:]
        size = target_size((h, w), w, h)
        check_output_size(*size, output_limits(get_family(model.config.version)))  # the hints fix the output size
        if size != (h, w):
            x = fit_and_pad(x, size, fill=-1.0)
        return io.NodeOutput(encode_hints(model, x, strength))


__all__ = ["POLARITIES", "SketchHintsNode", "SketchPreprocess", "encode_hints"]
