"""GPU acceptance benchmark: full-size training steps with random weights, in bf16 with gradient checkpointing:
v1 Stage I (U-Net + sketch encoder trainable, frozen VAE and CLIP ViT-H/14 encoding every step) at 512², or an
XL stage (``--stage xl_base``: U-Net + sketch encoder + ClusterConcat, frozen CLIP-bigG, tagger and VAE, the Gram
loss on; ``xl_adapter_stage1`` / ``xl_adapter_stage2``), e.g. at 1024² batch 1.

``python -m training.bench_gpu [--stage stage1_noisy] [--batch 8 16] [--res 512] [--steps 10] [--out bench.json]``

Runs the same code as ``training.engine`` (``build_modules``, ``apply_trainable``, ``training_loss``, fused AdamW,
gradient clipping) on synthetic batches already on the device (data loading is not timed). For each batch size it
prints one JSON line: samples/s, s/step, peak allocated / reserved GPU memory, the loss (must be finite); a
``--no-checkpointing`` line at the first batch size shows what checkpointing saves. ``--budget-s`` stops before
starting a configuration that might not finish in time. ``--device cpu --preset tiny`` smoke-tests the script.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from training.config import ModelConfig, ObjectiveConfig, config_from_dict
from training.engine import training_loss
from training.model import build_modules
from training.objective import (
    ScheduleTable,
    TrainingProgress,
    draw_condition_drops,
    draw_sample_noise,
    draw_thresholds,
    keyed_generator,
)
from training.stages import apply_trainable, get_stage


def synthetic_batch(mods, batch: int, res: int, objective: ObjectiveConfig, device: torch.device,  # type: ignore[no-untyped-def]
                    reference_size: int = 224) -> dict:
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(batch):
        item = draw_sample_noise(keyed_generator(0, 1, 0, i), mods.noise_spec(), (res, res), objective)
        item.update(draw_thresholds(keyed_generator(0, 5, 0, i), objective))
        item.update(draw_condition_drops(keyed_generator(0, 6, 0, i), objective))
        items.append(item)
    out = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    out["sketch"] = torch.where(torch.rand(batch, 1, res, res, generator=g) < 0.05, 1.0, -1.0).expand(-1, 3, -1, -1)
    out["color"] = torch.rand(batch, 3, res, res, generator=g) * 2 - 1
    out["reference"] = torch.rand(batch, 3, reference_size, reference_size, generator=g) * 2 - 1
    square = torch.zeros(1, 1, res, res)
    square[..., res // 4: 3 * res // 4, res // 4: 3 * res // 4] = 1
    out["mask"] = square.expand(batch, -1, -1, -1)
    out["reference_mask"] = torch.nn.functional.interpolate(square, size=(reference_size, reference_size)).expand(
        batch, -1, -1, -1)
    out["score"] = torch.full((batch,), 6.0)
    out["size"] = torch.full((batch, 2), float(res))
    out["crop"] = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(batch, -1)
    return {k: v.contiguous().to(device) for k, v in out.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(batch: int, res: int, steps: int, warmup: int, checkpointing: bool, dtype: torch.dtype,
               device: torch.device, preset: str = "full", stage_name: str = "stage1_noisy") -> dict[str, Any]:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    stage = get_stage(stage_name)
    train_cfg = config_from_dict({"stage": stage_name})
    objective = train_cfg.objective
    model_cfg = ModelConfig(preset=preset, gradient_checkpointing=checkpointing)
    if stage.version in ("sdxl", "xlv2"):
        from colorize.benchmark.models import xl_config

        config = xl_config(stage.version, "tiny" if preset == "tiny" else "full")
        model_cfg = ModelConfig(colorize_config=config.to_dict(), gradient_checkpointing=checkpointing,
                                random_reference_encoder=True)
    else:
        objective = ObjectiveConfig(noisy_reference=True, reference_drop=0.1)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random CLIP weights are intended here
        mods = build_modules(model_cfg, objective.prediction, device=device, version=stage.version)
    params = apply_trainable(stage, mods.groups())
    mods.denoiser.train()
    build_s = time.perf_counter() - t0
    opt = torch.optim.AdamW(params, lr=1e-5, fused=cuda)
    from colorize.sampling.noise_schedule import ddpm_buffers

    table = ScheduleTable(ddpm_buffers()["alphas_cumprod"])
    data = synthetic_batch(mods, batch, res, objective, device, train_cfg.augment.reference_size
                           if stage.version in ("sdxl", "xlv2") else 224)
    late = TrainingProgress(step=10**9, epoch=1e9)  # losses that start later (the XL Gram loss) are on

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss, _ = training_loss(mods, mods.denoiser, data, objective, table, dtype, device, stage.model_options, late)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    for _ in range(warmup):
        loss = step()
    _sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    _sync(device)
    dt = (time.perf_counter() - t1) / steps
    result = {
        "stage": stage_name, "batch": batch, "res": res, "dtype": str(dtype).replace("torch.", ""), "gradient_checkpointing": checkpointing,
        "s_per_step": round(dt, 4), "samples_per_s": round(batch / dt, 2),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 2) if cuda else None,
        "loss": loss, "loss_finite": bool(torch.isfinite(torch.tensor(loss))), "build_s": round(build_s, 1),
        "trainable_params_m": round(sum(p.numel() for p in params) / 1e6, 2),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.bench_gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", default="stage1_noisy", help="the training stage to time (stage1_noisy, xl_base, "
                    "xl_adapter_stage1, xl_adapter_stage2)")
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", choices=("bf16", "fp16"), default="bf16")
    ap.add_argument("--no-checkpointing-baseline", action="store_true",
                    help="also run the first batch size without gradient checkpointing")
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as a JSON list")
    ap.add_argument("--device", default="cuda", help="cuda (the acceptance run) or cpu (a smoke test)")
    ap.add_argument("--preset", choices=("full", "tiny"), default="full", help="tiny: smoke-test the script")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for the GPU acceptance run (--device cpu to smoke-test)")
    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float16
    env = {"kind": "env", "torch": torch.__version__, "preset": a.preset,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "gpu_mem_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
           if device.type == "cuda" else None}
    print(json.dumps(env), flush=True)
    plan = [(b, True) for b in a.batch]
    if a.no_checkpointing_baseline:
        plan.append((a.batch[0], False))
    results: list[dict[str, Any]] = [env]
    start, last = time.perf_counter(), 0.0
    for batch, ckpt in plan:
        if time.perf_counter() - start + 1.5 * last > a.budget_s:
            print(json.dumps({"kind": "skipped", "batch": batch, "gradient_checkpointing": ckpt}), flush=True)
            continue
        t = time.perf_counter()
        try:
            r = {"kind": "train_step", **run_config(batch, a.res, a.steps, a.warmup, ckpt, dtype, device, a.preset,
                                                    a.stage)}
        except torch.cuda.OutOfMemoryError as e:
            r = {"kind": "oom", "batch": batch, "gradient_checkpointing": ckpt, "error": str(e).splitlines()[0]}
        last = time.perf_counter() - t
        r["wall_s"] = round(last, 1)
        results.append(r)
        print(json.dumps(r), flush=True)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
