"""Sketch nodes: line-art preprocessing (polarity, fit and pad) and the sketch encoder's hints."""
from __future__ import annotations

from inspect import cleandoc

from torch import Tensor

from colorize.errors import InputError
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
        - **XL**: connect the XL model to `model`: sides are then multiples of 32 (others are a named error, not
          rounded) and width and height 0 follow the XL app's autofit (the sketch's aspect at about 1024×1024,
          each side 768-1536).

        Preview the output to check it, then feed it to **Sketch Hints** (or **Native Sketch**).
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionSketchPreprocess", display_name="Sketch Preprocess",
            category="ColorizeDiffusion/sketch", description=(
                "Prepares line art for the sketch encoder: makes the lines white on black (black-on-white drawings are "
                "inverted) and fits it into a multiple of 64 (XL: 32), keeping its aspect ratio and padding the rest "
                "with black."
            ),
            inputs=[
                io.Image.Input("image", tooltip="Line art (black lines on white, or white lines on black)."),
                io.Combo.Input("polarity", options=list(POLARITIES), default="auto",
                               tooltip="invert = black lines on white paper (the official default); keep = already "
                                       "white lines on black; auto = invert when the image is mostly light."),
                *size_inputs("Output"),
                ModelSocket.Input("model", optional=True,
                                  tooltip="Optional: the checkpoint whose size rules apply. Connect an XL model for "
                                          "XL sizes (multiples of 32; width and height 0 = the XL app's autofit at "
                                          "about 1024×1024). Unconnected = the v1-v2 rules (multiples of 64)."),
            ],
            outputs=[output(io.Image, "sketch", "The prepared sketch (white lines on black): feed it to Sketch Hints; "
                                                "preview it to check.")],
        )

    @classmethod
    def execute(cls, image: Tensor, polarity: str, width: int, height: int,
                model: ColorizeModel | None = None) -> io.NodeOutput:
        sketch01 = image_to_bchw(image)
        hw = (int(sketch01.shape[-2]), int(sketch01.shape[-1]))
        if model is None:  # no model: the v1-v2 size rule and the loosest family's limits
            size, limits = target_size(hw, width or None, height or None), output_limits()
        else:
            family = get_family(model.config.version)
            size, limits = family.output_size(hw, width or None, height or None), output_limits(family)
        check_output_size(*size, limits)
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

        **XL**: the sketch's sides must be multiples of 32 (a named error otherwise; Sketch Preprocess gives
        multiples of 64); XL works best near 1024×1024 in area (768-1536 per side, the official app's autofit).
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
        family = get_family(model.config.version)
        try:  # SD2.1: rounded to multiples of 64; XL: sides must be multiples of 32
            size = family.output_size((h, w), w, h)
        except InputError as e:
            raise InputError(f"the sketch is {w}×{h}: {e} (prepare it with Sketch Preprocess)") from None
        check_output_size(*size, output_limits(family))  # the hints fix the output size
        if size != (h, w):
            x = fit_and_pad(x, size, fill=-1.0)
        return io.NodeOutput(encode_hints(model, x, strength))


__all__ = ["POLARITIES", "SketchHintsNode", "SketchPreprocess", "encode_hints"]
