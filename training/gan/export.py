"""GAN exports: the file of a stage (:func:`~colorize.families.gan.checkpoint.save_gan_checkpoint`), written at the
end of a run (:class:`training.gan.trainer.GANTrainer`) or from a training checkpoint
(``python -m training.export RUN --out FILE``, :func:`export_gan_state`).

A stage's file holds ``STAGE_COMPONENTS[stage]``: the trained network (with its EMA weights when the run keeps
an EMA and the export asks for them) and the frozen ones it was trained against (tagger: the tag encoder; stage
1: + the generator; stage 2: + the tag mapper), the tag names in vocabulary order and ``colorize_training`` =
``{"stage", "step", "ema"}``. The discriminator is never exported.
"""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from colorize.checkpoint.infer import TRAINING_METADATA_KEY
from colorize.families.gan.checkpoint import STAGE_COMPONENTS, save_gan_checkpoint
from training.config import TrainConfig
from training.gan.model import GANTrainModules, stage_modules
from training.stages import get_stage


def save_gan_export(path: str | Path, mods: GANTrainModules, stage: str, trained: dict[str, dict[str, Tensor]],
                    info: dict[str, Any]) -> Path:
    """Write ``stage``'s file from ``mods``; ``trained`` replaces the weights of those networks (e.g. EMA ones)."""
    groups = mods.groups()
    modules: dict[str, nn.Module] = {}
    for name in STAGE_COMPONENTS[stage]:
        module = copy.deepcopy(groups[name]).to("cpu", torch.float32)
        if name in trained:
            module.load_state_dict(trained[name])
        modules[name] = module
    return save_gan_checkpoint(path, modules, mods.config, mods.manipulation, mods.tags,
                               extra_metadata={TRAINING_METADATA_KEY: json.dumps(info)}, overwrite=True)


def export_gan_state(state: dict[str, Any], cfg: TrainConfig, out: str | Path, use_ema: bool = True) -> Path:
    """The export of a GAN training checkpoint (its trained networks; the frozen ones from ``model.init`` again)."""
    stage = get_stage(cfg.stage)
    tags = tuple(json.loads(state["colorize_config"])["tags"])
    model = replace(cfg.model, init=None) if "tag_encoder" in stage.trainable else cfg.model
    mods = stage_modules(stage.trainable, replace(cfg, model=model), tags)
    groups = mods.groups()
    for name, sd in state["model"].items():
        groups[name].load_state_dict(sd)
    main = stage.trainable[0]
    ema = state.get("ema") if use_ema else None
    trained = {}
    if ema:  # the averaged parameters over the raw state (buffers stay the network's), as training/export.py
        trained[main] = {**state["model"][main], **ema["shadow"]}
    info = {"stage": stage.name, "step": int(state["step"]), "ema": bool(ema)}
    return save_gan_export(out, mods, stage.name, trained, info)


__all__ = ["export_gan_state", "save_gan_export"]
