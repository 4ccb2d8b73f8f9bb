"""Timing, memory and FLOP counting of one generation's stages (thesis Tab. 5.5: inference time).

Every stage is timed between device synchronisations (``time.perf_counter``); a result is the median
of the measured runs after the warm-up runs. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``
(matrix multiplies, convolutions and attention; elementwise work is not counted), from one extra call of
each stage, so counting never slows the timed runs.
"""
from __future__ import annotations

import statistics
import sys
import time
from contextlib import nullcontext
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from colorize.models.attention import AttentionPatches
from colorize.models.vae_tiling import use_tiling
from colorize.offload import EXTRA_PREFIX
from colorize.preprocess import prepare_reference, prepare_sketch
from colorize.sampling import guidance_rows
from colorize.speedups import eager

GIB = float(1 << 30)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """FLOPs of one call of ``fn`` (total, per aten op); works on any device, the meta device included.

    ``nn.MultiheadAttention``'s fused inference kernel (used by the CLIP towers) is invisible to the counter,
    so its fast path is switched off while counting; the CPU flash-attention kernel, which the counter does
    not know, is counted with the counter's own attention formula."""
    mha = getattr(torch.backends, "mha", None)
    fast = mha.get_fastpath_enabled() if mha is not None else None
    try:
        if mha is not None:
            mha.set_fastpath_enabled(False)
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas()) as counter:
            fn()
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(fast)
    by_op = {str(getattr(op, "__name__", op)).split(".")[-1]: int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return int(counter.get_total_flops()), by_op


def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_flop_formulas() -> dict[Any, Callable[..., int]]:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _sdpa_flops} if op is not None else {}


def reset_peak_memory(device: torch.device) -> float | None:
    """Start a peak-memory window; returns the memory allocated now (GiB) where the device tells."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / GIB
    return None


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory since :func:`reset_peak_memory`: CUDA allocator peaks, or the process' peak resident set
    size elsewhere (best effort: whole process, since its start; ``None`` where the OS does not say)."""
    if device.type == "cuda":
        return {"peak_memory_gib": torch.cuda.max_memory_allocated(device) / GIB,
                "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
                "memory_kind": "torch.cuda.max_memory_allocated"}
    try:
        import resource
    except ImportError:  # Windows
        return {"peak_memory_gib": None, "memory_kind": "unavailable"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"peak_memory_gib": rss * scale / GIB, "memory_kind": "process peak RSS (ru_maxrss, whole process)"}


def synthetic_inputs(size: tuple[int, int], batch: int, seed: int) -> tuple[Tensor, Tensor]:
    """A prepared sketch (sparse random strokes, lines +1) and a random colour reference in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    sketch01 = (torch.rand(batch, 1, *size, generator=g) > 0.05).float().expand(-1, 3, -1, -1)
    reference01 = torch.rand(batch, 3, *size, generator=g)
    return prepare_sketch(sketch01, size, "invert"), prepare_reference(reference01)


def synthetic_masks(size: tuple[int, int], batch: int) -> dict[str, Tensor]:
    """Foreground masks (B, H, W) for background separation: the sketch's and the reference's central box."""
    h, w = size
    mask = torch.zeros(batch, h, w)
    mask[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1.0
    return {"sketch_mask": mask, "reference_mask": mask.clone()}


def bench_size(model: Any, size: tuple[int, int], settings: Any, runs: int = 3, warmup: int = 1,
               unet_iters: int = 10, batch: int = 1, flops: bool = True, enhance: Any = None) -> dict[str, Any]:
    """Time one resolution: stages of ``runs`` generations (after ``warmup``), ``unet_iters`` single U-Net
    calls at the CFG batch size, peak memory, FLOPs and achieved TFLOP/s. ``enhance``
    (:class:`~colorize.settings.EnhanceSettings`): background separation with synthetic masks, its conditioning
    (the background tokens; xlv2: the VAE encode and the ReferenceNet) timed as ``separation_ms``."""
    from colorize.generate import make_conditioning, separation_inputs
    from colorize.injection import generation_injection
    from colorize.models.vae import SeededLatentEncoder
    from colorize.settings import MAX_SEED

    dev = model.device
    sketch, reference = synthetic_inputs(size, batch, settings.seed)
    sketch, reference = sketch.to(dev), reference.to(dev)
    masks = synthetic_masks(size, batch) if enhance is not None and enhance.active else {}
    calls = [0]
    hook = model.unet.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    offload = getattr(model, "offload", None)

    def conditioning(tokens: Tensor) -> Any:
        """The family's U-Net inputs (XL: the adm vector; with ``enhance``: the separation), as the pipeline."""
        encode_latent = SeededLatentEncoder(model.vae, (int(settings.seed) + 2) % (MAX_SEED + 1))
        on_device = {"vae": model.vae, **{EXTRA_PREFIX + k: m for k, m in model.extras.items()}}  # xlv2 ReferenceNet
        with offload.on_device(**on_device) if offload is not None else nullcontext():
            return separation_inputs(model.config, model.extras, enhance, tokens=tokens, reference=reference,
                                     sketch=sketch, sketch_hw=size, encode_tokens=model.encode_reference,
                                     encode_latent=encode_latent, **masks)

    def generate() -> tuple[dict[str, float], Any, Tensor, Tensor]:
        synchronize(dev)
        t0 = time.perf_counter()
        tokens = model.encode_reference(reference)
        synchronize(dev)
        t1 = time.perf_counter()
        hints, hints_uncond = model.encode_sketch(sketch, settings.sketch_strength)
        synchronize(dev)
        t2 = time.perf_counter()
        cond = make_conditioning(conditioning(tokens), hints, hints_uncond, model.dtype)
        cond.injection = generation_injection(reference, size, model.vae, model.sketch_encoder, settings)
        synchronize(dev)
        t3 = time.perf_counter()
        latent = model.sample(cond, size, settings)
        synchronize(dev)
        t4 = time.perf_counter()
        image = model.decode(latent, check_finite=False)  # reported as output_finite
        synchronize(dev)
        t5 = time.perf_counter()
        ms = {"clip_ms": t1 - t0, "sketch_ms": t2 - t1, "separation_ms": t3 - t2, "encode_ms": t3 - t0,
              "sample_ms": t4 - t3, "decode_ms": t5 - t4, "total_ms": t5 - t0}
        return {k: v * 1e3 for k, v in ms.items()}, cond, latent, image

    try:
        for _ in range(warmup):
            generate()
        calls[0] = 0
        moved = offload.bytes_moved if offload is not None else 0
        resident = reset_peak_memory(dev)
        timings = []
        for _ in range(runs):
            ms, cond, latent, image = generate()
            timings.append(ms)
        memory = peak_memory(dev)
        unet_calls = calls[0] / max(1, runs)
    finally:
        hook.remove()

    out: dict[str, Any] = {"res": f"{size[1]}x{size[0]}", "height": size[0], "width": size[1], "batch": batch,
                           "family": model.family.name, "bg_enhance": bool(masks)}
    for key in timings[0]:
        out[key] = median([t[key] for t in timings])
        out[key.replace("_ms", "_ms_all")] = [round(t[key], 3) for t in timings]
    out["per_step_ms"] = out["sample_ms"] / settings.steps
    out["unet_calls_per_generation"] = unet_calls
    out.update(memory)
    if resident is not None:
        out["resident_gib"] = resident
    out["output_finite"] = bool(torch.isfinite(image).all())
    if offload is not None:
        out["offload_gb_moved_per_generation"] = (offload.bytes_moved - moved) / max(1, runs) / 1e9
    tiling = getattr(model, "vae_tiling", "off")
    if use_tiling(tiling, size):
        out.update(tiling_difference(model, latent, image))

    # the U-Net alone (on the device also under offload; FLOPs counted on the eager path)
    with offload.on_device(unet=model.unet) if offload is not None else nullcontext():
        unet_fn, cfg_batch = unet_call(model, cond, latent, settings)
        out["cfg_batch"] = cfg_batch
        for _ in range(2):
            unet_fn()
        call_ms = []
        for _ in range(unet_iters):
            synchronize(dev)
            t0 = time.perf_counter()
            unet_fn()
            synchronize(dev)
            call_ms.append((time.perf_counter() - t0) * 1e3)
        out["unet_call_ms"], out["unet_call_ms_min"] = median(call_ms), min(call_ms)
        if flops:
            with eager():
                out["unet_flops"], out["unet_flops_by_op"] = count_flops(unet_fn)

    if flops:
        out["unet_tflops"] = out["unet_flops"] / (out["unet_call_ms"] * 1e-3) / 1e12
        out["sampling_tflops"] = unet_calls * out["unet_flops"] / (out["sample_ms"] * 1e-3) / 1e12
        with eager():
            out["clip_flops"], _ = count_flops(lambda: model.encode_reference(reference))  # XL: CLIP-bigG + tagger
            out["sketch_flops"], _ = count_flops(lambda: model.encode_sketch(sketch, settings.sketch_strength))
            out["decode_flops"], _ = count_flops(lambda: model.decode(latent))
        out["generation_flops"] = int(out["clip_flops"] + out["sketch_flops"] + unet_calls * out["unet_flops"]
                                      + out["decode_flops"])
        out["generation_tflops"] = out["generation_flops"] / (out["total_ms"] * 1e-3) / 1e12
    return out


def tiling_difference(model: Any, latent: Tensor, tiled: Tensor) -> dict[str, Any]:
    """How far the tiled decode ``tiled`` of ``latent`` is from the untiled one (tiling is not exact,
    GroupNorm statistics and the mid-block attention are per tile); run after the memory window."""
    from colorize.generate import vae_decode

    offload = getattr(model, "offload", None)
    try:
        with offload.on_device(vae=model.vae) if offload is not None else nullcontext():
            full = vae_decode(model.vae, latent.float() / model.config.vae.scale_factor, "off")
    except torch.OutOfMemoryError:  # the untiled decode may not fit where tiling was needed
        return {"vae_tiled": True, "tiling_max_abs_vs_untiled": None, "tiling_mean_abs_vs_untiled": None,
                "untiled_decode": "out of memory"}
    diff = (full.float() - tiled.float().to(full.device)).abs()
    return {"vae_tiled": True, "tiling_max_abs_vs_untiled": float(diff.max()),
            "tiling_mean_abs_vs_untiled": float(diff.mean())}


def unet_call(model: Any, cond: Any, latent: Tensor, settings: Any) -> tuple[Callable[[], Tensor], int]:
    """One U-Net evaluation exactly as the sampling loop makes it: all CFG row groups in one batch."""
    rows = guidance_rows(settings.reference_cfg, settings.sketch_cfg)
    context, hints = cond.rows(rows)
    x = torch.cat([latent] * len(rows)).to(model.device)
    t = torch.full((x.shape[0],), 500.0, device=model.device)
    scales = model.family.reference_scales(model.config.unet, settings)
    if len(scales) != getattr(model.unet, "num_attention_blocks", len(scales)):  # another topology: as the sampler
        scales = None
    attention = AttentionPatches(self_attention=cond.self_attention, cross_attention=cond.cross_attention,
                                 reference_scales=scales)

    def call() -> Tensor:
        with torch.no_grad():
            return model.unet(x, t, context, hints, attention, **cond.unet_kwargs).float()

    return call, x.shape[0]


__all__ = ["bench_size", "count_flops", "peak_memory", "reset_peak_memory", "synchronize", "synthetic_inputs",
           "synthetic_masks", "tiling_difference", "unet_call"]
