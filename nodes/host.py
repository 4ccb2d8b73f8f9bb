"""ComfyUI runtime glue: devices, model placement, progress bars, latent previews and interrupts.

ComfyUI counts as present when it has already imported its own modules (``comfy.model_management``,
``folder_paths``), as it always has before loading a node pack. Nothing here imports ComfyUI at module
import time, and every helper has a plain-PyTorch fallback, so the node classes can be imported and run
in unit tests without ComfyUI (CPU/auto device, no progress UI, no interrupts).
"""
from __future__ import annotations

import importlib
import logging
import sys
from types import ModuleType
from typing import Any, Literal

import torch
from torch import nn

from colorize.device import resolve_device, resolve_dtype

log = logging.getLogger("ColorizeDiffusion")
Role = Literal["unet", "vae", "clip"]
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def comfy_module(name: str) -> ModuleType | None:
    """A ComfyUI module (``comfy.utils``, ``latent_preview``, ...) when ComfyUI is running, else None."""
    if "comfy.model_management" not in sys.modules:
        return None
    return sys.modules.get(name) or importlib.import_module(name)


def model_management() -> ModuleType | None:
    return comfy_module("comfy.model_management")


# ----------------------------------------------------------------------------------------- devices


def load_device(role: Role) -> torch.device:
    """Where a model of this role computes (ComfyUI's choice, honouring --cpu/--gpu-only/...)."""
    mm = model_management()
    if mm is None:
        return resolve_device("auto")
    if role == "vae":
        return mm.vae_device()
    if role == "clip":
        return mm.text_encoder_device()
    return mm.get_torch_device()


def offload_device(role: Role) -> torch.device:
    """Where a model of this role waits between uses (CPU unless ComfyUI keeps it on the GPU)."""
    mm = model_management()
    if mm is None:
        return resolve_device("auto")
    if role == "vae":
        return mm.vae_offload_device()
    if role == "clip":
        return mm.text_encoder_offload_device()
    return mm.unet_offload_device()


def intermediate_device() -> torch.device:
    """Where node outputs (tokens, hints, latents, images) are kept."""
    mm = model_management()
    return mm.intermediate_device() if mm is not None else torch.device("cpu")


def unet_dtype(precision: str, device: torch.device, params: int) -> torch.dtype:
    """``auto`` = ComfyUI's choice for a U-Net of this size on this device (fp16/bf16/fp32 only),
    outside ComfyUI fp16 on CUDA/MPS and fp32 on CPU; otherwise the named precision."""
    if precision != "auto":
        return resolve_dtype(precision, device)
    mm = model_management()
    if mm is None:
        return resolve_dtype("auto", device)
    dtype = mm.unet_dtype(device=device, model_params=params,
                          supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
    return dtype if dtype in _DTYPES.values() else torch.float32


# ----------------------------------------------------------------------------------------- placement


class ManagedModule:
    """A frozen ``nn.Module`` that ComfyUI's model management places (loads onto the compute device when
    needed, offloads when another model needs the memory). Call :meth:`ready` before every use.

    Inside ComfyUI it is wrapped in a ``comfy.model_patcher.ModelPatcher`` and loaded in full with
    ``load_models_gpu``; outside ComfyUI it is moved once to the ``auto`` device.
    """

    def __init__(self, module: nn.Module, role: Role) -> None:
        self.module = module.eval().requires_grad_(False)
        self.role = role
        self.patcher: Any = None
        mp = comfy_module("comfy.model_patcher")
        if mp is not None:
            self.patcher = mp.ModelPatcher(module, load_device=load_device(role), offload_device=offload_device(role))

    def ready(self) -> nn.Module:
        """The module, on its compute device."""
        mm = model_management()
        if self.patcher is not None and mm is not None:
            # Full load: these modules are plain torch layers (no comfy.ops casting), so they cannot run
            # partially offloaded; ComfyUI still frees other models to make room and offloads this one later.
            mm.load_models_gpu([self.patcher], force_full_load=True)
        else:
            self.module.to(load_device(self.role))
        return self.module


def ready_all(*managed: ManagedModule) -> list[nn.Module]:
    """Several modules on their compute devices at once (one ``load_models_gpu`` call inside ComfyUI, so
    placing one cannot offload another of the same generation)."""
    mm = model_management()
    patchers = [m.patcher for m in managed if m.patcher is not None]
    if mm is not None and patchers:
        mm.load_models_gpu(patchers, force_full_load=True)
    for m in managed:
        if m.patcher is None or mm is None:
            m.module.to(load_device(m.role))
    return [m.module for m in managed]


# ----------------------------------------------------------------------------------------- progress


class Progress:
    """A ComfyUI progress bar (``comfy.utils.ProgressBar``) for the running node; a no-op outside ComfyUI."""

    def __init__(self, total: int) -> None:
        utils = comfy_module("comfy.utils")
        self.bar = utils.ProgressBar(total) if utils is not None else None
        self.total = total
        self.value = 0

    def update(self, value: int, total: int | None = None, preview: Any = None) -> None:
        self.value, self.total = value, total if total is not None else self.total
        if self.bar is not None:
            self.bar.update_absolute(value, self.total, preview)


def check_interrupted() -> None:
    """Raise ComfyUI's ``InterruptProcessingException`` if the user pressed Cancel (no-op outside ComfyUI)."""
    mm = model_management()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


class LatentPreview:
    """Turns the sampler's x0 estimate (diffusion space, VAE latent × 0.18215: ComfyUI's SD1/SD2 latent
    format) into the preview image ComfyUI shows under the progress bar. None-preview outside ComfyUI or
    when previews are off (``--preview-method none``)."""

    def __init__(self, device: torch.device) -> None:
        self.previewer = None
        lp, formats = comfy_module("latent_preview"), comfy_module("comfy.latent_formats")
        if lp is not None and formats is not None:
            self.previewer = lp.get_previewer(device, formats.SD15())

    def __call__(self, x0: torch.Tensor) -> Any:
        if self.previewer is None:
            return None
        return self.previewer.decode_latent_to_preview_image("JPEG", x0.float())


__all__ = [
    "LatentPreview",
    "ManagedModule",
    "Progress",
    "check_interrupted",
    "comfy_module",
    "intermediate_device",
    "load_device",
    "model_management",
    "offload_device",
    "ready_all",
    "unet_dtype",
]
