"""Parity kind ``xl_unet``: the ColorizeDiffusion XL U-Net through the official sdxl wrapper's ``apply_model``.

Rows of every ``eps_*`` output are the dual-CFG batch ``[cond | reference-uncond | sketch-uncond]``: the context
(or, for the masked cases, the ``[foreground | background]`` context) with the sketch hints, a zero context with
the sketch hints, the context with the hints of the all −1 sketch; ``y`` is the adm vector of the fixture's
output size, the same for every row.
"""
from __future__ import annotations

import torch

from colorize.families.xl import blocks as xl_blocks
from colorize.families.xl.split_attention import XLSplitAttention, XLSplitOptions
from colorize.families.xl.unet import adm_vector, build_xl_unet
from colorize.models import unet
from colorize.models.attention import AttentionPatches
from colorize.parity.core import Fixture, register


@register("xl_unet")
def run(fx: Fixture) -> dict[str, torch.Tensor]:
    sc, ins = fx.scalars, fx.inputs
    model = build_xl_unet(unet.config_from_official(fx.config["params"]))
    model.load_state_dict(fx.weights("model.diffusion_model."), strict=True)
    model.eval()

    x, t = ins["x"], ins["timesteps"]
    b = x.shape[0]
    n_hints = len(model.hint_indices)
    hints = [torch.cat([ins[f"hint{i}"], ins[f"hint{i}"], ins[f"uc_hint{i}"]]) for i in range(n_hints)]
    x3, t3 = torch.cat([x] * 3), torch.cat([t] * 3)
    height, width = sc["gen_hw"]
    y = adm_vector(height, width, b, score=float(sc.get("aesthetic_score", 7.0)))

    def rows(context: torch.Tensor) -> torch.Tensor:
        return torch.cat([context, torch.zeros_like(context), context])

    def eps(context: torch.Tensor, patches: AttentionPatches | None = None) -> torch.Tensor:
        return model(x3, t3, rows(context), hints, patches, y=torch.cat([y] * 3))

    out: dict[str, torch.Tensor] = {"y": y, "emb": model._embed(t, x, y)}
    out["eps_dual"] = eps(ins["context"])
    groups = xl_blocks.block_groups(model.cfg)
    app = sc["app_scale_dict"]
    app_scales = xl_blocks.sdxl_reference_scales(groups, app["scales"], level_control=app.get("level_control", True))
    out["eps_refscale_app"] = eps(ins["context"], AttentionPatches(reference_scales=app_scales))
    out["eps_refscale_blocks"] = eps(ins["context"], AttentionPatches(reference_scales=list(sc["refscale_blocks"])))

    fgbg, mask = sc["fgbg"], torch.cat([ins["mask"]] * 3)
    uses_app = str(sc.get("mask_cases_reference_scale", "")).startswith("app")
    mask_scales = app_scales if uses_app else None
    for name, merge in (("eps_mask_bias", 0.0), ("eps_mask_merge", float(fgbg["merge"]))):
        opts = XLSplitOptions(mask=mask, threshold=float(fgbg["thr"]), fg_scale=float(fgbg["fg"]),
                              bg_scale=float(fgbg["bg"]), merge_scale=merge)
        patches = AttentionPatches(cross_attention=XLSplitAttention(opts), reference_scales=mask_scales)
        out[name] = eps(ins["context_fgbg"], patches)
    return out
