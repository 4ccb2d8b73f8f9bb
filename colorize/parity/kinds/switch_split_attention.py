"""Parity kind ``switch_split_attention``: v1.5 U-Net with split LoRA and mask-guided split cross-attention."""
from __future__ import annotations

import torch

from colorize.models import unet
from colorize.models.attention import AttentionPatches
from colorize.models.lora import lora_config_from_official
from colorize.models.split_attention import SplitAttention, SplitOptions
from colorize.parity.core import Fixture, register
from colorize.settings import level_reference_scales


@register("switch_split_attention")
def run(fx: Fixture) -> dict[str, torch.Tensor]:
    cfg, sc = fx.config, fx.scalars
    model = unet.DualCondUNet(unet.config_from_official(cfg["unet_config"]["params"]),
                              lora_config_from_official(cfg.get("lora_config", {})))
    model.load_state_dict(fx.weights("model.diffusion_model."), strict=True)
    model.eval()

    x, t, context, mask = (fx.inputs[k] for k in ("x", "timesteps", "context", "mask"))
    hints = [fx.inputs[f"hint{i}"] for i in range(len(model.hint_indices))]
    levels = sc.get("refscale_levels_api", {})
    level_scales = level_reference_scales(levels.get("strength", 1.0), levels.get("scales", {}))
    out = {}
    for case in sc["cases"]:
        name = case["output"]
        if not case["mask"]:  # plain attention over the first N tokens, LoRA inactive
            out[name] = model(x, t, context[:, : context.shape[1] // 2], hints)
            continue
        opts = SplitOptions(mask=mask, threshold=sc["mask_threshold"], fg_scale=sc["fg_scale"],
                            bg_scale=sc["bg_scale"], merge_scale=sc["merge_scale"],
                            use_fg_lora=bool(case["use_fg_lora"]), use_bg_lora=bool(case["use_bg_lora"]),
                            lora_scale=float(sc.get("lora_scale", 1.0)))
        scales = level_scales if isinstance(case.get("reference_scale"), str) else None
        if isinstance(case.get("reference_scale"), (int, float)) and case["reference_scale"] != 1.0:
            scales = [float(case["reference_scale"])] * model.num_attention_blocks
        out[name] = model(x, t, context, hints, AttentionPatches(cross_attention=SplitAttention(opts),
                                                                 reference_scales=scales))
    return out
