"""Transformer parts of the SD2.1 U-Net: cross-attention, GEGLU feed-forward, spatial transformer.

Thesis §5.3.1 (SD2.1 backbone, reference tokens as cross-attention context) and §2.6 of the reference notes
(reference strength = a scale on the cross-attention result).  Parameter names follow the official
``state_dict`` (``to_q/to_k/to_v/to_out.0``, ``ff.net.0.proj``, ``ff.net.2``, ``norm1/2/3``, ``proj_in/out``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Union

import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from colorize.models.injection import AttentionBank

Scale = Union[float, Tensor]


def _is_one(scale: Scale) -> bool:
    return not isinstance(scale, Tensor) and scale == 1.0


def apply_scale(out: Tensor, scale: Scale) -> Tensor:
    """``out * scale`` where ``scale`` is a number, a 0-d tensor or one value per batch row ``(b,)``."""
    if _is_one(scale):
        return out
    if isinstance(scale, Tensor):
        scale = scale.to(out.dtype).reshape(-1, *([1] * (out.ndim - 1)))
    return out * scale


def attend_heads(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """(b, n, h·d), (b, m, h·d) ×2 → (b, n, h·d): softmax(q kᵀ/√d) v per head, one SDPA call."""
    b, n, inner = q.shape
    d = inner // heads
    q = q.view(b, n, heads, d).transpose(1, 2)
    k = k.view(b, k.shape[1], heads, d).transpose(1, 2)
    v = v.view(b, v.shape[1], heads, d).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, inner)


class CrossAttention(nn.Module):
    """Multi-head attention with SDPA; ``scale`` multiplies softmax(qkᵀ/√d)·v before ``to_out``.

    ``context=None`` means self-attention for a self-attention layer (``context_dim is None``) and an *empty
    reference* for a cross-attention layer: since ``to_k``/``to_v`` have no bias, an all-zero context gives
    ``v = 0`` and thus exactly ``to_out(0)`` for any token count, which is what is returned (no attention is
    computed).  This is the official unconditional input (zero context).
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

    def forward(self, x: Tensor, context: Tensor | None = None, scale: Scale = 1.0) -> Tensor:
        if context is None and self.is_cross:
            zero = x.new_zeros(1, 1, self.to_q.out_features)
            return self.to_out(zero).expand(x.shape[0], x.shape[1], -1)
        ctx = x if context is None else context
        out = self.attend(self.to_q(x), self.to_k(ctx), self.to_v(ctx))
        return self.to_out(apply_scale(out, scale))


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
    """Pre-LN block: self-attention, cross-attention to the reference tokens, GEGLU feed-forward.

    ``injection`` is set only inside :func:`colorize.models.injection.attention_injection` (attention
    injection's write/read bank); otherwise it is ``None`` and the block computes its plain forward.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        # Registration order matches the official state_dict order (attn1, ff, attn2, norm1..3).
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.injection: AttentionBank | None = None

    def forward(self, x: Tensor, context: Tensor | None, scale: Scale = 1.0) -> Tensor:
        h = self.norm1(x)
        x = x + (self.attn1(h) if self.injection is None else self.injection.self_attention(self, h))
        x = x + self.attn2(self.norm2(x), context, scale)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm(32, eps 1e-6) → 1×1-conv ``proj_in`` → transformer blocks → 1×1-conv ``proj_out`` → residual.

    The 1×1 convolutions are applied as matrix products on the (b, h·w, c) token layout, which avoids one
    layout round trip; their weights keep the official ``[C, C, 1, 1]`` conv shape.  ``attn_index`` is the
    block's position in the official 16-block attention order (see ``colorize.models.strength``).
    """

    def __init__(
        self, channels: int, heads: int, dim_head: int, context_dim: int, depth: int = 1, attn_index: int = -1
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.attn_index = attn_index
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)
        )
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: Tensor, context: Tensor | None, scale: Scale = 1.0) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (b, hw, c)
        tokens = F.linear(tokens, self.proj_in.weight.flatten(1), self.proj_in.bias)
        for block in self.transformer_blocks:
            tokens = block(tokens, context, scale)
        tokens = F.linear(tokens, self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + tokens.transpose(1, 2).unflatten(2, (h, w))
