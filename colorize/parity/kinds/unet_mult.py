"""Parity kind ``unet_mult``: v1 sketch encoder + DualCondUNet, with per-block and per-level reference scales."""
from __future__ import annotations

import torch

from colorize.models import sketch_encoder, unet
from colorize.models.attention import AttentionPatches
from colorize.parity.core import Fixture, register
from colorize.settings import block_reference_scales, level_reference_scales


@register("unet_mult")
def run(fx: Fixture) -> dict[str, torch.Tensor]:
    cfg = fx.config
    enc = sketch_encoder.SketchEncoder(sketch_encoder.config_from_official(cfg["control_encoder_config"]["params"]))
    enc.load_state_dict(fx.weights("control_encoder."), strict=True)
    enc.eval()
    model = unet.DualCondUNet(unet.config_from_official(cfg["unet_config"]["params"]))
    model.load_state_dict(fx.weights("model.diffusion_model."), strict=True)
    model.eval()

    x, t, context = fx.inputs["x"], fx.inputs["timesteps"], fx.inputs["context"]
    hints = enc(fx.inputs["sketch"])
    out = {f"hint{i}": h for i, h in enumerate(hints)}
    out["eps"] = model(x, t, context, hints)

    blocks_api = fx.scalars["refscale_blocks_api"]
    blocks = block_reference_scales(blocks_api["scales"], blocks_api.get("strength", 1.0))
    out["eps_refscale_blocks"] = model(x, t, context, hints, AttentionPatches(reference_scales=blocks))

    levels_api = fx.scalars["refscale_levels_api"]
    levels = level_reference_scales(levels_api.get("strength", 1.0), levels_api["scales"])
    out["eps_refscale_levels"] = model(x, t, context, hints, AttentionPatches(reference_scales=levels))
    return out
