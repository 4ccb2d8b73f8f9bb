"""A no-weight line extractor: colour image → black-on-white line art, for evaluation without sketch files.

Kept for the evaluation and training code; the implementation lives in :mod:`colorize.extractors`
(``high_pass``), next to ``lineart_standard`` and the SketchKeras / Anime2Sketch / MangaLineExtraction
networks. The official app's default extractor (``lineart_keras``, reference §2.2) prepares its input
with a high-pass filter: the image minus its Gaussian blur (σ = 3), divided by the maximum; a
SketchKeras network then draws the lines. Without those weights this keeps the filter and drops the
network: a pixel darker than its blurred neighbourhood (ink, outlines) gives a positive response

    lines = max_c(blur_σ(x) − x) / max(...),   lines < threshold → 0,   sketch = 1 − lines,

computed per image, strongest channel, so coloured outlines count as well as black ones. The result is
softer and noisier than a learned extractor's lines: good enough to run the thesis' protocol (§5.7.2:
"extracted sketches") on any folder of colour images, not a replacement for the SketchKeras model.
"""
from __future__ import annotations

from colorize.extractors.classic import DEFAULT_SIGMA, DEFAULT_THRESHOLD
from colorize.extractors.classic import high_pass as extract_sketch
from colorize.extractors.filters import gaussian_blur, gaussian_kernel1d

__all__ = ["DEFAULT_SIGMA", "DEFAULT_THRESHOLD", "extract_sketch", "gaussian_blur", "gaussian_kernel1d"]
