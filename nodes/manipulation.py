"""Text edits of the reference tokens (thesis §5.8.2, Alg. 2): one edit per node, chained, and the control
heatmap that shows which regions a control prompt selects.

Thin wrappers over :mod:`colorize.manipulation`: a Text Edit node applies one :class:`~colorize.manipulation.Edit`
with ``local_manipulate`` to the 257 tokens Reference Embed keeps (CLS first); the CLS token is never
changed, so a chain of nodes equals one ``local_manipulate`` call over the list of edits (the official
prompt queue). The text directions come from the CLIP model that encoded the reference.
"""
from __future__ import annotations

from inspect import cleandoc
from typing import Any

from torch import Tensor

from colorize.errors import InputError
from colorize.manipulation import (
    DEFAULT_RATIO,
    DEFAULT_THRESHOLDS,
    EVERYTHING,
    Edit,
    control_heatmap,
    local_manipulate,
)
from colorize.preprocess import check_image

from .host import intermediate_device
from .reference import EncodedReference
from .schema import io, output
from .sockets import ReferenceSocket, ReferenceTokens, bchw_to_image, image_to_bchw

THRESHOLD_TIPS = (
    ("ts0 (Eq. 5.11). Each patch token's correlation with the control prompt is min-max normalised to m in "
     "[0, 1]; low m = most related (blue in Control Heatmap). m ≤ ts0 gets the strongest weight, −r·d."),
    "ts1: tokens with ts0 < m ≤ ts1 get a weight ramping from −d to 0.",
    "ts2: tokens with ts1 < m ≤ ts2 get a weight ramping from 0 to d/2.",
    ("ts3: tokens with ts2 < m ≤ ts3 ramp from d/2 to d; above ts3 (unrelated regions) the weight is d. "
     "The thresholds must not decrease (ts0 ≤ ts1 ≤ ts2 ≤ ts3)."),
)


def threshold_inputs() -> list[Any]:
    """The four threshold sliders ts0..ts3 (defaults 0.5, 0.55, 0.65, 0.95: thesis §5.8.2 and the app)."""
    return [io.Float.Input(f"ts{i}", default=DEFAULT_THRESHOLDS[i], min=0.0, max=1.0, step=0.01,
                           tooltip=THRESHOLD_TIPS[i])
            for i in range(4)]


def reference_input(what: str) -> Any:
    return ReferenceSocket.Input("reference",
                                 tooltip=f"Reference tokens from Reference Embed or a previous Text Edit {what}.")


def editable(reference: ReferenceTokens) -> EncodedReference:
    """The reference with its CLS token and text encoder, or a clear error."""
    if not isinstance(reference, EncodedReference):
        raise InputError("these reference tokens carry no CLS token and no text encoder; text edits need the "
                         "output of ColorizeDiffusion Reference Embed (or of another Text Edit) with a v1-v2 encoder "
                         "(XL has no text edits)")
    return reference


class TextEdit(io.ComfyNode):
    """COLORIZE_REFERENCE + one text edit → COLORIZE_REFERENCE."""

    HELP = cleandoc("""
        One local manipulation of the reference tokens (thesis §5.8.2): the region that the control prompt selects
        moves from the anchor prompt towards the target prompt, e.g. anchor 'brown hair' → target 'blonde hair'
        with control 'hair'.

        - Chain several Text Edit nodes for sequential edits, each acting on the previous result.
        - Check the selected region with **Control Heatmap** and tune `ts0`..`ts3` there.
        - Needs the reference encoder's CLIP text tower: load the open_clip file with **Reference Encoder Loader**
          (the vision-only file and **Encoder from CLIP Vision** have none).
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionTextEdit", display_name="Text Edit", category="ColorizeDiffusion/manipulation",
            description=(
                "Edits the reference with text: moves the region the control prompt selects from the anchor towards "
                "the target (e.g. brown → blonde hair, control 'hair'). Chain nodes for several edits. Needs the "
                "open_clip reference encoder."
            ),
            inputs=[
                reference_input("(edits apply in chain order)"),
                io.Boolean.Input("enabled", default=True,
                                 tooltip="Off: the tokens pass through unchanged (a target scale of 0 is a real edit, "
                                         "not 'off')."),
                io.String.Input("target", default="", multiline=False,
                                tooltip="Target prompt: what the region should look like, e.g. 'the girl's blonde "
                                        "hair'. Required when enabled."),
                io.String.Input("anchor", default="", multiline=False,
                                tooltip="Anchor prompt (optional): what it looks like now, e.g. 'the girl's brown "
                                        "hair'; the edit moves from anchor to target (Eq. 5.13). Empty or 'none' = no "
                                        "anchor: the tokens only move towards the target (Eq. 5.14)."),
                io.String.Input("control", default=EVERYTHING, multiline=False,
                                tooltip="Control prompt locating the region to edit, e.g. 'hair' (see Control "
                                        "Heatmap). 'everything' or empty = every token gets the same weight (a global "
                                        "edit)."),
                io.Float.Input("target_scale", default=10.0, min=-50.0, max=50.0, step=0.1,
                               tooltip="Desired correlation of the reference with the target: the edit strength is "
                                       "d = target_scale − (CLS · target) (Eq. 5.12). The thesis finds 4–15 "
                                       "reasonable; values beyond extrapolate."),
                io.Boolean.Input("enhance", default=False,
                                 tooltip="With an anchor: also remove the tokens' anchor component and measure d from "
                                         "the anchor (Eq. 5.12–5.13) for a stronger change that may alter related "
                                         "attributes too. No effect without an anchor."),
                *threshold_inputs(),
                io.Float.Input("strength_ratio", default=DEFAULT_RATIO, min=0.0, max=10.0, step=0.1,
                               tooltip="r of Eq. 5.11: the most related region (m ≤ ts0) gets the weight −r·d "
                                       "(thesis default 2)."),
            ],
            outputs=[output(ReferenceSocket, "reference",
                            "The edited reference tokens: feed them to the Sampler, another Text Edit or Control "
                            "Heatmap.", id="edited_reference")],
        )

    @classmethod
    def execute(cls, reference: ReferenceTokens, enabled: bool, target: str, anchor: str, control: str,
                target_scale: float, enhance: bool, ts0: float, ts1: float, ts2: float, ts3: float,
                strength_ratio: float) -> io.NodeOutput:
        if not enabled:
            return io.NodeOutput(reference)
        ref = editable(reference)
        edit = Edit(target=target, target_scale=target_scale, anchor=anchor, control=control, enhance=enhance,
                    thresholds=(ts0, ts1, ts2, ts3), ratio=strength_ratio)
        return io.NodeOutput(ref.with_full(local_manipulate(ref.full, [edit], ref.encode_text)))


class ControlHeatmap(io.ComfyNode):
    """COLORIZE_REFERENCE + reference IMAGE + control prompt → IMAGE (overlay) + MASK (levels)."""

    HELP = cleandoc("""
        The official app's 'Visualize' button (thesis Fig. 5.23). The patch tokens, after the edits chained before
        this node, are projected on the prompt, resized to the reference image and cut at ts0..ts3. Blue = most
        related (strongest edit weight), red = unrelated; grid lines mark the 16×16 tokens.

        Use the control prompt and thresholds of the **Text Edit** you are tuning.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionControlHeatmap", display_name="Control Heatmap",
            category="ColorizeDiffusion/manipulation", description=(
                "Shows which regions of the reference a control prompt selects at the given thresholds, as Text Edit "
                "uses them: blue = most related (strongest edit), red = unrelated."
            ),
            inputs=[
                reference_input("(the edits before this node are included)"),
                io.Image.Input("image", tooltip="The reference image the tokens were made from (the overlay's "
                                                "background and size)."),
                io.String.Input("control", default=EVERYTHING, multiline=False,
                                tooltip="Control prompt to visualise, e.g. 'hair' (use the Text Edit's). 'everything' "
                                        "or empty selects every token (all red)."),
                *threshold_inputs(),
            ],
            outputs=[
                output(io.Image, "heatmap", "The heatmap over the reference image, at the reference image's size."),
                output(io.Mask, "levels",
                       "The threshold levels (0, 0.25, 0.5, 0.75, 1 = number of thresholds reached / 4) as a mask."),
            ],
        )

    @classmethod
    def execute(cls, reference: ReferenceTokens, image: Tensor, control: str, ts0: float, ts1: float,
                ts2: float, ts3: float) -> io.NodeOutput:
        ref = editable(reference)
        rgb = check_image(image_to_bchw(image), "reference image").to(ref.tokens.device)
        heat = control_heatmap(ref.full, rgb, control, ref.encode_text, (ts0, ts1, ts2, ts3))
        device = intermediate_device()
        return io.NodeOutput(bchw_to_image(heat.image).to(device), heat.levels.float().to(device))


__all__ = ["ControlHeatmap", "TextEdit", "editable", "threshold_inputs"]
