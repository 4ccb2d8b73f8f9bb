"""The chapter-4 GAN (thesis §4) as nodes: load a GAN file, encode a reference and show its predicted tags, edit
tags (thesis §4.3.3), colorize a sketch in one forward pass.

Thin wrappers over :class:`colorize.families.gan.colorizer.GANColorizer`. GAN Reference makes its
:class:`~colorize.families.gan.colorizer.ReferenceCode` (the reference's features φ(r) and tag probabilities);
GAN Tag Edit adds tag values to the code, which keeps them until the generator reads it (the tag mapper of
thesis §4.3 turns φ(r) into the edited features δ_b then), so a chain of edit nodes equals one node with all the
edits; GAN Colorize runs the generator on a sketch with a code or a reference image. A GAN file holds every
network it needs (no CLIP, no VAE) and lives in ``models/colorizediffusion_gan``.
"""
from __future__ import annotations

from inspect import cleandoc
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from colorize.checkpoint import read_header
from colorize.checkpoint.keys import describe_foreign
from colorize.device import PRECISIONS
from colorize.errors import CheckpointError, InputError, WeightsMissingError
from colorize.families import detect_family
from colorize.families.gan import GAN, TINY_GAN_FILE
from colorize.families.gan.colorizer import GAN_BASE_RESOLUTION, GANColorizer, ReferenceCode
from colorize.preprocess import check_output_size, output_limits
from colorize.weights import file_names

from .host import Progress, check_interrupted, intermediate_device, load_device, offload_device, unet_dtype
from .models import GAN_FOLDER, list_files, load_model_file, manifest_files
from .schema import io, output, ui
from .sketch import POLARITIES
from .sockets import GANModel, GANReferenceSocket, GANSocket, bchw_to_image, code_on, image_to_bchw
from .widgets import MAX_SIZE

#: the display name the library's errors send GAN files to (``colorize.families.gan.GANFamily.infer_config``)
LOADER_NAME = "Load ColorizeDiffusion GAN"
CATEGORY = "ColorizeDiffusion/gan"
#: the tag-value widget's range: beyond [0, 1] extrapolates (thesis §4.3.3)
VALUE_RANGE = (-5.0, 5.0)
TINY_HINT = ("no GAN weights were released: train your own with training/, or write this tiny random test file with "
             "`python -m colorize make-tiny-weights DIR --versions gan` and use DIR as the models folder")


# ------------------------------------------------------------------------------------- loading


def check_gan_file(path: Path) -> None:
    """Nothing for a GAN file; a one-line error naming the right loader for a diffusion checkpoint and saying
    what the file looks like otherwise (keys only: the header is read, no tensor)."""
    keys = read_header(path)
    try:
        family = detect_family(keys, path.name)
    except CheckpointError:
        raise CheckpointError(f"{path.name} is not a chapter-4 GAN file: it has no tag_encoder.* or generator.* keys "
                              f"({describe_foreign(keys)})") from None
    if not family.standalone:
        raise CheckpointError(f"{path.name} is a ColorizeDiffusion {family.label} diffusion checkpoint, not a GAN "
                              "file: load it with Colorize Loader (or Native Loader) from models/colorizediffusion")


def gan_files() -> list[str]:
    """The loader's choices: the files in the GAN folder but the training inputs the weights manifest keeps there
    (the ResNet-34 ImageNet start of the tag encoder), then the tiny test file's name when it is absent (the
    default everywhere: no GAN weights were released)."""
    released = {n for e in manifest_files(GAN_FOLDER, (GAN.name,)) for n in file_names(e)}
    inputs = {n for e in manifest_files(GAN_FOLDER) for n in file_names(e)} - released
    names = [n for n in list_files(GAN_FOLDER, (GAN.name,)) if n not in inputs]
    return names if TINY_GAN_FILE in names else [*names, TINY_GAN_FILE]


class GANNetworks(nn.Module):
    """A GAN file's networks as one module, so that ComfyUI places them together; ``colorizer`` is the
    :class:`GANColorizer` over the same modules."""

    def __init__(self, colorizer: GANColorizer) -> None:
        super().__init__()
        mods = colorizer.modules
        parts = {"tag_encoder": mods.tag_encoder, "generator": mods.generator, "tag_mapper": mods.tag_mapper}
        self.parts = nn.ModuleDict({k: m for k, m in parts.items() if m is not None})
        self.colorizer = colorizer


def open_networks(path: Path) -> GANNetworks:
    """The family check, then the GAN family's own colorizer on ComfyUI's offload device."""
    check_gan_file(path)
    return GANNetworks(GAN.open_colorizer(path, offload_device("unet")))


class GANLoader(io.ComfyNode):
    """models/colorizediffusion_gan file → COLORIZE_GAN (+ a line describing it)."""

    HELP = cleandoc("""
        The chapter-4 GAN of the thesis (§4): a one-pass colorizer. One file holds all of it: the tag-pretrained
        ResNet-34 reference encoder (§4.2.1), the attention / RBCA U-Net generator (Table 4.1) and, from training
        stage 2, the tag mapper that edits the reference by its tags (§4.3). There is no CLIP, VAE or sampler.

        - The file type is read from its keys: a diffusion checkpoint (v1-XL) is refused with the name of its
          loader (**Colorize Loader**).
        - Files of the first stage (`gan_stage1`) colorize but cannot edit tags; the `info` output says which.
        - No GAN weights were released with the thesis: train one with the pack's `training/` and put the export
          in `models/colorizediffusion_gan`. `python -m colorize make-tiny-weights DIR --versions gan` writes the
          tiny random test file `colorize-gan-tiny.safetensors` (tags `red_shape`, `green_shape`, `blue_shape`,
          `yellow_shape`, `white_background`): it exercises the nodes, it does not colorize.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionGANLoader", display_name=LOADER_NAME, category=CATEGORY, description=(
                "Loads a chapter-4 GAN file (thesis §4: one-pass colorization with tag edits) from "
                "models/colorizediffusion_gan. The type is read from the keys; diffusion checkpoints go to Colorize "
                "Loader."
            ),
            inputs=[
                io.Combo.Input("gan_name", options=gan_files(), default=TINY_GAN_FILE,
                               tooltip="GAN file in models/colorizediffusion_gan (a training/ export). "
                                       f"{TINY_GAN_FILE} is the tiny random test file of make-tiny-weights (listed "
                                       "even when missing: no GAN weights were released)."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                               tooltip="Compute precision. auto = ComfyUI's choice for the device (fp16 on most "
                                       "GPUs, fp32 on CPU). The weights stay fp32 (GAN files are small); fp16 / bf16 "
                                       "run under autocast."),
            ],
            outputs=[
                output(GANSocket, "gan", "The GAN: feed it to GAN Reference, GAN Tag Edit and GAN Colorize."),
                output(io.String, "info", "File, training stage, tag count, whether tag edits work, precision."),
            ],
        )

    @classmethod
    def execute(cls, gan_name: str, precision: str) -> io.NodeOutput:
        try:
            networks = load_model_file(GAN_FOLDER, gan_name, open_networks)  # kept between runs, re-read on change
        except WeightsMissingError as e:
            if gan_name != TINY_GAN_FILE:
                raise
            raise WeightsMissingError(f"{e} ({TINY_HINT})") from None
        params = sum(p.numel() for p in networks.module.parameters())
        dtype = unet_dtype(precision, load_device("unet"), params)
        model = GANModel(gan_name, networks.module.colorizer, networks, dtype)  # type: ignore[arg-type]
        info = model.describe()
        return io.NodeOutput(model, info, ui=ui.PreviewText(info))


# ------------------------------------------------------------------------------------- reference and tags


def gan_input(what: str) -> Any:
    return GANSocket.Input("gan", tooltip=f"The GAN from {LOADER_NAME}{what}.")


def gan_schema(node_id: str, display_name: str, description: str, gan: str, inputs: list[Any],
               outputs: list[Any]) -> io.Schema:
    """A GAN node's schema: the GAN category, the ``COLORIZE_GAN`` input (``gan`` says what it is used for) first."""
    return io.Schema(node_id=node_id, display_name=display_name, category=CATEGORY, description=description,
                     inputs=[gan_input(gan), *inputs], outputs=outputs)


def tags_text(colorizer: GANColorizer, code: ReferenceCode, top_k: int) -> str:
    """``name probability`` pairs, most probable first (``red_hair 0.93, ...``); one line per image of a batch."""
    lines = []
    for i in range(code.batch):
        one = ReferenceCode(code.features[i:i + 1], code.probabilities[i:i + 1])
        pairs = ", ".join(f"{name} {p:.2f}" for name, p in colorizer.predicted_tags(one, top_k))
        lines.append(pairs if code.batch == 1 else f"image {i + 1}: {pairs}")
    return "\n".join(lines)


class GANReference(io.ComfyNode):
    """COLORIZE_GAN + reference IMAGE → COLORIZE_GAN_REFERENCE + the predicted tags."""

    HELP = cleandoc("""
        The reference goes through the GAN's tag encoder (a ResNet-34 trained to predict tags, thesis §4.2.1),
        resized to the square it was trained on. Its feature map is what the generator reads; its tag
        probabilities are what **GAN Tag Edit** changes.

        `predicted_tags` lists the `top_k` most probable tags with their probabilities, e.g.
        `red_hair 0.93, long_hair 0.88`: the names to use in GAN Tag Edit. A batch of references gives one line per
        image.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return gan_schema(
            "ColorizeDiffusionGANReference", "GAN Reference",
            (
                "Encodes a colour reference with the GAN's tag encoder for GAN Colorize and GAN Tag Edit, and lists "
                "the tags it predicts with their probabilities (the names GAN Tag Edit takes)."
            ),
            "",
            [
                io.Image.Input("image", tooltip="Colour reference (any size: resized to the tag encoder's square). "
                                                "A batch gives one reference per image."),
                io.Int.Input("top_k", default=20, min=1, max=1000,
                             tooltip="How many of the most probable tags predicted_tags lists."),
            ],
            [
                output(GANReferenceSocket, "reference",
                       "The encoded reference: feed it to GAN Tag Edit or GAN Colorize."),
                output(io.String, "predicted_tags",
                       "The most probable tags with their probabilities ('red_hair 0.93, ...'), one line per image."),
            ],
        )

    @classmethod
    def execute(cls, gan: GANModel, image: Tensor, top_k: int) -> io.NodeOutput:
        colorizer = gan.ready()
        check_interrupted()
        with torch.inference_mode(), gan.precision(colorizer.device):
            code = colorizer.encode_reference(image_to_bchw(image))
        code = ReferenceCode(code.features.float(), code.probabilities.float())
        text = tags_text(colorizer, code, top_k)
        return io.NodeOutput(code_on(code, intermediate_device()), text, ui=ui.PreviewText(text))


def parse_tag_edits(text: str, value: float) -> dict[str, float]:
    """``tag`` widget text → ``{tag name: value}``: entries separated by commas or new lines, each a tag name (it
    gets ``value``) or ``name=number``; a later entry for the same tag replaces an earlier one."""
    edits: dict[str, float] = {}
    for entry in (e.strip() for e in text.replace("\n", ",").split(",")):
        if not entry:
            continue
        name, sep, number = entry.rpartition("=")
        if sep and name.strip():
            try:
                edits[name.strip()] = float(number)
                continue
            except ValueError:
                pass  # no number after the last "=": a tag name with "=" in it ("=_=")
        edits[entry] = float(value)
    if not edits:
        raise InputError("GAN Tag Edit names no tag: write a tag name (GAN Reference's predicted_tags lists them), "
                         "or several as 'red_hair=1, blue_eyes=0'")
    return edits


class GANTagEdit(io.ComfyNode):
    """COLORIZE_GAN_REFERENCE + tag values → COLORIZE_GAN_REFERENCE (chainable)."""

    HELP = cleandoc("""
        Sets tags of the reference to new values before it colorizes (thesis §4.3.3): the tag mapper moves the
        reference's features from its predicted tags towards the edited ones, so `red_hair` = 1 asks for red hair
        and 0 removes it. Values beyond [0, 1] extrapolate (stronger changes, more artefacts).

        - `tag`: one tag name with `value`, several names (comma separated) that all get `value`, or pairs
          `red_hair=1, blue_eyes=0` with their own numbers (then `value` is not used). Spaces may stand for
          underscores. An unknown name is an error listing close names.
        - Chain several nodes for more edits: the chain equals one node with all of them; a later edit of the same
          tag replaces the earlier one.
        - Needs a GAN file from training stage 2 (with the tag mapper); the loader's `info` says whether it has one.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return gan_schema(
            "ColorizeDiffusionGANTagEdit", "GAN Tag Edit",
            (
                "Edits the reference by its tags (thesis §4.3.3): sets tags such as red_hair to new values before GAN "
                "Colorize. Chain nodes for several edits. Needs a GAN file with the tag mapper (training stage 2)."
            ),
            " (its tag names and tag mapper)",
            [
                GANReferenceSocket.Input("reference", tooltip="The reference from GAN Reference or a previous GAN "
                                                              "Tag Edit (edits add up in chain order)."),
                io.String.Input("tag", default="", multiline=False,
                                tooltip="Tag to set, as GAN Reference's predicted_tags names it (e.g. red_hair). "
                                        "Several: 'red_hair, long_hair' (all get value) or 'red_hair=1, blue_eyes=0' "
                                        "(own values; value is then not used)."),
                io.Float.Input("value", default=1.0, min=VALUE_RANGE[0], max=VALUE_RANGE[1], step=0.05,
                               tooltip="The tag's new value: 1 = present, 0 = absent (the predicted probabilities "
                                       "are in between). Beyond [0, 1] extrapolates (thesis §4.3.3)."),
            ],
            [output(GANReferenceSocket, "reference",
                            "The edited reference: feed it to GAN Colorize or another GAN Tag Edit.",
                            id="edited_reference")],
        )

    @classmethod
    def execute(cls, gan: GANModel, reference: ReferenceCode, tag: str, value: float) -> io.NodeOutput:
        code = gan.check_code(reference)
        return io.NodeOutput(gan.colorizer.edit(code, parse_tag_edits(tag, value)))


# ------------------------------------------------------------------------------------- colorize


def size_inputs() -> list[Any]:
    """Width/height of the GAN's output: multiples of 64, 0 = automatic."""
    area = f"{GAN_BASE_RESOLUTION}×{GAN_BASE_RESOLUTION}"
    return [
        io.Int.Input("width", default=0, min=0, max=MAX_SIZE, step=64,
                     tooltip=f"Output width in pixels, rounded to a multiple of 64. 0 = follow the sketch's aspect "
                             f"ratio (about {area} in area when both are 0)."),
        io.Int.Input("height", default=0, min=0, max=MAX_SIZE, step=64,
                     tooltip="Output height in pixels, rounded to a multiple of 64. 0 = follow the sketch's aspect "
                             "ratio."),
    ]


def one_reference(reference: ReferenceCode | None, reference_image: Tensor | None) -> None:
    """Nothing when exactly one of the two reference inputs is connected, else the named error."""
    if reference is None and reference_image is None:
        raise InputError("GAN Colorize has no reference: connect reference (from GAN Reference or GAN Tag Edit) or "
                         "reference_image (a colour IMAGE)")
    if reference is not None and reference_image is not None:
        raise InputError("GAN Colorize got both reference and reference_image: connect only one (reference for tag "
                         "edits, reference_image for a plain colour reference)")


class GANColorize(io.ComfyNode):
    """COLORIZE_GAN + sketch IMAGE + (COLORIZE_GAN_REFERENCE or reference IMAGE) → IMAGE."""

    HELP = cleandoc("""
        One forward pass of the GAN's generator (thesis §4.2, Table 4.1): the sketch's encoder features receive
        the reference's through attention, and the decoder paints the image. No steps, no seed: the same inputs
        give the same image.

        - **Reference**: connect `reference` (from **GAN Reference**, or **GAN Tag Edit** for edited tags) or
          `reference_image` (a colour IMAGE, encoded here without edits), not both. One reference serves a whole
          batch of sketches, or give one per sketch.
        - **Sketch**: line art in any polarity (`auto` inverts black-on-white drawings); it keeps its aspect ratio
          and is padded to the output size, a multiple of 64.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return gan_schema(
            "ColorizeDiffusionGANColorize", "GAN Colorize",
            (
                "Colorizes line art with the chapter-4 GAN in one forward pass, from a GAN reference (with its tag "
                "edits) or a reference image."
            ),
            "",
            [
                io.Image.Input("sketch", tooltip="Line art (black lines on white, or white on black); a batch gives "
                                                 "one output per sketch."),
                *size_inputs(),
                io.Combo.Input("polarity", options=list(POLARITIES), default="auto",
                               tooltip="invert = black lines on white paper; keep = already white lines on black; "
                                       "auto = invert when the sketch is mostly light."),
                GANReferenceSocket.Input("reference", optional=True,
                                         tooltip="The reference from GAN Reference or GAN Tag Edit (connect this or "
                                                 "reference_image)."),
                io.Image.Input("reference_image", optional=True,
                               tooltip="A colour reference IMAGE, encoded without tag edits (connect this or "
                                       "reference)."),
            ],
            [output(io.Image, "image", "The colorized image at the output size.")],
        )

    @classmethod
    def execute(cls, gan: GANModel, sketch: Tensor, width: int, height: int, polarity: str,
                reference: ReferenceCode | None = None, reference_image: Tensor | None = None) -> io.NodeOutput:
        one_reference(reference, reference_image)
        sketch01 = image_to_bchw(sketch)
        batch = int(sketch01.shape[0])
        size = gan.colorizer.output_size((int(sketch01.shape[-2]), int(sketch01.shape[-1])), width or None,
                                         height or None)
        check_output_size(*size, output_limits(GAN))  # before any work
        if reference is not None:
            gan.check_code(reference)
        references = reference.batch if reference is not None else int(reference_image.shape[0])  # type: ignore
        if references not in (1, batch):
            raise InputError(f"{references} references for {batch} sketches: give one reference, or one per sketch")
        colorizer = gan.ready()
        device = colorizer.device
        if reference is not None:
            code = code_on(reference, device)
        else:
            check_interrupted()
            with torch.inference_mode(), gan.precision(device):
                code = colorizer.encode_reference(image_to_bchw(reference_image))  # type: ignore[arg-type]
        progress, images = Progress(batch), []
        for i in range(batch):
            check_interrupted()  # Cancel stops between sketches
            j = i if code.batch == batch else 0
            one = ReferenceCode(code.features[j:j + 1], code.probabilities[j:j + 1], dict(code.edits))
            with torch.inference_mode(), gan.precision(device):
                image = colorizer.colorize(sketch01[i:i + 1], one, width=size[1], height=size[0], polarity=polarity)
            images.append(bchw_to_image(image).to(intermediate_device()))
            progress.update(i + 1)
        return io.NodeOutput(torch.cat(images))


__all__ = ["CATEGORY", "LOADER_NAME", "GANColorize", "GANLoader", "GANNetworks", "GANReference", "GANTagEdit",
           "check_gan_file", "gan_files", "open_networks", "parse_tag_edits", "tags_text"]
