"""The checkpoint as ComfyUI's own MODEL + VAE, and the colorizer's modules beside it (no node here).

The U-Net of a ColorizeDiffusion checkpoint is an SD2.1 U-Net (thesis §5.3.1) whose keys are the official
``model.diffusion_model.*`` names, so it becomes ComfyUI's own SD2.x model (eps for v1 / v1.5, v for v2, read
from the keys) and works with KSampler, custom samplers, LoRA loaders, model merging, previews and model
management. The colorizer's additions (sketch encoder, v1.5/v2 split LoRA, v2 warp/style modules, conditioning
encoders) travel beside it as COLORIZE_NATIVE and are applied by the patch nodes (:mod:`.model_patches`).
ComfyUI is imported lazily: this module imports without it (unit tests).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from colorize.config import ColorizerConfig
from colorize.errors import InputError
from colorize.families import get_family
from colorize.native import NativeCheckpoint, attention_blocks, hint_block_indices, host_unet_config, read_vae

from ..host import ManagedModule, comfy_module, offload_device

COLORIZE_NATIVE = "COLORIZE_NATIVE"
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class NativeParts:
    """The colorizer's own modules beside a native MODEL (treated as immutable, like every node output).

    ``extras`` (sketch encoder, split LoRA, v2 warp/style) runs inside the U-Net call; it is placed by
    ComfyUI together with the U-Net once a patch node attaches it to the MODEL (``extras.patcher``).
    ``encoders`` (v1.5 threshold embedder / recovery transformer, v2 background / style encoders) run once
    per generation in Native Enhance. The VAE the v2 posterior sample needs is read on first use.
    """

    def __init__(self, name: str, path: Path, config: ColorizerConfig, extras: nn.Module,
                 encoders: dict[str, nn.Module], dtype: torch.dtype) -> None:
        self.name, self.path, self.config, self.dtype = name, path, config, dtype
        self.extras = ManagedModule(extras, "unet")
        self.encoders = {k: ManagedModule(m, "unet") for k, m in encoders.items()}
        self.blocks = attention_blocks(config.unet)
        self.hint_indices = hint_block_indices(config.unet)
        self._vae: ManagedModule | None = None

    @property
    def module(self) -> nn.Module:
        """The :class:`~colorize.native.NativeExtras` module (wherever ComfyUI currently keeps it)."""
        return self.extras.module

    def vae(self) -> nn.Module:
        """The checkpoint's VAE as the library builds it (fp32, on its compute device; read once)."""
        if self._vae is None:
            vae = read_vae(self.path, self.config).to(offload_device("vae"), torch.float32)
            self._vae = ManagedModule(vae, "vae")
        return self._vae.ready()

    def describe(self) -> str:
        tiny = "; tiny random test weights" if self.config.tiny else ""
        host = "SDXL" if self.config.unet.adm_in_channels is not None else "SD2.x"
        return (f"{self.name}: {get_family(self.config.version).title} as a native {host} MODEL, "
                f"{self.config.parameterization}-prediction, {str(self.dtype).replace('torch.', '')}{tiny}")


def adm_model_class() -> type:
    """ComfyUI's ``BaseModel`` with the ColorizeDiffusion XL adm vector (``y``: sinusoids of √(H·W) of the output
    in pixels and of the score 7.0, :func:`colorize.families.xl.unet.adm_vector`) instead of SDXL's 2816-value
    text/size vector; ComfyUI passes the output size as ``width``/``height`` (the latent's × 8)."""
    from comfy import model_base

    from colorize.families.xl.unet import adm_vector

    class ColorizeAdmModel(model_base.BaseModel):
        def encode_adm(self, **kwargs: Any) -> Tensor:
            noise = kwargs["noise"]
            return adm_vector(int(kwargs["height"]), int(kwargs["width"]), int(noise.shape[0]),
                              device=kwargs.get("device"))

    return ColorizeAdmModel


def native_model(ck: NativeCheckpoint, precision: str) -> Any:
    """ComfyUI's SD2.x ``ModelPatcher`` for the checkpoint's U-Net (SDXL with the XL adm vector for an XL
    checkpoint); its config comes from ours (tiny and custom layouts included), never from ComfyUI's shape
    detection or eps/v guess."""
    mm = comfy_module("comfy.model_management")
    if mm is None:
        raise InputError("the native bridge needs ComfyUI (comfy.model_management is not loaded)")
    from comfy import model_base, model_patcher, supported_models

    params = sum(t.numel() for t in ck.unet.values())
    xl = ck.config.unet.adm_in_channels is not None  # an adm input: the SDXL U-Net and latent format (0.13025)
    model_config = (supported_models.SDXL if xl else supported_models.SD20)(host_unet_config(ck.config.unet))
    model_config.unet_config["num_head_channels"] = ck.config.unet.num_head_channels  # the presets say 64
    dev = mm.get_torch_device()
    supported = list(model_config.supported_inference_dtypes)
    dtype = _DTYPES[precision] if precision in _DTYPES else mm.unet_dtype(model_params=params, supported_dtypes=supported)
    model_config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, dev, supported))
    kind = model_base.ModelType.V_PREDICTION if ck.config.parameterization == "v" else model_base.ModelType.EPS
    model_class = adm_model_class() if xl else model_base.BaseModel
    model = model_class(model_config, model_type=kind).to(mm.unet_offload_device())
    missing, unexpected = model.diffusion_model.load_state_dict(ck.unet, strict=False)
    if missing or unexpected:
        raise InputError(f"{ck.name}: the U-Net does not fit ComfyUI's U-Net (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return model_patcher.ModelPatcher(model, load_device=dev, offload_device=mm.unet_offload_device())


def native_vae(ck: NativeCheckpoint) -> Any:
    """ComfyUI's ``VAE`` for the checkpoint's kl-f8 autoencoder (config from ours, so tiny files work too)."""
    from comfy import sd

    v = ck.config.vae
    ddconfig = {"double_z": True, "z_channels": v.z_channels, "resolution": 256, "in_channels": v.in_channels,
                "out_ch": v.out_ch, "ch": v.ch, "ch_mult": list(v.ch_mult), "num_res_blocks": v.num_res_blocks,
                "attn_resolutions": [], "dropout": 0.0}
    return sd.VAE(sd=dict(ck.vae), config={"params": {"ddconfig": ddconfig, "embed_dim": v.embed_dim}})


def host_dtype(model: Any) -> torch.dtype:
    """The compute dtype of a native MODEL (its manual-cast dtype when weights are stored otherwise)."""
    base = model.model
    return base.manual_cast_dtype or base.get_dtype()


def reference_conditioning(tokens: Tensor) -> tuple[list[list[Any]], list[list[Any]]]:
    """Positive = the reference context; negative = a zero context of the same shape, the official
    reference-unconditional row (zero keys/values: the attention result is exactly 0, thesis §5.3)."""
    tokens = tokens.float()
    return [[tokens, {}]], [[torch.zeros_like(tokens), {}]]


__all__ = ["COLORIZE_NATIVE", "NativeParts", "host_dtype", "native_model", "native_vae", "reference_conditioning"]
