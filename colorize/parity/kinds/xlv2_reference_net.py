"""Parity kind ``xlv2_reference_net``: the xlv2 background separation through the official wrapper.

The ReferenceNet (``bg_encoder.*``) encodes ``[z_bg | sketch mask | reference mask]`` at t = 0 with the crop-scale
adm and its 36 decoder ``norm1`` outputs are the bank; the xlv2 U-Net (``model.diffusion_model.*`` with the
background LoRA and ``conv_fg``) then runs on the dual-CFG batch ``[cond | reference-uncond | sketch-uncond]``
three ways: with the bank, the mask and the merged LoRA (``eps_app``), without the bank (``eps_no_bank``) and
plainly on the first half of the context (``eps_plain``); every case with the xlv2 level rule's reference scales.
"""
from __future__ import annotations

import torch

from colorize.families.xl import blocks as xl_blocks
from colorize.families.xl.bank import BANK_MASK_THRESHOLD, xlv2_patches
from colorize.families.xl.reference_net import (
    build_reference_net,
    build_xlv2_unet,
    crop_scale,
    latent_mask,
    reference_adm,
    reference_net_config,
    reference_net_input,
)
from colorize.families.xl.unet import adm_vector
from colorize.models import unet
from colorize.models.attention import AttentionPatches
from colorize.parity.core import Fixture, register


def _lora_rank(fx: Fixture) -> int:
    for entry in fx.config.get("lora_config", {}).get("lora_params", []):
        if entry.get("label") == "background":
            return int(entry["r"])
    raise ValueError("the fixture has no background LoRA in lora_config")


@register("xlv2_reference_net")
def run(fx: Fixture) -> dict[str, torch.Tensor]:
    sc, ins = fx.scalars, fx.inputs
    params = fx.config["unet_config"]["params"]
    cfg = unet.config_from_official(params)
    model = build_xlv2_unet(cfg, lora_rank=_lora_rank(fx), in_channels_fg=params.get("in_channels_fg"))
    model.load_state_dict(fx.weights("model.diffusion_model."), strict=True)
    model.eval()
    refnet = build_reference_net(reference_net_config(cfg))
    refnet.load_state_dict(fx.weights("bg_encoder."), strict=True)
    refnet.eval()

    height, width = (int(v) for v in sc["gen_hw"])
    ref_h, ref_w = (int(v) for v in sc["ref_hw"])
    ch, cw = crop_scale(height, width, ref_h, ref_w)
    out: dict[str, torch.Tensor] = {"crop_scale": torch.tensor([ch, cw], dtype=torch.float32)}
    bgy = reference_adm(ch, cw)
    out["bgy"] = bgy
    bg_input = reference_net_input(ins["z_bg"], ins["smask"], ins["rmask"], (height, width))
    out["bg_encoder_input"] = bg_input
    bank = refnet(bg_input, torch.zeros(1), bgy)
    for i, tokens in enumerate(bank.ordered()):
        out[f"bank{i}"] = tokens

    x, t = ins["x"], ins["timesteps"]
    b = x.shape[0]
    n_hints = len(model.hint_indices)
    hints = [torch.cat([ins[f"hint{i}"], ins[f"hint{i}"], ins[f"uc_hint{i}"]]) for i in range(n_hints)]
    x3, t3 = torch.cat([x] * 3), torch.cat([t] * 3)
    y3 = adm_vector(height, width, 3 * b, score=float(sc.get("aesthetic_score", 7.0)))
    context = ins["context"].expand(b, -1, -1)
    rows = torch.cat([context, torch.zeros_like(context), context])
    tokens = context.shape[1] // 2

    groups = xl_blocks.block_groups(model.cfg)
    app = sc["app_scale_dict"]
    scales = xl_blocks.xlv2_reference_scales(groups, app["scales"], level_control=app.get("level_control", True))
    mask = latent_mask(ins["smask"])
    kw = dict(fg_scale=float(sc["fg"]), bg_scale=float(sc["bg"]), merge_scale=float(sc["merge"]),
              bank_threshold=float(sc.get("attn1_mask_threshold", BANK_MASK_THRESHOLD)))
    out["eps_app"] = model(x3, t3, rows, hints, xlv2_patches(bank, mask, scales, **kw), y=y3)
    out["eps_no_bank"] = model(x3, t3, rows, hints, xlv2_patches(None, mask, scales, **kw), y=y3)
    out["eps_plain"] = model(x3, t3, rows[:, :tokens], hints, AttentionPatches(reference_scales=scales), y=y3)
    return out
