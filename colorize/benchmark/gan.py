"""One forward of the chapter-4 GAN (random weights) at a resolution: thesis Tab. 5.5's one-pass cost.

The thesis reports 57 ms for the GAN at 1024² against 1,387 ms for the diffusion model (Tab. 5.5); this times
the same work here: the tag encoder on the reference (at its trained square, :attr:`GANConfig.reference_size`)
and the generator on a ``res``² sketch, each and together, median of ``runs`` after ``warmup`` calls.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch

from colorize.benchmark.measure import median, peak_memory, reset_peak_memory, synchronize


def bench_gan(device: torch.device, res: int = 1024, runs: int = 3, warmup: int = 1, seed: int = 0,
              dtype: torch.dtype = torch.float32, config: str = "full") -> dict[str, Any]:
    """``{"res", "encoder_s", "generator_s", "total_s", peak memory, "params"}`` of one colorization."""
    from colorize.families.gan.networks import TINY_GAN, ColorizationGenerator, GANConfig, ReferenceTagEncoder

    cfg = GANConfig() if config == "full" else TINY_GAN
    torch.manual_seed(seed)
    encoder = ReferenceTagEncoder(cfg.num_tags, widths=cfg.tag_encoder_widths, depths=cfg.tag_encoder_depths)
    generator = ColorizationGenerator(cfg)
    encoder, generator = encoder.to(device).eval(), generator.to(device).eval()
    sketch = torch.rand(1, cfg.sketch_channels, res, res, device=device) * 2 - 1
    reference = torch.rand(1, 3, cfg.reference_size, cfg.reference_size, device=device)
    autocast = nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)
    times: dict[str, list[float]] = {"encoder_s": [], "generator_s": [], "total_s": []}
    with torch.inference_mode(), autocast:
        for i in range(warmup + runs):
            reset_peak_memory(device)
            synchronize(device)
            t0 = time.perf_counter()
            features = encoder.features(reference)
            synchronize(device)
            t1 = time.perf_counter()
            generator(sketch, features)
            synchronize(device)
            t2 = time.perf_counter()
            if i >= warmup:
                times["encoder_s"].append(t1 - t0)
                times["generator_s"].append(t2 - t1)
                times["total_s"].append(t2 - t0)
    params = sum(p.numel() for m in (encoder, generator) for p in m.parameters())
    return {"res": res, "config": config, "dtype": str(dtype).removeprefix("torch."), "runs": runs,
            **{k: median(v) for k, v in times.items()}, "params": params, **peak_memory(device)}


def format_gan(result: dict[str, Any], device_name: str) -> str:
    return (f"GAN forward (thesis chapter 4, {result['config']} size, {result['params'] / 1e6:.1f}M parameters), "
            f"{result['res']}x{result['res']}, {result['dtype']}, {device_name}: {result['total_s'] * 1000:.1f} ms "
            f"(tag encoder {result['encoder_s'] * 1000:.1f} ms + generator {result['generator_s'] * 1000:.1f} ms; "
            f"median of {result['runs']}; thesis Tab. 5.5: 57 ms at 1024²)")
