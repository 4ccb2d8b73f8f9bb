"""A released (or tiny) checkpoint split for a host: SD2.1 U-Net tensors, VAE tensors, the colorizer's modules.

The host builds its own U-Net and VAE from the tensors (keys = official names without their prefix, so the
host's LoRA and merge tools address them as usual); :class:`~colorize.native.extras.NativeExtras` and the
version's conditioning encoders (v1.5 threshold embedder and recovery transformer, v2 background and style
encoders) are built here, on the meta device, receiving the file's tensors (no second copy).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from torch import Tensor, nn

from colorize.checkpoint import COMPONENT_PREFIXES, load_state_dict_file
from colorize.config import ColorizerConfig
from colorize.loader import materialize, require_components
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


def _encoders(config: ColorizerConfig, parts: dict[str, dict[str, Tensor]], name: str) -> dict[str, nn.Module]:
    """The version's conditioning encoders (run once per generation, before sampling)."""
    if config.version == "switch":
        from colorize.models.recovery import ClusterTransformer, ScalarEmbedder
        from colorize.variants.switch import COMPONENTS, switch_config

        require_components(parts, COMPONENTS, name)
        scfg = switch_config(config, parts)
        return {"thresh_embedder": materialize(lambda: ScalarEmbedder(scfg.thresh_embedder),
                                               parts.pop("thresh_embedder"), f"{name} (threshold embedder)"),
                "transformer": materialize(lambda: ClusterTransformer(scfg.transformer), parts.pop("transformer"),
                                           f"{name} (recovery transformer)")}
    if config.version == "v2":
        from colorize.models.unet_encoder import background_encoder, style_encoder
        from colorize.variants.v2 import COMPONENTS, v2_config

        require_components(parts, COMPONENTS, name)
        vcfg = v2_config(config, parts)
        return {"bg_encoder": materialize(lambda: background_encoder(config.unet, vcfg.adm_in_channels),
                                          parts.pop("bg_encoder"), f"{name} (background encoder)"),
                "style_encoder": materialize(lambda: style_encoder(config.unet, vcfg.adm_in_channels,
                                                                   vcfg.style_width_cap),
                                             parts.pop("style_encoder"), f"{name} (style encoder)")}
    return {}


def warp_head_width(config: ColorizerConfig, parts: dict[str, dict[str, Tensor]]) -> int | None:
    """The v2 warp modules' head width (``None`` for v1 / v1.5)."""
    if config.version != "v2":
        return None
    from colorize.variants.v2 import v2_config

    return v2_config(config, parts).warp_dim_head


def read_native_checkpoint(path: PathLike) -> NativeCheckpoint:
    """Read a ColorizeDiffusion checkpoint (version detected from its keys) into host-ready parts."""
    from colorize.loader import read_checkpoint_parts

    name, config, parts = read_checkpoint_parts(path)
    base, additions = split_unet_state_dict(parts["unet"])
    warp = warp_head_width(config, parts)
    encoders = _encoders(config, parts, name)
    shapes = lora_shapes(additions)
    extras = materialize(lambda: NativeExtras(config, shapes, warp),
                         extras_state_dict(parts.pop("sketch_encoder"), additions), f"{name} (colorizer extras)")
    acp = parts.get("schedule", {}).get("alphas_cumprod")
    return NativeCheckpoint(name, config, base, parts.pop("vae"), extras.eval().requires_grad_(False),
                            {k: m.eval().requires_grad_(False) for k, m in encoders.items()}, acp)


def read_vae(path: PathLike, config: ColorizerConfig) -> nn.Module:
    """The checkpoint's VAE as our :class:`~colorize.models.vae.AutoencoderKL` (the v2 posterior sample)."""
    from colorize.models.vae import AutoencoderKL

    prefix = COMPONENT_PREFIXES["vae"]
    sd = {k[len(prefix):]: v for k, v in load_state_dict_file(path, prefixes=[prefix]).items()}
    return materialize(lambda: AutoencoderKL(config.vae), sd, f"{os.path.basename(os.fspath(path))} (VAE)")


__all__ = ["NativeCheckpoint", "read_native_checkpoint", "read_vae", "warp_head_width"]
