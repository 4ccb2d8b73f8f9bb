"""Building the colorizer's modules from checkpoint files (released or tiny) without extra copies.

Modules are built on the ``meta`` device and receive the file's tensors with
``load_state_dict(assign=True)``, so a 4 GB checkpoint needs about 4 GB of memory, not 8, and no
time is spent on a random initialisation that is thrown away.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, TypeVar

import torch
from torch import nn

from colorize.checkpoint import (
    COMPONENT_PREFIXES,
    CONFIG_METADATA_KEY,
    expected_layout,
    load_state_dict_file,
    read_checkpoint_info,
    read_metadata,
    split_by_prefix,
    validate_keys,
)
from colorize.config import ClipConfig, ColorizerConfig
from colorize.errors import CheckpointError

M = TypeVar("M", bound=nn.Module)
PathLike = str | os.PathLike[str]


def materialize(factory: Callable[[], M], state_dict: Mapping[str, torch.Tensor], what: str) -> M:
    """``factory()`` on the meta device, then the given weights assigned strictly (clear error on mismatch)."""
    with torch.device("meta"):
        module = factory()
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    validate_keys(expected, state_dict, optional=(), what=what)
    module.load_state_dict(dict(state_dict), strict=True, assign=True)
    leftover = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if leftover:  # a non-persistent buffer the file cannot provide: a bug in the module, not the file
        raise RuntimeError(f"{what}: tensors not provided by the state dict: {leftover[:5]}")
    return module


def require_components(parts: Mapping[str, Mapping[str, torch.Tensor]], components: tuple[str, ...], what: str) -> None:
    """A clear error when a checkpoint lacks a component its version needs (an incomplete file)."""
    missing = [COMPONENT_PREFIXES[c] + "*" for c in components if not parts.get(c)]
    if missing:
        raise CheckpointError(f"{what} has no {', '.join(missing)} tensors, which its version needs: an incomplete "
                              "or converted file. Use the released checkpoint (weights_manifest.json).")


@dataclass
class ColorizerModules:
    """The networks of a colorizer plus its config (all on CPU, the file's dtypes).

    ``unet`` is a ``DualCondUNet`` (v1), ``SwitchUNet`` (v1.5) or ``V2UNet`` (v2); ``extras`` holds the
    version's other modules by component name: ``thresh_embedder`` and ``transformer`` (v1.5),
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
    path: PathLike, extra_components: Sequence[str] = ()
) -> tuple[str, ColorizerConfig, dict[str, dict[str, torch.Tensor]]]:
    """``(file name, config, state dicts by component)`` of a checkpoint: the version is detected from the
    header's keys and the layout validated (full-size models) before only the needed components (U-Net,
    sketch encoder, VAE, the version's extras, ``extra_components``, the schedule buffer) are read."""
    from colorize.variants import EXTRA_COMPONENTS

    name = os.path.basename(os.fspath(path))
    info = read_checkpoint_info(path)
    if not info.config.tiny:
        validate_keys(expected_layout(info.version), info.header, what=name)
    wanted = ["unet", "sketch_encoder", "vae", *EXTRA_COMPONENTS[info.version], *extra_components]
    prefixes = [COMPONENT_PREFIXES[c] for c in wanted] + ["alphas_cumprod"]
    return name, info.config, split_by_prefix(load_state_dict_file(path, prefixes=prefixes))


def load_checkpoint_modules(path: PathLike, include_clip: bool = False) -> ColorizerModules:
    """All networks of a ColorizeDiffusion checkpoint (version detected from its keys: mult, switch, v2).

    The header is read first: version, config and key layout are checked before any tensor is
    loaded, and only the needed components are read (CLIP weights a checkpoint may carry are
    skipped unless ``include_clip``). Modules are built on the meta device and receive the tensors.
    """
    from colorize.models.sketch_encoder import SketchEncoder
    from colorize.models.vae import AutoencoderKL
    from colorize.variants import build_modules

    name, config, parts = read_checkpoint_parts(path, ["clip_visual", "clip_text"] if include_clip else [])
    unet, extras = build_modules(config, parts, name)
    sketch = materialize(lambda: SketchEncoder(config.sketch), parts.pop("sketch_encoder"), f"{name} (sketch encoder)")
    vae = materialize(lambda: AutoencoderKL(config.vae), parts.pop("vae"), f"{name} (VAE)")
    ref = None
    if include_clip and parts.get("clip_visual"):
        sd = {**{"visual." + k: v for k, v in parts["clip_visual"].items()}, **dict(parts.get("clip_text") or {})}
        ref = load_reference_encoder_from_state_dict(sd, config.clip, name)
    acp = parts.get("schedule", {}).get("alphas_cumprod")
    return ColorizerModules(config, unet, sketch, vae, ref, acp, extras)


def clip_config_for(metadata: Mapping[str, str]) -> ClipConfig:
    """The CLIP config stored by the tiny-weights writer, else OpenCLIP ViT-H-14."""
    if CONFIG_METADATA_KEY in metadata:
        return ColorizerConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY])).clip
    return ClipConfig()


def load_reference_encoder_from_state_dict(
    sd: Mapping[str, torch.Tensor], cfg: ClipConfig, what: str, with_text: bool = True
) -> nn.Module:
    """A frozen :class:`~colorize.models.clip.ReferenceEncoder` from open_clip or clip_vision weights.

    ``with_text=False`` drops the text tower (354 M parameters for ViT-H) even when the file has it:
    colorization needs only the vision tower; text manipulation needs both.
    """
    from colorize.models.clip import ReferenceEncoder
    from colorize.models.clip_convert import to_open_clip

    try:
        oc = to_open_clip(dict(sd))
    except ValueError as e:
        raise CheckpointError(f"{what}: not a usable CLIP ViT checkpoint: {e}") from None
    with_text = with_text and "token_embedding.weight" in oc
    if not with_text:
        oc = {k: v for k, v in oc.items() if k.startswith("visual.")}
    width = cfg.vision.get("width")
    conv = oc.get("visual.conv1.weight")
    if conv is not None and conv.shape[0] != width:
        raise CheckpointError(
            f"{what}: this CLIP vision tower is {conv.shape[0]} wide, but the colorizer needs "
            f"{cfg.name} (width {width}). Use the OpenCLIP ViT-H-14 laion2b_s32b_b79k weights "
            "(CLIP-ViT-H-14-laion2B-s32B-b79K)."
        )
    with torch.device("meta"):
        enc = ReferenceEncoder(cfg, with_text=with_text)
    if with_text and "logit_scale" not in oc:
        oc["logit_scale"] = torch.zeros(())
    expected = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    validate_keys(expected, oc, optional=(), what=what)
    enc.load_state_dict(oc, strict=True, assign=True)
    enc.requires_grad_(False)
    return enc


def load_reference_encoder(path: PathLike, with_text: bool = True) -> nn.Module:
    """The reference encoder from an open_clip-format or HF/ComfyUI clip_vision-format file."""
    sd = load_state_dict_file(path)
    metadata = read_metadata(path) if os.fspath(path).endswith(".safetensors") else {}
    name = os.path.basename(os.fspath(path))
    return load_reference_encoder_from_state_dict(sd, clip_config_for(metadata), name, with_text)
