"""The v1.5 recovery transformer's head layout follows the official constructor for every configuration.

Official ``ClusterTransformer(dim, token_length, dim_head=64, ...)`` (``refnet/modules/proj.py:58-124`` at commit
``c9bd9fb``) gives its attention ``heads = dim // dim_head`` but not ``dim_head`` itself, so every head is 64 wide and
the attention is ``64 · heads`` wide, which is ``dim`` only for ``dim_head = 64``.
"""
from __future__ import annotations

import math

import pytest
import torch

from colorize.families.v15.recovery import (
    OFFICIAL_HEAD_WIDTH,
    ClusterTransformer,
    ClusterTransformerConfig,
    infer_recovery_config,
)


def official_forward(sd: dict[str, torch.Tensor], tokens: torch.Tensor, heads: int, layers: int) -> torch.Tensor:
    """The official forward written out from a state dict: learned queries, per layer ``x += attn(LN_a x, tokens)``
    with ``heads`` heads of width 64, ``x += MLP(LN_b x)``."""
    x = sd["embedding"].expand(tokens.shape[0], -1, -1)
    for i in range(layers):
        p = f"layers.{i}."
        n = torch.nn.functional.layer_norm(x, x.shape[-1:], sd[p + "0.weight"], sd[p + "0.bias"])
        q, k, v = n @ sd[p + "2.to_q.weight"].T, tokens @ sd[p + "2.to_k.weight"].T, tokens @ sd[p + "2.to_v.weight"].T
        b, m = q.shape[:2]
        q, k, v = (t.view(b, t.shape[1], heads, OFFICIAL_HEAD_WIDTH).transpose(1, 2) for t in (q, k, v))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(OFFICIAL_HEAD_WIDTH), dim=-1)
        out = (w @ v).transpose(1, 2).reshape(b, m, heads * OFFICIAL_HEAD_WIDTH)
        x = x + out @ sd[p + "2.to_out.0.weight"].T + sd[p + "2.to_out.0.bias"]
        n = torch.nn.functional.layer_norm(x, x.shape[-1:], sd[p + "1.weight"], sd[p + "1.bias"])
        hidden = torch.nn.functional.silu(n @ sd[p + "3.0.weight"].T + sd[p + "3.0.bias"])
        x = x + hidden @ sd[p + "3.2.weight"].T + sd[p + "3.2.bias"]
    return x


@pytest.mark.parametrize(("dim", "dim_head", "heads"), [(64, 64, 1), (64, 32, 2), (128, 64, 2), (128, 128, 1),
                                                        (96, 32, 3)])
def test_official_constructor_rule_and_forward(dim: int, dim_head: int, heads: int) -> None:
    cfg = ClusterTransformerConfig.from_official({"dim": dim, "token_length": 5, "dim_head": dim_head, "layers": 2})
    assert (cfg.heads, cfg.head_width, cfg.layers, cfg.mlp_mult) == (heads, OFFICIAL_HEAD_WIDTH, 2, 4)
    torch.manual_seed(0)
    model = ClusterTransformer(cfg).eval()
    sd = model.state_dict()
    assert sd["layers.0.2.to_q.weight"].shape == (64 * heads, dim)  # 64-wide heads, whatever dim_head is
    tokens = torch.randn(2, 7, dim)
    torch.testing.assert_close(model(tokens), official_forward(sd, tokens, heads, 2), atol=1e-5, rtol=1e-5)
    # built from the file's shapes alone, the same model comes back
    assert infer_recovery_config(sd) == cfg


def test_released_layout_is_sixteen_heads_of_64() -> None:
    cfg = ClusterTransformerConfig.from_official({"dim": 1024, "token_length": 256, "layers": 6})
    assert (cfg.heads, cfg.head_width) == (16, 64) and cfg == ClusterTransformerConfig()


def test_our_exports_may_record_another_head_width() -> None:
    """Our own tiny / trained exports record the width they were built with (``transformer_dim_head``)."""
    cfg = ClusterTransformerConfig(dim=64, layers=1, token_length=4, heads=2, head_width=32, mlp_mult=2)
    sd = ClusterTransformer(cfg).state_dict()
    assert infer_recovery_config(sd, head_width=32) == cfg
    assert infer_recovery_config(sd).heads == 1  # read with the official 64: one head of the same width
    with pytest.raises(ValueError, match="not a multiple of the head width"):
        infer_recovery_config(sd, head_width=48)


def test_unsupported_official_options_are_refused() -> None:
    with pytest.raises(ValueError, match="projection_head"):
        ClusterTransformerConfig.from_official({"dim": 64, "token_length": 4, "projection_head": 2})
    with pytest.raises(ValueError, match="no attention head"):
        ClusterTransformerConfig.from_official({"dim": 32, "token_length": 4, "dim_head": 64})
