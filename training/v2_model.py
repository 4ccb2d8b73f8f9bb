"""The modules of the v2 training stages (thesis §5.6.1, Eq. 5.5; reference §1.10). The official v2 trainer was
not released (reference §4.2), so the stage semantics follow the thesis and what is inferred is said here.

:class:`V2Denoiser` holds the v2 U-Net (:class:`~colorize.models.v2_unet.V2UNet`: decoder split LoRA,
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
  ``V2Settings.background_context="background"``, so training matches default inference; the thesis formula
  ``φ_bg(E(r_bg), e)`` uses the reference tokens). Context ``[e | e_bg]``, both LoRA pairs on (background
  enhance), per-sample thresholds ``th_s`` (split attention and skip warping), ``th_r`` as v1.5.
* Stage 3 activates the background branch per sample (Bernoulli 0.5): active rows run as stage 2 plus style,
  the others run without split attention (context ``e``) with style only.
* A reference drop zeroes the context only (style and background features stay, as CFG rows at inference).
"""
from __future__ import annotations

import os
from dataclasses import replace

import torch
from torch import Tensor, nn

from colorize.checkpoint import split_by_prefix
from colorize.config import ColorizerConfig
from colorize.models.lora import SplitLoraLinear
from colorize.models.sketch_encoder import SketchEncoder
from colorize.models.split_attention import SplitOptions
from colorize.models.unet_encoder import UNetEncoder
from colorize.models.v2_unet import V2UNet
from colorize.models.vae import AutoencoderKL
from training.config import ModelConfig


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
        lora = nn.ModuleList()
        for m in self.unet.modules():
            if isinstance(m, SplitLoraLinear):
                lora.extend([m.lora_down_fg, m.lora_up_fg, m.lora_down_bg, m.lora_up_bg])
        return {"unet": self.unet, "unet.lora": lora, "unet.warp": self.unet.warp_modules,
                "unet.style": self.unet.style_modules, "sketch_encoder": self.sketch_encoder,
                "bg_encoder": self.bg_encoder, "style_encoder": self.style_encoder}

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
        ctx = context
        if style_latent is not None:
            kwargs["style"] = self.style_encoder(style_latent, context if style_tokens is None else style_tokens, y)
        if bg_latent is not None:
            if bg_tokens is None or th_s is None or mask is None or y is None:
                raise ValueError("the background branch needs bg_tokens, th_s, mask and y")
            kwargs["hs_bg"] = self.bg_encoder(bg_latent, bg_tokens, y)
            ctx = torch.cat([context, bg_tokens.to(context.dtype)], dim=1)
            kwargs["split"] = SplitOptions(mask=mask, threshold=th_s.float().view(-1, 1, 1),  # type: ignore[arg-type]
                                           use_fg_lora=True, use_bg_lora=True)
        if ref_keep is not None:
            ctx = ctx * ref_keep.to(ctx.dtype).view(-1, 1, 1)
        return self.unet(x_t, t, ctx, hints, **kwargs)


def build_v2_denoiser(cfg: ModelConfig, prediction: str = "v") -> tuple[ColorizerConfig, V2Denoiser, AutoencoderKL,
                                                                         dict[str, dict[str, Tensor]]]:
    """``(export config, denoiser, VAE, remaining parts)`` from a v2 file (released, exported or tiny) or random
    (``colorize_config`` of version v2). Starting v2 from v1/v1.5 weights is not supported yet."""
    from training.model import initial_weights

    sd, config, _ = initial_weights(cfg)
    if config.version != "v2":
        raise NotImplementedError(f"the v2 stages start from a v2 model (a v2 file or a v2 colorize_config), got "
                                  f"{config.version!r}; initialising v2 from v1/v1.5 weights is not implemented")
    parts = split_by_prefix(sd)
    torch.manual_seed(cfg.init_seed)
    if sd:
        from colorize.variants.v2 import build_modules

        unet, extras = build_modules(config, parts, os.path.basename(os.fspath(cfg.init)))
        bg, style = extras["bg_encoder"], extras["style_encoder"]
        sketch = SketchEncoder(config.sketch)
        sketch.load_state_dict(parts.pop("sketch_encoder"))
        vae = AutoencoderKL(config.vae)
        vae.load_state_dict({k: v.float() for k, v in parts.pop("vae").items()})
    else:
        from colorize.models.switch_config import V2_LORA
        from colorize.models.unet_encoder import background_encoder, style_encoder
        from colorize.models.v2_config import default_warp_dim_head

        warp = int(config.extras.get("warp_dim_head", default_warp_dim_head(config.unet)))
        unet = V2UNet(config.unet, V2_LORA, warp_dim_head=warp)
        bg, style = background_encoder(config.unet), style_encoder(config.unet)
        sketch, vae = SketchEncoder(config.sketch), AutoencoderKL(config.vae)
    if cfg.gradient_checkpointing:
        unet.use_checkpoint = True
    config = replace(config, parameterization=prediction)  # type: ignore[arg-type]
    den = V2Denoiser(unet, sketch, bg, style).to(torch.float32)  # type: ignore[arg-type]
    return config, den, vae.to(torch.float32), parts


__all__ = ["V2Denoiser", "build_v2_denoiser"]
