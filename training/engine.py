"""The diffusion training loop: AdamW, autocast (bf16, or fp16 with a GradScaler), gradient accumulation, DDP,
optional EMA, resumable atomic checkpoints, loss/sample logs and a released-layout export at the end.

The run machinery (data plan, unreadable samples, the loop, checkpoints, resuming, logs) is
:class:`training.run.RunBase`, shared with the chapter-4 GAN's loop (``training.gan``); this module adds the
diffusion objective (:func:`training_loss`), the model it trains and its export.

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
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from colorize.sampling.noise_schedule import ddpm_buffers
from training.batches import TripletDataset
from training.config import ObjectiveConfig
from training.data import check_masks
from training.export import export_safetensors
from training.logs import render_samples
from training.model import TrainModules, build_modules
from training.objective import ScheduleTable, TrainingProgress, make_inputs, weighted_mse
from training.run import (  # noqa: F401 - re-exported: the loop's helpers have always been importable from here
    OptimizerSlot,
    RunBase,
    TrainResult,
    accumulate,
    autocast_context,
    ema_state_dict,
    make_ema,
    process_means,
    resolve_precision,
    seed_everything,
    wrap_ddp,
)
from training.stages import apply_trainable


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


class Trainer(RunBase):
    """One diffusion run of a :class:`TrainConfig` on this process (``torchrun`` starts one per GPU)."""

    def check_data(self) -> None:
        if self.stage.needs_masks:
            check_masks(self.source.records)

    def build(self) -> None:
        cfg = self.cfg
        self.mods = build_modules(cfg.model, cfg.objective.prediction, version=self.stage.version)
        self.params = apply_trainable(self.stage, self.mods.groups())
        self.mods.denoiser.to(self.device).train()
        self.mods.vae.to(self.device)
        self.mods.clip.to(self.device)
        self.table = ScheduleTable(ddpm_buffers(self.mods.config.schedule)["alphas_cumprod"])
        self.model: torch.nn.Module = wrap_ddp(self.mods.denoiser, self.dist, cfg.run.find_unused_parameters)
        self.opt = OptimizerSlot(self.params, cfg.optim, self.device, self.dtype)
        self.ema = make_ema(self.mods.denoiser, cfg.run.ema_decay)
        self.dataset = TripletDataset(self.source, cfg.augment, cfg.objective, self.mods.noise_spec(), cfg.run.seed,
                                      masks=self.stage.needs_masks, max_bad=self.ledger.limit)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.opt.optimizer

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        return self.opt.scheduler

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self.opt.scaler

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
        self.opt.zero_grad()

        def micro(batch: dict[str, Tensor], n: int) -> dict[str, Tensor]:
            loss, parts = self.micro_loss(batch)
            self.opt.backward(loss / n)
            return {"loss": loss.detach(), **parts}

        means = accumulate(micro_batches, [self.model], micro)
        step_metrics, stepped = self.opt.step()
        if stepped and self.ema is not None:
            self.ema.update(self.mods.denoiser)
        self.step += 1
        if len(means) <= 2:  # the loss and the diffusion loss alone: log the loss only
            means = {"loss": means["loss"]}
        return {**process_means(means, self.dist), **step_metrics}

    def current_lr(self) -> float:
        return self.opt.lr()

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

    def sample_grid(self, batch: dict[str, Tensor]) -> Tensor:
        return render_samples(self.mods, batch, self.cfg.run.sample_steps, self.cfg.run.seed)

    # ------------------------------------------------------------------ state
    def config_json(self) -> str:
        return json.dumps(self.mods.config.to_dict())

    def model_state(self) -> dict[str, Any]:
        return {"model": self.mods.denoiser.state_dict(), **self.opt.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None}

    def load_model_state(self, state: dict[str, Any]) -> None:
        self.mods.denoiser.load_state_dict(state["model"])
        self.opt.load_state_dict(state)
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])

    def write_export(self, path: Path, info: dict[str, Any]) -> None:
        """Released-layout safetensors of the (EMA) weights (:func:`training.export.export_safetensors`)."""
        sd = ema_state_dict(self.mods.denoiser, self.ema if self.export_uses_ema else None)
        export_safetensors(path, sd, self.mods.vae.state_dict(), self.mods.config, info, self.cfg.run.export_vae_fp16)
