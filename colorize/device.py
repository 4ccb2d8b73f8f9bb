"""Device and precision choices (CPU, CUDA, MPS; fp32 / fp16 / bf16). Never hard-codes a device."""
from __future__ import annotations

import torch

from colorize.errors import InputError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` → CUDA if available, else MPS, else CPU; anything else as given."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but this PyTorch build sees no CUDA GPU; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"device {name!r} requested but Metal (MPS) is not available; use --device cpu or auto")
    return device


def resolve_dtype(precision: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto`` → fp16 on CUDA/MPS (as the official app runs the U-Net), fp32 on CPU."""
    if isinstance(precision, torch.dtype):
        return precision
    precision = precision or "auto"
    if precision == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if precision not in _DTYPES:
        raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return _DTYPES[precision]
