"""The decode node: LATENT (raw VAE space) → IMAGE with the checkpoint's own VAE."""
from __future__ import annotations

from inspect import cleandoc
from typing import Any

import torch

from colorize.generate import vae_decode

from .host import check_interrupted, intermediate_device
from .sockets import COLORIZE_MODEL, ColorizeModel, bchw_to_image


class Decode:
    """COLORIZE_MODEL + LATENT → IMAGE."""

    DESCRIPTION = (
        "Decodes a latent with the checkpoint's VAE (kl-f8, fp32, as the official app runs it) into an image. Takes "
        "any LATENT in ComfyUI's usual raw VAE space, one image at a time."
    )
    HELP = cleandoc("""
        Use it after **Colorize Sampler**. The VAE always runs in fp32, whatever the U-Net's precision; a batch of
        latents is decoded one image at a time and returned as one IMAGE batch.
    """)
    CATEGORY = "ColorizeDiffusion/sampling"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The colorized image(s).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": (COLORIZE_MODEL, {"tooltip": "The ColorizeDiffusion checkpoint (its VAE is used)."}),
            "samples": ("LATENT", {"tooltip": "Latent from the ColorizeDiffusion Sampler."}),
        }}

    def decode(self, model: ColorizeModel, samples: dict[str, Any]) -> tuple[torch.Tensor]:
        vae = model.vae.ready()
        images = []
        for z in samples["samples"].split(1):
            check_interrupted()
            images.append(bchw_to_image((vae_decode(vae, z) + 1) / 2).to(intermediate_device()))
        return (torch.cat(images),)


__all__ = ["Decode"]
