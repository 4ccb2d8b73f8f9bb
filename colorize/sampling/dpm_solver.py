"""DPM-Solver++(2M) multistep on integer timesteps: the official app's default sampler ("diffuser_dpm").

The app runs a DPM-Solver multistep scheduler configured by ``configs/scheduler_cfgs/dpm.yaml`` (official
``refnet/sampling/scheduler.py:232-239``; parity fixture ``sampler``): scaled-linear 0.00085–0.012 over 1000 steps, ``steps_offset`` 1, "leading" spacing,
solver order 2, data prediction (DPM-Solver++), midpoint second-order correction, first-order final step, final
sigma 0, integer timesteps, initial latent ``noise * 1``. Written from the DPM-Solver++ paper (Lu et al., 2022,
Alg. 2, "2M") in the variance-preserving view:

    z_t = alpha_t x0 + s_t eps,   alpha_t = 1/sqrt(sigma²+1),  s_t = sigma alpha_t,  lambda_t = log(alpha_t/s_t)
    z_t' = (s_t'/s_t) z_t - alpha_t' (e^{-h} - 1) D,   h = lambda_t' - lambda_t,
    D = x0_i (first order)  or  x0_i + (x0_i - x0_{i-1}) / (2 r),  r = h_{i-1} / h_i  (midpoint, second order).

The U-Net sees ``z_t`` unscaled and the integer timestep. This schedule is built in float32 from float32 betas
(that is what the scheduler does; it differs from the float64 DDPM buffers by ~1e-7 relative).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from colorize.config import ScheduleConfig
from colorize.sampling.denoiser import Parameterization
from colorize.sampling.sigmas import leading_timesteps

OutputFn = Callable[[Tensor, Tensor], Tensor]



def float32_sigmas(cfg: ScheduleConfig = ScheduleConfig()) -> Tensor:
    """All T sigmas of the scaled-linear schedule computed entirely in float32."""
    betas = torch.linspace(cfg.linear_start**0.5, cfg.linear_end**0.5, cfg.timesteps, dtype=torch.float32) ** 2
    acp = torch.cumprod(1.0 - betas, dim=0)
    return ((1.0 - acp) / acp) ** 0.5


def dpm_solver_schedule(steps: int, cfg: ScheduleConfig = ScheduleConfig(), steps_offset: int = 1) -> tuple[Tensor, Tensor]:
    """``(timesteps, sigmas)``: ``steps`` integer timesteps and ``steps + 1`` float32 sigmas ending in 0."""
    timesteps = leading_timesteps(steps, cfg.timesteps, steps_offset)
    sigmas = float32_sigmas(cfg)[timesteps]
    return timesteps, torch.cat([sigmas, sigmas.new_zeros(1)])


def _vp(sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha_t, s_t) of the VP process at VE noise level sigma."""
    alpha = 1.0 / (sigma**2 + 1.0) ** 0.5
    return alpha, sigma * alpha


def _x0(z: Tensor, out: Tensor, sigma: Tensor, parameterization: Parameterization) -> Tensor:
    alpha, s = _vp(sigma)
    if parameterization == "eps":
        return (z - s * out) / alpha
    if parameterization == "v":
        return alpha * z - s * out
    raise ValueError(f"unknown parameterization {parameterization!r}")


@torch.no_grad()
def sample_dpm_solver(
    model_fn: OutputFn,
    noise: Tensor,
    steps: int,
    cfg: ScheduleConfig = ScheduleConfig(),
    parameterization: Parameterization = "eps",
    callback: Callable[[dict[str, Any]], None] | None = None,
    steps_offset: int = 1,
) -> Tensor:
    """Sample with DPM-Solver++(2M) from ``noise`` (b, C, H, W).

    ``model_fn(z, t) -> eps or v`` takes the unscaled latent and float timesteps (b,) holding integers (e.g.
    :meth:`GuidedDenoiser.model_output`, which applies the guidance on the raw output). After each model call
    ``callback({"i", "x", "sigma", "t", "denoised"})`` receives the latent before the update and the x0
    prediction; raising from it interrupts sampling. Deterministic: no noise is drawn.
    """
    timesteps, sigmas = dpm_solver_schedule(steps, cfg, steps_offset)
    sigmas = sigmas.to(noise.device)
    n = len(timesteps)
    z = noise  # initial noise sigma of this scheduler is 1
    old_x0, h_last = None, None
    for i in range(n):
        t = torch.full((z.shape[0],), float(timesteps[i]), device=z.device, dtype=torch.float32)
        x0 = _x0(z, model_fn(z, t), sigmas[i], parameterization)
        if callback is not None:
            callback({"i": i, "x": z, "sigma": sigmas[i], "t": t, "denoised": x0})
        if sigmas[i + 1] == 0:
            z = x0
            break
        (a_s, s_s), (a_t, s_t) = _vp(sigmas[i]), _vp(sigmas[i + 1])
        h = (a_t / s_t).log() - (a_s / s_s).log()
        d = x0
        last_step_first_order = i == n - 1 and n < 15
        if old_x0 is not None and not last_step_first_order:
            d = x0 + (x0 - old_x0) / (2 * (h_last / h))
        z = (s_t / s_s) * z - a_t * torch.expm1(-h) * d
        old_x0, h_last = x0, h
    return z


__all__ = ["dpm_solver_schedule", "float32_sigmas", "sample_dpm_solver"]
