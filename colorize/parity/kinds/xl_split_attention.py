"""Parity kind ``xl_split_attention``: one XL cross-attention layer, sdxl (plain / bias-masked / two-branch) and
xlv2 (soft blend with the background LoRA inactive / active / merged), and the official bias pattern."""
from __future__ import annotations

import torch

from colorize.families.xl.split_attention import (
    BackgroundLoraLinear,
    XLSplitAttention,
    XLSplitOptions,
    background_lora_attention,
    create_masked_attention_bias,
)
from colorize.models.attention import AttentionPatches, AttentionSite, CrossAttention
from colorize.models.split_attention import resize_mask_tokens
from colorize.parity.core import Fixture, register


def _layer(fx: Fixture, prefix: str, lora_rank: int | None) -> CrossAttention:
    c = fx.config
    layer = CrossAttention(int(c["query_dim"]), int(c["context_dim"]), int(c["heads"]), int(c["dim_head"]))
    if lora_rank is not None:
        inner = layer.to_q.out_features
        for name, fan_in in (("to_q", int(c["query_dim"])), ("to_k", int(c["context_dim"])),
                             ("to_v", int(c["context_dim"]))):
            setattr(layer, name, BackgroundLoraLinear(fan_in, inner, lora_rank))
    layer.load_state_dict(fx.weights(prefix), strict=True)
    return layer.eval()


@register("xl_split_attention")
def run(fx: Fixture) -> dict[str, torch.Tensor]:
    sc, ins = fx.scalars, fx.inputs
    x, context, mask = ins["x"], ins["context"], ins["mask"]
    t = int(sc["tokens_per_half"])
    f = float(sc["scale_factor"])
    grid = (round(mask.shape[-2] * f), round(mask.shape[-1] * f))
    site = AttentionSite(0, 0, True, grid)
    scale = float(sc["scale"])
    plain = AttentionPatches(reference_scales=[scale])
    sdxl = _layer(fx, "sdxl_attn2.", None)
    xlv2 = _layer(fx, "xlv2_attn2.", int(fx.config["lora_rank"]))

    def split(layer: CrossAttention, **kw: float | bool) -> torch.Tensor:
        opts = XLSplitOptions(mask=mask, threshold=float(sc["mask_threshold"]), fg_scale=float(sc["fg_scale"]),
                              bg_scale=float(sc["bg_scale"]), **kw)  # type: ignore[arg-type]
        patches = AttentionPatches(cross_attention=XLSplitAttention(opts), reference_scales=[scale])
        return layer(x, context, patches, site)

    merge = float(sc["merge_scale"])
    out = {"sdxl_plain": sdxl(x, context[:, :t], plain, site),
           "sdxl_mask_bias": split(sdxl, merge_scale=0.0),
           "sdxl_mask_merge": split(sdxl, merge_scale=merge)}
    tokens = resize_mask_tokens(mask, *grid)
    out["mask_resized"] = tokens
    thr, heads = float(sc["mask_threshold"]), sdxl.heads
    out["bias_is_neg_inf"] = create_masked_attention_bias(tokens, thr, heads, 2 * t).isinf().float()
    out["bias_padded_is_neg_inf"] = create_masked_attention_bias(tokens, thr, heads, 2 * t + 2).isinf().float()

    out["xlv2_soft_lora_off"] = split(xlv2, merge_scale=merge, soft=True)
    out["xlv2_soft_lora_on"] = split(xlv2, merge_scale=merge, soft=True, use_lora=True)
    lora_on = AttentionPatches(cross_attention=background_lora_attention, reference_scales=[scale])
    out["xlv2_plain_lora_on"] = xlv2(x, context[:, :t], lora_on, site)
    merged = _layer(fx, "xlv2_attn2.", int(fx.config["lora_rank"]))
    for name in ("to_q", "to_k", "to_v"):
        proj = getattr(merged, name)
        proj.weight.copy_(proj.merged_weight())
        proj.lora_up_background.weight.zero_()
    out["xlv2_soft_lora_merged"] = split(merged, merge_scale=merge, soft=True)
    out["xlv2_merged_to_q_weight"] = merged.to_q.weight.detach().clone()
    return out
