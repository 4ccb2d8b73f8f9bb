"""Line extraction node: colour illustrations, pencil drawings or inverted sketches → clean line art.

A thin wrapper over :mod:`colorize.extractors` (the official app's line extractors): the no-weight filters run where the image
is; the networks (SketchKeras, Anime2Sketch, MangaLineExtraction) are read from ComfyUI's ``models/lineart``
(a missing manifest file is downloaded on first use), loaded once per file and placed by ComfyUI's model
management. The output is black lines on white at the input's size, what Sketch Preprocess expects.
"""
from __future__ import annotations

from dataclasses import dataclass
from inspect import cleandoc
from pathlib import Path

import torch
from torch import Tensor

from colorize.errors import LineExtractorWeightsError
from colorize.extractors import (
    DEFAULT_SIGMA,
    DEFAULT_THRESHOLD,
    INPUT_POLARITIES,
    MODEL_SPECS,
    NO_WEIGHT_METHODS,
    STANDARD_SIGMA,
    LineExtractor,
    extract_lines,
    load_line_extractor,
)
from colorize.weights import manifest_entry

from .host import ManagedModule, Progress, check_interrupted, intermediate_device, offload_device
from .models import LINEART_FOLDER, list_files, resolve_file
from .schema import io, output
from .sockets import bchw_to_image, image_to_bchw
from .widgets import MAX_SIZE

LINE_METHODS: tuple[str, ...] = (*NO_WEIGHT_METHODS, *MODEL_SPECS)
AUTO_FILE = "auto"
METHOD_SIGMA = {"high_pass": DEFAULT_SIGMA, "lineart_standard": STANDARD_SIGMA}


@dataclass(frozen=True)
class LoadedExtractor:
    """A line-extraction network read from one file (``stamp`` = modification time and size when read)."""

    kind: str
    module: ManagedModule
    source: str
    stamp: tuple[int, int]


_LOADED: dict[str, LoadedExtractor] = {}  # resolved path → network, kept between runs


def method_file(method: str, model_file: str) -> str:
    """The file a model method reads: the picked one, or (``auto``) the method's manifest file."""
    if model_file != AUTO_FILE:
        return model_file
    return str(manifest_entry(MODEL_SPECS[method].manifest_name)["filename"])


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def load_extractor(method: str, model_file: str) -> LoadedExtractor:
    """The network for ``method`` from ``models/lineart``: downloaded if missing (manifest files), read once
    per file (again only when the file changed), checked to be the network ``method`` names."""
    name = method_file(method, model_file)
    path = resolve_file(LINEART_FOLDER, name)
    key, stamp = str(path.resolve()), _stamp(path)
    loaded = _LOADED.get(key)
    if loaded is None or loaded.stamp != stamp:
        ex = load_line_extractor(path, device=offload_device("unet"), dtype=torch.float32)
        loaded = LoadedExtractor(ex.kind, ManagedModule(ex.net, "unet"), ex.source, stamp)
        _LOADED[key] = loaded
    if loaded.kind != method:
        want = MODEL_SPECS[method]
        raise LineExtractorWeightsError(
            f"{name} (ComfyUI model folder '{LINEART_FOLDER}') holds {MODEL_SPECS[loaded.kind].title} weights, "
            f"but the method is {method!r}: set method to {loaded.kind!r}, or pick the {want.title} file "
            f"({method_file(method, AUTO_FILE)}) or 'auto'."
        )
    return loaded


def method_options(method: str, sigma: float, threshold: float) -> dict[str, float]:
    """Keyword options of a no-weight method (sigma 0 = the method's default)."""
    opts = {"sigma": sigma if sigma > 0 else METHOD_SIGMA[method]}
    if method == "high_pass":
        opts["threshold"] = threshold
    return opts


class LineExtract(io.ComfyNode):
    """IMAGE (colour, pencil or inverted line art) → IMAGE (black lines on white, same size)."""

    HELP = cleandoc("""
        Methods:

        - `high_pass`: filter, no weights (SketchKeras' input filter);
        - `lineart_standard`: filter, no weights (the official 'invert-webui');
        - `sketch_keras`: network (the official default 'lineart_keras');
        - `anime2sketch`: network (official 'lineart');
        - `manga_line`: network (official 'lineart_denoise').

        The networks' weights are read from models/lineart and downloaded on first use if missing. The output is
        black lines on white at the input's size.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionLineExtract", display_name="Line Extract", category="ColorizeDiffusion/sketch",
            description=(
                "Extracts clean black-on-white line art from a colour illustration, a pencil drawing or a "
                "white-on-black sketch, for Sketch Preprocess. Network methods read their weights from models/lineart "
                "(downloaded on first use)."
            ),
            inputs=[
                io.Image.Input("image", tooltip="Colour illustration, pencil drawing or line art (dark on light or "
                                                "white on black); a batch is processed image by image."),
                io.Combo.Input("method", options=list(LINE_METHODS), default="high_pass",
                               tooltip="high_pass / lineart_standard: filters, no weights (sigma, threshold apply). "
                                       "sketch_keras (official default, 75 MB), anime2sketch (218 MB), manga_line "
                                       "(173 MB): networks whose weights come from models/lineart."),
                io.Combo.Input("model_file", options=[AUTO_FILE, *list_files(LINEART_FOLDER)], default=AUTO_FILE,
                               tooltip="Weights in models/lineart for a network method (ignored by the filters). "
                                       "auto = the method's published file (sketchkeras.pth, netG.pth, erika.pth), "
                                       "downloaded from Hugging Face when the node first runs if it is missing."),
                io.Combo.Input("input_polarity", options=list(INPUT_POLARITIES), default="auto",
                               tooltip="auto = white-on-black grey line art is inverted first (a dark colour picture "
                                       "is not); dark_on_light = never invert; light_on_dark = always invert."),
                io.Int.Input("resolution", default=0, min=0, max=MAX_SIZE, step=64,
                             tooltip="Shorter side (px) the extractor works at, lines resized back to the input "
                                     "size. 0 = the input's own size (the official app works at 512)."),
                io.Float.Input("sigma", default=0.0, min=0.0, max=20.0, step=0.1,
                               tooltip="Gaussian blur of the filter methods: larger = thicker, fewer lines. 0 = the "
                                       f"method's default ({DEFAULT_SIGMA:g} for high_pass, {STANDARD_SIGMA:g} for "
                                       "lineart_standard)."),
                io.Float.Input("threshold", default=DEFAULT_THRESHOLD, min=0.0, max=1.0, step=0.01,
                               tooltip="high_pass only: line responses below this fraction of the strongest become "
                                       "paper (higher = cleaner, fewer faint lines)."),
            ],
            outputs=[output(io.Image, "lines",
                            "Black lines on white, the input's size: feed it to Sketch Preprocess (polarity auto).")],
        )

    @classmethod
    def execute(cls, image: Tensor, method: str, model_file: str, input_polarity: str, resolution: int,
                sigma: float, threshold: float) -> io.NodeOutput:
        x = image_to_bchw(image)
        res = resolution or None
        if method in MODEL_SPECS:
            loaded = load_extractor(method, model_file)
            extractor = LineExtractor(loaded.kind, loaded.module.ready(), loaded.source)

            def run(item: Tensor) -> Tensor:
                return extractor(item, input_polarity, res)  # type: ignore[arg-type]
        else:
            opts = method_options(method, sigma, threshold)

            def run(item: Tensor) -> Tensor:
                return extract_lines(item, method, input_polarity, res, **opts)  # type: ignore[arg-type]

        progress = Progress(x.shape[0])
        out = []
        for i, item in enumerate(x.split(1)):
            check_interrupted()
            out.append(bchw_to_image(run(item)).to(intermediate_device()))
            progress.update(i + 1)
        return io.NodeOutput(torch.cat(out))


__all__ = ["AUTO_FILE", "LINE_METHODS", "LineExtract", "LoadedExtractor", "load_extractor", "method_file",
           "method_options"]
