"""Tiny random weights in the released file formats, for tests, demos and ComfyUI host runs.

``python -m colorize make-tiny-weights DIR`` writes, in ComfyUI's models layout::

    DIR/colorizediffusion/<v1 checkpoint file name>   (mult layout, VAE in fp16 as released)
    DIR/clip_vision/<reference encoder file name>     (open_clip format, vision + text)

under exactly the file names the CLI defaults and the shipped workflows use, so every
command and workflow runs unchanged with ``--models-dir DIR``. The config is stored in the
safetensors metadata (``colorize_config``) so the loader rebuilds the same tiny shapes.
The outputs are random: useful to exercise the code, not to colorize.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from colorize.checkpoint import CONFIG_METADATA_KEY
from colorize.config import TINY_MULT, ColorizerConfig
from colorize.io import safetensors_metadata, save_safetensors_atomic

TINY_METADATA_KEY = "colorize_tiny"


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


def build_tiny_state_dicts(config: ColorizerConfig = TINY_MULT, seed: int = 0) -> tuple[dict, dict]:
    """Random ``(checkpoint, clip)`` state dicts with the released key names."""
    from colorize.models.clip import ReferenceEncoder
    from colorize.models.sketch_encoder import SketchEncoder
    from colorize.models.unet import DualCondUNet
    from colorize.models.vae import AutoencoderKL

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    parts = {
        "model.diffusion_model.": DualCondUNet(config.unet),
        "control_encoder.": SketchEncoder(config.sketch),
        "first_stage_model.": AutoencoderKL(config.vae),
    }
    ckpt: dict[str, torch.Tensor] = {}
    for prefix, module in parts.items():
        _randomize_zero_layers(module, g)
        dtype = torch.float16 if prefix == "first_stage_model." else torch.float32
        ckpt.update({prefix + k: v.detach().to(dtype).contiguous() for k, v in module.state_dict().items()})
    clip = ReferenceEncoder(config.clip, with_text=True)
    clip_sd = {k: v.detach().contiguous() for k, v in clip.state_dict().items()}
    return ckpt, clip_sd


def write_tiny_weights(directory: str | Path, config: ColorizerConfig = TINY_MULT, seed: int = 0) -> dict[str, Path]:
    """Write the tiny checkpoint and CLIP file into ``directory`` (ComfyUI models layout)."""
    from colorize.weights import default_clip_name, default_checkpoint_name, manifest_entry

    directory = Path(directory)
    ckpt, clip_sd = build_tiny_state_dicts(config, seed)
    meta = {CONFIG_METADATA_KEY: json.dumps(config.to_dict()), TINY_METADATA_KEY: "random weights, not for real use"}
    written = {}
    for name, sd in ((default_checkpoint_name(), ckpt), (default_clip_name(), clip_sd)):
        entry = manifest_entry(name)
        path = directory / entry["models_subdir"] / entry["filename"]
        if path.exists() and TINY_METADATA_KEY not in _metadata_or_empty(path):
            raise FileExistsError(
                f"{path} exists and is not a tiny test file; refusing to overwrite it. "
                "Choose an empty folder for make-tiny-weights."
            )
        save_safetensors_atomic(sd, path, metadata=meta, overwrite=True)
        written[name] = path
    return written
