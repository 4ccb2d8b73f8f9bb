"""Parity kind ``switch_conditioning``: threshold embedder, recovery transformer and the v1.5 context."""
from __future__ import annotations

import torch

from colorize.families.v15.conditioning import switch_context
from colorize.families.v15.recovery import (
    ClusterTransformer,
    ClusterTransformerConfig,
    ScalarEmbedder,
    ScalarEmbedderConfig,
)
from colorize.parity.core import Fixture, register


@register("switch_conditioning")
def run(fx: Fixture) -> dict[str, torch.Tensor]:
    cfg = fx.config
    te = cfg["thresh_embedder_config"]["params"]
    tr = dict(cfg["transformer_config"]["params"])
    embedder = ScalarEmbedder(ScalarEmbedderConfig(embed_dim=te["embed_dim"], out_dim=te["out_dim"]))
    embedder.load_state_dict(fx.weights("thresh_embedder."), strict=True)
    # The official constructor's semantics: heads = dim // dim_head, each head 64 wide (see families/v15/recovery.py).
    weights = fx.weights("transformer.")
    transformer = ClusterTransformer(ClusterTransformerConfig.from_official(
        tr, context_dim=int(weights["layers.0.2.to_k.weight"].shape[1]),
        mlp_mult=int(weights["layers.0.3.0.weight"].shape[0]) // int(tr["dim"])))
    transformer.load_state_dict(weights, strict=True)
    embedder.eval()
    transformer.eval()

    ref_th, sketch_th = (float(v) for v in fx.inputs["thresholds"])
    cond = switch_context("background", fx.inputs["fg_tokens"], thresh_embedder=embedder, transformer=transformer,
                          bg_reference_tokens=fx.inputs["bg_reference_tokens"], reference_threshold=ref_th,
                          sketch_threshold=sketch_th)
    n = fx.inputs["fg_tokens"].shape[1]
    return {
        "thresh_emb": embedder(fx.inputs["thresholds"]),
        "bg_tokens": cond.context[:, n:],
        "context": cond.context,
    }
