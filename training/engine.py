"""The training loop: AdamW, autocast (bf16, or fp16 with a GradScaler), gradient accumulation, DDP, optional
EMA, resumable atomic checkpoints, loss/sample logs and a released-layout export at the end.

Determinism: every sample's augmentation and noise come from generators keyed by (seed, step, slot)
(``training.batches``), so a resumed run continues exactly (bitwise on CPU) and a ``W``-process run sees the
same samples as one process with the same global batch (gradients then differ only by summation order).

Robustness: the data folder is checked and the checkpoint to resume from is read before any model is built
(one-line :mod:`training.errors` messages); unreadable samples are skipped and replaced deterministically
(:mod:`training.bad_samples`; the known ones are checkpointed); an unreadable newest checkpoint falls back to
the previous one (:func:`training.checkpoint.newest_readable_state`); ``log.jsonl`` is rewound to the resumed
step so that no step appears twice (:meth:`training.logs.MetricLog.rewind`).
"""
from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from colorize.sampling.noise_schedule import ddpm_buffers
from training import checkpoint as ckpt
from training.bad_samples import BadSample, BadSampleLedger, split_reports
from training.batches import AspectBatchPlan, BatchPlan, ItemSpec, PlanSampler, TripletDataset, collate
from training.config import ObjectiveConfig, TrainConfig
from training.data import check_masks, open_source, record_aspects, warn
from training.distributed import DistInfo, all_reduce_mean, barrier, gather_objects, init_distributed
from training.ema import EMA
from training.errors import TrainingCheckpointError, TrainingDataError
from training.export import export_safetensors
from training.logs import MetricLog, render_samples, save_samples
from training.model import TrainModules, build_modules
from training.objective import ScheduleTable, TrainingProgress, make_inputs, weighted_mse
from training.stages import apply_trainable, get_stage

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA when supported (else fp16), fp32 elsewhere."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return _DTYPES[precision]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def autocast_context(device: torch.device, dtype: torch.dtype) -> Any:
    """``torch.autocast`` for bf16/fp16, nothing for fp32."""
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def training_loss(
    mods: TrainModules,
    model: torch.nn.Module,
    batch: dict[str, Tensor],
    objective: ObjectiveConfig,
    table: ScheduleTable,
    dtype: torch.dtype,
    device: torch.device,
    options: dict[str, Any] | None = None,
    progress: TrainingProgress | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One micro-batch: frozen VAE encode of the colour image and the family's frozen encodes (no grad;
    ``denoiser.training_inputs`` with the stage's model ``options``, the ``objective`` and the run's ``progress``),
    noised inputs (Eq. 5.2 / 5.3), the model, MSE.

    Returns ``(loss, parts)``: the loss to minimise and its named parts (detached; ``diffusion_loss`` and whatever
    extra losses the model returns — a model may return ``(prediction, {name: weighted loss})``, e.g. the XL base
    stage's ``gram_loss``)."""
    b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    encoders = mods.encoders()
    with autocast_context(device, dtype):
        z = encoders.latents(b["color"], b["vae_noise"] if objective.vae_sample else None)
    tokens, kwargs = mods.denoiser.training_inputs(  # type: ignore[operator]
        b, z, encoders, lambda: autocast_context(device, dtype), objective=objective,
        progress=progress or TrainingProgress(), **(options or {}))
    inputs = make_inputs(z.float(), tokens.float(), b["sketch"], b, objective, table)
    with autocast_context(device, dtype):
        out = model(inputs.x_t, inputs.t, inputs.context, inputs.sketch, **kwargs)
    pred, extra = out if isinstance(out, tuple) else (out, {})
    loss = weighted_mse(pred, inputs.target, inputs.weights)
    parts = {"diffusion_loss": loss.detach(), **{k: v.detach().float() for k, v in extra.items()}}
    for v in extra.values():
        loss = loss + v.float()
    return loss, parts


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)
    export: Path | None = None
    checkpoint: Path | None = None


class Trainer:
    """One run of a :class:`TrainConfig` on this process (``torchrun`` starts one per GPU)."""

    def __init__(self, cfg: TrainConfig, dist: DistInfo | None = None) -> None:
        self.cfg = cfg
        self.dist = dist or init_distributed(cfg.run.device)
        self.device = self.dist.device
        self.stage = get_stage(cfg.stage)
        # everything that can be wrong with the data folder or the run folder, before any model is built
        self.source = open_source(cfg.data)
        if self.stage.needs_masks:
            check_masks(self.source.records)
        self.plan = self._batch_plan()
        self.out_dir = Path(cfg.run.out_dir)
        self._resume_from = self._find_resume_state()
        seed_everything(cfg.run.seed)
        self.mods = build_modules(cfg.model, cfg.objective.prediction, version=self.stage.version)
        self.params = apply_trainable(self.stage, self.mods.groups())
        self.mods.denoiser.to(self.device).train()
        self.mods.vae.to(self.device)
        self.mods.clip.to(self.device)
        self.table = ScheduleTable(ddpm_buffers(self.mods.config.schedule)["alphas_cumprod"])
        self.model: torch.nn.Module = self.mods.denoiser
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.mods.denoiser, device_ids=ids,
                                                 find_unused_parameters=cfg.run.find_unused_parameters)
        o = cfg.optim
        fast = {"fused": True} if self.device.type == "cuda" else {"foreach": True}
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, eps=o.eps,
                                           **fast)
        warm = max(0, o.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.dtype = resolve_precision(cfg.run.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.ema = EMA(self.mods.denoiser, cfg.run.ema_decay) if cfg.run.ema_decay else None
        d, num_items = cfg.data, len(self.source.records)
        self.ledger = BadSampleLedger(num_items, d.max_bad_fraction, d.min_bad_allowance)
        self.dataset = TripletDataset(self.source, cfg.augment, cfg.objective, self.mods.noise_spec(), cfg.run.seed,
                                      masks=self.stage.needs_masks, max_bad=self.ledger.limit)
        self.step = 0
        self.log = MetricLog(self.out_dir, enabled=self.dist.is_main)
        self._maybe_resume()

    def _batch_plan(self) -> BatchPlan:
        """Which samples each step takes: one random bucket per step, or the aspect-ratio batching
        (``augment.aspect_buckets``; a data error when no orientation group fills a global batch)."""
        cfg, r = self.cfg, self.cfg.run
        if not cfg.augment.aspect_buckets:
            return BatchPlan(len(self.source.records), r.batch_size, r.grad_accum, self.dist.world_size, r.seed,
                             cfg.augment.buckets)
        aspects = record_aspects(self.source, getattr(self.source, "info", None))
        try:
            return AspectBatchPlan(aspects, r.batch_size, r.grad_accum, self.dist.world_size, r.seed,
                                   cfg.augment.buckets)
        except ValueError as e:
            raise TrainingDataError(str(e)) from None

    # ------------------------------------------------------------------ steps
    def micro_loss(self, batch: dict[str, Tensor], model: torch.nn.Module | None = None
                   ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of one micro-batch (mean over its samples) and its named parts (:func:`training_loss`)."""
        return training_loss(self.mods, model or self.model, batch, self.cfg.objective, self.table, self.dtype,
                             self.device, self.stage.model_options, self.progress())

    def progress(self) -> TrainingProgress:
        """Where the run is: the step being taken and the data epoch it starts in (fractional)."""
        return TrainingProgress(self.step, self.plan.epoch_of(self.step))

    def train_step(self, micro_batches: list[dict[str, Tensor]]) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches; returns loss (mean over all processes)."""
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        part_sums: dict[str, Tensor] = {}
        n = len(micro_batches)
        for i, batch in enumerate(micro_batches):
            sync = i == n - 1 or not self.dist.enabled
            with nullcontext() if sync else self.model.no_sync():  # type: ignore[operator]
                loss, parts = self.micro_loss(batch)
                self.scaler.scale(loss / n).backward()
            total += loss.detach()
            for k, v in parts.items():
                part_sums[k] = part_sums.get(k, torch.zeros((), device=self.device)) + v
        self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if self.cfg.optim.max_grad_norm:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.max_grad_norm))
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        skipped = scale is not None and self.scaler.get_scale() < scale  # fp16 overflow: no update this step
        if not skipped:
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.mods.denoiser)
        self.step += 1
        out = {"loss": float(all_reduce_mean(total / n, self.dist))}
        if len(part_sums) > 1:  # a model with extra losses: log every part
            out.update({k: float(all_reduce_mean(v / n, self.dist)) for k, v in part_sums.items()})
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        if scale is not None:
            out["loss_scale"] = float(self.scaler.get_scale())
            out["skipped"] = float(skipped)
        return out

    @torch.no_grad()
    def eval_loss(self, batch: dict[str, Tensor]) -> float:
        """Loss of a fixed batch with the current weights (no update, eval mode)."""
        den = self.mods.denoiser
        was = den.training
        den.eval()
        try:
            return float(self.micro_loss(batch, model=den)[0])
        finally:
            den.train(was)

    def fixed_batch(self, count: int, key: int = -1) -> dict[str, Tensor]:
        """The first ``count`` items with a fixed key and the first bucket (previews, evaluation)."""
        bucket = tuple(self.cfg.augment.buckets[0])
        items = [ItemSpec(i % len(self.dataset), key, i, bucket) for i in range(count)]  # type: ignore[arg-type]
        batch, _, gave_up = split_reports(collate([self.dataset[s] for s in items]))
        if gave_up:
            self.ledger.add(self.dataset.known_bad.values())
            self.ledger.check(force=True)
        return batch

    # ------------------------------------------------------------------ data
    def micro_batches(self) -> Iterator[list[dict[str, Tensor]]]:
        """Lists of ``grad_accum`` micro-batches, one list per step, from the current step on."""
        sampler = PlanSampler(self.plan, self.dist.rank, self.step, self.cfg.run.max_steps)
        loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate,  # type: ignore[arg-type]
                            num_workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda")
        group: list[dict[str, Tensor]] = []
        reports: list[BadSample] = []
        gave_up = False
        for batch in loader:
            batch, found, failed = split_reports(batch)
            reports.extend(found)
            gave_up |= failed
            group.append(batch)
            if len(group) == self.plan.grad_accum:
                self.note_unreadable(reports, gave_up)
                yield group
                group, reports, gave_up = [], [], False

    def note_unreadable(self, reports: list[BadSample], gave_up: bool) -> None:
        """Share the unreadable records that this step's batches passed over with every process; warn and log
        the new ones (main process); stop once more are known than ``data.max_bad_fraction`` allows."""
        new = self.ledger.unknown(reports)
        shared = gather_objects((new, gave_up), bool(new) or gave_up, self.dist)
        added = self.ledger.add(bad for found, _ in shared for bad in found)
        self.dataset.mark_bad(added)
        if self.dist.is_main:
            for bad in added:
                warn(bad.warning())
                self.log.event("skipped_sample", self.step + 1, key=bad.key, file=bad.file, reason=bad.reason,
                               echo=False)
        self.ledger.check(force=any(failed for _, failed in shared))

    # ------------------------------------------------------------------ run
    def train(self) -> TrainResult:
        r = self.cfg.run
        result = TrainResult(self.step)
        window: dict[str, list[float]] = {}  # the losses (and loss parts) since the last log line
        t0, s0 = time.time(), self.step
        for group in self.micro_batches():
            metrics = self.train_step(group)
            result.losses.append(metrics["loss"])
            for k, v in metrics.items():
                if k.endswith("loss"):
                    window.setdefault(k, []).append(v)
            if r.log_every and self.step % r.log_every == 0:
                rate = (self.step - s0) * self.plan.global_batch / max(time.time() - t0, 1e-9)
                means = {k: sum(v) / len(v) for k, v in window.items()}
                self.log.write({"step": self.step, "loss": means.pop("loss"),
                                "lr": self.scheduler.get_last_lr()[0], "samples_per_s": rate,
                                "skipped_samples": len(self.ledger), **means,
                                **{k: v for k, v in metrics.items() if not k.endswith("loss")}})
                window = {}
            if r.sample_every and self.step % r.sample_every == 0:
                self.write_samples()
            if r.save_every and self.step % r.save_every == 0:
                result.checkpoint = self.save()
        if result.checkpoint is None or self.step % max(r.save_every, 1):
            result.checkpoint = self.save()
        if r.export:
            result.export = self.export()
        result.step = self.step
        return result

    def write_samples(self) -> Path | None:
        if not self.dist.is_main:
            return None
        grid = render_samples(self.mods, self.fixed_batch(self.cfg.run.sample_count), self.cfg.run.sample_steps,
                              self.cfg.run.seed)
        return save_samples(self.out_dir / "samples" / f"step_{self.step:08d}.png", grid)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "stage": self.stage.name,
            "model": self.mods.denoiser.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": ckpt.rng_state(),
            "data": self.plan.position(self.step),
            "bad_samples": self.ledger.state_dict(),
            "train_config": self.cfg.to_json(),
            "colorize_config": json.dumps(self.mods.config.to_dict()),
        }

    def save(self) -> Path:
        """Checkpoint of the current step (main process writes; everyone waits)."""
        path = ckpt.checkpoint_path(self.out_dir, self.step)
        if self.dist.is_main:
            ckpt.save_training_state(self.state_dict(), path)
            ckpt.prune_checkpoints(self.out_dir, self.cfg.run.keep_checkpoints, upto=self.step)
        barrier(self.dist)
        return path

    def load_state_dict(self, state: dict[str, Any], path: str | Path = "the checkpoint") -> None:
        if state["colorize_config"] != json.dumps(self.mods.config.to_dict()):
            raise TrainingCheckpointError(f"{path} was written for a different model configuration; resume it with "
                                          "the config it was trained with, or start a new run folder (run.out_dir)")
        self.mods.denoiser.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        ckpt.set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.ledger.load_state_dict(state.get("bad_samples", []), {rec.key for rec in self.source.records})
        self.dataset.mark_bad(list(self.ledger.known.values()))

    def _find_resume_state(self) -> tuple[Path, dict[str, Any]] | None:
        """``(path, state)`` to resume from (``run.resume``: "auto" the newest readable checkpoint of the run
        folder, "none" nothing, else that file), read before the models are built."""
        how = self.cfg.run.resume
        if how in ("none", ""):
            return None
        if how == "auto":
            if self.dist.is_main:
                ckpt.remove_partial_saves(self.out_dir)
            return ckpt.newest_readable_state(self.out_dir, report=self.dist.is_main)
        path = Path(how)
        if not path.is_file():
            raise TrainingCheckpointError(f"run.resume file {path} does not exist; point run.resume at a checkpoint "
                                          "(RUN/checkpoints/step_N.pt), or use run.resume=auto or none")
        return path, ckpt.load_training_state(path)

    def _maybe_resume(self) -> None:
        """Load the state found by :meth:`_find_resume_state`; rewind ``log.jsonl`` to the starting step."""
        found, self._resume_from = self._resume_from, None
        if found is not None:
            path, state = found
            self.load_state_dict(state, path)
        self.log.rewind(self.step)
        if found is not None and self.dist.is_main:
            print(f"resumed from {path} at step {self.step}", flush=True)
            self.log.event("resumed", self.step, checkpoint=str(path), skipped_samples=len(self.ledger), echo=False)

    def export(self) -> Path | None:
        """Released-layout safetensors of the (EMA) weights: ``out_dir/export/<stage>-step<N>.safetensors``."""
        if not self.dist.is_main:
            barrier(self.dist)
            return None
        sd = self.mods.denoiser.state_dict()
        use_ema = self.ema is not None and self.cfg.run.export_ema
        if use_ema:
            sd = self.ema.averaged_state_dict(self.mods.denoiser)  # type: ignore[union-attr]
        path = self.out_dir / "export" / f"{self.stage.name}-step{self.step:08d}.safetensors"
        info = {"stage": self.stage.name, "step": self.step, "ema": use_ema}
        export_safetensors(path, sd, self.mods.vae.state_dict(), self.mods.config, info, self.cfg.run.export_vae_fp16)
        barrier(self.dist)
        return path
