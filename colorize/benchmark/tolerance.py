"""Half precision against float32 on the same random weights: the full pipeline's decoded image (fp16/bf16
outputs of the full pipeline must stay within a stated tolerance of float32).

One float32 colorizer is built; each half-precision colorizer shares its CLIP and VAE (float32 in every
precision, as the official app) and gets copies of its U-Net and sketch encoder, cast as the pipeline casts
them (time embedding and output head back to float32). The same synthetic sketch, reference, seed and
settings go through all of them.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from colorize.benchmark.measure import synthetic_inputs
from colorize.benchmark.models import random_colorizer
from colorize.config import ColorizerConfig


@torch.inference_mode()
def generate(model: Any, sketch: Tensor, reference: Tensor, size: tuple[int, int], settings: Any) -> tuple[Tensor, Tensor]:
    """(decoded image in [-1, 1], final latent), both float32 on the CPU."""
    from colorize.generate import make_conditioning

    tokens = model.encode_reference(reference.to(model.device))
    hints, hints_uncond = model.encode_sketch(sketch.to(model.device), settings.sketch_strength)
    latent = model.sample(make_conditioning(tokens, hints, hints_uncond, model.dtype), size, settings)
    return model.decode(latent).float().cpu(), latent.float().cpu()


def difference(a: Tensor, b: Tensor) -> dict[str, float]:
    """max / mean abs and RMS of ``a - b``, that RMS relative to the RMS of the reference ``b``, and the PSNR
    (dB, for images in [-1, 1]: peak-to-peak 2)."""
    d = (a.float() - b.float()).abs()
    rms, ref = float(d.pow(2).mean().sqrt()), float(b.float().pow(2).mean().sqrt())
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "rms": rms, "rel_rms": rms / ref if ref else 0.0,
            "psnr_db": float("inf") if rms == 0 else float(20 * torch.log10(torch.tensor(2.0 / rms)))}


def precision_tolerance(config: ColorizerConfig, device: str | torch.device, size: tuple[int, int], settings: Any,
                        seed: int = 0, precisions: tuple[str, ...] = ("fp16", "bf16")) -> dict[str, Any]:
    """Decoded-image differences of each precision against float32 on one set of random weights (see the
    module notes); ``{"res", "reference": "fp32", "fp16": {...}, "bf16": {...}}`` with :func:`difference`'s
    figures for the image and the final latent, and whether the output stayed finite."""
    from colorize.pipeline import Colorizer

    base, _ = random_colorizer(config, device, "fp32", seed)
    sketch, reference = synthetic_inputs(size, 1, settings.seed)
    image32, latent32 = generate(base, sketch, reference, size, settings)
    out: dict[str, Any] = {"res": f"{size[1]}x{size[0]}", "reference": "fp32", "steps": settings.steps,
                           "sampler": settings.sampler, "weights": "random (benchmark initialisation)"}
    for precision in precisions:
        half = Colorizer(config, copy.deepcopy(base.unet), copy.deepcopy(base.sketch_encoder), base.vae,
                         base.reference_encoder, base.device, precision)
        try:
            image, latent = generate(half, sketch, reference, size, settings)
            out[precision] = {"image": difference(image, image32), "latent": difference(latent, latent32),
                              "finite": bool(torch.isfinite(image).all())}
        except Exception as exc:  # noqa: BLE001 - e.g. a precision the device lacks, or a non-finite sample
            out[precision] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        del half
    return out


__all__ = ["difference", "generate", "precision_tolerance"]
