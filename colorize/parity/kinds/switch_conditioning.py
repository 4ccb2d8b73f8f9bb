"""Parity kind ``switch_conditioning``: threshold embedder, recovery transformer and the v1.5 context."""
from __future__ import annotations

import torch

from colorize.models.recovery import ClusterTransformer, ScalarEmbedder
from colorize.models.switch_config import ClusterTransformerConfig, ScalarEmbedderConfig
from colorize.parity.core import Fixture, register
from colorize.switch import switch_context

_DIM_HEAD_NAMES = ("dim_head", "head_dim", "d_head", "num_head_channels")
_HEADS_NAMES = ("heads", "n_heads", "num_heads")


def _first(params: dict, names: tuple[str, ...], default):
    return next((params[n] for n in names if n in params), default)


@register("switch_conditioning")
def run(fx: Fixture) -> dict[str, torch.Tensor]:
    cfg, sc = fx.config, fx.scalars
    te = cfg["thresh_embedder_config"]["params"]
    tr = dict(cfg["transformer_config"]["params"])
    embedder = ScalarEmbedder(ScalarEmbedderConfig(embed_dim=te["embed_dim"], out_dim=te["out_dim"]))
    embedder.load_state_dict(fx.weights("thresh_embedder."), strict=True)
    # Head width: constructor argument if given, else the fixture's stated value, else the class default 64.
    dim_head = int(_first(tr, _DIM_HEAD_NAMES, sc.get("cluster_transformer_dim_head", 64)))
    heads = _first(tr, _HEADS_NAMES, sc.get("cluster_transformer_heads"))
    weights = fx.weights("transformer.")
    transformer = ClusterTransformer(ClusterTransformerConfig(
        dim=tr["dim"], layers=tr["layers"], token_length=tr["token_length"], dim_head=dim_head,
        heads=int(heads) if heads is not None else None,
        context_dim=int(weights["layers.0.2.to_k.weight"].shape[1]),
        mlp_mult=int(weights["layers.0.3.0.weight"].shape[0]) // tr["dim"],
    ))
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
