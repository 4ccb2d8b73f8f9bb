"""Parity kind ``xl_conditioning``: the sdxl wrapper's reference conditioning (CLIP bigG tower, WD SwinV2 tagger,
ClusterConcat, the scalar embedder, the adm vector) and ``prepare_conditions`` with and without bg_enhance, the
sketch hints from the XL sketch encoder (official repository tellurion-kanata/ColorizeDiffusionXL at commit ec78784,
``refnet/models/colorizerXL.py:91-200``). Every size comes from the fixture's config, weights and inputs."""
from __future__ import annotations

import torch

from colorize.families.xl.clip_bigg import ClipVisionConfig
from colorize.families.xl.conditioning import (
    CLIP_PREFIX,
    PROJ_PREFIX,
    TAGGER_PREFIX,
    ReferenceConditioner,
    ScalarEmbedder,
    unet_mask,
)
from colorize.families.xl.tagger import TaggerConfig
from colorize.families.xl.unet import adm_vector
from colorize.parity.core import Fixture, register


def _hints(fx: Fixture, sketch: torch.Tensor, scales: list[float], batch: int) -> dict[str, torch.Tensor]:
    """Hints of [sketch, all −1 sketch] times their control scales: cond rows and sketch-uncond rows."""
    from colorize.families.xl.sketch_encoder import MultiScaleAttentionEncoder, config_from_official

    enc = MultiScaleAttentionEncoder(config_from_official(fx.config["control_encoder_config"]["params"]))
    enc.load_state_dict(fx.weights("control_encoder."), strict=True)
    n = sketch.shape[0]
    hints = enc.eval()(torch.cat([sketch, -torch.ones_like(sketch)], dim=0))
    out = {}
    for i, h in enumerate(hints):
        h = h * scales[i]
        out[f"hint{i}"] = h[:n].expand(batch, *h.shape[1:]) if n == 1 else h[:n]
        out[f"uc_hint{i}"] = h[n:].expand(batch, *h.shape[1:]) if n == 1 else h[n:]
    return out


@register("xl_conditioning")
def run(fx: Fixture) -> dict[str, torch.Tensor]:
    cfg = fx.config
    tc = cfg["tagger_timm"]
    pp = cfg["proj_config"]["params"]
    cond = ReferenceConditioner.from_state_dicts(
        fx.weights(CLIP_PREFIX), fx.weights(TAGGER_PREFIX), fx.weights(PROJ_PREFIX),
        clip_config=ClipVisionConfig.from_hf(cfg["hf_clip_vision_config_used"]),
        tagger_config=TaggerConfig.from_timm_kwargs(tc["kwargs"], tc["num_classes"]),
        token_length=int(pp["token_length"]), dim_head=int(pp["dim_head"])).eval()
    clip, tagger = cond.clip, cond.tagger
    embed_dim = int(cfg["scalar_embedder_config"]["params"]["embed_dim"])

    s = fx.scalars
    batch = int(s["batch"])
    height, width = (int(v) for v in s["gen_hw"])
    ref = fx.inputs["reference"]

    wd_tokens = tagger.features(ref)
    wd_pooled = wd_tokens.mean(dim=1, keepdim=True)
    proj_context, cls_emb = cond.embed(ref)
    out = {
        "clip_preprocessed": clip.preprocess(ref),
        "clip_tokens": clip.reference_tokens(ref),
        "wd_preprocessed_sub8": tagger.preprocess(ref)[:, :, ::8, ::8],
        "wd_tokens": wd_tokens,
        "wd_logits": tagger.logits(wd_tokens),
        "wd_pooled": wd_pooled,
        "wd_pooled_logits": tagger.logits(wd_pooled),
        "proj_context": proj_context,
        "cls_emb": cls_emb,
        "scalar_embedding": ScalarEmbedder(embed_dim)(torch.tensor([0.0, 1.0, 7.0, 123.5, 1024.0])),
        "context": cond.context(ref, batch),
        "uc_context": cond.context(None, batch),
        "y": adm_vector(height, width, batch, float(s.get("aesthetic_score", 7.0)), embed_dim=embed_dim),
        "context_bg_enhance": cond.context_bg_enhance(ref, fx.inputs["rmask"], batch,
                                                      float(s["mask_threshold_ref"])),
        "mask_bg_enhance": unet_mask(fx.inputs["smask"], batch),
    }
    out.update(_hints(fx, fx.inputs["sketch"], [float(v) for v in s["control_scale"]], batch))
    return out
