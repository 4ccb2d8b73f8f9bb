"""v1.5 background path: the threshold embedder and the background "recovery" transformer φ (thesis §5.5.4).

* :class:`ScalarEmbedder` (official ``thresh_embedder``): a scalar (a mask threshold) → sinusoid → Linear →
  SiLU → Linear → one token ``(n, 1, out_dim)``.
* :class:`ClusterTransformer` (official ``transformer``): ``token_length`` learned query tokens, each layer
  ``x += CrossAttn(LN_a x, tokens)`` (the input tokens are not normalised) and ``x += MLP(LN_b x)``
  (Linear → SiLU → Linear); no final norm.  It maps the CLIP tokens of the background-only reference to
  ``token_length`` background tokens (reference notes §1.9).  The thesis describes φ as a 4-layer encoder;
  the released model has 6 layers of learned-query cross-attention, which is what is built here.

Keys equal the official ones without their wrapper prefix: ``embed_layer.{0,2}.*`` and
``embedding``, ``layers.{i}.{0,1,2.to_q,2.to_k,2.to_v,2.to_out.0,3.0,3.2}.*``.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from colorize.models.attention import CrossAttention
from colorize.models.switch_config import (
    FULL_SWITCH,
    ClusterTransformerConfig,
    ScalarEmbedderConfig,
)
from colorize.models.unet import timestep_embedding


class ScalarEmbedder(nn.Module):
    """Scalar → ``[cos, sin]`` sinusoid (``embed_dim``, period 10000) → Linear → SiLU → Linear → (n, 1, out)."""

    def __init__(self, cfg: ScalarEmbedderConfig = FULL_SWITCH.thresh_embedder, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        with torch.device(device) if device is not None else nullcontext():
            self.embed_layer = nn.Sequential(
                nn.Linear(cfg.embed_dim, cfg.out_dim), nn.SiLU(), nn.Linear(cfg.out_dim, cfg.out_dim)
            )
            if not self.embed_layer[2].weight.is_meta:
                nn.init.zeros_(self.embed_layer[2].weight)  # zero-init as trained from (irrelevant once loaded)
                nn.init.zeros_(self.embed_layer[2].bias)
        if dtype is not None:
            self.to(dtype)

    def forward(self, values: Tensor | float | list[float]) -> Tensor:
        """``values``: (n,) scalars (or a number / list) → (n, 1, out_dim) in the module's dtype."""
        w = self.embed_layer[0].weight
        t = torch.as_tensor(values, dtype=torch.float32, device=w.device).reshape(-1)
        emb = timestep_embedding(t, self.cfg.embed_dim)
        return self.embed_layer(emb.to(w.dtype))[:, None]


class ClusterTransformer(nn.Module):
    """Learned-query cross-attention transformer (background recovery φ).  ``forward(tokens (b, M, ctx))`` →
    ``(b, token_length, dim)``; the token count ``M`` of the input is free."""

    def __init__(self, cfg: ClusterTransformerConfig = FULL_SWITCH.transformer, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        ctx_dim = cfg.context_dim or cfg.dim
        hidden = cfg.mlp_mult * cfg.dim
        with torch.device(device) if device is not None else nullcontext():
            self.embedding = nn.Parameter(torch.randn(cfg.token_length, cfg.dim) * 0.02)
            self.layers = nn.ModuleList(
                nn.ModuleList([
                    nn.LayerNorm(cfg.dim),
                    nn.LayerNorm(cfg.dim),
                    CrossAttention(cfg.dim, ctx_dim, cfg.num_heads, cfg.dim_head),
                    nn.Sequential(nn.Linear(cfg.dim, hidden), nn.SiLU(), nn.Linear(hidden, cfg.dim)),
                ])
                for _ in range(cfg.layers)
            )
        if dtype is not None:
            self.to(dtype)

    def forward(self, tokens: Tensor) -> Tensor:
        dtype = self.embedding.dtype
        tokens = tokens.to(dtype)
        x = self.embedding.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        for norm_attn, norm_mlp, attn, mlp in self.layers:
            x = x + attn(norm_attn(x), tokens)
            x = x + mlp(norm_mlp(x))
        return x


__all__ = ["ClusterTransformer", "ScalarEmbedder"]
