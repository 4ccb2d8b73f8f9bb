"""Parity kind ``v2_encoders``: size embedding, background encoder and style encoder (all at t = 0)."""
from __future__ import annotations

import torch

from colorize.families.v2.encoders import RATIO_EMBED_DIM, UNetEncoder, embed_ratios, ratio_tensor
from colorize.models import unet
from colorize.parity.core import Fixture, register


def _encoder(fx: Fixture, name: str) -> UNetEncoder:
    params = fx.config[f"{name}_config"]["params"]
    enc = UNetEncoder(unet.config_from_official(params), int(params["adm_in_channels"]),
                      style=bool(params.get("style_modulation", False)))
    enc.load_state_dict(fx.weights(f"{name}."), strict=True)
    return enc.eval()


def _pairs(cases: list[dict]) -> tuple[list[list[int]], list[list[int]]]:
    return [c["reference_hw"] for c in cases], [c["target_hw"] for c in cases]


@register("v2_encoders")
def run(fx: Fixture) -> dict[str, torch.Tensor]:
    sc = fx.scalars
    dim = int(fx.config["ratio_embedder_config"]["params"]["embed_dim"])
    refs, targets = _pairs(sc["size_pairs_for_batch"])
    ratios = ratio_tensor(refs, targets)
    y = embed_ratios(ratios, dim)
    z, context = fx.inputs["z"], fx.inputs["context"]
    t = torch.full((z.shape[0],), float(sc.get("timesteps", 0)))
    hs_bg = _encoder(fx, "bg_encoder")(z, context, y, t)
    style = _encoder(fx, "style_encoder")(z, context, y, t)
    case_ratios = ratio_tensor(*_pairs(sc["size_cases"]))
    out = {"size_emb": y, "size_ratios": ratios, "size_cases_ratios": case_ratios,
           "size_cases_emb": embed_ratios(case_ratios, dim),
           "size_cases_emb_dim256": embed_ratios(case_ratios, int(sc.get("ratio_embed_dim_real", RATIO_EMBED_DIM)))}
    out.update({f"hs_bg{i}": h for i, h in enumerate(hs_bg)})
    out.update({f"style{i}": s for i, s in enumerate(style)})
    return out
