"""Checkpoint files: safe reading, component prefixes, shape inference, key checks, weight assignment.

Only safetensors and ``torch.load(weights_only=True)`` are ever used to read files. Which model family a file
holds is decided by ``colorize.families`` from its keys, never from its name (the official app's ``"eps" in
filename`` rule silently picks the wrong parameterisation for a renamed file).
"""
from __future__ import annotations

from colorize.checkpoint.assign import materialize, require_components
from colorize.checkpoint.claims import check_head_channels, check_weight_dtypes, config_from_metadata, reconcile_config
from colorize.checkpoint.common import TensorInfo, dtype_of, shape_of
from colorize.checkpoint.files import SUPPORTED_SUFFIXES, load_state_dict_file, read_header, read_metadata
from colorize.checkpoint.infer import (
    CONFIG_METADATA_KEY,
    default_num_head_channels,
    infer_sketch_config,
    infer_unet_config,
    infer_vae_config,
)
from colorize.checkpoint.keys import (
    COMPONENT_PREFIXES,
    DEFAULT_OPTIONAL,
    OPTIONAL_COMPONENTS,
    SCHEDULE_BUFFERS,
    component_of,
    describe_foreign,
    split_by_prefix,
)
from colorize.checkpoint.layout import KeyMatch, compare_keys, validate_keys

__all__ = [
    "COMPONENT_PREFIXES",
    "CONFIG_METADATA_KEY",
    "DEFAULT_OPTIONAL",
    "KeyMatch",
    "OPTIONAL_COMPONENTS",
    "SCHEDULE_BUFFERS",
    "SUPPORTED_SUFFIXES",
    "TensorInfo",
    "check_head_channels",
    "check_weight_dtypes",
    "compare_keys",
    "component_of",
    "config_from_metadata",
    "default_num_head_channels",
    "describe_foreign",
    "dtype_of",
    "infer_sketch_config",
    "infer_unet_config",
    "infer_vae_config",
    "load_state_dict_file",
    "materialize",
    "read_header",
    "read_metadata",
    "reconcile_config",
    "require_components",
    "shape_of",
    "split_by_prefix",
    "validate_keys",
]
