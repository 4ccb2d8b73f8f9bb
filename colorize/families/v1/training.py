"""The v1 training model (thesis §5.4): the trainable sketch encoder and U-Net; the frozen VAE beside them.

Weights come from a ColorizeDiffusion v1 file (released, exported or tiny), from an SD2.1 LDM checkpoint (thesis
§5.4: start from text-to-image weights; the sketch encoder then starts from its zero-initialised output convs),
or are random (tests and benchmarks). The training loop (``training/``) supplies the frozen encoders, the noise
and the loss; this module knows only what differs for v1: what the model is and what it reads.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from colorize.config import ColorizerConfig
from colorize.families.base import TrainingStart
from colorize.models.sketch_encoder import SketchEncoder
from colorize.models.unet import DualCondUNet, conv_proj_weights
from colorize.models.vae import AutoencoderKL

#: What a training model's hooks get to encode images with: ``encoders.tokens(image)`` → CLIP local tokens,
#: ``encoders.latents(image)`` → diffusion latent of the posterior mean (both frozen, no grad).
Encoders = Any
Autocast = Callable[[], AbstractContextManager[Any]]


class Denoiser(nn.Module):
    """The trainable part of v1: sketch-encoder hints (Eq. 5.1) added inside the U-Net's forward."""

    def __init__(self, unet: DualCondUNet, sketch_encoder: SketchEncoder) -> None:
        super().__init__()
        self.unet = unet
        self.sketch_encoder = sketch_encoder

    def groups(self) -> dict[str, nn.Module]:
        """Module groups by the names training stages use."""
        return {"unet": self.unet, "sketch_encoder": self.sketch_encoder}

    def training_inputs(self, batch: Mapping[str, Tensor], latent: Tensor, encoders: Encoders, autocast: Autocast,
                        **options: Any) -> tuple[Tensor, dict[str, Any]]:
        """``(reference tokens, forward arguments)`` of a micro-batch (on the device; ``latent`` = the colour
        image's diffusion latent; ``options`` = the stage's model options): v1 reads the reference tokens only."""
        with autocast():
            tokens = encoders.tokens(batch["reference"])
        return tokens.float(), {}

    def preview_inputs(self, tokens: Tensor, batch: Mapping[str, Tensor], encode_tokens: Callable[[Tensor], Tensor],
                       latent_factor: int) -> tuple[Tensor, Any, dict[str, Any]]:
        """``(context, cross-attention processor, U-Net arguments)`` of a sample preview: the plain path."""
        return tokens, None, {}

    def forward(self, x_t: Tensor, t: Tensor, context: Tensor, sketch: Tensor) -> Tensor:
        return self.unet(x_t, t, context, self.sketch_encoder(sketch))


def load_weights(module: nn.Module, sd: Mapping[str, Tensor], what: str, allow_missing: str = "",
                 assign: bool = True) -> None:
    """Load ``sd`` into ``module``: ``assign`` = take the tensors as they are (meta-built modules), else copy them
    into the module's own; keys containing ``allow_missing`` may be absent (fresh modules keep their
    initialisation there)."""
    missing, unexpected = module.load_state_dict(dict(sd), strict=False, assign=assign)
    missing = [k for k in missing if not (allow_missing and allow_missing in k)]
    if missing or unexpected:
        raise ValueError(f"{what}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")


def on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return factory()


def build_denoiser(start: TrainingStart) -> tuple[ColorizerConfig, Denoiser, AutoencoderKL]:
    """``(export config, Denoiser, VAE)`` in float32: from the file's tensors when ``start.parts`` has them (on
    the CPU), else random on ``start.device``."""
    parts, gc = start.parts, start.gradient_checkpointing
    config = replace(start.config, parameterization=start.prediction)  # type: ignore[arg-type]
    torch.manual_seed(start.init_seed)
    if parts.get("unet"):
        unet = on_meta(lambda: DualCondUNet(config.unet, use_checkpoint=gc))
        load_weights(unet, conv_proj_weights(parts["unet"]), "U-Net")
        vae = on_meta(lambda: AutoencoderKL(config.vae))
        load_weights(vae, parts["vae"], "VAE")
    else:
        with torch.device(start.device):
            unet, vae = DualCondUNet(config.unet, use_checkpoint=gc), AutoencoderKL(config.vae)
    if start.has_sketch:
        sketch = on_meta(lambda: SketchEncoder(config.sketch))
        load_weights(sketch, parts["sketch_encoder"], "sketch encoder")
    else:
        with torch.device(start.device):
            sketch = SketchEncoder(config.sketch)
    denoiser = Denoiser(unet, sketch).to(start.device, torch.float32)  # type: ignore[arg-type]
    return config, denoiser, vae  # type: ignore[return-value]


__all__ = ["Autocast", "Denoiser", "Encoders", "build_denoiser", "load_weights", "on_meta"]
