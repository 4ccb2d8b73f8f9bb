"""The model of the v2 training stages (thesis §5.6.1, Eq. 5.5). The official v2 trainer was not released (the
official repository's ``refnet/models/trainer/`` has none), so the stage semantics follow the thesis and what is
inferred is said here.

:class:`V2Denoiser` holds the v2 U-Net (:class:`~colorize.families.v2.unet.V2UNet`: decoder split LoRA,
``warp_modules`` = background injection, ``style_modules`` = style injection), the sketch encoder and the
background and style encoders. Thesis stage 2 (``v2_background``) trains the background encoder, its injection
modules and the split-attention LoRA; stage 3 (``v2_style``) trains the style encoder and its injection modules
with the background branch (encoder + split attention) "not trained but randomly activated at a rate of 50 %".
Both drop the reference embedding at 50 % (thesis).

Inferred (not in the thesis or the released code):

* The ground truth is the reference (thesis: "r can be replaced with y"): the style encoder sees the clean
  latent of the colour crop ``E(y)``; the background encoder sees ``E(where(mask < th_r, y, white))`` with the
  size embedding of equal sizes (the crop is the target). The CLIP tokens of the background are those of the
  224² background-only reference, as v1.5.
* The background encoder cross-attends to the background's tokens (the library's default
  ``EnhanceSettings.background_context="background"``, so training matches default inference; the thesis formula
  ``φ_bg(E(r_bg), e)`` uses the reference tokens). Context ``[e | e_bg]``, both LoRA pairs on (background
  enhance), per-sample thresholds ``th_s`` (split attention and skip warping), ``th_r`` as v1.5.
* Stage 3 activates the background branch per sample (Bernoulli 0.5): active rows run as stage 2 plus style,
  the others run without split attention (context ``e``) with style only.
* A reference drop zeroes the context only (style and background features stay, as CFG rows at inference).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from colorize.config import ColorizerConfig
from colorize.families.base import Family, TrainingStart
from colorize.families.v1.training import Autocast, Encoders
from colorize.families.v2.conditioning import ratio_dim
from colorize.families.v2.config import V2_LORA, warp_head_width
from colorize.families.v2.encoders import UNetEncoder, background_encoder, size_embedding, style_encoder
from colorize.families.v2.unet import V2UNet
from colorize.families.v15.training import lora_pairs, trained_split
from colorize.masks.inputs import background_only_reference, sketch_mask_to_latent
from colorize.models.sketch_encoder import SketchEncoder
from colorize.models.vae import AutoencoderKL


def _pick(value: Tensor | None, rows: Tensor) -> Tensor | None:
    return value[rows] if value is not None else None


class V2Denoiser(nn.Module):
    """v2 U-Net, sketch encoder, background and style encoders (attribute names = checkpoint components)."""

    def __init__(self, unet: V2UNet, sketch_encoder: SketchEncoder, bg_encoder: UNetEncoder,
                 style_encoder: UNetEncoder) -> None:
        super().__init__()
        self.unet = unet
        self.sketch_encoder = sketch_encoder
        self.bg_encoder = bg_encoder
        self.style_encoder = style_encoder

    def groups(self) -> dict[str, nn.Module]:
        """Stage groups; ``unet.lora`` / ``unet.warp`` / ``unet.style`` share their parameters with ``unet``."""
        return {"unet": self.unet, "unet.lora": lora_pairs(self.unet), "unet.warp": self.unet.warp_modules,
                "unet.style": self.unet.style_modules, "sketch_encoder": self.sketch_encoder,
                "bg_encoder": self.bg_encoder, "style_encoder": self.style_encoder}

    def training_inputs(self, batch: Mapping[str, Tensor], latent: Tensor, encoders: Encoders, autocast: Autocast,
                        style: bool = False, **options: Any) -> tuple[Tensor, dict[str, Any]]:
        """Frozen encodes: the latent and CLIP tokens of the background-only image (``th_r``) and the reference
        tokens; the latent sketch mask and the size embedding of equal sizes. ``style=False`` (stage
        ``v2_background``): background branch on every sample; ``style=True`` (``v2_style``): style on every
        sample (the colour latent: the ground truth is the reference), background branch where ``bg_active``."""
        color, th_r = batch["color"], batch["th_r"].view(-1, 1, 1, 1)
        with autocast():
            z_bg = encoders.latents(torch.where(batch["mask"] < th_r, color, torch.ones_like(color)))
            bg_ref = background_only_reference(batch["reference"], batch["reference_mask"], th_r)
            fg, bg = encoders.tokens(torch.cat([batch["reference"], bg_ref])).float().chunk(2)
        mask = sketch_mask_to_latent(batch["mask"], encoders.latent_factor)
        hw = tuple(color.shape[-2:])
        y = size_embedding(hw, hw, ratio_dim(self.bg_encoder), device=color.device).expand(color.shape[0], -1)
        kw: dict[str, Any] = {"y": y, "ref_keep": batch["ref_keep"], "bg_latent": z_bg.float(), "bg_tokens": bg,
                              "th_s": batch["th_s"], "mask": mask}
        if style:
            kw.update(style_latent=latent.float(), style_tokens=fg, bg_active=batch["bg_active"] > 0.5)
        return fg, kw

    def preview_inputs(self, tokens: Tensor, batch: Mapping[str, Tensor], encode_tokens: Callable[[Tensor], Tensor],
                       latent_factor: int) -> tuple[Tensor, Any, dict[str, Any]]:
        """Previews use the plain path (no background or style branch)."""
        return tokens, None, {}

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        context: Tensor,
        sketch: Tensor,
        *,
        y: Tensor | None = None,
        bg_latent: Tensor | None = None,
        bg_tokens: Tensor | None = None,
        th_s: Tensor | None = None,
        mask: Tensor | None = None,
        style_latent: Tensor | None = None,
        ref_keep: Tensor | None = None,
        bg_active: Tensor | None = None,
        style_tokens: Tensor | None = None,
    ) -> Tensor:
        """Without extras: the plain U-Net. ``bg_latent`` (+ ``bg_tokens``, ``th_s``, ``mask``, ``y``): background
        branch (split attention with ``[e | e_bg]``, warped skips). ``style_latent`` (+ ``y``): style vectors.
        ``ref_keep`` (b,) zeroes the context of dropped samples; ``style_tokens`` (default ``context``): the style
        encoder's reference tokens (not dropped). ``bg_active`` (b,) bool: rows that use the
        background branch (the others run without it); one call, so a DDP wrapper sees one forward."""
        if bg_active is None or bg_latent is None or bool(bg_active.all()):
            return self._rows(x_t, t, context, sketch, y, bg_latent, bg_tokens, th_s, mask, style_latent, ref_keep,
                              style_tokens)
        out: Tensor | None = None
        for rows, with_bg in ((bg_active, True), (~bg_active, False)):
            if not bool(rows.any()):
                continue
            part = self._rows(x_t[rows], t[rows], context[rows], sketch[rows], _pick(y, rows),
                              _pick(bg_latent, rows) if with_bg else None, _pick(bg_tokens, rows),
                              _pick(th_s, rows), _pick(mask, rows), _pick(style_latent, rows),
                              _pick(ref_keep, rows), _pick(style_tokens, rows))
            if out is None:
                out = part.new_empty((x_t.shape[0], *part.shape[1:]))
            out = out.index_put((rows,), part)
        assert out is not None
        return out

    def _rows(self, x_t: Tensor, t: Tensor, context: Tensor, sketch: Tensor, y: Tensor | None,
              bg_latent: Tensor | None, bg_tokens: Tensor | None, th_s: Tensor | None, mask: Tensor | None,
              style_latent: Tensor | None, ref_keep: Tensor | None, style_tokens: Tensor | None = None) -> Tensor:
        hints = self.sketch_encoder(sketch)
        kwargs: dict[str, object] = {}
        attention = None
        ctx = context
        if style_latent is not None:
            kwargs["style"] = self.style_encoder(style_latent, context if style_tokens is None else style_tokens, y)
        if bg_latent is not None:
            if bg_tokens is None or th_s is None or mask is None or y is None:
                raise ValueError("the background branch needs bg_tokens, th_s, mask and y")
            kwargs["hs_bg"] = self.bg_encoder(bg_latent, bg_tokens, y)
            ctx = torch.cat([context, bg_tokens.to(context.dtype)], dim=1)
            kwargs.update(warp_mask=mask, warp_threshold=th_s.float().view(-1, 1, 1))
            attention = trained_split(mask, th_s)
        if ref_keep is not None:
            ctx = ctx * ref_keep.to(ctx.dtype).view(-1, 1, 1)
        return self.unet(x_t, t, ctx, hints, attention, **kwargs)


def build_v2_denoiser(start: TrainingStart, family: Family) -> tuple[ColorizerConfig, V2Denoiser, AutoencoderKL]:
    """``(export config, denoiser, VAE)`` in float32 from a v2 file (released, exported or tiny; built through
    ``family``'s loaders) or random (a v2 ``colorize_config``). Starting v2 from v1/v1.5 weights is not supported."""
    parts, config = start.parts, start.config
    torch.manual_seed(start.init_seed)
    if parts.get("unet"):
        unet = family.build_unet(config, parts, start.name)
        extras = family.build_extras(config, parts, start.name)
        bg, style = extras["bg_encoder"], extras["style_encoder"]
        sketch = SketchEncoder(config.sketch)
        sketch.load_state_dict(parts.pop("sketch_encoder"))
        vae = AutoencoderKL(config.vae)
        vae.load_state_dict({k: v.float() for k, v in parts.pop("vae").items()})
    else:
        unet = V2UNet(config.unet, V2_LORA, warp_dim_head=warp_head_width(config))
        bg, style = background_encoder(config.unet), style_encoder(config.unet)
        sketch, vae = SketchEncoder(config.sketch), AutoencoderKL(config.vae)
    if start.gradient_checkpointing:
        unet.use_checkpoint = True
    config = replace(config, parameterization=start.prediction)  # type: ignore[arg-type]
    den = V2Denoiser(unet, sketch, bg, style).to(torch.float32)  # type: ignore[arg-type]
    return config, den, vae.to(torch.float32)


__all__ = ["V2Denoiser", "build_v2_denoiser"]
