"""Configuration of the v1.5 ("switch") extras: split LoRA, threshold embedder, recovery transformer.

Released values (reference notes §1.9; official ``configs/inference/switch.yaml``): LoRA on every ``attn2``
``to_q/to_k/to_v`` with foreground rank 4 and background rank ``int(0.5·min(in, out))``;
``ScalarEmbedder(embed_dim=256, out_dim=1024)``; ``ClusterTransformer(dim=1024, layers=6, token_length=256)``
with 16 heads of width 64.  v2 reuses :class:`SplitLoraConfig` with rank 4/4 on the decoder blocks only.

These live here (not in ``colorize/config.py``) so the v1 configuration stays untouched; the lead may move
them into ``ColorizerConfig`` later.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Rank = int | float
LoraBlocks = Literal["all", "output", "none"]


def resolve_rank(rank: Rank, in_features: int, out_features: int) -> int:
    """The official rank rule: an ``int`` is the rank; a ``float`` ≤ 1 is a fraction of ``min(in, out)``.

    ``fr=4`` → 4, ``br=0.5`` → ``int(0.5·min(in, out))`` (160/320/640 for to_q of width 320/640/1280,
    160/320/512 for to_k/to_v with context 1024).  A float > 1 is read as an absolute rank.
    """
    if isinstance(rank, bool) or rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank!r}")
    if isinstance(rank, float) and rank <= 1.0:
        return max(1, int(rank * min(in_features, out_features)))
    return int(rank)


@dataclass(frozen=True)
class SplitLoraConfig:
    """Which cross-attention blocks carry the fg/bg LoRA pair and their ranks (see :func:`resolve_rank`).

    ``blocks``: ``"all"`` (v1.5: all attention blocks), ``"output"`` (v2: decoder blocks only; the other blocks
    still use split attention, without LoRA), ``"none"`` (split attention without any LoRA).
    """

    fg_rank: Rank = 4
    bg_rank: Rank = 0.5
    blocks: LoraBlocks = "all"


@dataclass(frozen=True)
class ScalarEmbedderConfig:
    """Threshold embedder: sinusoid(``embed_dim``) → Linear → SiLU → Linear(``out_dim``)."""

    embed_dim: int = 256
    out_dim: int = 1024


@dataclass(frozen=True)
class ClusterTransformerConfig:
    """Background "recovery" transformer: ``token_length`` learned queries, ``layers`` × (cross-attn + MLP)."""

    dim: int = 1024
    layers: int = 6
    token_length: int = 256
    dim_head: int = 64
    heads: int | None = None  # None: dim // dim_head (16 released)
    context_dim: int | None = None  # None: same as dim
    mlp_mult: int = 4

    @property
    def num_heads(self) -> int:
        if self.heads is not None:
            return self.heads
        if self.dim % self.dim_head:
            raise ValueError(f"ClusterTransformer dim {self.dim} is not a multiple of the head width {self.dim_head}")
        return self.dim // self.dim_head


@dataclass(frozen=True)
class SwitchConfig:
    """The v1.5 extras on top of a v1 :class:`~colorize.config.ColorizerConfig`."""

    lora: SplitLoraConfig = SplitLoraConfig()
    thresh_embedder: ScalarEmbedderConfig = ScalarEmbedderConfig()
    transformer: ClusterTransformerConfig = ClusterTransformerConfig()


FULL_SWITCH = SwitchConfig()
#: v2's LoRA: rank 4/4, decoder attention blocks only (reference notes §1.10).
V2_LORA = SplitLoraConfig(fg_rank=4, bg_rank=4, blocks="output")


def lora_config_from_official(params: Mapping[str, Any], blocks: LoraBlocks = "all") -> SplitLoraConfig:
    """From the official ``LoraModules`` arguments ``{"fr": 4, "br": 0.5}``."""
    return SplitLoraConfig(fg_rank=params.get("fr", 4), bg_rank=params.get("br", 0.5), blocks=blocks)


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(v.shape) if hasattr(v, "shape") else tuple(v)


def _infer_rank(ranks: list[tuple[int, int, int]]) -> Rank:
    """One rank spec reproducing every (rank, in, out) triple: absolute if constant, else a fraction."""
    values = {r for r, _, _ in ranks}
    if len(values) == 1:
        return values.pop()
    r, i, o = ranks[0]
    frac = r / min(i, o)
    if all(resolve_rank(frac, i2, o2) == r2 for r2, i2, o2 in ranks):
        return frac
    raise ValueError(f"LoRA ranks {sorted(values)} follow neither a constant nor a min(in, out) fraction")


def infer_lora_config(unet: Mapping[str, Any]) -> SplitLoraConfig | None:
    """:class:`SplitLoraConfig` from U-Net shapes (keys without ``model.diffusion_model.``); None if no LoRA."""
    fg: list[tuple[int, int, int]] = []
    bg: list[tuple[int, int, int]] = []
    in_decoder: list[bool] = []
    for k, v in unet.items():
        m = re.match(r"(.*attn2\.to_[qkv])\.lora_down_(fg|bg)\.weight$", k)
        if not m:
            continue
        r, i = _shape(v)
        o = _shape(unet[m.group(1) + ".weight"])[0]
        (fg if m.group(2) == "fg" else bg).append((r, i, o))
        in_decoder.append(k.startswith("output_blocks."))
    if not fg:
        return None
    blocks: LoraBlocks = "output" if all(in_decoder) else "all"
    return SplitLoraConfig(fg_rank=_infer_rank(fg), bg_rank=_infer_rank(bg), blocks=blocks)


def infer_switch_config(thresh_embedder: Mapping[str, Any], transformer: Mapping[str, Any],
                        unet: Mapping[str, Any] | None = None, dim_head: int = 64) -> SwitchConfig:
    """:class:`SwitchConfig` from ``thresh_embedder.*`` / ``transformer.*`` (/ U-Net) shapes, prefixes stripped.

    The recovery transformer's head width is not visible in shapes: it comes from ``dim_head`` (64 released).
    """
    e0 = _shape(thresh_embedder["embed_layer.0.weight"])
    tokens, dim = _shape(transformer["embedding"])
    layers = len({k.split(".")[1] for k in transformer if k.startswith("layers.")})
    inner, ctx = _shape(transformer["layers.0.2.to_k.weight"])
    hidden = _shape(transformer["layers.0.3.0.weight"])[0]
    lora = infer_lora_config(unet) if unet is not None else None
    return SwitchConfig(
        lora=lora or SplitLoraConfig(),
        thresh_embedder=ScalarEmbedderConfig(embed_dim=e0[1], out_dim=e0[0]),
        transformer=ClusterTransformerConfig(
            dim=dim, layers=layers, token_length=tokens, dim_head=dim_head,
            heads=None if inner == dim else inner // dim_head,
            context_dim=None if ctx == dim else ctx, mlp_mult=hidden // dim,
        ),
    )


__all__ = [
    "FULL_SWITCH",
    "V2_LORA",
    "ClusterTransformerConfig",
    "ScalarEmbedderConfig",
    "SplitLoraConfig",
    "SwitchConfig",
    "infer_lora_config",
    "infer_switch_config",
    "lora_config_from_official",
    "resolve_rank",
]
