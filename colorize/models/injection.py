"""Attention injection inside the U-Net: a self-attention bank written by one pass and read by the next.

Official "Attention injection" (reference notes §2.7; the app's ``UnetHook``): a *write* pass runs the U-Net on
the reference latent and records the self-attention input ``norm1(x)`` of every transformer block; the
following *read* pass (the real denoising call) lets each self-attention attend to its own tokens *and* the
recorded ones, ``attn1(n, context=[n ‖ bank])``.  On the reference-unconditional CFG rows the result is blended
with the plain self-attention, ``f·attn1(n) + (1 − f)·attn1(n, [n ‖ bank])``, ``f`` = the injection fidelity
(official ``style_cfg``; below 1e-5 no blend, as the official).

Unlike the official monkey-patching (which replaces ``forward`` methods and leaves them in place on an
exception), the bank is attached only inside :func:`attention_injection` and always detached on exit; a
U-Net outside that scope computes exactly its plain forward.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal

import torch
from torch import Tensor, nn

from colorize.models.attention import BasicTransformerBlock, CrossAttention

Mode = Literal["write", "read"]
MIN_FIDELITY = 1e-5  # official: the blend is skipped for style_cfg <= 1e-5


def injected_self_attention(
    attn: CrossAttention, x: Tensor, bank: Tensor, plain_rows: Tensor | None = None, fidelity: float = 0.5
) -> Tensor:
    """Self-attention of ``x`` (b, n, c) over ``[x ‖ bank]`` (b, n + m, c); on ``plain_rows`` (row indices)
    blended with the plain self-attention: ``f·plain + (1 − f)·injected``."""
    out = attn(x, torch.cat([x, bank.to(x.dtype)], dim=1))
    if plain_rows is None or plain_rows.numel() == 0 or fidelity <= MIN_FIDELITY:
        return out
    plain = attn(x.index_select(0, plain_rows))
    mixed = plain if fidelity == 1.0 else fidelity * plain + (1.0 - fidelity) * out.index_select(0, plain_rows)
    return out.index_copy(0, plain_rows, mixed)


class WriteComplete(Exception):
    """Raised by the write pass once the last transformer block has stored its tokens: nothing after it
    (that block's own attention and feed-forward, the rest of the U-Net) can change the bank."""


class AttentionBank:
    """Per-block store of self-attention inputs, used by :class:`BasicTransformerBlock` while attached.

    ``mode="write"``: each block stores its ``norm1(x)`` (the write batch) and attends plainly.
    ``mode="read"``: each block takes its stored tokens, picks the rows ``row_index`` (read row → write row;
    ``None`` = the same rows) and attends over ``[x ‖ bank]``; ``plain_rows`` get the fidelity blend.
    An entry is consumed by its read, so a bank is written once per read.  ``blocks`` (set by
    :func:`attention_injection`) is the number of blocks; the write pass stops with :class:`WriteComplete`
    once all have stored.
    """

    def __init__(self, fidelity: float = 0.5) -> None:
        self.fidelity = float(fidelity)
        self.mode: Mode | None = None
        self.row_index: Tensor | None = None
        self.plain_rows: Tensor | None = None
        self.blocks = 0
        self._stored: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self._stored)

    def self_attention(self, block: BasicTransformerBlock, x: Tensor) -> Tensor:
        """``block.attn1`` on the normalised tokens ``x``, as the bank's mode says."""
        if self.mode == "write":
            self._stored[id(block)] = x.detach()
            if len(self._stored) == self.blocks:
                raise WriteComplete
            return block.attn1(x)
        if self.mode == "read":
            bank = self._stored.pop(id(block), None)
            if bank is None:
                raise RuntimeError("attention injection: read pass without a written bank for this block")
            if self.row_index is not None:
                bank = bank.index_select(0, self.row_index)
            return injected_self_attention(block.attn1, x, bank, self.plain_rows, self.fidelity)
        return block.attn1(x)

    def clear(self) -> None:
        self._stored.clear()


@contextmanager
def attention_injection(unet: nn.Module, bank: AttentionBank) -> Iterator[AttentionBank]:
    """Attach ``bank`` to every transformer block of ``unet`` for the duration of the block (then detach)."""
    blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    for block in blocks:
        block.injection = bank
    bank.blocks = len(blocks)
    try:
        yield bank
    finally:
        for block in blocks:
            block.injection = None
        bank.clear()


__all__ = ["AttentionBank", "MIN_FIDELITY", "WriteComplete", "attention_injection", "injected_self_attention"]
