"""Tiny random weights in the released file formats, for tests, demos and ComfyUI host runs.

``python -m colorize make-tiny-weights DIR`` writes, in ComfyUI's models layout::

    DIR/colorizediffusion/mult-eps-ft.safetensors      (v1 "mult" layout, VAE in fp16 as released)
    DIR/colorizediffusion/switch-eps.safetensors       (v1.5 layout: split LoRA, thresh_embedder, transformer)
    DIR/colorizediffusion/v2-full.safetensors          (v2 layout: bg/style encoders, warp/style modules; v)
    DIR/clip_vision/<reference encoder file name>      (open_clip format, vision + text)

under exactly the file names the CLI defaults, the weights manifest and the shipped workflows use, so every
command and workflow runs unchanged with ``--models-dir DIR``. The config is stored in the safetensors
metadata (``colorize_config``, incl. the head widths shapes cannot show, ``extras``) so the loader
rebuilds the same tiny shapes. The outputs are random: useful to exercise the code, not to colorize.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from colorize.atomic import safetensors_metadata, save_safetensors_atomic
from colorize.checkpoint import COMPONENT_PREFIXES, CONFIG_METADATA_KEY
from colorize.config import TINY_MULT, ColorizerConfig

TINY_METADATA_KEY = "colorize_tiny"
VERSIONS: tuple[str, ...] = ("mult", "switch", "v2")
#: manifest name of each version's tiny checkpoint (the released file names)
CHECKPOINT_NAMES = {"mult": "mult-eps-ft", "switch": "switch-eps", "v2": "v2-full"}
TINY_RATIO_DIM = 16  # v2 size-embedding sinusoid width per ratio (256 released)


def _metadata_or_empty(path: Path) -> dict[str, str]:
    try:
        return safetensors_metadata(path)
    except Exception:  # not a safetensors file: treat as a user file
        return {}


def _randomize_zero_layers(module: nn.Module, generator: torch.Generator) -> None:
    """Layers the real model zero-initialises get small random values, so every path contributes."""
    for p in module.parameters():
        if p.ndim >= 2 and not p.detach().any():
            fan_in = p[0].numel()
            p.data.normal_(0.0, 0.5 / math.sqrt(fan_in), generator=generator)


def tiny_config(version: str = "mult", base: ColorizerConfig = TINY_MULT) -> ColorizerConfig:
    """The tiny config of a version, derived from ``base``.

    v1.5 keeps the base sizes and records a recovery-transformer head width other than the released 64;
    v2 doubles the widths after the first level (``channel_mult (1, 2, 2, 2)``, the smallest layout in
    which the style encoder's widths line up with the decoder, as in the released ``(1, 2, 4, 4)``), is
    v-parameterised, and records a warp head width other than the default rule's.
    """
    if version == "mult":
        return base
    if version == "switch":
        head = math.gcd(base.unet.context_dim, 32)
        return replace(base, version="switch", parameterization="eps", extras={"transformer_dim_head": head})
    if version == "v2":
        mult = (1, 2, 2, 2)
        unet, sketch = replace(base.unet, channel_mult=mult), replace(base.sketch, ch_mults=mult)
        head = math.gcd(base.unet.model_channels, 32)
        return replace(base, version="v2", parameterization="v", unet=unet, sketch=sketch,
                       extras={"warp_dim_head": head})
    raise ValueError(f"unknown version {version!r}; expected one of {', '.join(VERSIONS)}")


def _clip_tokens(config: ColorizerConfig) -> int:
    v = config.clip.vision
    return (int(v["image_size"]) // int(v["patch_size"])) ** 2


def _version_modules(config: ColorizerConfig) -> dict[str, nn.Module]:
    """The U-Net and the version's extra modules, by component name."""
    from colorize.models.unet import DualCondUNet

    if config.version == "switch":
        from colorize.models.recovery import ClusterTransformer, ScalarEmbedder
        from colorize.models.split_attention import SwitchUNet
        from colorize.models.switch_config import ClusterTransformerConfig, ScalarEmbedderConfig, SplitLoraConfig

        dim = config.unet.context_dim
        head = int(config.extras.get("transformer_dim_head", 64))
        return {
            "unet": SwitchUNet(config.unet, SplitLoraConfig()),
            "thresh_embedder": ScalarEmbedder(ScalarEmbedderConfig(embed_dim=32, out_dim=dim)),
            "transformer": ClusterTransformer(ClusterTransformerConfig(
                dim=dim, layers=2, token_length=_clip_tokens(config), dim_head=head, mlp_mult=2)),
        }
    if config.version == "v2":
        from colorize.models.switch_config import V2_LORA
        from colorize.models.unet_encoder import background_encoder, style_encoder
        from colorize.models.v2_unet import V2UNet
        from colorize.models.warp import decoder_out_channels

        cap = 4 * config.unet.model_channels
        style = style_encoder(config.unet, 2 * TINY_RATIO_DIM, cap)
        if style.output_widths != [2 * c for c in decoder_out_channels(config.unet)]:
            raise ValueError(f"channel_mult {config.unet.channel_mult}: the style encoder's widths do not line "
                             "up with the decoder; use tiny_config('v2')")
        return {
            "unet": V2UNet(config.unet, V2_LORA, warp_dim_head=int(config.extras.get("warp_dim_head", 64))),
            "bg_encoder": background_encoder(config.unet, 2 * TINY_RATIO_DIM),
            "style_encoder": style,
        }
    return {"unet": DualCondUNet(config.unet)}


def build_tiny_state_dicts(config: ColorizerConfig = TINY_MULT, seed: int = 0) -> tuple[dict, dict]:
    """Random ``(checkpoint, clip)`` state dicts with the released key names of ``config.version``."""
    from colorize.models.clip import ReferenceEncoder
    from colorize.models.sketch_encoder import SketchEncoder
    from colorize.models.vae import AutoencoderKL

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    parts = {**_version_modules(config), "sketch_encoder": SketchEncoder(config.sketch),
             "vae": AutoencoderKL(config.vae)}
    ckpt: dict[str, torch.Tensor] = {}
    for component, module in parts.items():
        _randomize_zero_layers(module, g)
        dtype = torch.float16 if component == "vae" else torch.float32
        prefix = COMPONENT_PREFIXES[component]
        ckpt.update({prefix + k: v.detach().to(dtype).contiguous() for k, v in module.state_dict().items()})
    clip = ReferenceEncoder(config.clip, with_text=True)
    clip_sd = {k: v.detach().contiguous() for k, v in clip.state_dict().items()}
    return ckpt, clip_sd


def _save(path: Path, sd: dict[str, torch.Tensor], config: ColorizerConfig) -> None:
    meta = {CONFIG_METADATA_KEY: json.dumps(config.to_dict()), TINY_METADATA_KEY: "random weights, not for real use"}
    save_safetensors_atomic(sd, path, metadata=meta, overwrite=True)


def write_tiny_weights(
    directory: str | Path, config: ColorizerConfig = TINY_MULT, seed: int = 0, versions: Sequence[str] = ("mult",)
) -> dict[str, Path]:
    """Write tiny checkpoints of ``versions`` and the CLIP file into ``directory`` (ComfyUI models layout).

    Returns ``{manifest name: path}``: the checkpoints in ``versions`` order, then the CLIP file. ``config``
    is the v1 base the other versions derive from (:func:`tiny_config`). Existing files that are not tiny
    test files are never overwritten (:class:`FileExistsError`, checked before anything is written).
    """
    from colorize.weights import default_clip_name, manifest_entry

    directory = Path(directory)
    unknown = [v for v in versions if v not in VERSIONS]
    if unknown:
        raise ValueError(f"unknown version(s) {unknown}; expected some of {', '.join(VERSIONS)}")
    names = [CHECKPOINT_NAMES[v] for v in dict.fromkeys(versions)] + [default_clip_name()]
    paths = {n: directory / manifest_entry(n)["models_subdir"] / manifest_entry(n)["filename"] for n in names}
    for path in paths.values():
        if path.exists() and TINY_METADATA_KEY not in _metadata_or_empty(path):
            raise FileExistsError(f"{path} exists and is not a tiny test file; refusing to overwrite it. "
                                  "Choose an empty folder for make-tiny-weights.")
    clip_sd: dict[str, torch.Tensor] = {}
    for version in dict.fromkeys(versions):
        cfg = tiny_config(version, config)
        ckpt, version_clip = build_tiny_state_dicts(cfg, seed)
        _save(paths[CHECKPOINT_NAMES[version]], ckpt, cfg)
        if version == "mult":
            clip_sd = version_clip
    if not clip_sd:  # the CLIP weights never depend on which versions are written
        clip_sd = build_tiny_state_dicts(config, seed)[1]
    _save(paths[default_clip_name()], clip_sd, config)
    return paths
