"""The run machinery every training loop shares (the diffusion :class:`training.engine.Trainer` and the chapter-4
GAN's :class:`training.gan.trainer.GANTrainer`): process group and device, the data folder and its batch plan,
unreadable samples, the loop with its ``log.jsonl`` lines, sample grids and checkpoints, resuming, the export at
the end, and :class:`OptimizerSlot` (one AdamW with its warm-up schedule and fp16 grad scaler).

A loop subclasses :class:`RunBase` and supplies what differs: ``build`` (its networks, optimisers and dataset,
called once the data folder and the checkpoint to resume from have been checked), ``train_step``,
``model_state`` / ``load_model_state`` (its part of a checkpoint), ``config_json`` (what a checkpoint must have
been written for), ``sample_grid`` and ``write_export``.

Determinism: every sample's random draws come from generators keyed by (seed, step, slot) (``training.batches``),
so a resumed run continues exactly (bitwise on CPU) and a ``W``-process run sees the same samples as one process
with the same global batch.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from training import checkpoint as ckpt
from training.bad_samples import BadSample, BadSampleLedger, split_reports
from training.batches import AspectBatchPlan, BatchPlan, ItemSpec, PlanSampler, collate
from training.config import OptimConfig, TrainConfig
from training.data import open_source, record_aspects, warn
from training.distributed import DistInfo, all_reduce_mean, barrier, gather_objects, init_distributed
from training.ema import EMA
from training.errors import TrainingCheckpointError, TrainingDataError
from training.logs import MetricLog, save_samples
from training.stages import get_stage

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


def wrap_ddp(module: nn.Module, dist: DistInfo, find_unused_parameters: bool = False,
             broadcast_buffers: bool = True) -> nn.Module:
    """``module`` in :class:`DistributedDataParallel` when the run has several processes, else itself
    (``broadcast_buffers=False``: each process keeps its own BatchNorm statistics, as the GAN stages do)."""
    if not dist.enabled:
        return module
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters,
                                   broadcast_buffers=broadcast_buffers)


def sync_context(model: nn.Module, sync: bool) -> Any:
    """DDP's ``no_sync()`` for a micro-batch that is not the last of a step (nothing when ``sync`` or no DDP)."""
    return model.no_sync() if not sync and isinstance(model, DistributedDataParallel) else nullcontext()


def accumulate(micro_batches: list[dict[str, Tensor]], models: list[nn.Module],
               micro: Callable[[dict[str, Tensor], int], dict[str, Tensor]]) -> dict[str, Tensor]:
    """Gradient accumulation over one step's micro-batches: ``micro(batch, n)`` computes a micro-batch's losses
    and calls the backward(s) of ``loss / n`` itself; every micro-batch but the last runs inside DDP's ``no_sync``
    of each of ``models``. Returns the mean over the micro-batches of every (detached, scalar) part ``micro``
    returns."""
    n = len(micro_batches)
    sums: dict[str, Tensor] = {}
    for i, batch in enumerate(micro_batches):
        with ExitStack() as stack:
            for model in models:
                stack.enter_context(sync_context(model, i == n - 1))
            parts = micro(batch, n)
        for k, v in parts.items():
            sums[k] = sums[k] + v if k in sums else v
    return {k: v / n for k, v in sums.items()}


def process_means(parts: dict[str, Tensor], dist: DistInfo) -> dict[str, float]:
    """Each part's mean over the processes, as numbers."""
    return {k: float(all_reduce_mean(v, dist)) for k, v in parts.items()}


class OptimizerSlot:
    """One AdamW over ``params`` with a linear warm-up (then constant), a GradScaler (enabled for fp16) and
    gradient-norm clipping (``optim.max_grad_norm``). ``lr`` / ``betas`` override the config's (e.g. the GAN
    discriminator's own learning rate)."""

    def __init__(self, params: list[nn.Parameter], optim: OptimConfig, device: torch.device, dtype: torch.dtype,
                 lr: float | None = None, betas: tuple[float, float] | None = None) -> None:
        fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
        self.params = params
        self.max_grad_norm = optim.max_grad_norm
        self.optimizer = torch.optim.AdamW(params, lr=optim.lr if lr is None else lr, betas=betas or optim.betas,
                                           weight_decay=optim.weight_decay, eps=optim.eps, **fast)
        warm = max(0, optim.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self) -> tuple[dict[str, float], bool]:
        """Unscale, clip, step, update the scale; ``(metrics, stepped)``: ``grad_norm`` (when clipping),
        ``loss_scale`` and ``skipped`` (fp16); ``stepped`` is False when an fp16 overflow skipped the update (the
        schedule then does not advance)."""
        self.scaler.unscale_(self.optimizer)
        metrics: dict[str, float] = {}
        if self.max_grad_norm:
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        skipped = scale is not None and self.scaler.get_scale() < scale  # fp16 overflow: no update this step
        if not skipped:
            self.scheduler.step()
        if scale is not None:
            metrics["loss_scale"] = float(self.scaler.get_scale())
            metrics["skipped"] = float(skipped)
        return metrics, not skipped

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


def make_ema(module: nn.Module, decay: float | None) -> EMA | None:
    """The run's EMA of ``module``'s trainable parameters (``run.ema_decay``), or None."""
    return EMA(module, decay) if decay else None


def ema_state_dict(module: nn.Module, ema: EMA | None) -> dict[str, Tensor]:
    """``module``'s state dict with the EMA averages in place of its trainable parameters (when there is one)."""
    return ema.averaged_state_dict(module) if ema is not None else module.state_dict()


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)
    export: Path | None = None
    checkpoint: Path | None = None
    #: every step's metrics (``train_step``'s dict: the loss, its parts, grad norms, ...)
    metrics: list[dict[str, float]] = field(default_factory=list)


class RunBase:
    """One run of a :class:`TrainConfig` on this process (``torchrun`` starts one per GPU); see the module
    docstring for what a subclass supplies."""

    #: metric names averaged over a log window besides those ending in ``loss`` (the others: last value)
    loss_parts: tuple[str, ...] = ()

    def __init__(self, cfg: TrainConfig, dist: DistInfo | None = None) -> None:
        self.cfg = cfg
        self.dist = dist or init_distributed(cfg.run.device)
        self.device = self.dist.device
        self.stage = get_stage(cfg.stage)
        # everything that can be wrong with the data folder or the run folder, before any model is built
        self.source = open_source(cfg.data)
        self.check_data()
        self.plan = self._batch_plan()
        self.out_dir = Path(cfg.run.out_dir)
        self._resume_from = self._find_resume_state()
        seed_everything(cfg.run.seed)
        self.dtype = resolve_precision(cfg.run.precision, self.device)
        d = cfg.data
        self.ledger = BadSampleLedger(len(self.source.records), d.max_bad_fraction, d.min_bad_allowance)
        self.ema: EMA | None = None
        self.dataset: Any = None
        self.build()
        self.step = 0
        self.log = MetricLog(self.out_dir, enabled=self.dist.is_main)
        self._maybe_resume()

    # ------------------------------------------------------------------ what a loop supplies
    def check_data(self) -> None:
        """Stage-specific checks of ``self.source`` before anything is built (one-line data errors)."""

    def build(self) -> None:
        """Networks, optimisers, EMA and ``self.dataset``."""
        raise NotImplementedError

    def train_step(self, micro_batches: list[dict[str, Tensor]]) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches; the metrics (``loss`` at least)."""
        raise NotImplementedError

    def current_lr(self) -> float:
        raise NotImplementedError

    def config_json(self) -> str:
        """The model configuration a checkpoint of this run records and must match when resumed."""
        raise NotImplementedError

    def model_state(self) -> dict[str, Any]:
        """The loop's part of a checkpoint (``model``, ``optimizer``, ``scheduler``, ``scaler``, ``ema``)."""
        raise NotImplementedError

    def load_model_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def sample_grid(self, batch: dict[str, Tensor]) -> Tensor | None:
        """A preview image (1, 3, H, W) in [-1, 1] of a fixed batch (None: nothing to show)."""
        raise NotImplementedError

    def write_export(self, path: Path, info: dict[str, Any]) -> None:
        """Write the run's export file at ``path`` (``info``: stage, step, ema)."""
        raise NotImplementedError

    @property
    def export_uses_ema(self) -> bool:
        return self.ema is not None and self.cfg.run.export_ema

    # ------------------------------------------------------------------ data
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

    def fixed_batch(self, count: int, key: int = -1) -> dict[str, Tensor]:
        """The first ``count`` items with a fixed key and the first bucket (previews, evaluation)."""
        bucket = tuple(self.cfg.augment.buckets[0])
        items = [ItemSpec(i % len(self.dataset), key, i, bucket) for i in range(count)]  # type: ignore[arg-type]
        batch, _, gave_up = split_reports(collate([self.dataset[s] for s in items]))
        if gave_up:
            self.ledger.add(self.dataset.known_bad.values())
            self.ledger.check(force=True)
        return batch

    def micro_batches(self) -> Iterator[list[dict[str, Tensor]]]:
        """Lists of ``grad_accum`` micro-batches, one list per step, from the current step on."""
        sampler = PlanSampler(self.plan, self.dist.rank, self.step, self.cfg.run.max_steps)
        # the loader's own generator (its workers' base seed) keeps the global RNG state untouched, so a resumed
        # run's checkpoints hold the same RNG states as an uninterrupted run's
        loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate,  # type: ignore[arg-type]
                            num_workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(self.cfg.run.seed))
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
    def _averaged(self, key: str) -> bool:
        return key.endswith("loss") or key in self.loss_parts

    def train(self) -> TrainResult:
        r = self.cfg.run
        result = TrainResult(self.step)
        window: dict[str, list[float]] = {}  # the losses (and loss parts) since the last log line
        t0, s0 = time.time(), self.step
        for group in self.micro_batches():
            metrics = self.train_step(group)
            result.losses.append(metrics["loss"])
            result.metrics.append(metrics)
            for k, v in metrics.items():
                if self._averaged(k):
                    window.setdefault(k, []).append(v)
            if r.log_every and self.step % r.log_every == 0:
                rate = (self.step - s0) * self.plan.global_batch / max(time.time() - t0, 1e-9)
                means = {k: sum(v) / len(v) for k, v in window.items()}
                self.log.write({"step": self.step, "loss": means.pop("loss"), "lr": self.current_lr(),
                                "samples_per_s": rate, "skipped_samples": len(self.ledger), **means,
                                **{k: v for k, v in metrics.items() if not self._averaged(k)}})
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
        grid = self.sample_grid(self.fixed_batch(self.cfg.run.sample_count))
        if grid is None:  # a loop without images to show
            return None
        return save_samples(self.out_dir / "samples" / f"step_{self.step:08d}.png", grid)

    def export(self) -> Path | None:
        """The export file ``out_dir/export/<stage>-step<N>.safetensors`` (main process writes; all wait)."""
        if not self.dist.is_main:
            barrier(self.dist)
            return None
        path = self.out_dir / "export" / f"{self.stage.name}-step{self.step:08d}.safetensors"
        self.write_export(path, {"stage": self.stage.name, "step": self.step, "ema": self.export_uses_ema})
        barrier(self.dist)
        return path

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "stage": self.stage.name,
            **self.model_state(),
            "rng": ckpt.rng_state(),
            "data": self.plan.position(self.step),
            "bad_samples": self.ledger.state_dict(),
            "train_config": self.cfg.to_json(),
            "colorize_config": self.config_json(),
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
        if state["colorize_config"] != self.config_json():
            raise TrainingCheckpointError(f"{path} was written for a different model configuration (or other frozen "
                                          "networks from model.init); resume it with the config and files it was "
                                          "trained with, or start a new run folder (run.out_dir)")
        self.load_model_state(state)
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

