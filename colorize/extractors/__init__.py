"""Line extraction: clean black-on-white line art from colour images, pencil drawings or inverted sketches.

The official app's sketch preprocessors and line extractors (``backend/functool.py:71-87``,
``preprocessor/__init__.py:24-92`` at commit ``c9bd9fb``). No-weight methods:
``high_pass`` (SketchKeras' input filter alone) and ``lineart_standard`` (A1111's, the official
``invert-webui``). Networks, implemented here and filled from the published weights through
``weights_manifest.json`` (kind ``line_extractor``, folder ``lineart``): SketchKeras (the official
default ``lineart_keras``), Anime2Sketch (``lineart``) and MangaLineExtraction (``lineart_denoise``).

    lines = extract_lines(image01, "high_pass")                       # no weights
    ex = load_line_extractor("sketch_keras", device="cuda")           # models/lineart/sketchkeras.pth
    lines = ex(image01)                                               # (B, 3, H, W), black on white
"""
from colorize.extractors.classic import (
    DEFAULT_SIGMA,
    DEFAULT_THRESHOLD,
    STANDARD_SIGMA,
    high_pass,
    lineart_standard,
)
from colorize.extractors.extractor import LineExtractor, working_size
from colorize.extractors.lines import extract_lines
from colorize.extractors.loading import (
    detect_kind,
    line_extractor_from_state_dict,
    load_line_extractor,
    resolve_line_extractor_path,
)
from colorize.extractors.polarity import (
    INPUT_POLARITIES,
    InputPolarity,
    looks_inverted,
    to_dark_on_light,
)
from colorize.extractors.registry import (
    ALIASES,
    DEFAULT_MODEL,
    METHODS,
    MODEL_SPECS,
    NO_WEIGHT_METHODS,
    ModelSpec,
)

__all__ = [
    "ALIASES",
    "DEFAULT_MODEL",
    "DEFAULT_SIGMA",
    "DEFAULT_THRESHOLD",
    "INPUT_POLARITIES",
    "METHODS",
    "MODEL_SPECS",
    "NO_WEIGHT_METHODS",
    "STANDARD_SIGMA",
    "InputPolarity",
    "LineExtractor",
    "ModelSpec",
    "detect_kind",
    "extract_lines",
    "high_pass",
    "line_extractor_from_state_dict",
    "lineart_standard",
    "load_line_extractor",
    "looks_inverted",
    "resolve_line_extractor_path",
    "to_dark_on_light",
    "working_size",
]
