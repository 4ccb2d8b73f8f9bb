"""Transformer parts of the SD2.1 U-Net, and the one mechanism that extends their attention: processors.

Layers (thesis §5.3.1: SD2.1 backbone, the reference tokens as cross-attention context; parameter names follow
the official ``state_dict``: ``to_q/to_k/to_v/to_out.0``, ``ff.net.0.proj``, ``ff.net.2``, ``norm1/2/3``,
``proj_in/out``): :class:`CrossAttention`, :class:`FeedForward`, :class:`BasicTransformerBlock`,
:class:`SpatialTransformer`.

**Processors** (the idea of ComfyUI's ``transformer_options`` patches and diffusers' attention processors).
Every attention layer hands its computation, as an :class:`AttentionCall`, to a processor: a callable
``processor(call) -> output``. Which processors run is a per-call value, :class:`AttentionPatches`, passed to
the U-Net's ``forward`` and down to every layer; modules hold no per-generation state. Without patches every
layer runs :func:`plain_attention`. The extensions built on it:

* reference strength (thesis §5.2, Fig. 5.1): ``AttentionPatches.reference_scales``, one value per
  cross-attention block in the official order, handed to the cross-attention processor as ``call.scale``;
* split foreground/background cross-attention with LoRA (thesis Eq. 5.4, v1.5 and v2):
  :class:`colorize.models.split_attention.SplitAttention`;
* attention injection (official app): the self-attention processor of :mod:`colorize.injection`;
* the native ComfyUI bridge: the host projects ``q, k, v`` itself and calls the same processors with an
  :class:`AttentionCall` that carries them (``nodes/native/patches.py``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Union

import torch.nn.functional as F
from torch import Tensor, nn

Scale = Union[float, Tensor]
#: ``(q, k, v) -> softmax(q kᵀ/√d) v`` on ``(b, n, h·d)`` tensors, heads bound (the layer's or a host's kernel).
Attend = Callable[[Tensor, Tensor, Tensor], Tensor]


def is_one(scale: Scale) -> bool:
    return not isinstance(scale, Tensor) and scale == 1.0


def apply_scale(out: Tensor, scale: Scale) -> Tensor:
    """``out * scale`` where ``scale`` is a number, a 0-d tensor or one value per batch row ``(b,)``."""
    if is_one(scale):
        return out
    if isinstance(scale, Tensor):
        scale = scale.to(out.device, out.dtype).reshape(-1, *([1] * (out.ndim - 1)))
    return out * scale


def attend_heads(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """(b, n, h·d), (b, m, h·d) ×2 → (b, n, h·d): softmax(q kᵀ/√d) v per head, one SDPA call."""
    b, n, inner = q.shape
    d = inner // heads
    q = q.view(b, n, heads, d).transpose(1, 2)
    k = k.view(b, k.shape[1], heads, d).transpose(1, 2)
    v = v.view(b, v.shape[1], heads, d).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, inner)


@dataclass(frozen=True)
class AttentionSite:
    """Where an attention layer sits: ``index`` of its transformer block in the official per-block order (depth
    first through input, middle and output blocks: ``colorize.models.unet.ATTENTION_BLOCK_ORDER`` for SD2.1,
    where every SpatialTransformer has one; the 70 blocks of SDXL; -1 outside a U-Net), ``depth`` = that
    transformer block's position inside its SpatialTransformer, ``cross`` = cross-attention (``attn2``) or
    self-attention (``attn1``), ``grid`` = the (h, w) of its query tokens."""

    index: int = -1
    depth: int = 0
    cross: bool = False
    grid: tuple[int, int] = (0, 0)


class LoraProjections(Protocol):
    """The fg/bg LoRA pairs of one attention layer: ``lora.to_q.delta(x, "fg" | "bg", scale)`` (also to_k, to_v)."""

    to_q: Any
    to_k: Any
    to_v: Any


class AttentionCall:
    """One attention computation, as a processor sees it.

    ``x``: query input ``(b, n, c)``; ``context``: key/value input (``x`` for self-attention); ``site``: where
    the layer sits; ``scale``: the block's reference strength (cross-attention; 1 = none); ``lora``: the layer's
    fg/bg LoRA pairs, if it has any. With ``layer`` (this package's :class:`CrossAttention`) the projections are
    the layer's and :meth:`output` applies its ``to_out``; a host that projected ``q, k, v`` itself passes them
    and ``attend`` (its kernel), and applies ``to_out`` on what the processor returns.
    """

    __slots__ = ("x", "context", "site", "layer", "scale", "lora", "attend", "_q", "_k", "_v", "_parts")

    def __init__(self, x: Tensor, context: Tensor, site: AttentionSite, *, layer: CrossAttention | None = None,
                 attend: Attend | None = None, scale: Scale = 1.0, lora: LoraProjections | None = None,
                 q: Tensor | None = None, k: Tensor | None = None, v: Tensor | None = None) -> None:
        if layer is None and (q is None or k is None or v is None or attend is None):
            raise ValueError("an AttentionCall without its layer needs q, k, v and the attend kernel")
        self.x, self.context, self.site, self.layer = x, context, site, layer
        self.scale, self.lora = scale, lora
        self.attend: Attend = attend or layer.attend  # type: ignore[union-attr]
        self._q, self._k, self._v = q, k, v
        self._parts: dict[tuple[int | None, int | None], Tensor] | None = None

    def tokens(self, part: slice | None = None) -> Tensor:
        """The context tokens ``part`` (one view per part, shared by everything that reads it)."""
        if part is None:
            return self.context
        key = (part.start, part.stop)
        if self._parts is None:
            self._parts = {}
        if key not in self._parts:
            self._parts[key] = self.context[:, part]
        return self._parts[key]

    def query(self) -> Tensor:
        """The base query projection of ``x`` (no LoRA)."""
        if self._q is None:
            self._q = self.layer.to_q(self.x)  # type: ignore[union-attr]
        return self._q

    def key(self, part: slice | None = None) -> Tensor:
        """The base key projection of the context tokens ``part`` (all of them by default)."""
        if self._k is not None:
            return self._k if part is None else self._k[:, part]
        return self.layer.to_k(self.tokens(part))  # type: ignore[union-attr]

    def value(self, part: slice | None = None) -> Tensor:
        """The base value projection of the context tokens ``part`` (all of them by default)."""
        if self._v is not None:
            return self._v if part is None else self._v[:, part]
        return self.layer.to_v(self.tokens(part))  # type: ignore[union-attr]

    def output(self, out: Tensor) -> Tensor:
        """The layer's ``to_out`` of an attention result (a host applies its own: identity then)."""
        return self.layer.to_out(out) if self.layer is not None else out


Processor = Callable[[AttentionCall], Tensor]


def plain_attention(call: AttentionCall) -> Tensor:
    """``to_out(scale · softmax(q kᵀ/√d) v)``: the unpatched computation of every layer."""
    q, k, v = call.query(), call.key(), call.value()
    return call.output(apply_scale(call.attend(q, k, v), call.scale))


@dataclass(frozen=True)
class AttentionPatches:
    """The attention extensions of one U-Net call: the processor of every self-attention (``attn1``) and of
    every cross-attention (``attn2``) layer (``None`` = :func:`plain_attention`) and the reference strength of
    each cross-attention block (``None`` = all 1; a value is a float or a tensor of shape () or (b,))."""

    self_attention: Processor | None = None
    cross_attention: Processor | None = None
    reference_scales: Sequence[Scale] | None = None

    def __call__(self, call: AttentionCall) -> Tensor:
        if not call.site.cross:
            processor = self.self_attention
        else:
            processor = self.cross_attention
            if self.reference_scales is not None:
                if not 0 <= call.site.index < len(self.reference_scales):
                    raise ValueError(f"{len(self.reference_scales)} reference scales given, but the U-Net has a "
                                     f"cross-attention block #{call.site.index}: give one per attention block")
                call.scale = self.reference_scales[call.site.index]
        return plain_attention(call) if processor is None else processor(call)

    def check_blocks(self, blocks: int) -> None:
        """A clear error unless there is one reference strength per cross-attention block (when any are given)."""
        if self.reference_scales is not None and len(self.reference_scales) != blocks:
            raise ValueError(f"expected {blocks} reference scales (one per attention block), got "
                             f"{len(self.reference_scales)}")

    def graph_key(self) -> tuple[Any, ...] | None:
        """A hashable key when a captured CUDA graph can replay this call (plain processors, float scales);
        ``None`` otherwise (see :mod:`colorize.speedups`)."""
        if self.self_attention is not None or self.cross_attention is not None:
            return None
        scales = tuple(self.reference_scales or ())
        return None if any(isinstance(s, Tensor) for s in scales) else ("attention", scales)


NO_PATCHES = AttentionPatches()


class CrossAttention(nn.Module):
    """Multi-head attention (SDPA) whose computation is its processor's (:class:`AttentionPatches`).

    ``context=None`` means self-attention for a self-attention layer (``context_dim is None``) and an *empty
    reference* for an unpatched cross-attention layer: since ``to_k``/``to_v`` have no bias, an all-zero context
    gives ``v = 0`` and thus exactly ``to_out(0)`` for any token count, which is what is returned (no attention
    is computed). This is the official unconditional input (zero context).
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.is_cross = context_dim is not None
        kv_dim = query_dim if context_dim is None else context_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(kv_dim, inner, bias=False)
        self.to_v = nn.Linear(kv_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim))

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """(b, n, h·d), (b, m, h·d) ×2 → (b, n, h·d): :func:`attend_heads` with this layer's head count."""
        return attend_heads(q, k, v, self.heads)

    @property
    def lora(self) -> LoraProjections | None:
        """This layer itself when its projections carry fg/bg LoRA pairs (``colorize.models.lora``)."""
        return self if hasattr(self.to_q, "delta") else None

    def forward(self, x: Tensor, context: Tensor | None = None, patches: AttentionPatches | None = None,
                site: AttentionSite | None = None) -> Tensor:
        site = site or AttentionSite(cross=self.is_cross)
        if context is None and self.is_cross:
            if patches is not None and patches.cross_attention is not None:
                raise ValueError("a cross-attention processor needs a context tensor (b, N, c), e.g. the v1.5/v2 "
                                 "[foreground | background] tokens; use zeros for an empty reference")
            zero = x.new_zeros(1, 1, self.to_q.out_features)
            return self.to_out(zero).expand(x.shape[0], x.shape[1], -1)
        call = AttentionCall(x, x if context is None else context, site, layer=self, lora=self.lora)
        return (patches or NO_PATCHES)(call)


class GEGLU(nn.Module):
    """``a · gelu(g)`` with ``[a, g] = proj(x)`` (value half first, exact GELU)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU MLP with inner width ``mult·dim``; keys ``net.0.proj`` and ``net.2``."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Identity(), nn.Linear(inner, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-LN block: self-attention, cross-attention to the reference tokens, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        # Registration order matches the official state_dict order (attn1, ff, attn2, norm1..3).
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None, patches: AttentionPatches | None = None,
                index: int = -1, depth: int = 0, grid: tuple[int, int] = (0, 0)) -> Tensor:
        x = x + self.attn1(self.norm1(x), None, patches, AttentionSite(index, depth, False, grid))
        x = x + self.attn2(self.norm2(x), context, patches, AttentionSite(index, depth, True, grid))
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm(32, eps 1e-6) → 1×1-conv ``proj_in`` → transformer blocks → 1×1-conv ``proj_out`` → residual.

    The 1×1 convolutions are applied as matrix products on the (b, h·w, c) token layout, which avoids one
    layout round trip; their weights keep the official ``[C, C, 1, 1]`` conv shape. ``linear=True`` (SDXL's
    ``use_linear_in_transformer``) makes ``proj_in/proj_out`` Linear layers (weights ``[C, C]``), the same
    computation. ``attn_index`` is the position of the block's first transformer block in the official per-block
    order; transformer block ``d`` of it has :class:`AttentionSite` index ``attn_index + d`` (with depth 1, as in
    SD2.1, the SpatialTransformer's own position).
    """

    def __init__(
        self, channels: int, heads: int, dim_head: int, context_dim: int, depth: int = 1, attn_index: int = -1,
        linear: bool = False,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.attn_index = attn_index
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels) if linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: Tensor, context: Tensor | None, patches: AttentionPatches | None = None) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (b, hw, c)
        tokens = F.linear(tokens, self.proj_in.weight.flatten(1), self.proj_in.bias)
        for depth, block in enumerate(self.transformer_blocks):
            index = self.attn_index + depth if self.attn_index >= 0 else self.attn_index
            tokens = block(tokens, context, patches, index, depth, (h, w))
        tokens = F.linear(tokens, self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + tokens.transpose(1, 2).unflatten(2, (h, w))


__all__ = [
    "NO_PATCHES",
    "Attend",
    "AttentionCall",
    "AttentionPatches",
    "AttentionSite",
    "BasicTransformerBlock",
    "CrossAttention",
    "FeedForward",
    "GEGLU",
    "LoraProjections",
    "Processor",
    "Scale",
    "SpatialTransformer",
    "apply_scale",
    "attend_heads",
    "is_one",
    "plain_attention",
]
