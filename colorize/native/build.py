"""A released (or tiny) checkpoint split for a host: SD2.1 U-Net tensors, VAE tensors, the colorizer's modules.

The host builds its own U-Net and VAE from the tensors (keys = official names without their prefix, so the
host's LoRA and merge tools address them as usual); :class:`~colorize.native.extras.NativeExtras` and the
family's conditioning-time modules (v1.5 threshold embedder and recovery transformer, v2 background and style
encoders: ``Family.build_extras``) are built here, on the meta device, receiving the file's tensors (no second
copy).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from colorize.checkpoint import COMPONENT_PREFIXES, load_state_dict_file, materialize
from colorize.config import ColorizerConfig
from colorize.families import get_family
from colorize.loader import read_checkpoint_parts
from colorize.models.vae import AutoencoderKL
from colorize.native.extras import NativeExtras, extras_state_dict, lora_shapes
from colorize.native.layout import split_unet_state_dict

PathLike = str | os.PathLike[str]


@dataclass
class NativeCheckpoint:
    """What a host needs from one checkpoint (all tensors on CPU, in the file's dtypes)."""

    name: str
    config: ColorizerConfig
    unet: dict[str, Tensor]  # the SD2.1 U-Net (host keys, ``model.diffusion_model.`` stripped)
    vae: dict[str, Tensor]  # ``first_stage_model.`` stripped
    extras: NativeExtras
    encoders: dict[str, nn.Module] = field(default_factory=dict)  # conditioning-time modules by component name
    alphas_cumprod: Tensor | None = None


def read_native_checkpoint(path: PathLike, parameterization: str | None = None) -> NativeCheckpoint:
    """Read a ColorizeDiffusion checkpoint (family detected from its keys) into host-ready parts;
    ``parameterization`` (``eps``/``v``) overrides what the file says (XL files do not record it)."""
    name, config, parts = read_checkpoint_parts(path, parameterization=parameterization)
    family = get_family(config.version)
    with torch.device("meta"):
        modules = family.unet_additions(config, parts)
    unet = {k: v for k, v in parts["unet"].items() if not family.native_unused_unet_key(k)}
    base, additions = split_unet_state_dict(unet, tuple(modules))
    encoders = family.build_extras(config, parts, name)
    shapes = lora_shapes(additions)
    sketch_sd = parts.pop("sketch_encoder")
    extras = materialize(lambda: NativeExtras(config, shapes, modules,
                                              sketch_encoder=family.sketch_encoder_module(config, sketch_sd)),
                         extras_state_dict(sketch_sd, additions), f"{name} (colorizer extras)")
    acp = parts.get("schedule", {}).get("alphas_cumprod")
    return NativeCheckpoint(name, config, base, parts.pop("vae"), extras.eval().requires_grad_(False),
                            {k: m.eval().requires_grad_(False) for k, m in encoders.items()}, acp)


def read_vae(path: PathLike, config: ColorizerConfig) -> nn.Module:
    """The checkpoint's VAE as our :class:`~colorize.models.vae.AutoencoderKL` (the v2 posterior sample)."""
    prefix = COMPONENT_PREFIXES["vae"]
    sd = {k[len(prefix):]: v for k, v in load_state_dict_file(path, prefixes=[prefix]).items()}
    return materialize(lambda: AutoencoderKL(config.vae), sd, f"{os.path.basename(os.fspath(path))} (VAE)")


__all__ = ["NativeCheckpoint", "read_native_checkpoint", "read_vae"]
