"""Building modules around a file's tensors: meta-device construction, strict assignment, component checks.

Modules are built on the ``meta`` device and receive the file's tensors with ``load_state_dict(assign=True)``,
so a 4 GB checkpoint needs about 4 GB of memory, not 8, and no time is spent on a random initialisation that is
thrown away.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import torch
from torch import nn

from colorize.checkpoint.claims import check_weight_dtypes
from colorize.checkpoint.layout import validate_keys
from colorize.errors import CheckpointError

M = TypeVar("M", bound=nn.Module)


def materialize(factory: Callable[[], M], state_dict: Mapping[str, torch.Tensor], what: str) -> M:
    """``factory()`` on the meta device, then the given weights assigned strictly (clear error on mismatch)."""
    with torch.device("meta"):
        module = factory()
    own = module.state_dict()
    validate_keys({k: tuple(v.shape) for k, v in own.items()}, state_dict, optional=(), what=what)
    check_weight_dtypes(state_dict, what, [k for k, v in own.items() if v.is_floating_point()])
    try:
        module.load_state_dict(dict(state_dict), strict=True, assign=True)
    except RuntimeError as e:  # keys, shapes and dtypes were checked: what is left is a damaged tensor
        raise CheckpointError(f"{what}: the weights cannot be assigned ({str(e).strip()[:200]}); the file is "
                              "damaged, re-download it.") from None
    leftover = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if leftover:  # a non-persistent buffer the file cannot provide: a bug in the module, not the file
        raise RuntimeError(f"{what}: tensors not provided by the state dict: {leftover[:5]}")
    return module


def require_components(parts: Mapping[str, Mapping[str, torch.Tensor]], prefixes: Mapping[str, str],
                       components: Sequence[str], what: str) -> None:
    """A clear error when a checkpoint lacks a component its family needs (an incomplete file)."""
    missing = [prefixes[c] + "*" for c in components if not parts.get(c)]
    if missing:
        raise CheckpointError(f"{what} has no {', '.join(missing)} tensors, which its version needs: an incomplete "
                              "or converted file. Use the released checkpoint (weights_manifest.json).")


__all__ = ["materialize", "require_components"]
