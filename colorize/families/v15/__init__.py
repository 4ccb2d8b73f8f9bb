"""ColorizeDiffusion v1.5 (``switch``), thesis §5.5: foreground/background separation driven by masks.

On top of v1: split cross-attention (Eq. 5.4) with foreground/background LoRA pairs on every ``attn2``
``to_q/to_k/to_v`` (ranks 4 and ``int(0.5·min(in, out))``), a threshold embedder that turns the two mask
thresholds into tokens, and the background "recovery" transformer that maps the CLIP tokens of the
background-only reference to background tokens (official ``configs/inference/switch.yaml``,
``refnet/models/switch.py`` at commit ``c9bd9fb``); eps-prediction at 512².

* :mod:`.recovery` — the threshold embedder and the recovery transformer, their configs from shapes;
* :mod:`.conditioning` — masks and enhance mode → the ``[fg | bg]`` context and the split-attention processor;
* :mod:`.training` — the ``switch_fgbg`` stage's model.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from torch import nn

from colorize.checkpoint.assign import materialize, require_components
from colorize.config import ColorizerConfig
from colorize.errors import InputError
from colorize.families.base import Family, Parts, SeparationInputs, TrainingStart, UNetInputs, has_unet
from colorize.families.v15 import conditioning
from colorize.families.v15.recovery import (
    HEAD_WIDTH_KEY,
    ClusterTransformer,
    ClusterTransformerConfig,
    ScalarEmbedder,
    ScalarEmbedderConfig,
    recovery_configs,
    recovery_head_width,
)
from colorize.families.v15.training import build_switch_denoiser
from colorize.models.lora import SplitLoraConfig, infer_lora_config
from colorize.models.unet import DualCondUNet

#: The released v1.5 LoRA layout: every attention block, foreground rank 4, background rank 0.5·min(in, out).
SWITCH_LORA = SplitLoraConfig(fg_rank=4, bg_rank=0.5, blocks="all")


class V15Family(Family):
    name = "switch"
    label = "v1.5"
    title = "ColorizeDiffusion v1.5 (switch)"
    parameterization = "eps"
    base_resolution = 512
    components = {"thresh_embedder": "thresh_embedder.", "transformer": "transformer."}
    training_sources = ("mult", "switch")  # v1.5 training starts from v1 weights (fresh LoRA) or continues v1.5

    def matches(self, keys: Any) -> bool:
        # a U-Net with v1.5's markers (an open_clip file's "transformer.resblocks.*" is not one)
        return has_unet(keys) and any(
            k.startswith(("thresh_embedder.", "transformer.embedding", "transformer.layers.")) or ".lora_down_bg." in k
            for k in keys)

    def build_unet(self, config: ColorizerConfig, parts: Parts, name: str) -> nn.Module:
        lora = infer_lora_config(parts["unet"]) or SWITCH_LORA
        return materialize(lambda: DualCondUNet(config.unet, lora), parts.pop("unet"), f"{name} (U-Net)")

    def build_extras(self, config: ColorizerConfig, parts: Parts, name: str) -> dict[str, nn.Module]:
        require_components(parts, self.components, tuple(self.components), name)
        embedder_cfg, recovery_cfg = recovery_configs(config.extras, parts)
        return {
            "thresh_embedder": materialize(lambda: ScalarEmbedder(embedder_cfg), parts.pop("thresh_embedder"),
                                           f"{name} (threshold embedder)"),
            "transformer": materialize(lambda: ClusterTransformer(recovery_cfg), parts.pop("transformer"),
                                       f"{name} (recovery transformer)"),
        }

    def check_enhance(self, enhance: Any) -> None:
        if enhance.style_enhance:
            raise InputError("style enhance needs a v2 checkpoint (v2-full); v1.5 has BG and FG enhance")
        if enhance.background_factor != 1.0:
            raise InputError("the background factor is a v2 control; leave it at 1 for v1.5")

    def separation(self, extras: Any, enhance: Any, inputs: SeparationInputs) -> UNetInputs:
        return conditioning.separation(extras, enhance, inputs)

    def tiny_config(self, base: ColorizerConfig) -> ColorizerConfig:
        """The v1 tiny sizes with a recovery-transformer head width other than the released 64."""
        return replace(base, version=self.name, parameterization=self.parameterization,
                       extras={HEAD_WIDTH_KEY: math.gcd(base.unet.context_dim, 32)})

    def fresh_modules(self, config: ColorizerConfig) -> dict[str, nn.Module]:
        dim, width = config.unet.context_dim, recovery_head_width(config.extras)
        return {
            "unet": DualCondUNet(config.unet, SWITCH_LORA),
            "thresh_embedder": ScalarEmbedder(ScalarEmbedderConfig(embed_dim=32, out_dim=dim)),
            "transformer": ClusterTransformer(ClusterTransformerConfig(
                dim=dim, layers=2, token_length=config.clip.tokens, heads=dim // width, head_width=width,
                mlp_mult=2)),
        }

    def training_model(self, start: TrainingStart) -> tuple[ColorizerConfig, nn.Module, nn.Module]:
        return build_switch_denoiser(start, SWITCH_LORA)


V15 = V15Family()

__all__ = ["HEAD_WIDTH_KEY", "SWITCH_LORA", "V15", "V15Family"]
