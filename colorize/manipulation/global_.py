"""Global text manipulation of the CLS token (thesis §5.8.1, Alg. 1, Eq. 5.6–5.8; official ``global_manipulate``).

Only the ``cls`` token-type ablation model uses it; the released models condition on the patch tokens
(see :mod:`colorize.manipulation.local`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from colorize.manipulation.edits import Edit, TextEncoder, encode_prompts, project


def global_edit(v: Tensor, edit: Edit, vectors: dict[str, Tensor]) -> Tensor:
    """One Alg. 1 step on (..., d) float32 tokens.

    * anchor, enhance:     ``v −= (v·a)·a`` then ``v += s_t·e`` (official; the thesis' Eq. 5.8 would add
      ``(s_t − v·e)·e`` instead — the official fixtures pin ``s_t·e``);
    * anchor, no enhance:  ``v += s_t·(e − a)`` (Eq. 5.7);
    * no anchor, enhance:  ``v += s_t·e``; no anchor, no enhance: ``v += (s_t − v·e)·e`` (Eq. 5.6).

    ``control`` and ``thresholds`` are not used.
    """
    e, s = vectors[edit.target], edit.target_scale
    if edit.anchor is not None:
        a = vectors[edit.anchor]
        if edit.enhance:
            return v - project(v, a) * a + s * e
        return v + s * (e - a)
    if edit.enhance:
        return v + s * e
    return v + (s - project(v, e)) * e


def global_manipulate(cls: Tensor, edits: Sequence[Edit], encode_text: TextEncoder) -> Tensor:
    """Apply ``edits`` in order to the CLS token(s) ``cls`` (b, 1, d) (any (..., d) works); float32 maths,
    returns ``cls``' dtype."""
    if cls.ndim < 1 or cls.shape[-1] < 1:
        raise ValueError(f"cls must be (..., d); got {tuple(cls.shape)}")
    edits = list(edits)
    for i, ed in enumerate(edits):
        if not isinstance(ed, Edit):
            raise TypeError(f"edit {i} must be a colorize.manipulation.Edit; got {type(ed).__name__}")
    if not edits:
        return cls.clone()
    v = cls.to(torch.float32)
    vectors = encode_prompts(encode_text, [p for ed in edits for p in (ed.target, ed.anchor) if p], v)
    for ed in edits:
        v = global_edit(v, ed, vectors)
    return v.to(cls.dtype)


__all__ = ["global_edit", "global_manipulate"]
