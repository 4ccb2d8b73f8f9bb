"""Colorizers for benchmarking: random weights built directly on the device (SD2.1 v1, or ColorizeDiffusion XL
``sdxl`` / ``xlv2`` with CLIP ViT-bigG/14, the WD tagger and, for xlv2, the ReferenceNet), or loaded checkpoints."""
from __future__ import annotations

import math
import os
import time
from typing import Any

import torch
from torch import nn

from colorize.config import ColorizerConfig
from colorize.device import resolve_device


def randomize_zero_layers(module: nn.Module, generator: torch.Generator) -> int:
    """Give every all-zero weight matrix (zero-initialised output layers of the real model) small random
    values, as :mod:`colorize.tiny` does, so every path computes; ``generator`` lives on the module's
    device. Returns how many tensors were redrawn."""
    n = 0
    for p in module.parameters():
        if p.ndim >= 2 and not p.detach().any():
            p.data.normal_(0.0, 0.5 / math.sqrt(p[0].numel()), generator=generator)
            n += 1
    return n


def random_colorizer(
    config: ColorizerConfig, device: str | torch.device = "auto", precision: str = "auto", seed: int = 0,
    with_text: bool = True, low_vram: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """A :class:`~colorize.pipeline.Colorizer` of ``config`` with random weights, every module allocated and
    initialised on ``device`` (no CPU copy); returns it with build facts (seconds, parameter counts).

    ``with_text`` keeps the CLIP text tower, as the default open_clip weights file (and the official app) do:
    it costs memory, not time. ``low_vram``: the colorizer's sequential CPU offload (:mod:`colorize.offload`);
    the modules are built on the device, then moved to the CPU."""
    from colorize.models.clip import ReferenceEncoder
    from colorize.models.sketch_encoder import SketchEncoder
    from colorize.models.unet import DualCondUNet
    from colorize.models.vae import AutoencoderKL
    from colorize.pipeline import Colorizer

    dev = resolve_device(device)
    start = time.perf_counter()
    torch.manual_seed(seed)
    with torch.device(dev):
        unet, sketch = DualCondUNet(config.unet), SketchEncoder(config.sketch)
        vae, clip = AutoencoderKL(config.vae), ReferenceEncoder(config.clip, with_text=with_text)
    gen = torch.Generator(device=dev).manual_seed(seed)
    redrawn = sum(randomize_zero_layers(m, gen) for m in (unet, sketch, vae))
    model = Colorizer(config, unet, sketch, vae, clip, dev, precision, low_vram=low_vram)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    info = {
        "weights": "random (built on the device; zero-initialised layers redrawn)",
        "build_s": round(time.perf_counter() - start, 3),
        "zero_init_tensors_redrawn": redrawn,
        "params_millions": parameter_counts(model),
    }
    return model, info


#: Random-weight benchmark models: ``--family`` values (``mult`` = v1, the SD2.1 rows; the XL pair).
BENCH_FAMILIES = ("mult", "sdxl", "xlv2")


def xl_config(version: str, size: str) -> ColorizerConfig:
    """The ``sdxl`` / ``xlv2`` config of the released models (``size`` ``full``) or of the tiny test models."""
    from dataclasses import replace

    from colorize.config import TINY_MULT, SketchEncoderConfig, VAEConfig
    from colorize.families import get_family
    from colorize.families.xl import XL_EXTRAS_DEFAULTS
    from colorize.families.xl.sizes import XL_VAE_SCALE
    from colorize.families.xl.unet import XL_UNET

    family = get_family(version)
    if size == "tiny":
        return family.tiny_config(TINY_MULT)
    return ColorizerConfig(version=version, parameterization=family.parameterization,  # type: ignore[arg-type]
                           unet=replace(XL_UNET), sketch=SketchEncoderConfig(3, 320, (1, 2, 4)),
                           vae=VAEConfig(scale_factor=XL_VAE_SCALE), extras=dict(XL_EXTRAS_DEFAULTS))


def xl_modules(version: str, size: str = "full") -> tuple[ColorizerConfig, dict[str, nn.Module]]:
    """``(config, modules)`` of an XL model with fresh (random) weights, built in the current default device
    (``with torch.device("meta")``: no memory): ``unet`` (xlv2: with the background LoRA), ``sketch_encoder`` (the
    multi-scale attention encoder), ``vae`` (the XL scale), ``reference_encoder`` (CLIP ViT-bigG/14 + the WD v1.4
    SwinV2 tagger; ``size`` ``full``: the released sizes, ``tiny``: the test encoders), ``proj`` (ClusterConcat)
    and, for xlv2, ``bg_encoder`` (the ReferenceNet)."""
    from colorize.families.xl import xl_extras
    from colorize.families.xl.clip_bigg import ClipVisionConfig, ClipVisionTower
    from colorize.families.xl.conditioning import ClusterConcat, ClusterConcatConfig
    from colorize.families.xl.encoders import TINY_XL_CLIP, TINY_XL_TAGGER, XLReferenceEncoder
    from colorize.families.xl.reference_net import build_reference_net, build_xlv2_unet, reference_net_config
    from colorize.families.xl.sketch_encoder import MultiScaleAttentionEncoder, MultiScaleEncoderConfig
    from colorize.families.xl.tagger import SwinV2Tagger, TaggerConfig
    from colorize.families.xl.unet import build_xl_unet
    from colorize.models.vae import AutoencoderKL

    if version not in ("sdxl", "xlv2"):
        raise ValueError(f"not an XL family: {version!r}")
    config = xl_config(version, size)
    extras = xl_extras(config)
    clip_cfg, tagger_cfg = (ClipVisionConfig(), TaggerConfig()) if size == "full" else (TINY_XL_CLIP, TINY_XL_TAGGER)
    modules: dict[str, nn.Module] = {
        "unet": build_xlv2_unet(config.unet) if version == "xlv2" else build_xl_unet(config.unet),
        "sketch_encoder": MultiScaleAttentionEncoder(MultiScaleEncoderConfig(
            config.sketch.in_ch, config.sketch.model_channels, config.sketch.ch_mults,
            dim_head=extras["sketch_dim_head"])),
        "vae": AutoencoderKL(config.vae),
        "reference_encoder": XLReferenceEncoder(ClipVisionTower(clip_cfg), SwinV2Tagger(tagger_cfg)),
        "proj": ClusterConcat(ClusterConcatConfig(clip_cfg.projection_dim, tagger_cfg.num_features,
                                                  config.unet.context_dim, extras["token_length"],
                                                  extras["proj_dim_head"])),
    }
    if version == "xlv2":
        modules["bg_encoder"] = build_reference_net(reference_net_config(config.unet))
    return config, modules


def random_xl_colorizer(
    version: str, size: str = "full", device: str | torch.device = "auto", precision: str = "auto", seed: int = 0,
    low_vram: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """An XL colorizer (``version`` ``sdxl`` or ``xlv2``) with random weights, every module allocated and initialised
    on ``device`` (:func:`xl_modules`; zero-initialised layers redrawn); returns it with the build facts."""
    from colorize.pipeline import Colorizer

    dev = resolve_device(device)
    start = time.perf_counter()
    torch.manual_seed(seed)
    with torch.device(dev):
        config, m = xl_modules(version, size)
    gen = torch.Generator(device=dev).manual_seed(seed)
    extras = {k: v for k, v in m.items() if k not in ("unet", "sketch_encoder", "vae", "reference_encoder")}
    redrawn = sum(randomize_zero_layers(m[k], gen) for k in ("unet", "sketch_encoder", "vae", *extras))
    model = Colorizer(config, m["unet"], m["sketch_encoder"], m["vae"], m["reference_encoder"], dev, precision,
                      extras=extras, low_vram=low_vram)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    info = {
        "weights": "random (built on the device; zero-initialised layers redrawn)",
        "family": version,
        "build_s": round(time.perf_counter() - start, 3),
        "zero_init_tensors_redrawn": redrawn,
        "params_millions": parameter_counts(model),
    }
    return model, info


def loaded_colorizer(checkpoint: str | os.PathLike[str], clip: str | os.PathLike[str] | None,
                     device: str | torch.device = "auto", precision: str = "auto",
                     tagger: str | os.PathLike[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """A colorizer from weights files (real numbers, real memory footprint); ``tagger``: XL's WD tagger file."""
    from colorize.pipeline import Colorizer

    start = time.perf_counter()
    model = Colorizer.from_files(checkpoint, clip, device=device, precision=precision, tagger=tagger)
    info = {"weights": os.fspath(checkpoint), "build_s": round(time.perf_counter() - start, 3),
            "params_millions": parameter_counts(model)}
    return model, info


def parameter_counts(model: Any) -> dict[str, float]:
    """Millions of parameters per module: U-Net, sketch encoder, VAE, the reference encoder (``clip``: XL's holds
    CLIP-bigG and the tagger) and the family's extra modules by component name (XL ``proj``, xlv2 ``bg_encoder``)."""
    parts = {"unet": model.unet, "sketch_encoder": model.sketch_encoder, "vae": model.vae, "clip": model.reference_encoder,
             **dict(getattr(model, "extras", None) or {})}
    return {k: round(sum(p.numel() for p in m.parameters()) / 1e6, 2) for k, m in parts.items()}


__all__ = ["BENCH_FAMILIES", "loaded_colorizer", "parameter_counts", "random_colorizer", "random_xl_colorizer",
           "randomize_zero_layers", "xl_config", "xl_modules"]
