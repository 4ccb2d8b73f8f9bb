"""Loading a colorizer from checkpoint files (released, exported or tiny) through the model-family registry.

The header is read first: the family is detected from the keys (:func:`colorize.families.detect_family`), the
config derived from the shapes (or the config our own exports store) and, for full-size files, the key layout
checked against the family's released layout, all before any tensor is read; then only the components the
family needs are read and assigned to modules built on the meta device (no second copy, no throw-away
initialisation).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from colorize.checkpoint import (
    CONFIG_METADATA_KEY,
    TensorInfo,
    check_head_channels,
    check_weight_dtypes,
    config_from_metadata,
    load_state_dict_file,
    materialize,
    read_header,
    read_metadata,
    reconcile_config,
    validate_keys,
)
from colorize.config import ColorizerConfig
from colorize.errors import CheckpointError
from colorize.families import Family, component_prefixes, detect_family, get_family, split_checkpoint
from colorize.models.clip_files import clip_config_for, load_reference_encoder, load_reference_encoder_from_state_dict
from colorize.models.vae import AutoencoderKL

PathLike = str | os.PathLike[str]
#: Components every SD2.1 family needs besides its own.
SHARED_COMPONENTS: tuple[str, ...] = ("unet", "sketch_encoder", "vae")


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint is, read from its header only."""

    path: Path
    family: Family
    config: ColorizerConfig
    header: dict[str, TensorInfo]
    metadata: dict[str, str]
    config_source: str  # "metadata" (our own exports) or "shapes"
    parameterization_rule: str = "family"  # what decided config.parameterization: Family.resolve_parameterization


def checkpoint_config(family: Family, shapes: Mapping[str, Any], metadata: Mapping[str, str] | None = None,
                      num_head_channels: int | None = None, what: str = "checkpoint") -> tuple[ColorizerConfig, str]:
    """``(config, "metadata" | "shapes")`` of a checkpoint of ``family``, checked before anything is built.

    Every size the tensors show is derived from the shapes. The config our own files store
    (:data:`~colorize.checkpoint.CONFIG_METADATA_KEY`) is a claim: it must agree with the shapes, and only what
    shapes cannot show (head widths, parameterisation, schedule, VAE scale) is taken from it, range-checked
    (:mod:`colorize.checkpoint.claims`). Without it, ``num_head_channels`` comes from the argument or
    :func:`~colorize.checkpoint.default_num_head_channels`.
    """
    parts = split_checkpoint(shapes)
    try:
        inferred = family.infer_config(parts, num_head_channels)
    except CheckpointError as e:
        if not family.standalone:
            raise
        raise CheckpointError(f"{what}: {e}") from None  # a standalone family refuses, named with the file
    if metadata and CONFIG_METADATA_KEY in metadata:
        claimed = config_from_metadata(metadata[CONFIG_METADATA_KEY], what)
        cfg = reconcile_config(inferred, claimed, what)
        return replace(cfg, version=family.name), "metadata"
    check_head_channels(inferred.unet.num_head_channels, inferred, what)
    return inferred, "shapes"


def read_checkpoint_info(path: PathLike, num_head_channels: int | None = None,
                         parameterization: str | None = None) -> CheckpointInfo:
    """Family and config of a checkpoint without loading its tensors. ``parameterization`` (``eps``/``v``)
    overrides what the file says or its family's rule decides (XL: "eps" in the file name, else v)."""
    header = read_header(path)
    metadata = read_metadata(path)
    name = Path(path).name
    family = detect_family(header, source=name)
    config, source = checkpoint_config(family, header, metadata, num_head_channels, what=name)
    param, rule = family.resolve_parameterization(metadata, name, parameterization)
    return CheckpointInfo(Path(path), family, replace(config, parameterization=param), header, metadata, source,
                          rule)


@dataclass
class ColorizerModules:
    """The networks of a colorizer plus its config (all on CPU, the file's dtypes).

    ``unet`` is the family's U-Net (``DualCondUNet``, with split LoRA for v1.5, ``V2UNet`` for v2); ``extras``
    holds the family's other modules by component name: ``thresh_embedder`` and ``transformer`` (v1.5),
    ``bg_encoder`` and ``style_encoder`` (v2), nothing for v1.
    """

    config: ColorizerConfig
    unet: nn.Module
    sketch_encoder: nn.Module
    vae: nn.Module
    reference_encoder: nn.Module | None
    alphas_cumprod: torch.Tensor | None
    extras: dict[str, nn.Module] = field(default_factory=dict)


def read_checkpoint_parts(
    path: PathLike, extra_components: Sequence[str] = (), parameterization: str | None = None,
) -> tuple[str, ColorizerConfig, dict[str, dict[str, torch.Tensor]]]:
    """``(file name, config, state dicts by component)`` of a checkpoint: the family is detected from the header's
    keys and the layout validated (full-size models) before only the needed components (U-Net, sketch encoder,
    VAE, the family's own, ``extra_components``, the schedule buffer) are read."""
    name = os.path.basename(os.fspath(path))
    info = read_checkpoint_info(path, parameterization=parameterization)
    if not info.config.tiny:
        validate_keys(info.family.layout(), info.header, optional=info.family.optional_keys, what=name)
    prefixes = component_prefixes()
    wanted = [*SHARED_COMPONENTS, *info.family.components, *extra_components]
    starts = tuple(prefixes[c] for c in wanted)
    check_weight_dtypes(info.header, name, [k for k in info.header if k.startswith(starts)])
    tensors = load_state_dict_file(path, prefixes=[prefixes[c] for c in wanted] + ["alphas_cumprod"])
    return name, info.config, split_checkpoint(tensors)


def load_checkpoint_modules(path: PathLike, include_clip: bool = False,
                            parameterization: str | None = None) -> ColorizerModules:
    """All networks of a ColorizeDiffusion checkpoint (family detected from its keys: mult, switch, v2, sdxl,
    xlv2).

    The header is read first: family, config and key layout are checked before any tensor is loaded, and only
    the needed components are read (SD2.1 CLIP weights a checkpoint may carry are skipped unless
    ``include_clip``). Modules are built on the meta device and receive the tensors. ``parameterization``:
    see :func:`read_checkpoint_info`.
    """
    name, config, parts = read_checkpoint_parts(path, ["clip_visual", "clip_text"] if include_clip else [],
                                                parameterization)
    family = get_family(config.version)
    unet = family.build_unet(config, parts, name)
    extras = family.build_extras(config, parts, name)
    sketch = family.build_sketch_encoder(config, parts, name)
    vae = materialize(lambda: AutoencoderKL(config.vae), parts.pop("vae"), f"{name} (VAE)")
    ref = None
    if include_clip and parts.get("clip_visual"):
        sd = {**{"visual." + k: v for k, v in parts["clip_visual"].items()}, **dict(parts.get("clip_text") or {})}
        ref = load_reference_encoder_from_state_dict(sd, config.clip, name)
    acp = parts.get("schedule", {}).get("alphas_cumprod")
    return ColorizerModules(config, unet, sketch, vae, ref, acp, extras)


def load_vae_file(path: PathLike, config: ColorizerConfig) -> nn.Module:
    """A kl-f8 VAE from its own file (keys ``encoder.*``/``decoder.*``/``quant_conv.*``, or a checkpoint's
    ``first_stage_model.*``), sized like ``config.vae``; a diffusers-format file is a named error."""
    name = os.path.basename(os.fspath(path))
    sd = load_state_dict_file(path)
    prefix = "first_stage_model."
    if any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if any(".down_blocks." in k or ".up_blocks." in k for k in sd):
        raise CheckpointError(f"{name} is a diffusers-format VAE; use the original-format file (the one ComfyUI "
                              "reads from models/vae, e.g. sdxl.vae.safetensors)")
    return materialize(lambda: AutoencoderKL(config.vae), sd, f"{name} (VAE)")


__all__ = [
    "CheckpointInfo",
    "ColorizerModules",
    "checkpoint_config",
    "clip_config_for",
    "load_checkpoint_modules",
    "load_vae_file",
    "load_reference_encoder",
    "load_reference_encoder_from_state_dict",
    "read_checkpoint_info",
    "read_checkpoint_parts",
]
