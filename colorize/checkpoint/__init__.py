"""Checkpoint files: safe loading, prefix split, version detection, config inference, key checks.

The released ColorizeDiffusion files (official-implementation.md §5) are one flat state dict per
version; the version and the prediction type are read from the *keys*, never from the file name
(the official app's ``"eps" in filename`` rule silently picks the wrong parameterisation for a
renamed file). Only safetensors and ``torch.load(weights_only=True)`` are ever used to read files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from colorize.checkpoint.common import TensorInfo, dtype_of, shape_of
from colorize.checkpoint.files import (
    SUPPORTED_SUFFIXES,
    load_state_dict_file,
    read_header,
    read_metadata,
)
from colorize.checkpoint.infer import (
    CONFIG_METADATA_KEY,
    default_num_head_channels,
    infer_config,
    infer_sketch_config,
    infer_unet_config,
    infer_vae_config,
)
from colorize.checkpoint.keys import (
    COMPONENT_PREFIXES,
    COMPONENTS,
    DEFAULT_OPTIONAL,
    OPTIONAL_COMPONENTS,
    PARAMETERIZATION,
    SCHEDULE_BUFFERS,
    VERSION_TITLES,
    component_of,
    detect_version,
    parameterization_for,
    split_by_prefix,
)
from colorize.checkpoint.layout import (
    KeyMatch,
    compare_keys,
    expected_layout,
    validate_keys,
)
from colorize.config import ColorizerConfig, Parameterization, Version

# --------------------------------------------------------------------------------------------
# One-call summary for loaders
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint is, read from its header only."""

    path: Path
    version: Version
    parameterization: Parameterization
    config: ColorizerConfig
    header: dict[str, TensorInfo]
    metadata: dict[str, str]


def read_checkpoint_info(path: str | os.PathLike[str], num_head_channels: int | None = None) -> CheckpointInfo:
    """Version, parameterisation and config of a checkpoint without loading its tensors."""
    header = read_header(path)
    metadata = read_metadata(path)
    version = detect_version(header, source=Path(path).name)
    config = infer_config(header, metadata, num_head_channels)
    return CheckpointInfo(Path(path), version, parameterization_for(version), config, header, metadata)


__all__ = [
    "PARAMETERIZATION",
    "VERSION_TITLES",
    "dtype_of",
    "COMPONENTS",
    "COMPONENT_PREFIXES",
    "CONFIG_METADATA_KEY",
    "CheckpointInfo",
    "DEFAULT_OPTIONAL",
    "KeyMatch",
    "OPTIONAL_COMPONENTS",
    "SCHEDULE_BUFFERS",
    "SUPPORTED_SUFFIXES",
    "TensorInfo",
    "compare_keys",
    "component_of",
    "default_num_head_channels",
    "detect_version",
    "expected_layout",
    "infer_config",
    "infer_sketch_config",
    "infer_unet_config",
    "infer_vae_config",
    "load_state_dict_file",
    "parameterization_for",
    "read_checkpoint_info",
    "read_header",
    "read_metadata",
    "shape_of",
    "split_by_prefix",
    "validate_keys",
]
