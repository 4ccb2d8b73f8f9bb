"""Reading the SD2.1 families' reference encoder (OpenCLIP ViT-H/14) from its own file: open_clip or Hugging Face
clip_vision format, validated against the encoder built on the meta device before any tensor is assigned."""
from __future__ import annotations

import os
from typing import Mapping

import torch
from torch import nn

from colorize.checkpoint import (
    CONFIG_METADATA_KEY,
    check_weight_dtypes,
    config_from_metadata,
    load_state_dict_file,
    read_metadata,
    validate_keys,
)
from colorize.config import ClipConfig
from colorize.errors import CheckpointError

PathLike = str | os.PathLike[str]


def clip_config_for(metadata: Mapping[str, str], what: str = "CLIP file") -> ClipConfig:
    """The CLIP config stored by the tiny-weights writer, else OpenCLIP ViT-H-14."""
    if CONFIG_METADATA_KEY in metadata:
        return config_from_metadata(metadata[CONFIG_METADATA_KEY], what).clip
    return ClipConfig()


def load_reference_encoder_from_state_dict(
    sd: Mapping[str, torch.Tensor], cfg: ClipConfig, what: str, with_text: bool = True
) -> nn.Module:
    """A frozen :class:`~colorize.models.clip.ReferenceEncoder` from open_clip or clip_vision weights.

    ``with_text=False`` drops the text tower (354 M parameters for ViT-H) even when the file has it:
    colorization needs only the vision tower; text manipulation needs both.
    """
    from colorize.models.clip import ReferenceEncoder  # open_clip is imported with it
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
    own = enc.state_dict()
    validate_keys({k: tuple(v.shape) for k, v in own.items()}, oc, optional=(), what=what)
    check_weight_dtypes(oc, what, [k for k, v in own.items() if v.is_floating_point()])
    enc.load_state_dict(oc, strict=True, assign=True)
    enc.requires_grad_(False)
    return enc


def load_reference_encoder(path: PathLike, with_text: bool = True) -> nn.Module:
    """The reference encoder from an open_clip-format or HF/ComfyUI clip_vision-format file."""
    sd = load_state_dict_file(path)
    metadata = read_metadata(path) if os.fspath(path).endswith(".safetensors") else {}
    name = os.path.basename(os.fspath(path))
    return load_reference_encoder_from_state_dict(sd, clip_config_for(metadata, name), name, with_text)


__all__ = ["clip_config_for", "load_reference_encoder", "load_reference_encoder_from_state_dict"]
