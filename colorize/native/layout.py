"""Where the colorizer's pieces sit in a host's SD2.1-style U-Net (pure data, no host import).

A host such as ComfyUI builds the SD2.1 (or SDXL) U-Net from an ``openaimodel``-style parameter set and names
its blocks ``("input", i)``, ``("middle", 0)``, ``("output", i)``. This module derives, from our
:class:`~colorize.config.UNetConfig` (never from a host's shape detection, which does not know tiny or
custom layouts):

* :func:`host_unet_config` — the constructor parameters of that U-Net (thesis §5.3.1: SD2.1 backbone with
  1×1-conv ``proj_in/out``, i.e. ``use_linear_in_transformer=False`` as the released checkpoints; XL: the SDXL
  U-Net with Linear projections, per-level depths and the "sequential" adm input);
* :func:`attention_blocks` — the cross-attention blocks (SpatialTransformers) in the official order
  (:data:`colorize.models.unet.ATTENTION_BLOCK_ORDER` for SD2.1), as host keys, module paths and the index of
  their first transformer block (one reference strength per transformer block: 16 SD2.1, 70 XL);
* :func:`hint_block_indices` — the input blocks after which the sketch hints are added (Eq. 5.1);
* :func:`split_unet_state_dict` — U-Net keys the host's U-Net has vs. the colorizer's own additions (the
  v1.5/v2 split LoRA pairs, a family's other U-Net modules such as v2's ``warp_modules`` / ``style_modules``),
  which stay with our modules.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from colorize.config import UNetConfig

T = TypeVar("T")
#: Key fragments of the split-LoRA tensors, which the host's plain SD2.1 U-Net does not have.
EXTRA_KEY_MARKERS: tuple[str, ...] = (".lora_down_fg.", ".lora_up_fg.", ".lora_down_bg.", ".lora_up_bg.")


@dataclass(frozen=True)
class AttentionBlock:
    """One cross-attention block: its position in the official order, host key and module path."""

    index: int  # the first of its transformer blocks in the per-block order (= its position when depth is 1)
    key: tuple[str, int]  # ("input", 1), ("middle", 0), ("output", 3), ...
    path: str  # "input_blocks.1.1", "middle_block.1", "output_blocks.3.1" (the SpatialTransformer)
    depth: int = 1  # its transformer blocks (the host's ``block_index`` runs over them)


def _level_depths(cfg: UNetConfig) -> list[int]:
    """Transformer depth of each resolution level (0 where the level has no attention)."""
    return [cfg.level_depth(level) if 2**level in cfg.attention_resolutions else 0
            for level in range(len(cfg.channel_mult))]


def host_unet_config(cfg: UNetConfig) -> dict[str, Any]:
    """``openaimodel.UNetModel`` parameters of this U-Net (SD2.1 topology; the dtype is the host's choice)."""
    depths = _level_depths(cfg)
    levels = len(cfg.channel_mult)
    return {
        "image_size": 32,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "model_channels": cfg.model_channels,
        "num_res_blocks": [cfg.num_res_blocks] * levels,
        "channel_mult": list(cfg.channel_mult),
        "transformer_depth": [d for d in depths for _ in range(cfg.num_res_blocks)],
        # per output block, listed from the top level down (the host consumes the list from its end)
        "transformer_depth_output": [d for d in depths for _ in range(cfg.num_res_blocks + 1)],
        "transformer_depth_middle": cfg.level_depth(-1),
        "context_dim": cfg.context_dim,
        "num_heads": -1,
        "num_head_channels": cfg.num_head_channels,
        "use_linear_in_transformer": cfg.use_linear_in_transformer,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": cfg.adm_in_channels,
        **({"num_classes": "sequential"} if cfg.adm_in_channels is not None else {}),
        "use_checkpoint": False,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }


def attention_blocks(cfg: UNetConfig) -> list[AttentionBlock]:
    """The cross-attention blocks in the official order: input blocks, middle block, output blocks."""
    depths = _level_depths(cfg)
    found: list[tuple[tuple[str, int], str, int]] = []
    block = 1  # input block 0 is conv_in
    for level, depth in enumerate(depths):
        for _ in range(cfg.num_res_blocks):
            if depth:
                found.append((("input", block), f"input_blocks.{block}.1", depth))
            block += 1
        if level != len(depths) - 1:
            block += 1  # the Downsample block
    found.append((("middle", 0), "middle_block.1", cfg.level_depth(-1)))
    block = 0
    for depth in reversed(depths):
        for _ in range(cfg.num_res_blocks + 1):
            if depth:
                found.append((("output", block), f"output_blocks.{block}.1", depth))
            block += 1
    out, first = [], 0
    for key, path, depth in found:
        out.append(AttentionBlock(first, key, path, depth))
        first += depth
    return out


def hint_block_indices(cfg: UNetConfig) -> list[int]:
    """Input blocks after which the sketch hints are added: 0, every Downsample, the last (0, 3, 6, 9, 11)."""
    indices, block = [0], 0
    for level in range(len(cfg.channel_mult)):
        block += cfg.num_res_blocks
        if level != len(cfg.channel_mult) - 1:
            block += 1
            indices.append(block)
    if indices[-1] != block:
        indices.append(block)
    return indices


def is_extra_unet_key(key: str, additions: Sequence[str] = ()) -> bool:
    """True for U-Net keys (prefix stripped) that belong to the colorizer's additions (the split LoRA pairs and
    the modules named in ``additions``), not the SD2.1 U-Net."""
    return key.split(".", 1)[0] in additions or any(m in key for m in EXTRA_KEY_MARKERS)


def split_unet_state_dict(sd: Mapping[str, T], additions: Sequence[str] = ()) -> tuple[dict[str, T], dict[str, T]]:
    """``(host U-Net keys, colorizer additions)`` of a U-Net state dict (``model.diffusion_model.`` stripped);
    ``additions``: the family's U-Net module names besides the LoRA pairs (``Family.unet_additions``)."""
    base: dict[str, T] = {}
    extra: dict[str, T] = {}
    for k, v in sd.items():
        (extra if is_extra_unet_key(k, additions) else base)[k] = v
    return base, extra


__all__ = [
    "AttentionBlock",
    "attention_blocks",
    "hint_block_indices",
    "host_unet_config",
    "is_extra_unet_key",
    "split_unet_state_dict",
]
