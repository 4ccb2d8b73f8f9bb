"""Foreground/background cross-attention of ColorizeDiffusion XL (sdxl "Low-level injection", bg_enhance).

Official facts (tellurion-kanata/ColorizeDiffusionXL at commit ``ec78784``, ``refnet/modules/attention.py``):
the context holds ``2T`` tokens ``[reference T | background T]`` and the sketch mask (latent resolution) is
bicubic-resized by the block's scale factor to the query grid (``attention.py:151-185``).

* ``merge_scale == 0`` (the app default): **one** attention with an additive bias from
  ``create_masked_attention_bias`` (``attention.py:19-30``): queries whose mask is ``> threshold`` see only the
  first half of the tokens, the others only the second half (−∞ on the other half); the result is multiplied by
  the block's reference strength; the fg/bg strengths are **not** used.
* ``merge_scale > 0``: two attentions (foreground half, background half), each × reference strength, then
  × bg / fg strength, ``fg ← fg·(1 − merge) + bg·merge`` and per query ``bg where mask < threshold else fg``
  (note the opposite tie rule to the bias path's ``mask > threshold``). This is exactly the no-LoRA case of
  :func:`colorize.models.split_attention.combine_split`, which is reused.

Padding quirk (facts §8.6): the official bias is built with its key axis padded to a multiple of 8 (padding
columns 0) and passed as is, so a context length that is not a multiple of 8 gives the attention kernel a
mis-shaped bias. :func:`create_masked_attention_bias` reproduces the padded pattern (``pad_to=8``, pinned by the
``xl_split_attention`` fixture: foreground rows are −∞ on the padding columns too, background rows 0 there);
the attention itself uses the bias sliced to the key length — the right thing,
identical whenever ``2T`` is a multiple of 8 (always at full size: 2 × 196 = 392). ``XLSplitOptions(
official_padding=True)`` instead refuses such context lengths, as the official kernels would fail.

xlv2 (the soft blend ``fg·m + bg·(1 − m)`` with the background LoRA, ``v2-colorizerXL.py:212-318``,
``lora.py:26-55``) is the seam :class:`XLSplitOptions.soft` and :func:`soft_blend`; its LoRA projections are the
layer's (:class:`BackgroundLoraLinear`).

:class:`XLSplitAttention` is a cross-attention processor of the shared mechanism (``AttentionPatches(
cross_attention=...)``): it holds only that generation's options.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colorize.models.attention import AttentionCall, Scale, apply_scale
from colorize.models.split_attention import MaskTokens, SplitOptions, combine_split


@dataclass(frozen=True)
class XLSplitOptions:
    """Per-generation settings of the XL split cross-attention.

    mask: sketch mask at latent resolution ``(b, 1, h, w)`` (a batch dividing the model batch is tiled).
    threshold: the "sketch mask threshold" (a query is foreground when ``mask > threshold`` on the bias path,
    background when ``mask < threshold`` on the two-branch path). fg_scale / bg_scale: strengths of the
    two-branch path. merge_scale: 0 = bias path, > 0 = two-branch path. official_padding: refuse context lengths
    that are not a multiple of 8 on the bias path (the official behaviour, see the module docstring).
    soft: the xlv2 soft blend (no threshold) instead of the sdxl paths. use_lora: apply the layer's background
    LoRA (xlv2; layers without it ignore this).
    """

    mask: Tensor
    threshold: float = 0.05
    fg_scale: float = 1.0
    bg_scale: float = 1.0
    merge_scale: float = 0.0
    official_padding: bool = False
    soft: bool = False
    use_lora: bool = False


def create_masked_attention_bias(mask_tokens: Tensor, threshold: float, heads: int, context_len: int,
                                 pad_to: int = 8, dtype: torch.dtype = torch.float32) -> Tensor:
    """The official additive bias ``(b, heads, n, L)``, ``L`` = ``context_len`` rounded up to ``pad_to``.

    ``mask_tokens`` ``(b, n, 1)``; with ``half = context_len // 2``: rows with ``mask > threshold`` get −∞ at
    key columns ``[half, L)`` (padding columns included), the other rows at ``[0, half)`` (their padding
    columns stay 0)."""
    b, n = mask_tokens.shape[:2]
    padded = -(-context_len // pad_to) * pad_to if pad_to > 1 else context_len
    half = context_len // 2
    cols = torch.arange(padded, device=mask_tokens.device)
    first = cols < half
    second = cols >= half  # the padding columns too
    fg = mask_tokens.reshape(b, n, 1) > threshold
    hidden = torch.where(fg, second, first)  # (b, n, L)
    bias = torch.zeros(b, n, padded, dtype=dtype, device=mask_tokens.device)
    bias = bias.masked_fill(hidden, float("-inf"))
    return bias[:, None].expand(b, heads, n, padded)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, heads: int) -> Tensor:
    """``softmax(q kᵀ/√d + bias) v`` per head: (b, n, h·d), (b, m, h·d) ×2, bias (b, h, n, m) → (b, n, h·d)."""
    b, n, inner = q.shape
    d = inner // heads
    q = q.view(b, n, heads, d).transpose(1, 2)
    k = k.view(b, k.shape[1], heads, d).transpose(1, 2)
    v = v.view(b, v.shape[1], heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
    return out.transpose(1, 2).reshape(b, n, inner)


def soft_blend(fg: Tensor, bg: Tensor, mask: Tensor, o: XLSplitOptions, scale: Scale) -> Tensor:
    """xlv2's blend of the two halves (before ``to_out``): each × reference × fg/bg strength, the background
    merged into the foreground by ``merge_scale``, then ``fg·m + bg·(1 − m)`` with the soft mask tokens."""
    bg = apply_scale(bg, scale * o.bg_scale)
    fg = apply_scale(fg, scale * o.fg_scale)
    if o.merge_scale != 0.0:
        fg = fg * (1.0 - o.merge_scale) + bg * o.merge_scale
    return fg * mask + bg * (1.0 - mask)


class BackgroundLoraLinear(nn.Linear):
    """A bias-free projection with the xlv2 background LoRA pair (keys ``weight``,
    ``lora_down_background.weight``, ``lora_up_background.weight``): ``W x + up(down(x))`` when asked for.

    The pair is never merged into ``weight`` (the official ``merge_lora`` writes it into the weights and
    restores them at the next condition preparation); :meth:`merged_weight` gives the merged matrix."""

    def __init__(self, in_features: int, out_features: int, rank: int = 4) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.lora_down_background = nn.Linear(in_features, rank, bias=False)
        self.lora_up_background = nn.Linear(rank, out_features, bias=False)

    def delta(self, x: Tensor) -> Tensor:
        return self.lora_up_background(self.lora_down_background(x))

    def merged_weight(self) -> Tensor:
        return self.weight + self.lora_up_background.weight @ self.lora_down_background.weight


def lora_projections(call: AttentionCall, use_lora: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """``q, k, v`` of a call, with the layer's background LoRA deltas when ``use_lora`` and it has them."""
    q, k, v = call.query(), call.key(), call.value()
    layer = call.layer
    if use_lora and layer is not None and isinstance(layer.to_q, BackgroundLoraLinear):
        q = q + layer.to_q.delta(call.x)
        k = k + layer.to_k.delta(call.context)  # type: ignore[operator]
        v = v + layer.to_v.delta(call.context)  # type: ignore[operator]
    return q, k, v


def background_lora_attention(call: AttentionCall) -> Tensor:
    """Plain cross-attention with the background LoRA active (xlv2 without a mask): a processor."""
    q, k, v = lora_projections(call)
    return call.output(apply_scale(call.attend(q, k, v), call.scale))


class XLSplitAttention:
    """The XL fg/bg cross-attention processor for one generation (see the module docstring)."""

    def __init__(self, options: XLSplitOptions) -> None:
        self.options = options
        self.mask_tokens = MaskTokens(options.mask)

    def __call__(self, call: AttentionCall) -> Tensor:
        o = self.options
        tokens = call.context.shape[1]
        if tokens % 2:
            raise ValueError(f"XL split attention needs a [reference T | background T] context, got {tokens} tokens")
        n = tokens // 2
        q, k, v = lora_projections(call, o.use_lora)
        mask = self.mask_tokens(call.site.grid, q.shape[0], q.device)
        if o.soft or o.merge_scale != 0.0:
            fg = call.attend(q, k[:, :n], v[:, :n])
            bg = call.attend(q, k[:, n:], v[:, n:])
            if o.soft:
                return call.output(soft_blend(fg, bg, mask, o, call.scale))
            opts = SplitOptions(mask=o.mask, threshold=o.threshold, fg_scale=o.fg_scale, bg_scale=o.bg_scale,
                                merge_scale=o.merge_scale)
            return call.output(combine_split(fg, bg, mask, opts, call.scale, lora=False))
        if o.official_padding and tokens % 8:
            raise ValueError(f"official bias padding: {tokens} context tokens are not a multiple of 8")
        if call.layer is None:  # a host kernel without bias support: the same selection, two attentions
            fg = call.attend(q, k[:, :n], v[:, :n])
            bg = call.attend(q, k[:, n:], v[:, n:])
            return call.output(apply_scale(torch.where(mask > o.threshold, fg, bg), call.scale))
        heads = call.layer.heads
        bias = create_masked_attention_bias(mask, o.threshold, heads, tokens)[..., :tokens]
        return call.output(apply_scale(masked_attention(q, k, v, bias, heads), call.scale))


__all__ = [
    "BackgroundLoraLinear",
    "XLSplitAttention",
    "XLSplitOptions",
    "background_lora_attention",
    "create_masked_attention_bias",
    "lora_projections",
    "masked_attention",
    "soft_blend",
]
