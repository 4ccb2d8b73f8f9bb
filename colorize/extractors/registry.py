"""What each line extractor is: its network, input multiple, I/O conventions and weights file."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from colorize.extractors import anime2sketch, manga_line, sketch_keras


@dataclass(frozen=True)
class ModelSpec:
    """A network line extractor (weights needed).

    ``prepare`` maps (B, 3, H, W) in [0, 1] to the network input, ``finish`` maps the network output
    (after cropping) to (B, 1, H, W) black lines on white in [0, 1]; ``marker`` is a key only this
    network's weights hold (used to tell the three apart).
    """

    kind: str
    title: str
    official_name: str
    manifest_name: str
    build: Callable[[], nn.Module]
    multiple: int
    prepare: Callable[[Tensor], Tensor]
    finish: Callable[[Tensor, int], Tensor]
    marker: str


MODEL_SPECS: dict[str, ModelSpec] = {
    "sketch_keras": ModelSpec(
        "sketch_keras", "SketchKeras", "lineart_keras", "lineart-sketchkeras", sketch_keras.SketchKeras,
        sketch_keras.MULTIPLE, sketch_keras.prepare, sketch_keras.finish, "downblock_1.1.weight",
    ),
    "anime2sketch": ModelSpec(
        "anime2sketch", "Anime2Sketch", "lineart", "lineart-anime2sketch", anime2sketch.UnetGenerator,
        anime2sketch.MULTIPLE, anime2sketch.prepare, anime2sketch.finish, "model.model.0.weight",
    ),
    "manga_line": ModelSpec(
        "manga_line", "MangaLineExtraction", "lineart_denoise", "lineart-manga", manga_line.ResSkip,
        manga_line.MULTIPLE, manga_line.prepare, manga_line.finish, "block0.model.0.conv1.model.2.weight",
    ),
}
NO_WEIGHT_METHODS: tuple[str, ...] = ("high_pass", "lineart_standard")
METHODS: tuple[str, ...] = (*MODEL_SPECS, *NO_WEIGHT_METHODS)
DEFAULT_MODEL = "sketch_keras"  # the official app's default (lineart_keras)
# The official app's names (``preprocessor/__init__.py:24-31``) for the same extractors.
ALIASES: dict[str, str] = {
    **{s.official_name: k for k, s in MODEL_SPECS.items()},
    "invert-webui": "lineart_standard",
    "lineart_standard": "lineart_standard",
}


def canonical_method(name: str) -> str:
    """A method name or official alias → the name used here; unknown names → ValueError listing the choices."""
    name = ALIASES.get(name, name)
    if name not in METHODS:
        raise ValueError(f"unknown line extractor {name!r}; choose one of {', '.join(METHODS)} "
                         f"(official names {', '.join(a for a in ALIASES if a not in METHODS)} also work)")
    return name


__all__ = ["ALIASES", "DEFAULT_MODEL", "METHODS", "MODEL_SPECS", "NO_WEIGHT_METHODS", "ModelSpec", "canonical_method"]
