"""Samplers on a sigma schedule, one small pure function each (k-diffusion calling convention).

Every sampler has the signature ``sample_x(model, x, sigmas, extra_args=None, callback=None, generator=None)``:
``model(x, sigma_batch, **extra_args) -> x0`` is a denoiser such as :class:`GuidedDenoiser`, ``x`` is the
initial latent already scaled to ``sigmas[0]`` (``noise * sigmas[0]``), ``sigmas`` is decreasing and normally
ends in 0. After every step ``callback({"i", "x", "sigma", "denoised"})`` is called with the latent *before* the
update; raising from it interrupts sampling. Stochastic samplers draw their noise from ``generator`` (a
``torch.Generator``; the global RNG when None), so a seeded generator makes them deterministic.

In this view the probability-flow ODE is ``dx/dsigma = (x - D(x, sigma)) / sigma`` and ``lambda = -log sigma``
is the half log-SNR used by DPM-Solver++ (Lu et al., 2022).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

Callback = Callable[[dict[str, Any]], None]
Denoiser = Callable[..., Tensor]


def _noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device in float32."""
    device = generator.device if generator is not None else x.device
    n = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32)
    return n.to(x.device, x.dtype)


def _step(
    model: Denoiser, x: Tensor, sigma: Tensor, i: int, extra_args: dict[str, Any] | None, callback: Callback | None
) -> Tensor:
    """One denoiser call at ``sigma`` for the whole batch, then the callback."""
    denoised = model(x, sigma * x.new_ones(x.shape[0]), **(extra_args or {}))
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})
    return denoised


@torch.no_grad()
def sample_euler(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Euler on the probability-flow ODE (no churn)."""
    for i in range(len(sigmas) - 1):
        denoised = _step(model, x, sigmas[i], i, extra_args, callback)
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split a step sigma_from → sigma_to into a deterministic part to ``sigma_down`` plus fresh noise of
    std ``sigma_up`` with ``sigma_down² + sigma_up² = sigma_to²`` (eta = 1 is the DDPM posterior amount)."""
    if eta == 0 or sigma_to == 0:
        return sigma_to, sigma_to * 0
    up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    down = (sigma_to**2 - up**2) ** 0.5
    return down, up


@torch.no_grad()
def sample_euler_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
) -> Tensor:
    """Euler ancestral: Euler step to sigma_down, then add noise of std sigma_up."""
    for i in range(len(sigmas) - 1):
        denoised = _step(model, x, sigmas[i], i, extra_args, callback)
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + (x - denoised) / sigmas[i] * (down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + _noise_like(x, generator) * up
    return x


@torch.no_grad()
def sample_ddim(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Deterministic DDIM (eta 0) in the sigma view.

    DDIM's ``z' = sqrt(a') x0 + sqrt(1 - a') eps`` divided by ``sqrt(a')`` reads ``x' = x0 + sigma' eps`` with
    ``eps = (x - x0) / sigma``: algebraically the Euler step, written here in DDIM form. On the sigmas of
    integer timesteps it is the textbook DDIM update; for v-prediction ``eps`` is the one implied by x0.
    """
    for i in range(len(sigmas) - 1):
        denoised = _step(model, x, sigmas[i], i, extra_args, callback)
        eps = (x - denoised) / sigmas[i]
        x = denoised + sigmas[i + 1] * eps
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    lower_order_final: bool = False,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022, Alg. 2): multistep second order in lambda = -log sigma.

    First order on the first step and on a final step to sigma = 0 (there it returns x0). With
    ``lower_order_final`` and fewer than 15 steps the last step is first order even when its target
    sigma is not 0 (diffusers' rule, used by :func:`sample_dpm_solver`).
    """
    n = len(sigmas) - 1
    old_denoised, h_last = None, None
    for i in range(n):
        denoised = _step(model, x, sigmas[i], i, extra_args, callback)
        s, s_next = sigmas[i], sigmas[i + 1]
        if s_next == 0:
            x = denoised
            break
        h = s.log() - s_next.log()
        d = denoised
        first_order_last = lower_order_final and i == n - 1 and n < 15
        if old_denoised is not None and not first_order_last:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (s_next / s) * x - torch.expm1(-h) * d
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(2M) SDE, midpoint correction (Lu et al., 2022, SDE variant with eta)."""
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = _step(model, x, sigmas[i], i, extra_args, callback)
        s, s_next = sigmas[i], sigmas[i + 1]
        if s_next == 0:
            x = denoised
            break
        h = s.log() - s_next.log()
        eta_h = eta * h
        x = (s_next / s) * torch.exp(-eta_h) * x - torch.expm1(-h - eta_h) * denoised
        if old_denoised is not None:
            r = h_last / h
            x = x - 0.5 * torch.expm1(-h - eta_h) * (1 / r) * (denoised - old_denoised)
        if eta:
            x = x + _noise_like(x, generator) * s_next * (-torch.expm1(-2 * eta_h)).sqrt() * s_noise
        old_denoised, h_last = denoised, h
    return x


def sample_dpm_solver_on_sigmas(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DPM-Solver++(2M) with diffusers' step rules (order 2, lower-order first and final step), on any sigmas.

    For the official default sampler with its own integer timesteps use
    :func:`colorize.sampling.dpm_solver.sample_dpm_solver`.
    """
    return sample_dpmpp_2m(model, x, sigmas, extra_args, callback, generator, lower_order_final=True)


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "ddim": sample_ddim,
    "dpm_solver": sample_dpm_solver_on_sigmas,
}

__all__ = [
    "SAMPLERS",
    "ancestral_step",
    "sample_ddim",
    "sample_dpm_solver_on_sigmas",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_euler",
    "sample_euler_ancestral",
]
