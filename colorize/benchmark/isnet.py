"""One forward of the full-size ISNet mask network (random weights) at a canvas size: the cost a mask adds."""
from __future__ import annotations

import time
from typing import Any

import torch

from colorize.benchmark.measure import median, peak_memory, reset_peak_memory, synchronize


def bench_isnet(device: torch.device, canvas: int = 1024, runs: int = 3, warmup: int = 1, seed: int = 0) -> dict[str, Any]:
    """Median seconds of ``ISNetDIS()(x)`` on a ``canvas``² float32 image (the apps run it in float32) and the peak
    memory, after ``warmup`` unmeasured calls."""
    from colorize.masks.isnet import ISNetDIS

    torch.manual_seed(seed)
    net = ISNetDIS().to(device).eval()
    x = torch.rand(1, 3, canvas, canvas, device=device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            reset_peak_memory(device)
            synchronize(device)
            t0 = time.perf_counter()
            net(x)
            synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return {"canvas": canvas, "forward_s": median(times), "runs": runs, **peak_memory(device)}


def format_isnet(result: dict[str, Any], device_name: str) -> str:
    return (f"ISNet forward, {result['canvas']}x{result['canvas']} canvas, float32, {device_name}: "
            f"{result['forward_s'] * 1000:.0f} ms (median of {result['runs']})")
