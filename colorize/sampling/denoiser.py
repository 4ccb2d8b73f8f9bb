"""Denoiser wrappers: a raw U-Net (eps or v prediction) with dual classifier-free guidance.

Design. The caller owns the conditioning. It passes a *row model*

    model_fn(x_batch, t_batch, rows) -> out_batch

where ``rows`` is a tuple of row-group names (``"cond"``, ``"uncond_ref"``, ``"uncond_sketch"``) and
``x_batch`` / ``t_batch`` are ``len(rows)`` copies of the latent batch / timesteps stacked along dim 0. The
model function builds the matching stacked context and sketch hints (and can apply any timestep-dependent
conditioning, such as the official guidance window), runs the U-Net once, and returns its raw output. The
row groups follow the official layout (``refnet/models/basemodel.py:379-394``, ``refnet/sampling/denoiser.py:46-63``):

* ``cond``          reference context, sketch hints;
* ``uncond_ref``    zero context, sketch hints;
* ``uncond_sketch`` reference context, hints of an all -1 sketch.

Dual CFG (thesis eq. 2.16 applied once per condition, then averaged) with guidance scales g_ref, g_sketch:

    out = ½[(u_ref + g_ref (c − u_ref)) + (u_sketch + g_sketch (c − u_sketch))]

A scale only counts as active when it is > 1 (the official flag ``(g_ref>1) + 10·(g_sketch>1)``): reference
only → rows ``(cond, uncond_ref)``, ``u_ref + g_ref (c − u_ref)``; sketch only → ``(cond, uncond_sketch)``;
neither → one pass on ``(cond,)``. The combination weights sum to 1, so combining denoised x0 (k-diffusion path,
as the official code does) equals combining the raw eps / v output (diffusers path).
"""
from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
from torch import Tensor

from colorize.sampling.noise_schedule import DiscreteSchedule

Parameterization = Literal["eps", "v"]
RowModel = Callable[[Tensor, Tensor, tuple[str, ...]], Tensor]

COND, UNCOND_REF, UNCOND_SKETCH = "cond", "uncond_ref", "uncond_sketch"


def _bcast(c: Tensor, x: Tensor) -> Tensor:
    """Append singleton dims so a per-sample (b,) coefficient broadcasts against x."""
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def scalings(sigma: Tensor, parameterization: Parameterization) -> tuple[Tensor, Tensor, Tensor]:
    """``(c_skip, c_out, c_in)`` with ``x0 = c_skip·x + c_out·F(c_in·x, t)`` for a VP-trained model.

    eps: (1, −σ, 1/√(σ²+1)); v: (1/(σ²+1), −σ/√(σ²+1), 1/√(σ²+1)) (sigma_data = 1).
    """
    s2 = sigma**2 + 1.0
    c_in = s2**-0.5
    if parameterization == "eps":
        return torch.ones_like(sigma), -sigma, c_in
    if parameterization == "v":
        return 1.0 / s2, -sigma * c_in, c_in
    raise ValueError(f"unknown parameterization {parameterization!r}")


def to_denoised(x: Tensor, sigma: Tensor, out: Tensor, parameterization: Parameterization) -> Tensor:
    """x0 predicted from the raw model output ``out`` at noise level ``sigma`` (x in the sigma/VE view)."""
    c_skip, c_out, _ = scalings(sigma, parameterization)
    return x * _bcast(c_skip, x) + out * _bcast(c_out, x)


def guidance_rows(ref_scale: float, sketch_scale: float) -> tuple[str, ...]:
    """Row groups the model must evaluate for these guidance scales."""
    rows = [COND]
    if ref_scale > 1:
        rows.append(UNCOND_REF)
    if sketch_scale > 1:
        rows.append(UNCOND_SKETCH)
    return tuple(rows)


def combine_guidance(parts: Sequence[Tensor], rows: Sequence[str], ref_scale: float, sketch_scale: float) -> Tensor:
    """Combine per-row-group outputs (in ``rows`` order) with dual CFG."""
    by = dict(zip(rows, parts))
    c = by[COND]
    terms = []
    if UNCOND_REF in by:
        terms.append(by[UNCOND_REF] + ref_scale * (c - by[UNCOND_REF]))
    if UNCOND_SKETCH in by:
        terms.append(by[UNCOND_SKETCH] + sketch_scale * (c - by[UNCOND_SKETCH]))
    if not terms:
        return c
    if len(terms) == 1:
        return terms[0]
    return 0.5 * (terms[0] + terms[1])


class GuidedDenoiser:
    """Dual-CFG wrapper around a row model, usable two ways.

    * ``denoiser(x, sigma) -> x0``: k-diffusion denoiser on the schedule's sigmas (x in the sigma view,
      U-Net input ``c_in·x``, continuous ``t = sigma_to_t(sigma)``); guidance is combined on x0.
    * ``denoiser.model_output(x, t) -> eps or v``: the guided raw output for a model input ``x`` at
      timesteps ``t`` (diffusers-style samplers such as :func:`colorize.sampling.dpm_solver.sample_dpm_solver`).
    """

    def __init__(
        self,
        model_fn: RowModel,
        schedule: DiscreteSchedule,
        parameterization: Parameterization = "eps",
        ref_scale: float = 1.0,
        sketch_scale: float = 1.0,
    ):
        self.model_fn = model_fn
        self.schedule = schedule
        self.parameterization = parameterization
        self.ref_scale = ref_scale
        self.sketch_scale = sketch_scale
        self.rows = guidance_rows(ref_scale, sketch_scale)

    def raw_rows(self, x: Tensor, t: Tensor) -> list[Tensor]:
        """Run the model once on all row groups; returns one raw output per group."""
        k = len(self.rows)
        out = self.model_fn(torch.cat([x] * k), torch.cat([t] * k), self.rows)
        return list(out.chunk(k))

    def model_output(self, x: Tensor, t: Tensor) -> Tensor:
        """Guided eps / v for model input ``x`` (b, ...) at timesteps ``t`` (b,)."""
        return combine_guidance(self.raw_rows(x, t), self.rows, self.ref_scale, self.sketch_scale)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Guided x0 for latent ``x`` (sigma view) at noise levels ``sigma`` (b,)."""
        _, _, c_in = scalings(sigma, self.parameterization)
        t = self.schedule.sigma_to_t(sigma)
        parts = self.raw_rows(x * _bcast(c_in, x), t)
        x0 = [to_denoised(x, sigma, p, self.parameterization) for p in parts]
        return combine_guidance(x0, self.rows, self.ref_scale, self.sketch_scale)


__all__ = [
    "COND",
    "GuidedDenoiser",
    "Parameterization",
    "RowModel",
    "UNCOND_REF",
    "UNCOND_SKETCH",
    "combine_guidance",
    "guidance_rows",
    "scalings",
    "to_denoised",
]
