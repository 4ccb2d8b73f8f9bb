"""Small helpers shared by the model tests."""
from __future__ import annotations

import math

import torch


def state_shapes(module: torch.nn.Module, prefix: str) -> dict[str, list[int]]:
    """``{prefix + key: shape}`` of a module's state dict (for comparisons with the official layouts)."""
    return {prefix + k: list(v.shape) for k, v in module.state_dict().items()}


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero random weights everywhere: the constructors zero-initialise residual outputs and LoRA ups
    (as the released models were before training), which would hide whole paths from a test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):  # norm scales
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
