"""ColorizeDiffusion v2, thesis §5.6: background and style encoders on top of the split attention of v1.5.

On top of v1: a background encoder and a style encoder (copies of the U-Net encoder half with a size embedding,
run once per generation at t = 0 on VAE latents), background warping of the decoder skips and style modulation
of the decoder outputs, split cross-attention with fg/bg LoRA on the decoder blocks only; v-prediction, trained
at the 768 level (official ``configs/inference/v2.yaml``, ``refnet/models/v2-colorizer.py`` at commit ``c9bd9fb``).

* :mod:`.config` — the v2 extras' sizes, read from shapes;
* :mod:`.encoders` — the background / style encoders and the size embedding;
* :mod:`.unet` — the v2 U-Net with warp and style modules;
* :mod:`.conditioning` — masks and settings → the per-generation U-Net inputs;
* :mod:`.training` — the ``v2_background`` / ``v2_style`` stages' model.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from colorize.checkpoint.assign import materialize, require_components
from colorize.config import ColorizerConfig
from colorize.families.base import Family, Parts, SeparationInputs, TrainingStart, UNetInputs, has_unet
from colorize.families.v2 import conditioning
from colorize.families.v2.config import V2_LORA, WARP_HEAD_KEY, V2Config, infer_v2_config, warp_head_width
from colorize.families.v2.encoders import UNetEncoder, background_encoder, style_encoder
from colorize.families.v2.training import build_v2_denoiser
from colorize.families.v2.unet import V2UNet, decoder_out_channels, style_modules, warp_modules

#: Size-embedding sinusoid width per ratio of the tiny test weights (256 released).
TINY_RATIO_DIM = 16


def v2_config(config: ColorizerConfig, parts: Mapping[str, Mapping[str, Any]]) -> V2Config:
    """The v2 extras' config from the checkpoint's shapes (prefixes stripped) and ``config.extras``."""
    warp = warp_head_width(config)
    return infer_v2_config(parts.get("unet") or {}, parts.get("style_encoder") or None, warp_dim_head=warp)


class V2Family(Family):
    name = "v2"
    label = "v2"
    title = "ColorizeDiffusion v2"
    parameterization = "v"
    base_resolution = 768  # v2 is trained at the 768 level (official readme)
    components = {"bg_encoder": "bg_encoder.", "style_encoder": "style_encoder."}
    training_sources = ("v2",)  # initialising v2 from v1 / v1.5 weights is not implemented

    def matches(self, keys: Any) -> bool:
        return has_unet(keys) and any(
            k.startswith(("bg_encoder.", "style_encoder.")) or ".warp_modules." in k or ".style_modules." in k
            for k in keys)

    def build_unet(self, config: ColorizerConfig, parts: Parts, name: str) -> nn.Module:
        require_components(parts, self.components, tuple(self.components), name)
        vcfg = v2_config(config, parts)
        return materialize(lambda: V2UNet(config.unet, vcfg.lora, warp_dim_head=vcfg.warp_dim_head),
                           parts.pop("unet"), f"{name} (U-Net)")

    def build_extras(self, config: ColorizerConfig, parts: Parts, name: str) -> dict[str, nn.Module]:
        require_components(parts, self.components, tuple(self.components), name)
        vcfg = v2_config(config, parts)
        return {
            "bg_encoder": materialize(lambda: background_encoder(config.unet, vcfg.adm_in_channels),
                                      parts.pop("bg_encoder"), f"{name} (background encoder)"),
            "style_encoder": materialize(lambda: style_encoder(config.unet, vcfg.adm_in_channels,
                                                               vcfg.style_width_cap),
                                         parts.pop("style_encoder"), f"{name} (style encoder)"),
        }

    def unet_additions(self, config: ColorizerConfig, parts: Parts) -> dict[str, nn.Module]:
        warp = v2_config(config, parts).warp_dim_head
        return {"warp_modules": warp_modules(config.unet, warp), "style_modules": style_modules(config.unet)}

    def cast_extras(self, extras: Mapping[str, nn.Module], device: torch.device, dtype: torch.dtype) -> None:
        """Both encoders in ``dtype`` with their time embedding in fp32, as the official app
        (``refnet/models/v2-colorizer.py:42-52``)."""
        for module in extras.values():
            module.to(device, dtype).eval().requires_grad_(False)
            if dtype != torch.float32 and isinstance(module, UNetEncoder):
                module.time_embed.float()

    def check_enhance(self, enhance: Any) -> None:
        return None  # v2 has every control

    def separation(self, extras: Any, enhance: Any, inputs: SeparationInputs) -> UNetInputs:
        return conditioning.separation(extras, enhance, inputs)

    def tiny_config(self, base: ColorizerConfig) -> ColorizerConfig:
        """The v1 tiny sizes with the widths doubled after the first level (``channel_mult (1, 2, 2, 2)``, the
        smallest layout in which the style encoder's widths line up with the decoder, as in the released
        ``(1, 2, 4, 4)``), v-parameterised, with a warp head width other than the default rule's."""
        mult = (1, 2, 2, 2)
        unet, sketch = replace(base.unet, channel_mult=mult), replace(base.sketch, ch_mults=mult)
        return replace(base, version=self.name, parameterization=self.parameterization, unet=unet, sketch=sketch,
                       extras={WARP_HEAD_KEY: math.gcd(base.unet.model_channels, 32)})

    def fresh_modules(self, config: ColorizerConfig) -> dict[str, nn.Module]:
        style = style_encoder(config.unet, 2 * TINY_RATIO_DIM, 4 * config.unet.model_channels)
        if style.output_widths != [2 * c for c in decoder_out_channels(config.unet)]:
            raise ValueError(f"channel_mult {config.unet.channel_mult}: the style encoder's widths do not line up "
                             "with the decoder; use the v2 family's tiny_config")
        unet = V2UNet(config.unet, V2_LORA, warp_dim_head=warp_head_width(config))
        return {"unet": unet, "bg_encoder": background_encoder(config.unet, 2 * TINY_RATIO_DIM), "style_encoder": style}

    def training_model(self, start: TrainingStart) -> tuple[ColorizerConfig, nn.Module, nn.Module]:
        return build_v2_denoiser(start, self)


V2 = V2Family()

__all__ = ["TINY_RATIO_DIM", "V2", "V2Family", "WARP_HEAD_KEY", "v2_config"]
