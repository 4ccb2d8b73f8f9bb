"""Parity kind ``v2_unet``: the v2 enhanced U-Net forward (split attention + decoder LoRA, warp, style)."""
from __future__ import annotations

import re

import torch

from colorize.families.v2.config import FULL_V2
from colorize.families.v2.unet import V2UNet
from colorize.models import unet
from colorize.models.attention import AttentionPatches
from colorize.models.lora import lora_config_from_official
from colorize.models.split_attention import SplitAttention, SplitOptions
from colorize.parity.core import Fixture, register
from colorize.settings import level_reference_scales


def warp_dim_head(fx: Fixture) -> int:
    """Warp attention head width: a constructor argument if given, else what the fixture's deviation states
    (the official constructor hard-codes 64, which tiny widths cannot use), else 64."""
    params = fx.config["unet_config"]["params"]
    for name in ("warp_dim_head", "warp_head_channels"):
        if name in params:
            return int(params[name])
    stated = str(fx.meta.get("deviation", {}).get("warp_module_attention", ""))
    m = re.search(r"dim_head\s*=\s*(\d+)", stated)
    return int(m.group(1)) if m else FULL_V2.warp_dim_head


@register("v2_unet")
def run(fx: Fixture) -> dict[str, torch.Tensor]:
    cfg, sc = fx.config, fx.scalars
    model = V2UNet(unet.config_from_official(cfg["unet_config"]["params"]),
                   lora_config_from_official(cfg.get("lora_config", {}), blocks="output"),
                   warp_dim_head=warp_dim_head(fx))
    model.load_state_dict(fx.weights("model.diffusion_model."), strict=True)
    model.eval()

    ins = fx.inputs
    x, t, context, mask = (ins[k] for k in ("x", "timesteps", "context", "mask"))
    n = len(model.output_blocks)
    hints = [ins[f"hint{i}"] for i in range(len(model.hint_indices))]
    hs_bg = [ins[f"hs_bg{i}"] for i in range(n)]
    style = [ins[f"style{i}"] for i in range(n)]
    levels = sc.get("refscale_levels_api", {})
    level_scales = level_reference_scales(levels.get("strength", 1.0), levels.get("scales", {}))
    warp_threshold = float(sc["threshold"])
    attn_threshold = float(sc.get("mask_threshold_attention", warp_threshold))
    out = {}
    for case in sc["cases"]:
        ref = case.get("reference_scale", 1.0)
        if isinstance(ref, str):
            scales = level_scales
        else:
            scales = None if float(ref) == 1.0 else [float(ref)] * model.num_attention_blocks
        st = style if case.get("style_modulations") else None
        if not case.get("mask_threshold_hs_bg"):  # no mask: first N tokens, LoRA inactive, no warping
            out[case["output"]] = model(x, t, context[:, : context.shape[1] // 2], hints,
                                        AttentionPatches(reference_scales=scales), style=st)
            continue
        opts = SplitOptions(mask=mask, threshold=attn_threshold, fg_scale=sc["fg_scale"], bg_scale=sc["bg_scale"],
                            merge_scale=sc["merge_scale"], use_fg_lora=bool(case["use_fg_lora"]),
                            use_bg_lora=bool(case["use_bg_lora"]))
        patches = AttentionPatches(cross_attention=SplitAttention(opts), reference_scales=scales)
        out[case["output"]] = model(x, t, context, hints, patches, hs_bg=hs_bg, style=st, warp_mask=mask,
                                    warp_threshold=warp_threshold)
    return out
