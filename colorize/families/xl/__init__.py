"""ColorizeDiffusion XL (SDXL, 1024 px): the families ``sdxl`` and ``xlv2`` (official repository
tellurion-kanata/ColorizeDiffusionXL at commit ec78784; CVPR 2026).

Both model types share this folder: an SDXL U-Net with reference tokens from ClusterConcat over OpenCLIP
ViT-bigG/14 and WD v1.4 SwinV2 tagger features (:mod:`.conditioning`, :mod:`.clip_bigg`, :mod:`.tagger`), the
multi-scale attention sketch encoder (:mod:`.sketch_encoder`), the adm vector (:mod:`.unet`), the VAE at scale
0.13025 (:mod:`.sizes`). ``xlv2`` adds the ReferenceNet background encoder and the background LoRA
(:mod:`.reference_net`, :mod:`.bank`). What one generation gives the U-Net (plain, or with background
separation): :mod:`.separation`. Detection from keys and the parameterisation rule: :mod:`.detect`; the released
layouts: :mod:`.layout`; block groups and strength rules: :mod:`.blocks`.

CLIP-bigG and the tagger are not inside released checkpoints (the official exporter drops them,
``ckpt_util.py:79-96``): they are loaded from their own files (:mod:`.encoders`).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import nn

from colorize.checkpoint.assign import materialize, require_components
from colorize.checkpoint.infer import infer_unet_config, infer_vae_config
from colorize.checkpoint.keys import DEFAULT_OPTIONAL
from colorize.config import ColorizerConfig, SketchEncoderConfig, UNetConfig, VAEConfig
from colorize.errors import CheckpointError, InputError
from colorize.families.base import Family, Parts, SeparationInputs, TrainingStart, UNetInputs
from colorize.families.xl import detect, separation
from colorize.families.xl.blocks import block_groups, sdxl_reference_scales, xlv2_reference_scales
from colorize.families.xl.conditioning import ClusterConcat, ClusterConcatConfig, infer_cluster_concat_config
from colorize.families.xl.layout import xl_layout
from colorize.families.xl.reference_net import (
    BACKGROUND_LORA_RANK,
    CONV_FG_IN_CHANNELS,
    ReferenceNet,
    build_reference_net,
    build_xlv2_unet,
    latent_mask,
    reference_net_config,
)
from colorize.families.xl.sizes import XL_BASE_RESOLUTION, XL_SIZE_MULTIPLE, XL_VAE_SCALE, autofit_size, check_xl_size
from colorize.families.xl.sketch_encoder import MultiScaleAttentionEncoder, infer_sketch_encoder_config
from colorize.families.xl.unet import TINY_XL_UNET, build_xl_unet

#: ``ColorizerConfig.extras`` of an XL model: the head widths shapes cannot show (sketch encoder, ClusterConcat)
#: and ClusterConcat's token count (the tagger's grid², 196 released).
XL_EXTRAS_DEFAULTS: dict[str, int] = {"sketch_dim_head": 128, "proj_dim_head": 128, "token_length": 196}
#: Key prefixes a released file does not carry (CLIP and tagger come from their own files; the schedule is
#: recomputed; ``conv_fg`` is unused and not reported by the official loader either, ``ckpt_util.py:120-134``).
XL_OPTIONAL = (*DEFAULT_OPTIONAL, "cond_stage_model.model.", "img_embedder.model.",
               "model.diffusion_model.conv_fg.")
#: The tiny test sizes: the fixture's U-Net topology (70 transformer blocks, so the official block lists apply).
TINY_XL_SKETCH = SketchEncoderConfig(model_channels=32, ch_mults=(1, 2, 1))
TINY_XL_EXTRAS: dict[str, int] = {"sketch_dim_head": 16, "proj_dim_head": 16, "token_length": 196}


def xl_extras(config: ColorizerConfig) -> dict[str, int]:
    """The XL extras of ``config`` with the released values for those it does not set."""
    return {k: int(config.extras.get(k, v)) for k, v in XL_EXTRAS_DEFAULTS.items()}


class XLFamily(Family):
    """ColorizeDiffusion XL ``sdxl``: reference tokens in every cross-attention, sketch hints at four points, the
    adm vector; background separation by the masked split attention (``separation.sdxl_separation``)."""

    name = "sdxl"
    label = "XL"
    title = "ColorizeDiffusion XL (sdxl)"
    parameterization = "v"  # the official rule for names without "eps" (detect.xl_parameterization)
    base_resolution = XL_BASE_RESOLUTION
    components: ClassVar[dict[str, str]] = {"proj": "proj."}
    optional_keys: ClassVar[tuple[str, ...]] = XL_OPTIONAL
    attention_block_count = 70
    reference_files = ("clip-vit-bigg-14-vision", "wd-v1-4-swinv2-tagger-v2")
    default_sampling = ("dpmpp_3m_sde", "auto")  # the app: DPM++ 3M SDE on the "Automatic" exponential schedule
    training_sources: ClassVar[tuple[str, ...]] = ("sdxl",)
    size_multiple = XL_SIZE_MULTIPLE

    # ------------------------------------------------------------------ detection and config
    def matches(self, keys: Collection[str] | Mapping[str, Any]) -> bool:
        return detect.xl_model_type(keys) == self.name

    def layout(self) -> dict[str, tuple[int, ...]]:
        return xl_layout(self.name)

    def infer_config(self, parts: Mapping[str, Mapping[str, Any]],
                     num_head_channels: int | None = None) -> ColorizerConfig:
        try:
            unet = infer_unet_config(parts["unet"], num_head_channels)
            sketch = infer_sketch_encoder_config(parts["sketch_encoder"], dim_head=4)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise CheckpointError(f"cannot infer the XL configuration: {type(e).__name__}: {str(e)[:200]}") from None
        vae = replace(infer_vae_config(parts["vae"]), scale_factor=XL_VAE_SCALE) if parts.get("vae") else \
            VAEConfig(scale_factor=XL_VAE_SCALE)
        return ColorizerConfig(
            version=self.name, parameterization=self.parameterization, unet=unet,  # type: ignore[arg-type]
            sketch=SketchEncoderConfig(sketch.in_ch, sketch.model_channels, sketch.ch_mults), vae=vae,
            extras=dict(XL_EXTRAS_DEFAULTS))

    def resolve_parameterization(self, metadata: Mapping[str, str] | None, file_name: str | None,
                                 override: str | None = None) -> tuple[str, str]:
        """The official rule (file name), unless our export metadata or an explicit choice says
        (:func:`.detect.xl_parameterization`)."""
        return detect.xl_parameterization(metadata, file_name, override)

    # ------------------------------------------------------------------ modules
    def build_unet(self, config: ColorizerConfig, parts: Parts, name: str) -> nn.Module:
        return materialize(lambda: build_xl_unet(config.unet), parts.pop("unet"), f"{name} (U-Net)")

    def sketch_encoder_module(self, config: ColorizerConfig, shapes: Mapping[str, Any]) -> nn.Module:
        """The multi-scale attention sketch encoder of these shapes (its head width from ``config.extras``)."""
        cfg = infer_sketch_encoder_config(shapes, dim_head=xl_extras(config)["sketch_dim_head"])
        return MultiScaleAttentionEncoder(cfg)

    def build_extras(self, config: ColorizerConfig, parts: Parts, name: str) -> dict[str, nn.Module]:
        require_components(parts, self.components, tuple(self.components), name)
        sd = parts.pop("proj")
        extras = xl_extras(config)
        cfg = infer_cluster_concat_config(sd, extras["token_length"], extras["proj_dim_head"])
        return {"proj": materialize(lambda: ClusterConcat(cfg), sd, f"{name} (ClusterConcat)")}

    def cast_extras(self, extras: Mapping[str, nn.Module], device: torch.device, dtype: torch.dtype) -> None:
        """ClusterConcat in fp32 (the official ``switch_to_fp16`` leaves the conditioning modules in fp32); the
        ReferenceNet in ``dtype`` with its time and adm embeddings in fp32 (``v2-colorizerXL.py`` ``switch_to_fp16``)."""
        for key, module in extras.items():
            half = dtype != torch.float32 and isinstance(module, ReferenceNet)
            module.to(device, dtype if half else torch.float32).eval().requires_grad_(False)
            if half:
                module.time_embed.float()
                module.label_emb.float()

    def check_reference_files(self, clip: Any, tagger: Any = None) -> None:
        if clip is None or tagger is None:
            raise InputError(f"{self.label} needs two reference-encoder files: CLIP ViT-bigG-14 "
                             "(models/clip_vision/clip_vision_g.safetensors) and the WD v1.4 SwinV2 tagger "
                             "(models/wd_tagger/wd-v1-4-swinv2-tagger-v2.safetensors)")

    def load_reference_encoder(self, clip: Any, tagger: Any = None, with_text: bool = False,
                               extras: Mapping[str, nn.Module] | None = None) -> nn.Module:
        """CLIP-bigG and the WD tagger from their own files (:mod:`.encoders`), checked against the checkpoint's
        ClusterConcat (``extras["proj"]``) when given. XL has no text manipulation (``with_text`` is refused)."""
        from colorize.families.xl.encoders import check_encoder_fits, load_xl_reference_encoder

        if with_text:
            raise InputError(f"{self.label} has no text manipulation (its reference encoder is a vision tower only)")
        self.check_reference_files(clip, tagger)
        encoder = load_xl_reference_encoder(clip, tagger)
        if extras and "proj" in extras:
            check_encoder_fits(encoder, extras["proj"], "this checkpoint's ClusterConcat")
        return encoder

    def encode_reference(self, encoder: Any, extras: Mapping[str, nn.Module], reference: torch.Tensor
                         ) -> torch.Tensor:
        """Reference in [-1, 1] → the ClusterConcat context (b, 196, 2048): CLIP-bigG's 257 projected tokens and
        the tagger's 14×14 features (``encoder``: :class:`.encoders.XLReferenceEncoder`) fused by ``proj``."""
        return separation.reference_context(encoder, extras["proj"], reference)

    # ------------------------------------------------------------------ generation
    def check_size(self, width: int | None, height: int | None) -> None:
        """Given sides must be multiples of 32 (a one-line error naming a near size, not silent rounding)."""
        check_xl_size(height or None, width or None)

    def output_size(self, sketch_hw: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
        """``(height, width)``: given sides as they are (:meth:`check_size`); one given side sets the other by the
        sketch's aspect (rounded to a multiple of 32); none = the official autofit (aspect at 1024², each side a
        multiple of 32 within [768, 1536], ``backend/appfunc.py:966-985``)."""
        width, height = width or None, height or None
        self.check_size(width, height)
        if width is None and height is None:
            return autofit_size(sketch_hw)
        h, w = sketch_hw
        m = XL_SIZE_MULTIPLE
        if height is None:
            height = max(m, int(width * h / w + m // 2) // m * m)  # type: ignore[operator]
        if width is None:
            width = max(m, int(height * w / h + m // 2) // m * m)
        return int(height), int(width)

    def reference_scales(self, unet_config: UNetConfig, settings: Any) -> list[float]:
        """One reference strength per transformer block (70 at full size). ``settings.level_rule`` ``official``
        (default) is the sdxl app: only the encoder slider acts, on every block (``colorizerXL.py:67-69``);
        ``levels`` uses all three sliders (high ← encoder, bottom ← middle, low ← low). ``block_strengths`` gives
        one value per block."""
        groups = block_groups(unet_config)
        strength = float(settings.reference_strength)
        if settings.block_strengths is not None:
            return sdxl_reference_scales(groups, list(settings.block_strengths), level_control=False,
                                         strength=strength)
        levels = {"encoder": 1.0, "middle": 1.0, "low": 1.0, **dict(settings.level_strengths or {})}
        return sdxl_reference_scales(groups, levels, strength=strength, rule=settings.level_rule)

    def check_enhance(self, enhance: Any) -> None:
        if enhance.foreground_enhance or enhance.style_enhance:
            raise InputError(f"{self.label} checkpoints have background enhance only (no foreground or style "
                             "enhance): turn those off")
        if enhance.remove_background_foreground or enhance.lora_scale != 1.0 or enhance.background_factor != 1.0:
            raise InputError(f"{self.label} has no remove-background-foreground, LoRA scale or background factor "
                             "control: leave them at their defaults")
        if enhance.background_context != "background":
            raise InputError(f"background_context is a v2 control; {self.label} reads the background tokens")

    def separation(self, extras: Mapping[str, nn.Module], enhance: Any, inputs: SeparationInputs) -> UNetInputs:
        return separation.sdxl_separation(extras, enhance, inputs)

    def unet_kwargs(self, size: tuple[int, int], device: torch.device) -> dict[str, Any]:
        """The adm vector of an output of ``size`` (batch 1, tiled over the rows by the U-Net)."""
        return separation.adm_kwargs(size, device)

    def latent_mask(self, pixel_mask: torch.Tensor, factor: int) -> torch.Tensor:
        """The sketch mask on the latent grid by nearest ×1/8 (``colorizerXL.py:176-180``; SD2.1: bicubic)."""
        return latent_mask(pixel_mask if pixel_mask.ndim == 4 else pixel_mask[:, None], factor)

    # ------------------------------------------------------------------ tiny test models
    def tiny_config(self, base: ColorizerConfig) -> ColorizerConfig:
        """The fixture's tiny U-Net (model_channels 32, channel_mult (1, 2, 1), 70 transformer blocks, head
        width 16), context 32, the sketch encoder of the same widths (head width 16), the base's tiny VAE at the XL
        scale."""
        unet = replace(TINY_XL_UNET, context_dim=32)
        return ColorizerConfig(version=self.name, parameterization=self.parameterization,  # type: ignore[arg-type]
                               unet=unet, sketch=TINY_XL_SKETCH,
                               vae=replace(base.vae, scale_factor=XL_VAE_SCALE),
                               extras=dict(TINY_XL_EXTRAS))

    def fresh_modules(self, config: ColorizerConfig) -> dict[str, nn.Module]:
        from colorize.families.xl.encoders import TINY_XL_CLIP, TINY_XL_TAGGER
        from colorize.families.xl.sketch_encoder import MultiScaleEncoderConfig

        extras = xl_extras(config)
        sketch = MultiScaleEncoderConfig(config.sketch.in_ch, config.sketch.model_channels, config.sketch.ch_mults,
                                         dim_head=extras["sketch_dim_head"])
        proj = ClusterConcatConfig(TINY_XL_CLIP.projection_dim, TINY_XL_TAGGER.num_features, config.unet.context_dim,
                                   extras["token_length"], extras["proj_dim_head"])
        return {"unet": build_xl_unet(config.unet), "sketch_encoder": MultiScaleAttentionEncoder(sketch),
                "proj": ClusterConcat(proj)}


    def tiny_reference_state_dicts(self, seed: int = 0) -> tuple[dict[str, torch.Tensor], ...]:
        from colorize.families.xl.encoders import tiny_encoder_state_dicts

        return tiny_encoder_state_dicts(seed)

    # ------------------------------------------------------------------ training (:mod:`.training`)
    def training_model(self, start: TrainingStart) -> tuple[ColorizerConfig, nn.Module, nn.Module]:
        from colorize.families.xl.training import build_training_model

        return build_training_model(self.name, start)

    def text_to_image_config(self, parts: Mapping[str, Mapping[str, Any]]) -> ColorizerConfig | None:
        """An SDXL text-to-image checkpoint (a U-Net with an adm input) starts an XL colorizer."""
        from colorize.families.xl.training import text_to_image_config

        return text_to_image_config(parts.get("unet") or {}, parts.get("vae"))

    def training_reference_encoder(self, denoiser: nn.Module, clip: str | None, tagger: str | None,
                                   device: str | torch.device, allow_random: bool = False) -> nn.Module | None:
        from colorize.families.xl.training import training_reference_encoder

        return training_reference_encoder(denoiser, clip, tagger, device, allow_random)  # type: ignore[arg-type]


class XLV2Family(XLFamily):
    """ColorizeDiffusion XL ``xlv2``: ``sdxl`` plus the ReferenceNet background encoder, the background LoRA and
    the bank self-attention (``separation.xlv2_separation``)."""

    name = "xlv2"
    label = "XL v2"
    title = "ColorizeDiffusion XL v2 (xlv2, ReferenceNet background)"
    components: ClassVar[dict[str, str]] = {"proj": "proj.", "bg_encoder": "bg_encoder."}
    training_sources: ClassVar[tuple[str, ...]] = ("sdxl", "xlv2")

    def build_unet(self, config: ColorizerConfig, parts: Parts, name: str) -> nn.Module:
        sd = parts.pop("unet")
        ranks = {tuple(v.shape)[0] for k, v in sd.items() if k.endswith("lora_down_background.weight")}
        rank = ranks.pop() if len(ranks) == 1 else BACKGROUND_LORA_RANK
        fg = CONV_FG_IN_CHANNELS if "conv_fg.weight" in sd else None
        return materialize(lambda: build_xlv2_unet(config.unet, lora_rank=rank, in_channels_fg=fg), sd,
                           f"{name} (U-Net)")

    def build_extras(self, config: ColorizerConfig, parts: Parts, name: str) -> dict[str, nn.Module]:
        out = super().build_extras(config, parts, name)  # checks that both components are there
        bg = parts.pop("bg_encoder")
        out["bg_encoder"] = materialize(lambda: build_reference_net(reference_net_config(config.unet)), bg,
                                        f"{name} (ReferenceNet)")
        return out

    def native_unused_unet_key(self, key: str) -> bool:
        """The background LoRA and ``conv_fg``: the native bridge runs xlv2's plain path (its background
        separation, the ReferenceNet bank, needs the layers' own projections: the pack's Sampler)."""
        return key.startswith("conv_fg.") or key.endswith(("lora_down_background.weight", "lora_up_background.weight"))

    def reference_scales(self, unet_config: UNetConfig, settings: Any) -> list[float]:
        """The xlv2 (base) rule: encoder blocks ← encoder slider, then low-level blocks ← low slider (× strength);
        the middle block and the top decoder level stay 1 (``basemodel.py:281-294``; the official keeps their
        values from the previous generation, here they never carry over)."""
        groups = block_groups(unet_config)
        strength = float(settings.reference_strength)
        if settings.block_strengths is not None:
            return xlv2_reference_scales(groups, list(settings.block_strengths), level_control=False,
                                         strength=strength)
        levels = {"encoder": 1.0, "low": 1.0, **dict(settings.level_strengths or {})}
        return xlv2_reference_scales(groups, levels, strength=strength)

    def separation(self, extras: Mapping[str, nn.Module], enhance: Any, inputs: SeparationInputs) -> UNetInputs:
        return separation.xlv2_separation(extras, enhance, inputs)

    def fresh_modules(self, config: ColorizerConfig) -> dict[str, nn.Module]:
        out = super().fresh_modules(config)
        out["unet"] = build_xlv2_unet(config.unet)
        out["bg_encoder"] = build_reference_net(reference_net_config(config.unet))
        return out


SDXL = XLFamily()
XLV2 = XLV2Family()

__all__ = ["SDXL", "TINY_XL_EXTRAS", "XLV2", "XLFamily", "XLV2Family", "XL_EXTRAS_DEFAULTS", "xl_extras"]
