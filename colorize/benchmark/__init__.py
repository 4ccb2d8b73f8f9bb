"""Speed and memory benchmark of the pipeline: ``python -m colorize bench``.

Modules: :mod:`~colorize.benchmark.models` (random-weight colorizers built on the device: v1, or
ColorizeDiffusion XL ``sdxl`` / ``xlv2``; or loaded checkpoints), :mod:`~colorize.benchmark.measure` (stage timings, peak memory, FLOPs),
:mod:`~colorize.benchmark.report` (tables, environment, the official reference figures) and
:mod:`~colorize.benchmark.cli`.
"""
from __future__ import annotations

from colorize.benchmark.cli import main

__all__ = ["main"]
