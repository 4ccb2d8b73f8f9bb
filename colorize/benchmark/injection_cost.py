"""Cost of attention injection per sampling step: ``python -m colorize.benchmark.injection_cost``.

Times whole generations (no decode) with and without injection on random-weight models and prints the
per-step cost and the ratio injected/plain.  The official app describes injection as "2× time": one extra
U-Net pass (the write) per call, and self-attention over twice the keys in the read pass.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

import torch

from colorize.benchmark.measure import bench_size
from colorize.benchmark.models import random_colorizer
from colorize.config import PRESETS
from colorize.settings import GenerationSettings


def step_seconds(model: Any, settings: GenerationSettings, size: tuple[int, int], runs: int) -> float:
    """Best-of-``runs`` seconds per sampling step (one warm-up generation first), from the bench's stage timings."""
    r = bench_size(model, size, settings, runs=runs, warmup=1, unet_iters=1, flops=False)
    return min(r["sample_ms_all"]) / 1e3 / settings.steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m colorize.benchmark.injection_cost", description=__doc__)
    p.add_argument("--config", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--res", type=int, nargs="+", default=[128, 256])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 = steady timings)")
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, _ = random_colorizer(PRESETS[a.config], a.device, a.precision, with_text=False)
    base = GenerationSettings(steps=a.steps, sampler="dpmpp_2m", scheduler="karras")
    rows = []
    for res in a.res:
        for ref_cfg, sketch_cfg in ((4.0, 1.0), (4.0, 2.0)):
            s = replace(base, width=res, height=res, reference_cfg=ref_cfg, sketch_cfg=sketch_cfg)
            plain = step_seconds(model, s, (res, res), a.runs)
            row = {"res": res, "reference_cfg": ref_cfg, "sketch_cfg": sketch_cfg, "plain_ms": plain * 1e3}
            for fidelity in (0.5, 1.0):
                inj = step_seconds(model, replace(s, injection=True, injection_fidelity=fidelity), (res, res), a.runs)
                row[f"injection_f{fidelity}_ms"], row[f"ratio_f{fidelity}"] = inj * 1e3, inj / plain
            rows.append(row)
            print(f"{res}² cfg ref {ref_cfg} sketch {sketch_cfg}: plain {plain * 1e3:.1f} ms/step; injection "
                  f"fidelity 0.5 {row['injection_f0.5_ms']:.1f} ms ({row['ratio_f0.5']:.2f}×), fidelity 1 "
                  f"{row['injection_f1.0_ms']:.1f} ms ({row['ratio_f1.0']:.2f}×)", flush=True)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
