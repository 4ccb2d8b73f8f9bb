"""The file format of the chapter-4 GAN (thesis §4): one safetensors file per trained stage, read by keys.

No GAN weights were ever released; these files are what ``training/`` writes (stages ``gan_tagger``,
``gan_stage1``, ``gan_stage2``) and what the library, the CLI and the nodes read. Keys, by component prefix:

================  ======================================================  ==================
prefix            module                                                  written from stage
================  ======================================================  ==================
``tag_encoder.``  :class:`~colorize.families.gan.networks.ReferenceTagEncoder`  ``gan_tagger``
                  (ResNet-34 + the C-way tag head, thesis §4.2.1)
``generator.``    :class:`~colorize.families.gan.networks.ColorizationGenerator`  ``gan_stage1``
                  (Table 4.1; the discriminator stays in the training state)
``tag_mapper.``   :class:`~colorize.families.gan.manipulation.TagManipulator`  ``gan_stage2``
                  (φ and ω of §4.3)
================  ======================================================  ==================

Metadata: :data:`GAN_CONFIG_KEY` (the two configs as JSON: what shapes cannot show, such as the norm kind or
attention scaling), :data:`GAN_TAGS_KEY` (the tag names in head order, so edits and predicted tags have names)
and, from ``training/``, ``colorize_training`` (stage, step). Every size the tensors show is read from the
shapes; a stored config that disagrees with them is an error, not a silent override.
"""
from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from colorize.checkpoint.common import TensorInfo, shape_of
from colorize.errors import CheckpointError
from colorize.families.gan.manipulation import ManipulationConfig, TagManipulator
from colorize.families.gan.networks import ColorizationGenerator, GANConfig, ReferenceTagEncoder

PathLike = str | os.PathLike[str]

#: component → key prefix of a GAN file
GAN_COMPONENTS: dict[str, str] = {"tag_encoder": "tag_encoder.", "generator": "generator.",
                                  "tag_mapper": "tag_mapper."}
#: safetensors metadata entry holding ``{"generator": GANConfig, "manipulation": ManipulationConfig | null}``
GAN_CONFIG_KEY = "colorize_gan_config"
#: safetensors metadata entry holding the tag names (a JSON list, index = the tag head's output)
GAN_TAGS_KEY = "colorize_gan_tags"
#: what each trained stage adds (``colorize_training`` stage names of training/)
STAGE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "gan_tagger": ("tag_encoder",),
    "gan_stage1": ("tag_encoder", "generator"),
    "gan_stage2": ("tag_encoder", "generator", "tag_mapper"),
}


def is_gan_state_dict(keys: Collection[str] | Mapping[str, Any]) -> bool:
    """Whether keys are a GAN file's: a tag encoder or a generator, and no diffusion U-Net."""
    keys = list(keys.keys() if isinstance(keys, Mapping) else keys)
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return False
    return any(k.startswith(("tag_encoder.backbone.", "generator.encoder.")) for k in keys)


@dataclass(frozen=True)
class GANFileConfig:
    """Everything needed to build a GAN file's modules: the generator config (also the tag count), the stage-2
    config (``None`` before stage 2) and the tag names (``len == generator.num_tags``)."""

    generator: GANConfig
    manipulation: ManipulationConfig | None
    tags: tuple[str, ...]
    components: tuple[str, ...]

    @property
    def stage(self) -> str:
        """The furthest stage the file's components come from (``gan_tagger`` / ``gan_stage1`` / ``gan_stage2``)."""
        for stage, comps in reversed(STAGE_COMPONENTS.items()):
            if set(comps) <= set(self.components):
                return stage
        return "incomplete"

    def metadata(self) -> dict[str, str]:
        return {GAN_CONFIG_KEY: json.dumps(config_to_dict(self.generator, self.manipulation)),
                GAN_TAGS_KEY: json.dumps(list(self.tags))}


def config_to_dict(generator: GANConfig, manipulation: ManipulationConfig | None) -> dict[str, Any]:
    return {"generator": asdict(generator), "manipulation": asdict(manipulation) if manipulation else None}


def _from_dict(cls: type, raw: Mapping[str, Any], what: str) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise CheckpointError(f"{what}: unknown {cls.__name__} fields {sorted(unknown)} in {GAN_CONFIG_KEY}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{what}: the stored {cls.__name__} is invalid ({e})") from None


def _stored_configs(metadata: Mapping[str, str] | None, what: str
                    ) -> tuple[GANConfig | None, ManipulationConfig | None]:
    raw = (metadata or {}).get(GAN_CONFIG_KEY)
    if not raw:
        return None, None
    try:
        data = json.loads(raw)
        gen, man = data.get("generator"), data.get("manipulation")
    except (ValueError, AttributeError):
        raise CheckpointError(f"{what}: the {GAN_CONFIG_KEY} metadata is not valid JSON") from None
    return (_from_dict(GANConfig, gen, what) if gen else None,
            _from_dict(ManipulationConfig, man, what) if man else None)


def _shapes(header: Mapping[str, Any], prefix: str) -> dict[str, tuple[int, ...]]:
    return {k[len(prefix):]: tuple(shape_of(v)) for k, v in header.items() if k.startswith(prefix)}


def _generator_fields(gen: Mapping[str, tuple[int, ...]], what: str) -> dict[str, Any]:
    """The GANConfig fields a generator's shapes show."""
    try:
        widths = tuple(gen[f"encoder.{i}.conv.0.weight"][0] for i in range(5))
        out: dict[str, Any] = {
            "encoder_widths": widths,
            "sketch_channels": gen["encoder.0.conv.0.weight"][1],
            "image_channels": gen["to_image.weight"][0],
            "norm": "batch" if "encoder.1.conv.1.running_mean" in gen else None,
            "use_rbca": "decoder.1.attention.squeeze.weight" in gen,
        }
        if "receiving.attention.key.weight" in gen:
            out["reference_fusion"] = "attention"
            out["reference_channels"] = gen["receiving.attention.key.weight"][1]
        else:
            out["reference_fusion"] = "add"
            out["reference_channels"] = gen["receiving.project.weight"][1] if "receiving.project.weight" in gen \
                else widths[4]
    except KeyError as e:
        raise CheckpointError(f"{what}: the generator lacks {e.args[0]!r}; the file is incomplete or not one of "
                              "this pack's GAN files") from None
    return out


def _tag_encoder_fields(enc: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """The GANConfig fields a tag encoder's shapes show (its head size, its ResNet stages' widths and depths)."""
    widths, depths = [], []
    for i in range(1, 5):
        blocks = {int(k.split(".")[2]) for k in enc if k.startswith(f"backbone.layer{i}.")}
        depths.append(len(blocks))
        widths.append(enc.get(f"backbone.layer{i}.0.conv1.weight", (0,))[0])
    return {"num_tags": enc["backbone.fc.weight"][0], "tag_encoder_widths": tuple(widths),
            "tag_encoder_depths": tuple(depths)}


def _derived_generator_fields(gen: Mapping[str, tuple[int, ...]], widths: Sequence[int]) -> dict[str, Any]:
    """Ratios the shapes show only up to rounding (used when the file stores no config)."""
    out = {}
    if "receiving.attention.query.weight" in gen:
        out["attention_key_ratio"] = max(widths[4] // gen["receiving.attention.query.weight"][0], 1)
    if "decoder.1.attention.squeeze.weight" in gen:
        ref = gen["decoder.1.attention.squeeze.weight"][1]
        out["rbca_reduction"] = max(ref // gen["decoder.1.attention.squeeze.weight"][0], 1)
    return out


def _manipulation_fields(mapper: Mapping[str, tuple[int, ...]], what: str) -> dict[str, Any]:
    layers = sorted({int(k.split(".")[2]) for k in mapper if k.startswith("mapping.layers.")})
    try:
        return {
            "num_tags": mapper["mapping.layers.0.weight"][1],
            "feature_channels": mapper["mapping.project.weight"][0],
            "hidden_widths": tuple(mapper[f"mapping.layers.{i}.weight"][0] for i in layers),
            "mode": "attention" if "omega.fc.weight" in mapper else "add",
        }
    except KeyError as e:
        raise CheckpointError(f"{what}: the tag mapper lacks {e.args[0]!r}") from None


def _agree(stored: Any, shown: Mapping[str, Any], what: str, component: str) -> Any:
    """The stored config with every shape-visible field checked against the shapes (a mismatch is an error)."""
    for name, value in shown.items():
        if value is not None and getattr(stored, name) != value:
            raise CheckpointError(f"{what}: the stored {component} config says {name}={getattr(stored, name)!r} but "
                                  f"the tensors show {value!r}; the file was edited or mixed from two runs")
    return stored


def read_gan_config(header: Mapping[str, TensorInfo | Any], metadata: Mapping[str, str] | None = None,
                    what: str = "GAN checkpoint") -> GANFileConfig:
    """The :class:`GANFileConfig` of a GAN file from its header (and metadata), before any tensor is read."""
    if not is_gan_state_dict(header):
        raise CheckpointError(f"{what} is not a GAN file (no tag_encoder.* or generator.* keys)")
    parts = {c: _shapes(header, p) for c, p in GAN_COMPONENTS.items()}
    components = tuple(c for c, shapes in parts.items() if shapes)
    stored_gen, stored_man = _stored_configs(metadata, what)
    shown: dict[str, Any] = {}
    if parts["tag_encoder"]:
        if "backbone.fc.weight" not in parts["tag_encoder"]:
            raise CheckpointError(f"{what}: the tag encoder has no head (tag_encoder.backbone.fc.weight)")
        shown.update(_tag_encoder_fields(parts["tag_encoder"]))
    if parts["generator"]:
        shown.update(_generator_fields(parts["generator"], what))
    if stored_gen is not None:
        generator = _agree(stored_gen, shown, what, "generator")
    else:
        derived = _derived_generator_fields(parts["generator"], shown["encoder_widths"]) if parts["generator"] else {}
        try:
            generator = GANConfig(**{k: v for k, v in {**shown, **derived}.items() if v is not None})
        except ValueError as e:
            raise CheckpointError(f"{what}: the tensors do not form a GAN ({e})") from None
    manipulation = None
    if parts["tag_mapper"]:
        shown_man = _manipulation_fields(parts["tag_mapper"], what)
        manipulation = (_agree(stored_man, shown_man, what, "tag mapper") if stored_man is not None
                        else ManipulationConfig(**shown_man))
        if manipulation.num_tags != generator.num_tags or manipulation.feature_channels != \
                generator.reference_channels:
            raise CheckpointError(f"{what}: the tag mapper ({manipulation.num_tags} tags, "
                                  f"{manipulation.feature_channels} channels) does not fit the encoder "
                                  f"({generator.num_tags} tags, {generator.reference_channels} channels)")
    tags = _tag_names(metadata, generator.num_tags, what)
    return GANFileConfig(generator, manipulation, tags, components)


def _tag_names(metadata: Mapping[str, str] | None, count: int, what: str) -> tuple[str, ...]:
    raw = (metadata or {}).get(GAN_TAGS_KEY)
    if not raw:
        return tuple(f"tag_{i}" for i in range(count))
    try:
        names = json.loads(raw)
    except ValueError:
        raise CheckpointError(f"{what}: the {GAN_TAGS_KEY} metadata is not valid JSON") from None
    if not isinstance(names, list) or len(names) != count or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{what}: {GAN_TAGS_KEY} must list {count} tag names (the head's size)")
    if len(set(names)) != len(names):
        raise CheckpointError(f"{what}: {GAN_TAGS_KEY} names a tag twice")
    return tuple(names)


@dataclass
class GANModules:
    """The networks of a GAN file (CPU, eval, frozen) and its config; ``generator`` / ``tag_mapper`` are ``None``
    when the file's stage did not train them."""

    config: GANFileConfig
    tag_encoder: ReferenceTagEncoder
    generator: ColorizationGenerator | None = None
    tag_mapper: TagManipulator | None = None


def build_gan_modules(config: GANFileConfig) -> dict[str, torch.nn.Module]:
    """Freshly initialised modules of a config, by component (every component, whether the file has it or not)."""
    g = config.generator
    out: dict[str, torch.nn.Module] = {
        "tag_encoder": ReferenceTagEncoder(g.num_tags, widths=g.tag_encoder_widths, depths=g.tag_encoder_depths),
        "generator": ColorizationGenerator(g)}
    if config.manipulation is not None:
        out["tag_mapper"] = TagManipulator(config.manipulation)
    return out


def load_gan_checkpoint(path: PathLike, device: str | torch.device = "cpu") -> GANModules:
    """A GAN file's modules (every key checked: nothing missing, nothing left over)."""
    from colorize.checkpoint import load_state_dict_file, read_header, read_metadata

    name = Path(path).name
    config = read_gan_config(read_header(path), read_metadata(path), name)
    if "tag_encoder" not in config.components:
        raise CheckpointError(f"{name} has no tag encoder (tag_encoder.*): it is not a complete GAN file")
    sd = load_state_dict_file(path, tuple(GAN_COMPONENTS[c] for c in config.components))
    modules = build_gan_modules(config)
    loaded: dict[str, torch.nn.Module] = {}
    for comp in config.components:
        prefix = GAN_COMPONENTS[comp]
        part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        module = modules[comp]
        try:
            missing, unexpected = module.load_state_dict(part, strict=False)
        except RuntimeError as e:  # a size mismatch the config check could not see
            raise CheckpointError(f"{name} ({comp}): tensor shapes do not fit its config: {str(e)[:300]}") from None
        if missing or unexpected:
            raise CheckpointError(f"{name} ({comp}): {len(missing)} missing keys (e.g. {missing[:3]}), "
                                  f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        loaded[comp] = module.float().to(device).eval().requires_grad_(False)
    return GANModules(config, loaded["tag_encoder"], loaded.get("generator"),  # type: ignore[arg-type]
                      loaded.get("tag_mapper"))  # type: ignore[arg-type]


def gan_state_dict(modules: Mapping[str, torch.nn.Module]) -> dict[str, Tensor]:
    """The file's tensors of the given components (``{"tag_encoder": …, "generator": …, "tag_mapper": …}``)."""
    out: dict[str, Tensor] = {}
    for comp, module in modules.items():
        if comp not in GAN_COMPONENTS:
            raise ValueError(f"unknown GAN component {comp!r}; expected some of {', '.join(GAN_COMPONENTS)}")
        prefix = GAN_COMPONENTS[comp]
        out.update({prefix + k: v.detach().contiguous() for k, v in module.state_dict().items()})
    return out


def save_gan_checkpoint(path: PathLike, modules: Mapping[str, torch.nn.Module], generator_config: GANConfig,
                        manipulation_config: ManipulationConfig | None, tags: Sequence[str],
                        extra_metadata: Mapping[str, str] | None = None, overwrite: bool = False) -> Path:
    """Write a GAN file atomically: the components given, the configs and the tag names as metadata.

    The result is read back (header and config) before this returns, so a file that would not load is never
    left behind as the run's export."""
    from colorize.atomic import save_safetensors_atomic
    from colorize.checkpoint import read_header, read_metadata

    if len(tags) != generator_config.num_tags:
        raise ValueError(f"{len(tags)} tag names for a {generator_config.num_tags}-tag head")
    config = GANFileConfig(generator_config, manipulation_config if "tag_mapper" in modules else None,
                           tuple(tags), tuple(modules))
    meta = {**config.metadata(), **(extra_metadata or {})}
    path = save_safetensors_atomic(gan_state_dict(modules), path, metadata=meta, overwrite=overwrite)
    read_gan_config(read_header(path), read_metadata(path), path.name)
    return path


__all__ = ["GAN_COMPONENTS", "GAN_CONFIG_KEY", "GAN_TAGS_KEY", "STAGE_COMPONENTS", "GANFileConfig", "GANModules",
           "build_gan_modules", "config_to_dict", "gan_state_dict", "is_gan_state_dict", "load_gan_checkpoint",
           "read_gan_config", "save_gan_checkpoint"]
