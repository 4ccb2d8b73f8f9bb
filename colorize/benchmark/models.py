"""Colorizers for benchmarking: random weights built directly on the device, or loaded checkpoints."""
from __future__ import annotations

import math
import os
import time
from typing import Any

import torch
from torch import nn

from colorize.config import ColorizerConfig
from colorize.device import resolve_device


def randomize_zero_layers(module: nn.Module, generator: torch.Generator) -> int:
    """Give every all-zero weight matrix (zero-initialised output layers of the real model) small random
    values, as :mod:`colorize.tiny` does, so every path computes; ``generator`` lives on the module's
    device. Returns how many tensors were redrawn."""
    n = 0
    for p in module.parameters():
        if p.ndim >= 2 and not p.detach().any():
            p.data.normal_(0.0, 0.5 / math.sqrt(p[0].numel()), generator=generator)
            n += 1
    return n


def random_colorizer(
    config: ColorizerConfig, device: str | torch.device = "auto", precision: str = "auto", seed: int = 0,
    with_text: bool = True, low_vram: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """A :class:`~colorize.pipeline.Colorizer` of ``config`` with random weights, every module allocated and
    initialised on ``device`` (no CPU copy); returns it with build facts (seconds, parameter counts).

    ``with_text`` keeps the CLIP text tower, as the default open_clip weights file (and the official app) do:
    it costs memory, not time. ``low_vram``: the colorizer's sequential CPU offload (:mod:`colorize.offload`);
    the modules are built on the device, then moved to the CPU."""
    from colorize.models.clip import ReferenceEncoder
    from colorize.models.sketch_encoder import SketchEncoder
    from colorize.models.unet import DualCondUNet
    from colorize.models.vae import AutoencoderKL
    from colorize.pipeline import Colorizer

    dev = resolve_device(device)
    start = time.perf_counter()
    torch.manual_seed(seed)
    with torch.device(dev):
        unet, sketch = DualCondUNet(config.unet), SketchEncoder(config.sketch)
        vae, clip = AutoencoderKL(config.vae), ReferenceEncoder(config.clip, with_text=with_text)
    gen = torch.Generator(device=dev).manual_seed(seed)
    redrawn = sum(randomize_zero_layers(m, gen) for m in (unet, sketch, vae))
    model = Colorizer(config, unet, sketch, vae, clip, dev, precision, low_vram=low_vram)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    info = {
        "weights": "random (built on the device; zero-initialised layers redrawn)",
        "build_s": round(time.perf_counter() - start, 3),
        "zero_init_tensors_redrawn": redrawn,
        "params_millions": parameter_counts(model),
    }
    return model, info


def loaded_colorizer(checkpoint: str | os.PathLike[str], clip: str | os.PathLike[str] | None,
                     device: str | torch.device = "auto", precision: str = "auto") -> tuple[Any, dict[str, Any]]:
    """A colorizer from weights files (real numbers, real memory footprint)."""
    from colorize.pipeline import Colorizer

    start = time.perf_counter()
    model = Colorizer.from_files(checkpoint, clip, device=device, precision=precision)
    info = {"weights": os.fspath(checkpoint), "build_s": round(time.perf_counter() - start, 3),
            "params_millions": parameter_counts(model)}
    return model, info


def parameter_counts(model: Any) -> dict[str, float]:
    parts = {"unet": model.unet, "sketch_encoder": model.sketch_encoder, "vae": model.vae, "clip": model.reference_encoder}
    return {k: round(sum(p.numel() for p in m.parameters()) / 1e6, 2) for k, m in parts.items()}


__all__ = ["loaded_colorizer", "parameter_counts", "random_colorizer", "randomize_zero_layers"]
