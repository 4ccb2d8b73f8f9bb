"""Device and precision choices (CPU, CUDA, MPS; fp32 / fp16 / bf16). Never hard-codes a device."""
from __future__ import annotations

import torch

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
        return torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from e


def resolve_dtype(precision: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto`` → fp16 on CUDA/MPS (as the official app runs the U-Net), fp32 on CPU."""
    if isinstance(precision, torch.dtype):
        return precision
    precision = precision or "auto"
    if precision == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return _DTYPES[precision]
