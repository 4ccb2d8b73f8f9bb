"""The modules a training run holds: the stage family's trainable model and the frozen VAE and CLIP reference
encoder (official ``refnet/ldm/ddpm.py:233-245`` at commit ``c9bd9fb``: VAE and CLIP are always frozen).

What the trainable model is (v1 sketch encoder + U-Net, v1.5 LoRA + recovery transformer, v2 encoders and
injection modules) is the family's decision (``Family.training_model``, in ``colorize/families/<family>/``);
this module finds the starting weights and builds the frozen encoders around it. Weights come from a
ColorizeDiffusion file (released, exported or tiny: config from its keys or its ``colorize_config`` metadata),
from an SD2.1 LDM checkpoint (thesis §5.4: start from text-to-image weights; its ``proj_in/proj_out`` are Linear
and become the 1×1 convs of this U-Net; the sketch encoder starts from its zero-initialised output convs), or are
random (``preset`` / ``colorize_config``, for tests and benchmarks).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from colorize.checkpoint import infer_unet_config, infer_vae_config, load_state_dict_file, read_metadata
from colorize.config import PRESETS, ColorizerConfig, SketchEncoderConfig
from colorize.families import FAMILIES, Family, TrainingStart, detect_family, get_family, split_checkpoint
from colorize.loader import checkpoint_config, load_reference_encoder, load_reference_encoder_from_state_dict
from colorize.models.clip import ReferenceEncoder
from colorize.models.unet import conv_proj_weights
from colorize.models.vae import AutoencoderKL, posterior_latent
from training.config import ModelConfig
from training.objective import NoiseSpec


@dataclass
class FrozenEncoders:
    """The frozen encoders as the family's training hooks use them (no gradients)."""

    vae: AutoencoderKL
    clip: ReferenceEncoder
    latent_factor: int

    @torch.no_grad()
    def tokens(self, images: Tensor) -> Tensor:
        """Reference images in [-1, 1] → (b, 256, C) patch tokens (CLS dropped, as the released models use)."""
        return self.clip.encode_image(images, "full")[:, 1:]

    def latents(self, images: Tensor, noise: Tensor | None = None) -> Tensor:
        """Images in [-1, 1] → diffusion latents: the posterior sample with ``noise`` (official
        ``posterior.sample()``), or the posterior mean without it."""
        return posterior_latent(self.vae, images, noise)


@dataclass
class TrainModules:
    """The family, its export config, the trainable model (``denoiser``) and the frozen VAE and CLIP."""

    config: ColorizerConfig
    denoiser: nn.Module
    vae: AutoencoderKL
    clip: ReferenceEncoder

    @property
    def family(self) -> Family:
        return get_family(self.config.version)

    def groups(self) -> dict[str, nn.Module]:
        """Module groups by the names stages use (``training.stages``)."""
        return {**self.denoiser.groups(), "vae": self.vae, "clip": self.clip}  # type: ignore[operator]

    def encoders(self) -> FrozenEncoders:
        return FrozenEncoders(self.vae, self.clip, self.config.vae.downsample_factor)

    def noise_spec(self) -> NoiseSpec:
        return NoiseSpec(self.config.vae.embed_dim, self.config.vae.downsample_factor, self.config.clip.tokens,
                         self.config.clip.embed_dim, self.config.schedule.timesteps)


def initial_weights(cfg: ModelConfig) -> tuple[dict[str, Tensor], ColorizerConfig, bool]:
    """``(state dict, config, has a sketch encoder)`` of the starting point: ``cfg.init`` (any supported file)
    or the ``cfg.preset`` random model, with ``cfg.colorize_config`` overriding the config when given."""
    sd: dict[str, Tensor] = {}
    has_sketch = False
    if cfg.init:
        sd = load_state_dict_file(cfg.init)
        meta = read_metadata(cfg.init) if os.fspath(cfg.init).endswith(".safetensors") else {}
        config, has_sketch = _config_from_file(sd, meta)
    else:
        config = PRESETS[cfg.preset]
    if cfg.colorize_config is not None:
        config = ColorizerConfig.from_dict(cfg.colorize_config)
    return sd, config, has_sketch


def _config_from_file(sd: Mapping[str, Tensor], metadata: Mapping[str, str]) -> tuple[ColorizerConfig, bool]:
    parts = split_checkpoint(sd)
    if parts["sketch_encoder"]:
        return checkpoint_config(detect_family(sd), sd, metadata)[0], True
    if not parts["unet"] or not parts["vae"]:
        raise ValueError("the init checkpoint has neither a ColorizeDiffusion nor an SD2.1 / SDXL LDM layout "
                         "(model.diffusion_model.* and first_stage_model.* are needed)")
    for family in FAMILIES.values():
        config = family.text_to_image_config(parts)
        if config is not None:
            return config, False
    unet = infer_unet_config(conv_proj_weights(parts["unet"]))
    sketch = SketchEncoderConfig(model_channels=unet.model_channels, ch_mults=unet.channel_mult)
    return ColorizerConfig(unet=unet, sketch=sketch, vae=infer_vae_config(parts["vae"])), False


def build_modules(cfg: ModelConfig, prediction: str = "eps", device: str | torch.device = "cpu",
                  version: str = "mult") -> TrainModules:
    """All modules of a run of a ``version``-family stage in float32; the VAE and CLIP frozen and in eval mode.

    Weights from files are read on the CPU and moved to ``device``; random modules are built on ``device``
    directly (the benchmark's fast path; a CPU build is reproducible across devices)."""
    family = get_family(version)
    sd, config, has_sketch = initial_weights(cfg)
    source = get_family(config.version)
    if source.name not in family.training_sources:
        starts = ", ".join(f"{get_family(n).label} ('{n}')" for n in family.training_sources)
        raise NotImplementedError(f"{cfg.init or 'the configured model'} is a {source.label} ('{source.name}') "
                                  f"model; the {family.label} stages start from {starts} models")
    name = os.path.basename(os.fspath(cfg.init)) if cfg.init else "random start"
    start = TrainingStart(split_checkpoint(sd), config, has_sketch, prediction, cfg.gradient_checkpointing,
                          cfg.init_seed, device, name)
    config, denoiser, vae = family.training_model(start)
    clip = family.training_reference_encoder(denoiser, cfg.clip, cfg.tagger, device, cfg.random_reference_encoder)
    if clip is None:
        clip = _build_clip(cfg, config, start.parts, device)
    denoiser = denoiser.to(device, torch.float32)
    vae.to(device, torch.float32).requires_grad_(False).eval()
    clip.to(device, torch.float32).requires_grad_(False).eval()
    return TrainModules(config, denoiser, vae, clip)  # type: ignore[arg-type]


def _build_clip(
    cfg: ModelConfig, config: ColorizerConfig, parts: dict[str, dict[str, Tensor]], device: str | torch.device
) -> ReferenceEncoder:
    if cfg.clip:
        enc = load_reference_encoder(cfg.clip)
    elif parts.get("clip_visual"):
        enc = load_reference_encoder_from_state_dict(
            {"visual." + k: v for k, v in parts["clip_visual"].items()}, config.clip, "init checkpoint (CLIP)")
    else:
        warnings.warn("no CLIP weights given (model.clip): the reference encoder is random; only useful for tests",
                      stacklevel=2)
        with torch.device(device):
            enc = ReferenceEncoder(config.clip, with_text=False)
    enc.drop_text()  # training needs the image tower only
    return enc  # type: ignore[return-value]


__all__ = ["FrozenEncoders", "TrainModules", "build_modules", "initial_weights"]
