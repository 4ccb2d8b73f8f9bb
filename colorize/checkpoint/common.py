"""Shared types of the checkpoint package: the error, tensor info, shape/dtype helpers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of one stored tensor (``dtype`` is e.g. ``"float16"``; None if unknown)."""

    shape: tuple[int, ...]
    dtype: str | None = None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


ShapeLike = Any  # torch.Tensor | TensorInfo | Sequence[int]


def shape_of(v: ShapeLike) -> tuple[int, ...]:
    """The shape of a tensor, a :class:`TensorInfo` or a plain sequence of ints."""
    if isinstance(v, TensorInfo):
        return v.shape
    if isinstance(v, torch.Tensor):
        return tuple(v.shape)
    return tuple(int(s) for s in v)


def dtype_of(v: ShapeLike) -> str | None:
    if isinstance(v, TensorInfo):
        return v.dtype
    if isinstance(v, torch.Tensor):
        return str(v.dtype).removeprefix("torch.")
    return None
