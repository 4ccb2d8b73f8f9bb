"""Speed and memory options of ``python -m colorize bench``: low-VRAM offload, a memory cap,
``torch.compile``, CUDA graphs, channels-last, VAE tiling. Checked before the model is built (options a
device cannot honour are refused with a clear message) and applied to the built colorizer."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch

from colorize.errors import InputError
from colorize.models.vae_tiling import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    TILING_MODES,
    VaeTiling,
    as_tiling,
)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GIB = float(1 << 30)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speed and memory options")
    g.add_argument("--with-text", action="store_true",
                   help="keep the CLIP text tower on the device (1.3 GiB), as the official app always does; by "
                        "default it is dropped, as the library and nodes do unless a text edit needs it")
    g.add_argument("--low-vram", action="store_true",
                   help="sequential offload: CLIP and the U-Net live on the CPU and move to the device only while "
                        "they run; VAE tiling auto (colorize.offload)")
    g.add_argument("--memory-cap-gib", type=float, default=None, metavar="GIB",
                   help="cap this process' CUDA memory (torch.cuda.set_per_process_memory_fraction), set after "
                        "the model is built; CUDA only")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the U-Net (falls back to eager with a warning if compiling fails)")
    g.add_argument("--compile-mode", choices=COMPILE_MODES, default="default")
    g.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="replay a CUDA graph of each U-Net call signature (launch-bound small sizes); CUDA only")
    g.add_argument("--channels-last", action="store_true",
                   help="U-Net, sketch encoder and VAE weights in channels-last (NHWC) layout")
    g.add_argument("--vae-tiling", choices=TILING_MODES, default=None,
                   help="tiled VAE decode: off, auto (images above 1024² pixels) or on (default: off, auto with "
                        "--low-vram)")
    g.add_argument("--vae-tile", type=int, default=DEFAULT_TILE, help="VAE tile size in latent pixels")
    g.add_argument("--vae-overlap", type=int, default=DEFAULT_OVERLAP, help="VAE tile overlap in latent pixels")
    g.add_argument("--tolerance", action="store_true",
                   help="also measure fp16 and bf16 against fp32 on the same random weights (decoded image max/mean "
                        "abs difference) at --tolerance-res")
    g.add_argument("--tolerance-res", type=int, default=None,
                   help="resolution of the precision check (default: the smallest benchmarked one)")


def check(args: argparse.Namespace, device: torch.device) -> None:
    """Refuse options the device or the other arguments cannot honour (before anything is built)."""
    cuda_only = [name for name, on in (("--memory-cap-gib", args.memory_cap_gib is not None),
                                       ("--cuda-graphs", args.cuda_graphs)) if on]
    if cuda_only and device.type != "cuda":
        raise InputError(f"{' and '.join(cuda_only)} need a CUDA device; this run uses {device}")
    if args.low_vram and args.cuda_graphs:
        raise InputError("--cuda-graphs cannot be combined with --low-vram: offloading gives the U-Net new device "
                         "weights every generation, while a captured graph replays the addresses it recorded")
    if args.memory_cap_gib is not None and args.memory_cap_gib <= 0:
        raise InputError("--memory-cap-gib must be positive")
    if not 0 <= args.vae_overlap < args.vae_tile:
        raise InputError("--vae-overlap must be at least 0 and smaller than --vae-tile")
    if args.tolerance and (args.checkpoint is not None or args.memory_cap_gib is not None):
        raise InputError("--tolerance compares precisions on random weights without a memory cap; leave out "
                         "--checkpoint and --memory-cap-gib")


def set_memory_cap(device: torch.device, cap_gib: float) -> dict[str, Any]:
    """Cap the CUDA caching allocator of this process at ``cap_gib`` (an 8 GB card on a big one)."""
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, cap_gib * GIB / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return {"memory_cap_gib": cap_gib, "memory_fraction": fraction,
            "allocated_when_capped_gib": torch.cuda.memory_allocated(device) / GIB}


def apply(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Apply the options to a built colorizer; returns what was applied (for the JSON)."""
    from colorize.offload import enable_low_vram
    from colorize.speedups import compile_module, install_cuda_graphs, to_channels_last

    applied: dict[str, Any] = {"low_vram": bool(args.low_vram)}
    if args.low_vram and getattr(model, "offload", None) is None:
        enable_low_vram(model)
    if getattr(model, "offload", None) is not None:
        applied["offload_resident"] = sorted(model.offload.resident())
    mode = args.vae_tiling or as_tiling(getattr(model, "vae_tiling", "off")).mode
    model.vae_tiling = VaeTiling(mode, args.vae_tile, args.vae_overlap)
    applied["vae_tiling"] = dataclasses.asdict(model.vae_tiling)
    if args.channels_last:
        applied["channels_last_tensors"] = to_channels_last(model.unet, model.sketch_encoder, model.vae)
    states = []
    if args.compile:
        mode = None if args.compile_mode == "default" else args.compile_mode
        states.append(compile_module(model.unet, mode=mode, backend=args.compile_backend))
    if args.cuda_graphs:
        states.append(install_cuda_graphs(model.unet))
    applied["unet_speedups"] = states  # SpeedupState objects, turned into dicts after the run
    if args.memory_cap_gib is not None:
        applied.update(set_memory_cap(model.device, args.memory_cap_gib))
    return applied


def finish(applied: dict[str, Any]) -> dict[str, Any]:
    """The applied options as JSON data (speed-up states as they ended: active, or the fallback reason)."""
    return {**applied, "unet_speedups": [s.as_dict() for s in applied.get("unet_speedups", [])]}


__all__ = ["COMPILE_MODES", "add_arguments", "apply", "check", "finish", "set_memory_cap"]
