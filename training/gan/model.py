"""The networks a chapter-4 GAN run holds, per stage, and where their weights come from (thesis §4.2-§4.3).

============  =============================  ======================================  ===========================
stage         trains                         frozen (eval mode)                      ``model.init``
============  =============================  ======================================  ===========================
gan_tagger    ``tag_encoder``                --                                      torchvision ResNet-34 file
gan_stage1    ``generator``, ``discriminator``  ``tag_encoder``                      a gan_tagger export
gan_stage2    ``tag_mapper``                 ``tag_encoder``, ``generator``          a gan_stage1 export
============  =============================  ======================================  ===========================

Network sizes: ``model.preset`` ``"full"`` (thesis Table 4.1, :class:`GANConfig` defaults) or ``"tiny"``
(:data:`~colorize.families.gan.networks.TINY_GAN`, CPU tests), with ``model.gan`` overriding any
:class:`GANConfig` field. The tag count is the vocabulary's (tagger) or the init file's (stages 1-2); a frozen
encoder's fields (tag count, ResNet widths and depths, reference size) always come from the init file, and
``model.gan`` may not contradict them. A stage-1 start from a file that already has a generator continues that
generator (its config is the file's). The stage-2 tag mapper: :class:`ManipulationConfig` with the tag count and
φ(r)'s width, ``hidden_widths`` from the preset (full: four layers of 512; tiny: those of the tiny file) or
``model.manipulation``, the variant from ``objective.manipulation_mode``. The discriminator is always new (it is not
part of the files, only of the training checkpoints).

Tagger start (thesis §4.2.1: "originally pre-trained on the ImageNet dataset"): ``model.init`` is torchvision's
ResNet-34 state dict (manifest entry ``resnet34-imagenet``, read with ``torch.load(weights_only=True)``); its
1000-way ``fc`` is replaced by the C-way tag head. A GAN file's ``tag_encoder`` also works (continue a
tagger). Without ``model.init`` the encoder starts random (tests). New modules are initialised from
``model.init_seed``.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from colorize.checkpoint import load_state_dict_file
from colorize.download import DownloadError
from colorize.errors import CheckpointError
from colorize.families.gan import TINY_MANIPULATION
from colorize.families.gan.checkpoint import GANModules, config_to_dict, is_gan_state_dict, load_gan_checkpoint
from colorize.families.gan.manipulation import ManipulationConfig, TagManipulator
from colorize.families.gan.networks import (
    TINY_GAN,
    ColorizationGenerator,
    GANConfig,
    PatchDiscriminator,
    ReferenceTagEncoder,
)
from training.config import ModelConfig, ObjectiveConfig, TrainConfig
from training.data import warn
from training.errors import TrainingConfigError

GAN_PRESETS: dict[str, GANConfig] = {"full": GANConfig(), "tiny": TINY_GAN}
#: the GANConfig fields that belong to the (frozen, already trained) tag encoder
ENCODER_FIELDS = ("num_tags", "tag_encoder_widths", "tag_encoder_depths", "reference_channels", "reference_size")


def _build_config(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TrainingConfigError(f"{where}: unknown {cls.__name__} field(s) {unknown}; known: {sorted(known)}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except (TypeError, ValueError) as e:
        raise TrainingConfigError(f"{where}: {e}") from None


def run_gan_config(model: ModelConfig, fixed: dict[str, Any]) -> GANConfig:
    """The preset with ``model.gan`` over it and the ``fixed`` fields (tag count, the frozen encoder's), which
    ``model.gan`` may repeat but not contradict."""
    if model.preset not in GAN_PRESETS:
        raise TrainingConfigError(f"model.preset {model.preset!r} is not a GAN preset; use one of "
                                  f"{sorted(GAN_PRESETS)}")
    over = dict(model.gan or {})
    for name, value in fixed.items():
        given = over.get(name, value)
        if (tuple(given) if isinstance(given, list) else given) != value:
            raise TrainingConfigError(f"model.gan.{name}={given!r} contradicts the tag encoder's {value!r} (from its "
                                      "vocabulary or model.init); drop it from model.gan")
    return _build_config(GANConfig, {**asdict(GAN_PRESETS[model.preset]), **over, **fixed}, "model.gan")


def run_manipulation_config(model: ModelConfig, objective: ObjectiveConfig, gan: GANConfig) -> ManipulationConfig:
    """The stage-2 tag mapper's config (see the module docstring)."""
    hidden = TINY_MANIPULATION.hidden_widths if model.preset == "tiny" else ManipulationConfig().hidden_widths
    values = {"hidden_widths": hidden, **(model.manipulation or {}), "num_tags": gan.num_tags,
              "feature_channels": gan.reference_channels, "mode": objective.manipulation_mode}
    return _build_config(ManipulationConfig, values, "model.manipulation")


@dataclass
class GANTrainModules:
    """A run's networks (CPU, float32 until the trainer moves them), its configs and its tag names."""

    config: GANConfig
    tags: tuple[str, ...]
    tag_encoder: ReferenceTagEncoder
    generator: ColorizationGenerator | None = None
    discriminator: PatchDiscriminator | None = None
    tag_mapper: TagManipulator | None = None
    manipulation: ManipulationConfig | None = None

    def groups(self) -> dict[str, nn.Module]:
        """Module groups by the names stages use (``training.stages``)."""
        found = {"tag_encoder": self.tag_encoder, "generator": self.generator, "discriminator": self.discriminator,
                 "tag_mapper": self.tag_mapper}
        return {k: v for k, v in found.items() if v is not None}

    def config_json(self) -> str:
        """What a checkpoint of the run must have been written for: both configs and the tag names."""
        return json.dumps({**config_to_dict(self.config, self.manipulation), "tags": list(self.tags)})


def _new(build: Any, seed: int) -> Any:
    torch.manual_seed(seed)
    return build()


def _load_init(path: str, what: str) -> GANModules:
    try:
        return load_gan_checkpoint(path)
    except (CheckpointError, OSError) as e:
        raise TrainingConfigError(f"model.init {path} cannot start {what}: {e}") from None


def init_file(name: str) -> str:
    """``model.init`` as a file: an existing path, else a ``weights_manifest.json`` name (``resnet34-imagenet``),
    fetched on first use with the library's verified, atomic download (``colorize.weights.resolve``)."""
    from colorize.weights import manifest_entry, resolve

    if Path(name).expanduser().is_file():
        return name
    try:
        manifest_entry(name)
    except KeyError:
        return name  # not a manifest name: the file reader's error names the missing path
    return str(resolve(name, download=True))


def _head_for_vocabulary(sd: dict[str, Any], path: str, tags: tuple[str, ...]) -> dict[str, Any]:
    """A GAN file's tag encoder for continuing the tagger: its head only when it names the vocabulary's tags in
    the vocabulary's order (a head of other tags, or of the same tags in another order, would train under the
    wrong names), else the backbone alone with a new head and a warning."""
    from colorize.checkpoint import read_header, read_metadata
    from colorize.families.gan.checkpoint import read_gan_config

    if read_gan_config(read_header(path), read_metadata(path), os.path.basename(path)).tags == tags:
        return sd
    warn(f"{os.path.basename(path)} names other tags (or another order) than the vocabulary: its tag head is left "
         "out and a new one starts")
    return {k: v for k, v in sd.items() if not k.startswith("backbone.fc.")}


def tagger_modules(model: ModelConfig, tags: tuple[str, ...]) -> GANTrainModules:
    """gan_tagger: a C-way tag encoder (C = the vocabulary's size) from ``model.init`` (see the module docstring)."""
    config = run_gan_config(model, {"num_tags": len(tags)})
    encoder = _new(lambda: ReferenceTagEncoder(config.num_tags, widths=config.tag_encoder_widths,
                                               depths=config.tag_encoder_depths), model.init_seed)
    if model.init:
        try:
            sd = load_state_dict_file(init_file(model.init))
        except (CheckpointError, OSError, DownloadError) as e:  # a missing file, a failed download, a foreign file
            raise TrainingConfigError(f"model.init {model.init} cannot start gan_tagger: {e}") from None
        if is_gan_state_dict(sd):
            sd = {k.removeprefix("tag_encoder."): v for k, v in sd.items() if k.startswith("tag_encoder.")}
            sd = _head_for_vocabulary(sd, init_file(model.init), tags)
        try:
            encoder.load_weights(sd)
        except (KeyError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0][:200]
            raise TrainingConfigError(f"model.init {os.path.basename(model.init)} does not fit the tag encoder "
                                      f"(widths {config.tag_encoder_widths}): {first}; give torchvision's ResNet-34 "
                                      "state dict (resnet34-imagenet) with model.preset=full") from None
    else:
        warn("no model.init: the tag encoder starts random (the thesis starts from ImageNet: give torchvision's "
             "ResNet-34 weights, manifest entry resnet34-imagenet)")
    return GANTrainModules(config, tags, encoder)


def stage1_modules(model: ModelConfig) -> GANTrainModules:
    """gan_stage1: the frozen tag encoder of ``model.init`` (a gan_tagger export), a new generator (or the file's)
    and a new discriminator."""
    if not model.init:
        raise TrainingConfigError("gan_stage1 starts from a gan_tagger export: set model.init, e.g. "
                                  "runs/gan_tagger/export/gan_tagger-step00100000.safetensors")
    start = _load_init(model.init, "gan_stage1")
    file_config = start.config.generator
    if start.generator is not None:  # continue the file's generator: its config, model.gan may only repeat it
        config = run_gan_config(model, asdict(file_config))
        generator = start.generator
    else:
        config = run_gan_config(model, {k: getattr(file_config, k) for k in ENCODER_FIELDS})
        generator = _new(lambda: ColorizationGenerator(config), model.init_seed)
    discriminator = _new(lambda: PatchDiscriminator(config), model.init_seed + 1)
    return GANTrainModules(config, start.config.tags, start.tag_encoder, generator, discriminator)


def stage2_modules(model: ModelConfig, objective: ObjectiveConfig) -> GANTrainModules:
    """gan_stage2: the frozen tag encoder and generator of ``model.init`` (a gan_stage1 export) and a new tag
    mapper (or the file's, when its config matches)."""
    start = _load_init(model.init, "gan_stage2") if model.init else None
    if start is None or start.generator is None:
        raise TrainingConfigError("gan_stage2 starts from a gan_stage1 export (tag encoder + generator): set "
                                  "model.init, e.g. runs/gan_stage1/export/gan_stage1-step00100000.safetensors")
    config = run_gan_config(model, asdict(start.config.generator))
    manipulation = run_manipulation_config(model, objective, config)
    if manipulation.mode == "add" and config.reference_fusion != "add":
        warn("objective.manipulation_mode=add (M-Add) on a generator with attention fusion: the thesis pairs M-Add "
             "with the stage-1 Add generator (model.gan.reference_fusion=add)")
    mapper = start.tag_mapper
    if mapper is None or start.config.manipulation != manipulation:
        mapper = _new(lambda: TagManipulator(manipulation), model.init_seed)
    return GANTrainModules(config, start.config.tags, start.tag_encoder, start.generator, None, mapper, manipulation)


def stage_modules(trainable: tuple[str, ...], cfg: TrainConfig, tags: tuple[str, ...] | None) -> GANTrainModules:
    """The networks of the stage that trains ``trainable`` (``tags``: the tagger's vocabulary names)."""
    if "tag_encoder" in trainable:
        if tags is None:
            raise ValueError("the tagger stage needs its tag names")
        return tagger_modules(cfg.model, tags)
    if "generator" in trainable:
        return stage1_modules(cfg.model)
    return stage2_modules(cfg.model, cfg.objective)


__all__ = ["ENCODER_FIELDS", "GAN_PRESETS", "GANTrainModules", "run_gan_config", "run_manipulation_config",
           "stage1_modules", "stage2_modules", "stage_modules", "tagger_modules"]
