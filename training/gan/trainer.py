"""The training loop of the chapter-4 GAN stages (``gan_tagger``, ``gan_stage1``, ``gan_stage2``; thesis §4).

The run machinery is :class:`training.run.RunBase`, the same as the diffusion stages': the data plan keyed by
(seed, step, slot), unreadable samples, ``log.jsonl``, atomic checkpoints resumed bit for bit on the CPU, DDP
through ``torchrun``, bf16/fp16 autocast with a GradScaler per optimiser, gradient accumulation, EMA and the
export at the end. What is the GAN's: the networks (:mod:`training.gan.model`), the samples
(:mod:`training.gan.data`), the objectives (:mod:`training.gan.objective`) and:

* optimisers: one per trained network (:class:`~training.run.OptimizerSlot`: AdamW, warm-up, scaler) --
  stage 1 has two, ``generator`` and ``discriminator``, each with its own schedule and scaler state in the
  checkpoint (``optimizer`` / ``scheduler`` / ``scaler`` map network name → state);
* EMA (``run.ema_decay``): of the exported network's parameters (tag encoder, generator, tag mapper; its
  BatchNorm statistics are exported as trained), never of D;
* DDP: every trained network in its own ``DistributedDataParallel`` (stage 2: the tag mapper's objective module,
  :class:`~training.gan.objective.ManipulationObjective`); BatchNorm statistics are per process (plain
  BatchNorm as pix2pix; ``torch.nn.SyncBatchNorm`` would be the alternative), so a W-process run matches one
  process with the same global batch only up to them and, in stage 2, up to the anchors (paired inside each
  process's micro-batch);
* logged parts: ``bce``, ``focal`` (tagger); ``g_loss``, ``d_loss``, ``cgan``, ``l1``, ``tv``, ``d_real``,
  ``d_fake`` (D's mean probabilities; stage 1); ``hybrid``, ``inv`` (stage 2); ``loss`` is the tagger's
  BCE + focal, stage 1's G total (Eq. 4.3), stage 2's L_hybrid + L_inv (Eq. 4.10);
* sample grids (stages 1 and 2; the tagger writes none): sketch | reference | generated | ground truth per row;
  stage 2 shows the anchor reference r_a and G(x, δ_b) edited towards the target's tags;
* export: ``out_dir/export/<stage>-step<N>.safetensors`` through
  :func:`~colorize.families.gan.checkpoint.save_gan_checkpoint`, the components of
  ``STAGE_COMPONENTS[stage]`` (tagger: tag encoder; stage 1: + generator; stage 2: + tag mapper), the tag names
  in vocabulary order, ``colorize_training`` = ``{"stage", "step", "ema"}``.

Resuming needs the same ``model.init`` file as the interrupted run (the frozen networks are read from it, not
from the checkpoint, which holds the trained ones).
"""
from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from colorize.families.gan.losses import focal_alpha_from_counts
from training.distributed import barrier
from training.gan.data import GANDataset, optional_tags, read_record_tags, tag_table, tagged_records, tags_path
from training.gan.export import save_gan_export
from training.gan.model import GANTrainModules, init_file, stage_modules
from training.gan.objective import (
    ManipulationObjective,
    anchor_pairs,
    on_device,
    reference_code,
    stage1_losses,
    stage2_losses,
    tagger_losses,
)
from training.run import (
    OptimizerSlot,
    RunBase,
    accumulate,
    autocast_context,
    ema_state_dict,
    make_ema,
    process_means,
    wrap_ddp,
)
from training.stages import apply_trainable

#: metrics averaged over a log window (besides the ``*loss`` ones)
_LOSS_PARTS = ("bce", "focal", "cgan", "l1", "tv", "d_real", "d_fake", "hybrid", "inv")


def state_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's state (names and raw bytes, in state-dict order)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class GANTrainer(RunBase):
    """One run of a GAN stage on this process (see the module docstring)."""

    loss_parts = _LOSS_PARTS

    def check_data(self) -> None:
        """The tagger needs tags (before any model is built) and trains on the tagged images only."""
        self.record_tags = None
        self.vocabulary_names: tuple[str, ...] | None = None
        if "tag_encoder" in self.stage.trainable:
            tags, vocab = read_record_tags(self.cfg.data)
            self.source.records = tagged_records(self.source.records, tags, tags_path(self.cfg.data))
            self.record_tags, self.vocabulary_names = tags, vocab.names
        else:
            self.record_tags = optional_tags(self.cfg.data)

    def build(self) -> None:
        cfg = self.cfg
        if cfg.model.init:  # a manifest name (resnet34-imagenet) is downloaded once, by the main process
            if self.dist.is_main:
                init_file(cfg.model.init)
            barrier(self.dist)
        self.mods: GANTrainModules = stage_modules(self.stage.trainable, cfg, self.vocabulary_names)
        groups = self.mods.groups()
        apply_trainable(self.stage, groups)
        for name, module in groups.items():
            module.to(self.device).train(name in self.stage.trainable)
        self.main = self.stage.trainable[0]  # the exported (and averaged) network
        trained = {g: groups[g] for g in self.stage.trainable}
        if self.mods.tag_mapper is not None and self.mods.generator is not None:
            # stage 2 trains through its objective module (DDP syncs what a module's forward computed)
            trained["tag_mapper"] = ManipulationObjective(self.mods.tag_mapper, self.mods.generator)
        # per-process BatchNorm statistics: D runs twice per step (real, fake), and a buffer broadcast between a
        # forward and its backward would modify tensors autograd saved
        self.models = {g: wrap_ddp(m, self.dist, cfg.run.find_unused_parameters, broadcast_buffers=False)
                       for g, m in trained.items()}
        o = cfg.optim
        self.slots = {g: OptimizerSlot([p for p in groups[g].parameters() if p.requires_grad], o, self.device,
                                       self.dtype, lr=o.discriminator_lr if g == "discriminator" else None)
                      for g in self.stage.trainable}
        self.ema = make_ema(groups[self.main], cfg.run.ema_decay)
        table = tag_table(self.source.records, self.record_tags, self.mods.tags)
        self.alpha = focal_alpha_from_counts(table.counts()).to(self.device)
        self.dataset = GANDataset(self.source, cfg.augment, self.mods.config.reference_size, table, cfg.run.seed,
                                  max_bad=self.ledger.limit)
        self.autocast = partial(autocast_context, self.device, self.dtype)

    # ------------------------------------------------------------------ steps
    def micro_losses(self, batch: dict[str, Tensor], n: int) -> dict[str, Tensor]:
        """One micro-batch's losses and their backward passes (``loss / n``); the detached parts."""
        b, mods, o = on_device(batch, self.device), self.mods, self.cfg.objective
        if self.main == "tag_encoder":
            parts = tagger_losses(self.models["tag_encoder"], b, self.alpha, o, self.autocast)
            self.slots["tag_encoder"].backward(parts["loss"] / n)
        elif self.main == "generator":
            d_loss, g_loss, parts = stage1_losses(mods.tag_encoder, self.models["generator"],
                                                  self.models["discriminator"], mods.discriminator, b, o,
                                                  self.autocast)
            self.slots["discriminator"].backward(d_loss / n)
            self.slots["generator"].backward(g_loss / n)
            parts = {"loss": parts["g_loss"], **parts}
        else:
            parts = stage2_losses(mods.tag_encoder, self.models["tag_mapper"], b, self.autocast)
            self.slots["tag_mapper"].backward(parts["loss"] / n)
        return {k: v.detach() for k, v in parts.items()}

    def train_step(self, micro_batches: list[dict[str, Tensor]]) -> dict[str, float]:
        """One update of every trained network over ``grad_accum`` micro-batches (D and G from the same ones)."""
        for slot in self.slots.values():
            slot.zero_grad()
        means = accumulate(micro_batches, list(self.models.values()), self.micro_losses)
        out = process_means(means, self.dist)
        for name, slot in self.slots.items():
            metrics, stepped = slot.step()
            if name == self.main and stepped and self.ema is not None:
                self.ema.update(self.mods.groups()[name])
            prefix = f"{name[0]}_" if len(self.slots) > 1 else ""
            out.update({prefix + k: v for k, v in metrics.items()})
            if name != self.main:  # the log line's "lr" is the main network's; the others' beside it
                out[f"{prefix}lr"] = slot.lr()
        self.step += 1
        return out

    def current_lr(self) -> float:
        return self.slots[self.main].lr()

    # ------------------------------------------------------------------ previews
    @torch.no_grad()
    def generate(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(reference shown, generated)`` of a batch with the current (EMA-free) weights, eval mode: stage 1
        G(x, φ(r)); stage 2 G(x, δ_b) edited from the anchor towards the target's tags."""
        b, mods = on_device(batch, self.device), self.mods
        generator = mods.generator
        assert generator is not None
        was = generator.training
        generator.eval()
        try:
            features, cls = reference_code(mods.tag_encoder, b["reference"], self.autocast)
            shown = b["reference"]
            if mods.tag_mapper is not None:
                anchor, cls_anchor = anchor_pairs(features, cls)
                features, shown = mods.tag_mapper(anchor, cls_anchor, cls), shown.roll(1, 0)
            with self.autocast():
                image = generator(b["sketch"], features)
        finally:
            generator.train(was)
        return shown, image.float()

    def sample_grid(self, batch: dict[str, Tensor]) -> Tensor | None:
        """Rows of sketch (black lines) | reference | generated | ground truth, in [-1, 1]; None for the tagger."""
        if self.mods.generator is None:
            return None
        shown, image = self.generate(batch)
        sketch, color = batch["sketch"].to(image.device), batch["color"].to(image.device)
        ref = F.interpolate(shown * 2 - 1, size=tuple(sketch.shape[-2:]), mode="bilinear", align_corners=False)
        rows = torch.cat([-sketch, ref, image.clamp(-1, 1), color], dim=-1)
        return torch.cat(list(rows), dim=-2)[None].cpu()

    # ------------------------------------------------------------------ state
    def config_json(self) -> str:
        """The configs and tag names, and a digest of every frozen network (the ``model.init`` file the run was
        trained against): a checkpoint resumes only against the same frozen weights."""
        frozen = {g: state_digest(m) for g, m in self.mods.groups().items() if g not in self.stage.trainable}
        return json.dumps({**json.loads(self.mods.config_json()), "frozen": frozen})

    def model_state(self) -> dict[str, Any]:
        groups = self.mods.groups()
        slots = {g: s.state_dict() for g, s in self.slots.items()}
        return {"model": {g: groups[g].state_dict() for g in self.slots},
                **{part: {g: s[part] for g, s in slots.items()} for part in ("optimizer", "scheduler", "scaler")},
                "ema": self.ema.state_dict() if self.ema else None}

    def load_model_state(self, state: dict[str, Any]) -> None:
        groups = self.mods.groups()
        for g, slot in self.slots.items():
            groups[g].load_state_dict(state["model"][g])
            slot.load_state_dict({part: state[part][g] for part in ("optimizer", "scheduler", "scaler")})
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])

    def write_export(self, path: Path, info: dict[str, Any]) -> None:
        """The stage's GAN file (:func:`training.gan.export.save_gan_export`); the EMA weights when asked."""
        main = self.mods.groups()[self.main]
        trained = {self.main: ema_state_dict(main, self.ema)} if self.export_uses_ema else {}
        save_gan_export(path, self.mods, self.stage.name, trained, info)


__all__ = ["GANTrainer"]
