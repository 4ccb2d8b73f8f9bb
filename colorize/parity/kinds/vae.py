"""Parity kind ``vae``: the kl-f8 autoencoder built from the fixture's ``ddconfig``."""
from __future__ import annotations

import torch

from colorize.models.vae import AutoencoderKL, vae_config_from_ddconfig
from colorize.parity.core import Fixture, register


@register("vae")
def run(fx: Fixture) -> dict[str, torch.Tensor]:
    cfg, extra = vae_config_from_ddconfig(fx.config["params"])
    vae = AutoencoderKL(cfg, **extra).eval()
    vae.load_state_dict(fx.state_dict, strict=True)
    post = vae.encode(fx.inputs["image"])
    return {
        "posterior_mean": post.mean,
        "posterior_logvar": post.logvar,
        "posterior_std": post.std,
        "decoded_z": vae.decode(fx.inputs["z"]),
        "decoded_mean": vae.decode(post.mean),
    }
