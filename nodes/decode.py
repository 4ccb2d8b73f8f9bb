"""The decode node: LATENT (raw VAE space) → IMAGE with the checkpoint's own VAE."""
from __future__ import annotations

from inspect import cleandoc
from typing import Any

import torch

from colorize.generate import vae_decode

from .host import check_interrupted, intermediate_device
from .schema import io, output
from .sockets import ColorizeModel, ModelSocket, bchw_to_image


class Decode(io.ComfyNode):
    """COLORIZE_MODEL + LATENT → IMAGE."""

    HELP = cleandoc("""
        Use it after **Colorize Sampler**. The VAE always runs in fp32, whatever the U-Net's precision; a batch of
        latents is decoded one image at a time and returned as one IMAGE batch.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionDecode", display_name="Colorize Decode", category="ColorizeDiffusion/sampling",
            description=(
                "Decodes a latent with the checkpoint's VAE (kl-f8, fp32, as the official app runs it) into an image. "
                "Takes any LATENT in ComfyUI's usual raw VAE space, one image at a time."
            ),
            inputs=[
                ModelSocket.Input("model", tooltip="The ColorizeDiffusion checkpoint (its VAE is used)."),
                io.Latent.Input("samples", tooltip="Latent from the ColorizeDiffusion Sampler."),
            ],
            outputs=[output(io.Image, "image", "The colorized image(s).")],
        )

    @classmethod
    def execute(cls, model: ColorizeModel, samples: dict[str, Any]) -> io.NodeOutput:
        vae = model.vae.ready()
        images = []
        for z in samples["samples"].split(1):
            check_interrupted()
            images.append(bchw_to_image((vae_decode(vae, z) + 1) / 2).to(intermediate_device()))
        return io.NodeOutput(torch.cat(images))


__all__ = ["Decode"]
