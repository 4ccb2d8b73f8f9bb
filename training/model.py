"""The modules a v1 training run holds: the trainable denoiser (U-Net + sketch encoder) and the frozen VAE and
CLIP reference encoder (reference §4.2: VAE and CLIP are always frozen).

Weights come from a ColorizeDiffusion file (released, exported or tiny: config from its keys or its
``colorize_config`` metadata), from an SD2.1 LDM checkpoint (thesis §5.4: start from text-to-image weights; its
``proj_in/proj_out`` are Linear and become the 1×1 convs of this U-Net; the sketch encoder starts from its
zero-initialised output convs), or are random (``preset`` / ``colorize_config``, for tests and benchmarks).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from colorize.checkpoint import (
    infer_config,
    infer_unet_config,
    infer_vae_config,
    load_state_dict_file,
    read_metadata,
    split_by_prefix,
)
from colorize.config import PRESETS, ColorizerConfig, SketchEncoderConfig
from colorize.models.clip import ReferenceEncoder
from colorize.models.sketch_encoder import SketchEncoder
from colorize.models.unet import DualCondUNet
from colorize.models.vae import AutoencoderKL
from training.config import ModelConfig
from training.objective import NoiseSpec


class Denoiser(nn.Module):
    """The trainable part of v1: sketch encoder hints (Eq. 5.1) added inside the U-Net's forward."""

    def __init__(self, unet: DualCondUNet, sketch_encoder: SketchEncoder) -> None:
        super().__init__()
        self.unet = unet
        self.sketch_encoder = sketch_encoder

    def forward(self, x_t: Tensor, t: Tensor, context: Tensor, sketch: Tensor) -> Tensor:
        return self.unet(x_t, t, context, self.sketch_encoder(sketch))


@dataclass
class TrainModules:
    """``denoiser`` is a :class:`Denoiser` (v1) or a ``training.switch_model.SwitchDenoiser`` (v1.5)."""

    config: ColorizerConfig
    denoiser: nn.Module
    vae: AutoencoderKL
    clip: ReferenceEncoder

    def groups(self) -> dict[str, nn.Module]:
        """Module groups by the names stages use (``training.stages``)."""
        own = getattr(self.denoiser, "groups", None)
        inner = own() if callable(own) else {"unet": self.denoiser.unet,
                                             "sketch_encoder": self.denoiser.sketch_encoder}
        return {**inner, "vae": self.vae, "clip": self.clip}

    def noise_spec(self) -> NoiseSpec:
        v = self.config.clip.vision
        grid = int(v.get("image_size", 224)) // int(v.get("patch_size", 14))
        return NoiseSpec(self.config.vae.embed_dim, self.config.vae.downsample_factor, grid * grid,
                         self.config.clip.embed_dim, self.config.schedule.timesteps)


def _assign(module: nn.Module, sd: Mapping[str, Tensor], what: str) -> None:
    missing, unexpected = module.load_state_dict(dict(sd), strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{what}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")


def _on_meta(factory) -> nn.Module:  # type: ignore[no-untyped-def]
    with torch.device("meta"):
        return factory()


def linear_proj_to_conv(unet_sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """SD2.1 ``proj_in/proj_out`` Linear weights [C, C] → this U-Net's 1×1 conv weights [C, C, 1, 1]."""
    out = dict(unet_sd)
    for k, v in unet_sd.items():
        if (".proj_in.weight" in k or ".proj_out.weight" in k) and v.ndim == 2:
            out[k] = v[:, :, None, None]
    return out


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
    parts = split_by_prefix(sd)
    if parts["sketch_encoder"]:
        return infer_config(sd, metadata), True
    if not parts["unet"] or not parts["vae"]:
        raise ValueError("the init checkpoint has neither a ColorizeDiffusion nor an SD2.1 LDM layout "
                         "(model.diffusion_model.* and first_stage_model.* are needed)")
    unet = infer_unet_config(linear_proj_to_conv(parts["unet"]))
    sketch = SketchEncoderConfig(model_channels=unet.model_channels, ch_mults=unet.channel_mult)
    return ColorizerConfig(unet=unet, sketch=sketch, vae=infer_vae_config(parts["vae"])), False


def build_modules(cfg: ModelConfig, prediction: str = "eps", device: str | torch.device = "cpu",
                  version: str = "mult") -> TrainModules:
    """All four modules in float32; the VAE and CLIP frozen and in eval mode.

    ``version``: the model the stage trains ("mult" v1, "switch" v1.5: ``training.switch_model``).

    Weights from files are read on the CPU and moved to ``device``; random modules are built on ``device``
    directly (the benchmark's fast path; a CPU build is reproducible across devices)."""
    if version == "switch":
        from training.switch_model import build_switch_denoiser

        config, den, vae, parts = build_switch_denoiser(cfg, prediction)
        clip = _build_clip(cfg, config, parts, device)
        vae.to(device, torch.float32).requires_grad_(False).eval()
        clip.to(device, torch.float32).requires_grad_(False).eval()
        return TrainModules(config, den.to(device), vae, clip)
    if version == "v2":
        from training.v2_model import build_v2_denoiser

        config, den, vae, parts = build_v2_denoiser(cfg, prediction)
        clip = _build_clip(cfg, config, parts, device)
        vae.to(device, torch.float32).requires_grad_(False).eval()
        clip.to(device, torch.float32).requires_grad_(False).eval()
        return TrainModules(config, den.to(device), vae, clip)
    if version != "mult":
        raise ValueError(f"unknown model version {version!r}")
    sd, config, has_sketch = initial_weights(cfg)
    if config.version != "mult":
        raise NotImplementedError(
            f"{cfg.init} is a {config.version} checkpoint; the v1 stages train v1 ('mult') models only "
            "(v1.5 models: stage switch_fgbg; v2 models: stages v2_background, v2_style)")
    config = replace(config, parameterization=prediction)  # type: ignore[arg-type]
    parts = split_by_prefix(sd)
    torch.manual_seed(cfg.init_seed)
    gc = cfg.gradient_checkpointing
    if sd:
        unet = _on_meta(lambda: DualCondUNet(config.unet, use_checkpoint=gc))
        _assign(unet, linear_proj_to_conv(parts["unet"]), "U-Net")
        vae = _on_meta(lambda: AutoencoderKL(config.vae))
        _assign(vae, parts["vae"], "VAE")
    else:
        with torch.device(device):
            unet, vae = DualCondUNet(config.unet, use_checkpoint=gc), AutoencoderKL(config.vae)
    if has_sketch:
        sketch = _on_meta(lambda: SketchEncoder(config.sketch))
        _assign(sketch, parts["sketch_encoder"], "sketch encoder")
    else:
        with torch.device(device):
            sketch = SketchEncoder(config.sketch)
    clip = _build_clip(cfg, config, parts, device)
    denoiser = Denoiser(unet, sketch).to(device, torch.float32)
    vae.to(device, torch.float32).requires_grad_(False).eval()
    clip.to(device, torch.float32).requires_grad_(False).eval()
    return TrainModules(config, denoiser, vae, clip)


def _build_clip(
    cfg: ModelConfig, config: ColorizerConfig, parts: dict[str, dict[str, Tensor]], device: str | torch.device
) -> ReferenceEncoder:
    from colorize.loader import (
        load_reference_encoder,
        load_reference_encoder_from_state_dict,
    )

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


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, color: Tensor, vae_noise: Tensor | None) -> Tensor:
    """Colour images in [-1, 1] → diffusion latents ``scale · z``; ``z`` = posterior sample with the given
    standard-normal draw (official: ``posterior.sample()``), or the mean when ``vae_noise`` is None."""
    post = vae.encode(color)
    z = post.mean if vae_noise is None else post.mean + post.std * vae_noise.to(post.mean)
    return z * vae.cfg.scale_factor


@torch.no_grad()
def encode_reference(clip: ReferenceEncoder, reference: Tensor) -> Tensor:
    """Reference images in [-1, 1] → (b, 256, C) patch tokens (CLS dropped, as the released models use)."""
    return clip.encode_image(reference, "full")[:, 1:]
