"""``extract_lines``: line art from an image with any method (no-weight filters or a line-extraction network)."""
from __future__ import annotations

from typing import Any

from torch import Tensor

from colorize.extractors.classic import high_pass, lineart_standard
from colorize.extractors.extractor import LineExtractor, working_size
from colorize.extractors.filters import resize
from colorize.extractors.loading import load_line_extractor
from colorize.extractors.polarity import InputPolarity, to_dark_on_light
from colorize.extractors.registry import MODEL_SPECS, canonical_method
from colorize.preprocess import check_image


def extract_lines(
    image01: Tensor,
    method: str | LineExtractor = "high_pass",
    input_polarity: InputPolarity = "auto",
    resolution: int | None = None,
    **options: Any,
) -> Tensor:
    """Line art from colour images, pencil drawings or inverted sketches: (B, 3, H, W) black on white.

    ``method``: a loaded :class:`LineExtractor`; a no-weight method (``"high_pass"``: the SketchKeras
    input filter, options ``sigma``/``threshold``; ``"lineart_standard"``: A1111's, option ``sigma``);
    or a model name (``"sketch_keras"``, ``"anime2sketch"``, ``"manga_line"``, or the official
    ``lineart_keras``/``lineart``/``lineart_denoise``), loaded for this call with ``options``
    (``models_dir``, ``download``, ``device``, ``dtype``) — load once with ``load_line_extractor`` to
    reuse it. White-on-black inputs are inverted first (``input_polarity="auto"``).
    """
    if isinstance(method, LineExtractor):
        if options:
            raise TypeError(f"unexpected options for a loaded extractor: {', '.join(options)}")
        return method(image01, input_polarity, resolution)
    name = canonical_method(method)
    if name in MODEL_SPECS:
        return load_line_extractor(name, **options)(image01, input_polarity, resolution)
    x, _ = to_dark_on_light(check_image(image01, "image"), input_polarity)
    h, w = x.shape[-2:]
    x = resize(x, working_size(h, w, resolution)).clamp(0, 1)
    lines = (high_pass if name == "high_pass" else lineart_standard)(x, **options)
    return resize(lines, (h, w)).clamp(0, 1)


__all__ = ["extract_lines"]
