"""Local text manipulation of the patch tokens (thesis §5.8.2, Alg. 2, Eq. 5.10–5.14; official ``local_manipulate``)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from colorize.manipulation.edits import Edit, TextEncoder, encode_prompts, project
from colorize.manipulation.pwv import compute_pwv


def local_edit(cls: Tensor, loc: Tensor, edit: Edit, vectors: dict[str, Tensor]) -> Tensor:
    """One Alg. 2 step on float32 tensors: patch tokens ``loc`` (b, n, d) → edited (b, n, d).

    ``cls`` (b, 1, d) is only read: ``d = s_t − v_cls·e`` (or ``s_t − v_cls·a`` when enhanced with an
    anchor, Eq. 5.12). With an anchor: ``loc += (ω + β·(loc·a))·(e − a)`` (Eq. 5.13); without:
    ``loc += ω·e`` (Eq. 5.14), where ``enhance`` has no effect (official behaviour; the thesis' Alg. 2 would
    use ``d = s_t`` there, the official code and this one use ``s_t − v_cls·e``). ``ω`` follows
    :func:`compute_pwv` on the control projection ``loc·c``; the ``"everything"`` control gives ``ω = d``
    for every token.
    """
    e = vectors[edit.target]
    current = vectors[edit.anchor] if edit.anchor is not None and edit.enhance else e
    dscale = edit.target_scale - project(cls, current)  # (b, 1, 1)
    if edit.selects_everything:
        w = dscale.expand(*loc.shape[:-1], 1)
    else:
        w = compute_pwv(project(loc, vectors[edit.control]), dscale, edit.thresholds, edit.ratio)
    if edit.anchor is None:
        return loc + w * e
    a = vectors[edit.anchor]
    if edit.enhance:
        w = w + project(loc, a)
    return loc + w * (e - a)


def local_manipulate(tokens: Tensor, edits: Sequence[Edit], encode_text: TextEncoder) -> Tensor:
    """Apply ``edits`` in order to the patch tokens of ``tokens`` (b, 1+n, d), CLS first (CLIP "full" output).

    The CLS token is never changed (it only supplies the current strength ``v_cls·e``), so applying
    ``[e1, e2]`` equals applying ``[e1]`` then ``[e2]``. Every edit is applied, whatever its target scale
    (the official app skipped the whole queue unless some scale was > 0; here "off" means "no edit").
    Computed in float32 on ``tokens``' device; returns ``tokens``' dtype.
    """
    if tokens.ndim != 3 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be (b, 1+n, d) with the CLS token first; got {tuple(tokens.shape)}")
    edits = list(edits)
    if not edits:
        return tokens.clone()
    for i, ed in enumerate(edits):
        if not isinstance(ed, Edit):
            raise TypeError(f"edit {i} must be a colorize.manipulation.Edit; got {type(ed).__name__}")
    x = tokens.to(torch.float32)
    prompts = [p for ed in edits for p in (None if ed.selects_everything else ed.control, ed.target, ed.anchor) if p]
    vectors = encode_prompts(encode_text, prompts, x)
    cls, loc = x[:, :1], x[:, 1:]
    for ed in edits:
        loc = local_edit(cls, loc, ed, vectors)
    return torch.cat([cls, loc], dim=1).to(tokens.dtype)


__all__ = ["local_edit", "local_manipulate"]
