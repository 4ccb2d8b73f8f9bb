"""The xlv2 reference bank: what the ReferenceNet records and how the XL U-Net reads it, as attention processors.

Official facts (tellurion-kanata/ColorizeDiffusionXL at commit ``ec78784``):

* ``ReferenceAttentionControl`` (``refnet/sampling/hook.py:30-129``) pairs the transformer blocks of the
  ReferenceNet's ``output_blocks`` (writers) with those of the U-Net's ``output_blocks`` (readers) in module order.
  A writer stores its ``norm1`` output (the self-attention input) as its bank; ``update()`` hands each bank to its
  reader. A reader with a bank self-attends over ``[own norm1 tokens | bank]`` (a batch-1 bank repeated over the
  model batch) and passes the sketch mask and its block's scale factor to ``attn1``; without a bank it runs its
  plain forward (``controller.clean()``).
* ``attn1`` with a mask takes the bias path of ``MemoryEfficientAttention.masked_forward``
  (``refnet/modules/attention.py:19-30, 151-185``): the latent mask bicubic-resized to the block's grid, queries
  with ``mask > threshold`` see only the first half of the keys (their own tokens), the others only the second
  half (the bank). ``attn1`` keeps its default threshold 0.05: the wrapper's ``adjust_fgbg_scale`` only reaches
  ``attn2`` (facts §8.9).
* ``attn2`` is the LoRA-hacked split (``refnet/modules/lora.py:26-55``): the soft blend ``fg·m + bg·(1 − m)`` of
  :func:`~colorize.families.xl.split_attention.soft_blend` with the background LoRA **merged** into
  ``to_q/to_k/to_v`` at the end of condition preparation (``refnet/models/v2-colorizerXL.py:249-338``).

Here nothing is attached to a module and no weight is written: the ReferenceNet returns a :class:`ReferenceBank`
(recorded by :class:`BankRecorder`, a processor that lives for one ReferenceNet call), the U-Net reads it through
:class:`BankSelfAttention`, and :class:`MergedLoraSplitAttention` computes the merged projections
``(W + up·down) x`` inside the call. :func:`xlv2_patches` makes the :class:`AttentionPatches` of one U-Net call.
The official class-level writer/reader lists shared by every wrapper (facts §8.7) have no counterpart.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from colorize.families.xl.split_attention import (
    BackgroundLoraLinear,
    XLSplitAttention,
    XLSplitOptions,
    create_masked_attention_bias,
    masked_attention,
)
from colorize.models.attention import AttentionCall, AttentionPatches, Scale, apply_scale, plain_attention
from colorize.models.split_attention import MaskTokens, tile_batch

#: ``attn1``'s own mask threshold, which the official wrapper never changes (facts §8.9).
BANK_MASK_THRESHOLD = 0.05
LoraMode = Literal["merged", "delta"]


@dataclass(frozen=True)
class ReferenceBank:
    """The ``norm1`` outputs of the ReferenceNet's decoder transformer blocks, keyed by the transformer-block index
    they share with the U-Net (:class:`~colorize.models.attention.AttentionSite` ``index``); each ``(b, n, c)``."""

    tokens: Mapping[int, Tensor]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(sorted(self.tokens))

    def ordered(self) -> list[Tensor]:
        """The banks in block order (the official writer order)."""
        return [self.tokens[i] for i in self.indices]

    def get(self, index: int) -> Tensor | None:
        return self.tokens.get(index)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ReferenceBank:
        return ReferenceBank({i: t.to(device=device, dtype=dtype) for i, t in self.tokens.items()})


class BankComplete(Exception):
    """Raised by :class:`BankRecorder` once every block has stored its tokens: nothing after can change the bank."""


class BankRecorder:
    """Self-attention processor of one ReferenceNet call: blocks ``indices`` store their ``norm1`` output
    (``call.x``); every block attends plainly. Raises :class:`BankComplete` after the last one stored."""

    def __init__(self, indices: Iterable[int], stop_when_complete: bool = True) -> None:
        self.indices = frozenset(indices)
        self.stop_when_complete = stop_when_complete
        self._stored: dict[int, Tensor] = {}

    def __call__(self, call: AttentionCall) -> Tensor:
        if call.site.index in self.indices:
            self._stored[call.site.index] = call.x
            if self.stop_when_complete and len(self._stored) == len(self.indices):
                raise BankComplete
        return plain_attention(call)

    def bank(self) -> ReferenceBank:
        missing = sorted(self.indices - set(self._stored))
        if missing:
            raise RuntimeError(f"the ReferenceNet pass did not reach transformer blocks {missing}")
        return ReferenceBank(dict(self._stored))


def bank_attention(call: AttentionCall, bank: Tensor, mask_tokens: Tensor | None,
                   threshold: float = BANK_MASK_THRESHOLD) -> Tensor:
    """``attn1`` of ``call.x`` (b, n, c) over ``[x | bank]``; with ``mask_tokens`` (b, n, 1) the official bias:
    queries with ``mask > threshold`` attend to their own tokens only, the others to the bank only."""
    layer = call.layer
    if layer is None:
        raise ValueError("the reference-bank self-attention needs the layer's own projections (no host q, k, v)")
    x = call.x
    bank = tile_batch(bank.to(x.dtype), x.shape[0], "reference bank")
    context = torch.cat([x, bank], dim=1)
    if mask_tokens is None:
        return plain_attention(AttentionCall(x, context, call.site, layer=layer, scale=call.scale))
    n, m = x.shape[1], bank.shape[1]
    if m != n:
        raise ValueError(f"a masked reference bank needs as many tokens as the block ({n}), got {m}: the "
                         "ReferenceNet input must have the latent size of the generation")
    q, k, v = layer.to_q(x), layer.to_k(context), layer.to_v(context)
    bias = create_masked_attention_bias(mask_tokens, threshold, layer.heads, 2 * n)[..., : 2 * n]
    return layer.to_out(apply_scale(masked_attention(q, k, v, bias, layer.heads), call.scale))


class BankSelfAttention:
    """Self-attention processor of one U-Net call reading a :class:`ReferenceBank`: blocks with a bank run
    :func:`bank_attention` (masked when ``mask`` (b, 1, h, w) at latent resolution is given), the others attend
    plainly."""

    def __init__(self, bank: ReferenceBank, mask: Tensor | None = None,
                 threshold: float = BANK_MASK_THRESHOLD) -> None:
        self.bank = bank
        self.threshold = float(threshold)
        self.mask_tokens = MaskTokens(mask) if mask is not None else None

    def __call__(self, call: AttentionCall) -> Tensor:
        bank = self.bank.get(call.site.index)
        if bank is None:
            return plain_attention(call)
        tokens = None
        if self.mask_tokens is not None:
            tokens = self.mask_tokens(call.site.grid, call.x.shape[0], call.x.device)
        return bank_attention(call, bank, tokens, self.threshold)


def merged_projections(call: AttentionCall) -> tuple[Tensor, Tensor, Tensor]:
    """``q, k, v`` with the background LoRA merged into the weights, ``(W + up·down) x`` (the official
    ``merge_lora`` numerics), computed for this call only."""
    layer = call.layer
    assert layer is not None
    q = F.linear(call.x, layer.to_q.merged_weight())  # type: ignore[operator]
    k = F.linear(call.context, layer.to_k.merged_weight())  # type: ignore[operator]
    v = F.linear(call.context, layer.to_v.merged_weight())  # type: ignore[operator]
    return q, k, v


class MergedLoraSplitAttention:
    """The xlv2 cross-attention processor: :class:`XLSplitAttention` (``options.soft`` for the official blend) with
    the background LoRA of layers that carry it (``options.use_lora``) either merged into the weights for the call
    (``lora="merged"``, the official numerics) or added as ``up(down(x))`` (``lora="delta"``; equal up to float
    rounding)."""

    def __init__(self, options: XLSplitOptions, lora: LoraMode = "merged") -> None:
        if lora not in ("merged", "delta"):
            raise ValueError(f"unknown background-LoRA mode {lora!r} (merged, delta)")
        self.options = options
        self.lora = lora
        self.split = XLSplitAttention(options)
        self.unmerged = XLSplitAttention(replace(options, use_lora=False))

    def __call__(self, call: AttentionCall) -> Tensor:
        layer = call.layer
        merge = (self.lora == "merged" and self.options.use_lora and layer is not None
                 and isinstance(layer.to_q, BackgroundLoraLinear))
        if not merge:
            return self.split(call)
        q, k, v = merged_projections(call)
        host = AttentionCall(call.x, call.context, call.site, attend=layer.attend, scale=call.scale,  # type: ignore
                             q=q, k=k, v=v)
        # the soft blend's float32 mask promotes the result: back to the layer's dtype (fp16/bf16 U-Nets)
        return layer.to_out(self.unmerged(host).to(call.x.dtype))  # type: ignore[union-attr]


def xlv2_patches(
    bank: ReferenceBank | None,
    mask: Tensor | None,
    reference_scales: Sequence[Scale] | None = None,
    *,
    fg_scale: float = 1.0,
    bg_scale: float = 1.0,
    merge_scale: float = 0.0,
    bank_threshold: float = BANK_MASK_THRESHOLD,
    use_lora: bool = True,
    lora: LoraMode = "merged",
) -> AttentionPatches:
    """The attention patches of one xlv2 U-Net call with background separation.

    ``bank``: the ReferenceNet's :class:`ReferenceBank` (``None`` = no bank: the official ``controller.clean()``).
    ``mask``: the sketch mask at latent resolution ``(b, 1, h, w)`` (``None`` = no separation: plain
    cross-attention, an unmasked bank). ``reference_scales``: one per transformer block (e.g.
    :func:`colorize.families.xl.blocks.xlv2_reference_scales`). fg/bg/merge scales act in the soft blend; the
    sketch-mask threshold has no effect there (official) and ``bank_threshold`` is ``attn1``'s (official 0.05)."""
    cross = None
    if mask is not None:
        opts = XLSplitOptions(mask=mask, fg_scale=fg_scale, bg_scale=bg_scale, merge_scale=merge_scale, soft=True,
                              use_lora=use_lora)
        cross = MergedLoraSplitAttention(opts, lora)
    self_attention = BankSelfAttention(bank, mask, bank_threshold) if bank is not None and len(bank) else None
    return AttentionPatches(self_attention=self_attention, cross_attention=cross, reference_scales=reference_scales)


__all__ = [
    "BANK_MASK_THRESHOLD",
    "BankComplete",
    "BankRecorder",
    "BankSelfAttention",
    "MergedLoraSplitAttention",
    "ReferenceBank",
    "bank_attention",
    "merged_projections",
    "xlv2_patches",
]
