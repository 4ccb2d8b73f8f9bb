"""The v1.5 training model of the ``switch_fgbg`` stage (thesis §5.5; official ``DualMaskTrainer``,
``refnet/models/trainer/mask.py:25-164`` at commit ``c9bd9fb``).

:class:`SwitchDenoiser` holds the U-Net with split LoRA (fg/bg pairs on every ``attn2.to_{q,k,v}``), the sketch
encoder, the threshold embedder and the background "recovery" transformer. Its training forward follows the
official trainer:

* background tokens ``e_b = φ(CLIP_local(where(rmask < th_r, ref, white)) + thresh_emb(th_r))``;
* context ``[CLIP_local(ref) | e_b]`` (training adds no ``th_s`` token to the foreground half; inference does,
  see :mod:`colorize.families.v15.conditioning`);
* split cross-attention (Eq. 5.4) with both LoRA pairs on, the latent mask ``bicubic(smask, ×1/8)`` and the
  per-sample attention threshold ``th_s``.

Weights: a v1.5 file (released, exported or tiny) continues training; a v1 ``mult`` file (or SD2.1 layout)
starts v1.5 training from v1 weights with fresh LoRA (``up = 0``, so the untrained split model equals v1 inside
each half), a fresh threshold embedder (zero output layer) and a fresh recovery transformer.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from colorize.config import ColorizerConfig
from colorize.families.base import TrainingStart
from colorize.families.v1.training import Autocast, Encoders, load_weights
from colorize.families.v15.recovery import (
    HEAD_WIDTH_KEY,
    OFFICIAL_HEAD_WIDTH,
    ClusterTransformer,
    ClusterTransformerConfig,
    ScalarEmbedder,
    ScalarEmbedderConfig,
    recovery_configs,
)
from colorize.masks.inputs import background_only_reference, sketch_mask_to_latent
from colorize.models.attention import AttentionPatches
from colorize.models.lora import SplitLoraConfig, SplitLoraLinear, infer_lora_config
from colorize.models.sketch_encoder import SketchEncoder
from colorize.models.split_attention import SplitAttention, SplitOptions
from colorize.models.unet import DualCondUNet, conv_proj_weights
from colorize.models.vae import AutoencoderKL
from colorize.settings import DEFAULT_REFERENCE_THRESHOLD, DEFAULT_SKETCH_THRESHOLD


class SwitchDenoiser(nn.Module):
    """Trainable/frozen parts of v1.5: U-Net (+LoRA), sketch encoder, threshold embedder, recovery transformer.

    Attribute names are the checkpoint component names, so ``state_dict()`` keys map to the released layout.
    """

    def __init__(self, unet: DualCondUNet, sketch_encoder: SketchEncoder, thresh_embedder: ScalarEmbedder,
                 transformer: ClusterTransformer) -> None:
        super().__init__()
        self.unet = unet
        self.sketch_encoder = sketch_encoder
        self.thresh_embedder = thresh_embedder
        self.transformer = transformer

    def groups(self) -> dict[str, nn.Module]:
        """Module groups by the names stages use (``unet.lora`` shares its parameters with ``unet``)."""
        return {"unet": self.unet, "unet.lora": lora_pairs(self.unet), "sketch_encoder": self.sketch_encoder,
                "thresh_embedder": self.thresh_embedder, "recovery_transformer": self.transformer}

    def background_tokens(self, bg_reference_tokens: Tensor, th_r: Tensor) -> Tensor:
        """``φ(tokens + thresh_emb(th_r))`` with one threshold per sample ``(b,)`` → ``(b, N, c)``."""
        th = self.thresh_embedder(th_r.float()).to(bg_reference_tokens.dtype)
        return self.transformer(bg_reference_tokens + th)

    def training_inputs(self, batch: Mapping[str, Tensor], latent: Tensor, encoders: Encoders, autocast: Autocast,
                        **options: Any) -> tuple[Tensor, dict[str, Any]]:
        """CLIP tokens of the reference and of its background-only copy ``where(rmask < th_r, ref, white)`` (one
        frozen CLIP call, per-sample ``th_r``) and the latent sketch mask ``bicubic(smask, ×1/8)``."""
        with autocast():
            bg_ref = background_only_reference(batch["reference"], batch["reference_mask"],
                                               batch["th_r"].view(-1, 1, 1, 1))
            fg, bg = encoders.tokens(torch.cat([batch["reference"], bg_ref])).float().chunk(2)
        mask = sketch_mask_to_latent(batch["mask"], encoders.latent_factor)
        return fg, {"bg_reference_tokens": bg, "th_r": batch["th_r"], "th_s": batch["th_s"], "mask": mask,
                    "ref_keep": batch["ref_keep"]}

    def preview_inputs(self, tokens: Tensor, batch: Mapping[str, Tensor], encode_tokens: Callable[[Tensor], Tensor],
                       latent_factor: int) -> tuple[Tensor, Any, dict[str, Any]]:
        """Previews use the trained path: background enhance with both LoRA pairs (as in training) and the app's
        default thresholds (reference 0.5, sketch 0.05); without masks in the batch, the plain path."""
        if "mask" not in batch:
            return tokens, None, {}
        dev = tokens.device
        ref = batch["reference"].to(dev)
        bg_ref = background_only_reference(ref, batch["reference_mask"].to(dev), DEFAULT_REFERENCE_THRESHOLD)
        th_r = torch.full((ref.shape[0],), DEFAULT_REFERENCE_THRESHOLD, device=dev)
        bg = self.background_tokens(encode_tokens(bg_ref), th_r)
        mask = sketch_mask_to_latent(batch["mask"].to(dev), latent_factor)
        split = SplitOptions(mask=mask, threshold=DEFAULT_SKETCH_THRESHOLD, use_fg_lora=True, use_bg_lora=True)
        return torch.cat([tokens, bg.to(tokens.dtype)], 1), SplitAttention(split), {}

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        context: Tensor,
        sketch: Tensor,
        *,
        bg_reference_tokens: Tensor | None = None,
        th_r: Tensor | None = None,
        th_s: Tensor | None = None,
        mask: Tensor | None = None,
        ref_keep: Tensor | None = None,
    ) -> Tensor:
        """Without ``mask``: the v1 computation (LoRA off). With ``mask`` (b, 1, h, w) at latent resolution: the
        v1.5 training forward; ``ref_keep`` (b,) zeroes the whole 2N-token context of dropped samples (the
        unconditional input at inference is an all-zero context)."""
        hints = self.sketch_encoder(sketch)
        if mask is None:
            return self.unet(x_t, t, context, hints)
        if bg_reference_tokens is None or th_r is None or th_s is None:
            raise ValueError("the split forward needs bg_reference_tokens, th_r and th_s")
        bg = self.background_tokens(bg_reference_tokens, th_r).to(context.dtype)
        ctx = torch.cat([context, bg], dim=1)
        if ref_keep is not None:
            ctx = ctx * ref_keep.to(ctx.dtype).view(-1, 1, 1)
        return self.unet(x_t, t, ctx, hints, trained_split(mask, th_s))


def trained_split(mask: Tensor, th_s: Tensor) -> AttentionPatches:
    """Split attention as the v1.5 / v2 stages train it: both LoRA pairs on, one mask threshold per sample
    (``(b, 1, 1)`` broadcasts against the ``(b, hw, 1)`` block masks)."""
    split = SplitOptions(mask=mask, threshold=th_s.float().view(-1, 1, 1),  # type: ignore[arg-type]
                         use_fg_lora=True, use_bg_lora=True)
    return AttentionPatches(cross_attention=SplitAttention(split))


def lora_pairs(unet: nn.Module) -> nn.ModuleList:
    """The fg/bg LoRA pairs of every split layer (their parameters only; the base weights are not in it)."""
    pairs = nn.ModuleList()
    for m in unet.modules():
        if isinstance(m, SplitLoraLinear):
            pairs.extend([m.lora_down_fg, m.lora_up_fg, m.lora_down_bg, m.lora_up_bg])
    return pairs


def fresh_recovery_configs(config: ColorizerConfig) -> tuple[ScalarEmbedderConfig, ClusterTransformerConfig]:
    """The released v1.5 threshold embedder and recovery transformer (256 → 1024; 6 layers of 16 × 64 heads) resized
    to this model's context width and token count; the head width is 64 where it divides the width, as released."""
    dim = config.unet.context_dim
    width = int(config.extras.get(HEAD_WIDTH_KEY, OFFICIAL_HEAD_WIDTH if dim % OFFICIAL_HEAD_WIDTH == 0
                                  else math.gcd(dim, 32)))
    return (ScalarEmbedderConfig(out_dim=dim),
            ClusterTransformerConfig(dim=dim, token_length=config.clip.tokens, heads=dim // width, head_width=width))


def build_switch_denoiser(start: TrainingStart, default_lora: SplitLoraConfig
                          ) -> tuple[ColorizerConfig, SwitchDenoiser, AutoencoderKL]:
    """``(export config, denoiser, VAE)`` in float32 on the CPU: a v1.5 file continues, a v1 file starts fresh
    LoRA, threshold embedder and recovery transformer (see the module docstring)."""
    parts, config = start.parts, start.config
    torch.manual_seed(start.init_seed)
    if parts.get("transformer"):
        embedder_cfg, recovery_cfg = recovery_configs(config.extras, parts)
    else:
        embedder_cfg, recovery_cfg = fresh_recovery_configs(config)
    lora = (infer_lora_config(parts["unet"]) if parts.get("unet") else None) or default_lora
    unet = DualCondUNet(config.unet, lora, use_checkpoint=start.gradient_checkpointing)
    embedder, transformer = ScalarEmbedder(embedder_cfg), ClusterTransformer(recovery_cfg)
    sketch, vae = SketchEncoder(config.sketch), AutoencoderKL(config.vae)
    if parts.get("unet"):  # a v1 U-Net has no LoRA keys: they keep their fresh init (up = 0)
        has_lora = any(".lora_" in k for k in parts["unet"])
        load_weights(unet, conv_proj_weights(parts["unet"]), "U-Net", "" if has_lora else ".lora_", assign=False)
    if parts.get("vae"):
        load_weights(vae, parts["vae"], "VAE", assign=False)
    if start.has_sketch:
        load_weights(sketch, parts["sketch_encoder"], "sketch encoder", assign=False)
    if parts.get("thresh_embedder"):
        load_weights(embedder, parts["thresh_embedder"], "threshold embedder", assign=False)
        load_weights(transformer, parts["transformer"], "recovery transformer", assign=False)
    config = replace(config, version="switch", parameterization=start.prediction,  # type: ignore[arg-type]
                     extras={**config.extras, HEAD_WIDTH_KEY: recovery_cfg.head_width})
    den = SwitchDenoiser(unet, sketch, embedder, transformer).to(torch.float32)
    return config, den, vae.to(torch.float32)


__all__ = [
    "SwitchDenoiser",
    "build_switch_denoiser",
    "fresh_recovery_configs",
    "lora_pairs",
    "trained_split",
]
