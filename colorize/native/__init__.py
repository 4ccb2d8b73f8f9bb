"""Host bridge of the colorizer (no host import): the SD2.1 U-Net layout a host builds, the colorizer's own
modules that run inside the host's U-Net call, and the per-step math its patches call.

Used by the ComfyUI bridge (``nodes/native/``): the checkpoint's U-Net becomes the host's native SD2.x model,
and sketch hints, split cross-attention, reference strengths and the v2 decoder extras are applied through the
host's patch points with the library's own code: the attention processors of :mod:`colorize.models.attention`
and :mod:`colorize.models.split_attention`, the v2 decoder modules (thesis §5.3–5.6).
"""
from __future__ import annotations

from colorize.native.batch import chunk_hints, token_grid
from colorize.native.build import NativeCheckpoint, read_native_checkpoint, read_vae
from colorize.native.extras import AttentionLora, LoraPairs, NativeExtras
from colorize.native.layout import (
    AttentionBlock,
    attention_blocks,
    hint_block_indices,
    host_unet_config,
    split_unet_state_dict,
)

__all__ = [
    "AttentionBlock",
    "AttentionLora",
    "LoraPairs",
    "NativeCheckpoint",
    "NativeExtras",
    "attention_blocks",
    "chunk_hints",
    "hint_block_indices",
    "host_unet_config",
    "read_native_checkpoint",
    "read_vae",
    "split_unet_state_dict",
    "token_grid",
]
