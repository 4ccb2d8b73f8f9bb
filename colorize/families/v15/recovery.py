"""v1.5 background path: the threshold embedder and the background "recovery" transformer φ (thesis §5.5.4).

* :class:`ScalarEmbedder` (official ``thresh_embedder``): a scalar (a mask threshold) → sinusoid → Linear →
  SiLU → Linear → one token ``(n, 1, out_dim)``.
* :class:`ClusterTransformer` (official ``transformer``): ``token_length`` learned query tokens, each layer
  ``x += CrossAttn(LN_a x, tokens)`` (the input tokens are not normalised) and ``x += MLP(LN_b x)``
  (Linear → SiLU → Linear); no final norm. It maps the CLIP tokens of the background-only reference to
  ``token_length`` background tokens (official ``refnet/modules/proj.py:58-124`` at commit ``c9bd9fb``). The
  thesis describes φ as a 4-layer encoder; the released model has 6 layers of learned-query cross-attention,
  which is what is built here.

Head layout, as the official constructor has it: ``ClusterTransformer(dim, token_length, dim_head=64, ...)``
gives its attention ``heads = dim // dim_head`` heads but does not pass ``dim_head`` on, so every head is 64
wide (the attention's own default) and the attention width is ``64 · heads``, which equals ``dim`` only when
``dim_head`` is 64. :meth:`ClusterTransformerConfig.from_official` follows that rule and
:func:`infer_recovery_config` reads heads from the shapes (the attention width, ``to_q`` / ``to_k`` rows, over 64),
so a model trained with another ``dim_head`` loads and computes what the official code computes. Our own exports may record another head width
(``ColorizerConfig.extras["transformer_dim_head"]``, e.g. the tiny test weights).

Keys equal the official ones without their wrapper prefix: ``embed_layer.{0,2}.*`` and
``embedding``, ``layers.{i}.{0,1,2.to_q,2.to_k,2.to_v,2.to_out.0,3.0,3.2}.*``.
"""
from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from colorize.checkpoint.common import shape_of
from colorize.models.attention import CrossAttention
from colorize.models.unet import timestep_embedding

#: Head width of the official ClusterTransformer's attention (the attention class's default; the constructor's
#: own ``dim_head`` argument only sets the number of heads).
OFFICIAL_HEAD_WIDTH = 64



@dataclass(frozen=True)
class ScalarEmbedderConfig:
    """Threshold embedder: sinusoid(``embed_dim``) → Linear → SiLU → Linear(``out_dim``) (released 256 → 1024)."""

    embed_dim: int = 256
    out_dim: int = 1024


@dataclass(frozen=True)
class ClusterTransformerConfig:
    """Background "recovery" transformer: ``token_length`` learned queries, ``layers`` × (cross-attention + MLP);
    attention with ``heads`` heads of width ``head_width`` (released: 1024 wide, 6 layers, 256 tokens, 16 × 64;
    ``heads=None`` gives ``dim // head_width``, the official constructor's default)."""

    dim: int = 1024
    layers: int = 6
    token_length: int = 256
    heads: int | None = None
    head_width: int = OFFICIAL_HEAD_WIDTH
    context_dim: int | None = None  # None: same as dim
    mlp_mult: int = 4

    def __post_init__(self) -> None:
        if self.heads is None:
            object.__setattr__(self, "heads", self.dim // self.head_width)
        if not self.heads or self.heads < 1:
            raise ValueError(f"the recovery transformer needs at least one head (dim {self.dim}, head width "
                             f"{self.head_width})")

    @classmethod
    def from_official(cls, params: Mapping[str, Any], context_dim: int | None = None,
                      mlp_mult: int | None = None) -> ClusterTransformerConfig:
        """From the official constructor's arguments (``dim``, ``token_length``, ``dim_head`` = 64, ``layers`` = 4,
        ``context_dim``, ``mlp_ratio`` = 4): ``heads = dim // dim_head`` heads of width 64 (see the module
        docstring)."""
        if params.get("projection_head") or params.get("skip"):
            raise ValueError("ClusterTransformer projection_head / skip are not used by any released model and "
                             "are not supported")
        dim = int(params["dim"])
        heads = dim // int(params.get("dim_head", OFFICIAL_HEAD_WIDTH))
        if heads < 1:
            raise ValueError(f"ClusterTransformer(dim={dim}, dim_head={params.get('dim_head')}) has no attention head")
        ctx = context_dim if context_dim is not None else params.get("context_dim")
        return cls(dim=dim, layers=int(params.get("layers", 4)), token_length=int(params["token_length"]),
                   heads=heads, head_width=OFFICIAL_HEAD_WIDTH, context_dim=None if ctx in (None, dim) else int(ctx),
                   mlp_mult=int(mlp_mult if mlp_mult is not None else params.get("mlp_ratio", 4)))


def infer_recovery_config(transformer: Mapping[str, Any], head_width: int = OFFICIAL_HEAD_WIDTH
                          ) -> ClusterTransformerConfig:
    """:class:`ClusterTransformerConfig` from ``transformer.*`` shapes (prefix stripped): the heads are the
    attention width over ``head_width`` (64 for every official model; our exports may record another)."""
    tokens, dim = shape_of(transformer["embedding"])
    layers = len({k.split(".")[1] for k in transformer if k.startswith("layers.")})
    inner, ctx = shape_of(transformer["layers.0.2.to_k.weight"])
    hidden = shape_of(transformer["layers.0.3.0.weight"])[0]
    if inner % head_width:
        raise ValueError(f"recovery transformer attention width {inner} is not a multiple of the head width "
                         f"{head_width}")
    return ClusterTransformerConfig(dim=dim, layers=layers, token_length=tokens, heads=inner // head_width,
                                    head_width=head_width, context_dim=None if ctx == dim else ctx,
                                    mlp_mult=hidden // dim)


def infer_embedder_config(thresh_embedder: Mapping[str, Any]) -> ScalarEmbedderConfig:
    """:class:`ScalarEmbedderConfig` from ``thresh_embedder.*`` shapes (prefix stripped)."""
    out_dim, embed_dim = shape_of(thresh_embedder["embed_layer.0.weight"])
    return ScalarEmbedderConfig(embed_dim=embed_dim, out_dim=out_dim)


#: ``ColorizerConfig.extras`` key of our own exports: the recovery transformer's attention head width.
HEAD_WIDTH_KEY = "transformer_dim_head"


def recovery_head_width(extras: Mapping[str, Any]) -> int:
    """The recovery transformer's head width: what our export recorded (``extras``), else the official 64."""
    return int(extras.get(HEAD_WIDTH_KEY, OFFICIAL_HEAD_WIDTH))


def recovery_configs(extras: Mapping[str, Any], parts: Mapping[str, Mapping[str, Any]]
                     ) -> tuple[ScalarEmbedderConfig, ClusterTransformerConfig]:
    """The threshold embedder's and the recovery transformer's configs of a checkpoint, from the shapes of its
    ``thresh_embedder`` / ``transformer`` parts and the head width its config's ``extras`` record."""
    return (infer_embedder_config(parts["thresh_embedder"]),
            infer_recovery_config(parts["transformer"], recovery_head_width(extras)))


class ScalarEmbedder(nn.Module):
    """Scalar → ``[cos, sin]`` sinusoid (``embed_dim``, period 10000) → Linear → SiLU → Linear → (n, 1, out)."""

    def __init__(self, cfg: ScalarEmbedderConfig = ScalarEmbedderConfig(), *,
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

    def __init__(self, cfg: ClusterTransformerConfig = ClusterTransformerConfig(), *,
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
                    CrossAttention(cfg.dim, ctx_dim, cfg.heads, cfg.head_width),
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


__all__ = [
    "HEAD_WIDTH_KEY",
    "OFFICIAL_HEAD_WIDTH",
    "ClusterTransformer",
    "ClusterTransformerConfig",
    "ScalarEmbedder",
    "ScalarEmbedderConfig",
    "infer_embedder_config",
    "infer_recovery_config",
    "recovery_configs",
    "recovery_head_width",
]
