"""Sigma schedules for the k-diffusion-style samplers: small pure functions, each returning ``n + 1``
decreasing float32 sigmas that end in 0 (the final denoise to x0).

``sigma_min`` / ``sigma_max`` default to the discrete schedule's first / last sigma in float32 (what the
official k-diffusion path passes for its "Karras" and "Exponential" schedulers, fixture ``sampler``).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from colorize.sampling.noise_schedule import DiscreteSchedule


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_sigmas(
    n: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Karras et al. (2022), eq. 5: interpolate linearly in ``sigma**(1/rho)`` from sigma_max to sigma_min."""
    ramp = torch.linspace(0, 1, n, device=device)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float, device: torch.device | str = "cpu") -> Tensor:
    """Sigmas evenly spaced in log-sigma from sigma_max to sigma_min."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, device=device).exp())


def uniform_sigmas(n: int, schedule: DiscreteSchedule, device: torch.device | str = "cpu") -> Tensor:
    """Sigmas at ``n`` evenly spaced continuous timesteps from T-1 down to 0 (k-diffusion's discrete default)."""
    t = torch.linspace(schedule.num_timesteps - 1, 0, n, device=device)
    return _append_zero(schedule.t_to_sigma(t))


def ddim_timesteps(n: int, num_train_timesteps: int = 1000, steps_offset: int = 1) -> Tensor:
    """diffusers DDIM "leading" timesteps: multiples of ``T // n`` shifted by the offset, highest first (951…1 for 20)."""
    ratio = num_train_timesteps // n
    return torch.arange(n - 1, -1, -1, dtype=torch.int64) * ratio + steps_offset

def leading_timesteps(steps: int, num_train_timesteps: int = 1000, steps_offset: int = 1) -> Tensor:
    """The "leading" spacing: multiples of ``T // (steps + 1)``, highest first, without 0, shifted by the offset.

    For 6 steps of 1000: 853, 711, 569, 427, 285, 143.
    """
    ratio = num_train_timesteps // (steps + 1)
    return torch.arange(steps, 0, -1, dtype=torch.int64) * ratio + steps_offset


def timestep_sigmas(timesteps: Tensor, schedule: DiscreteSchedule, device: torch.device | str = "cpu") -> Tensor:
    """Sigmas at the given (integer) timesteps, then a final 0."""
    return _append_zero(schedule.t_to_sigma(timesteps.float())).to(device)


def karras(n: int, schedule: DiscreteSchedule, device: torch.device | str = "cpu", rho: float = 7.0) -> Tensor:
    """Karras sigmas between the schedule's own sigma_min and sigma_max."""
    return karras_sigmas(n, schedule.sigma_min, schedule.sigma_max, rho, device)


def exponential(n: int, schedule: DiscreteSchedule, device: torch.device | str = "cpu") -> Tensor:
    """Exponential sigmas between the schedule's own sigma_min and sigma_max."""
    return exponential_sigmas(n, schedule.sigma_min, schedule.sigma_max, device)


def drop_next_to_last(sigmas: Tensor) -> Tensor:
    """``sigmas`` without its next-to-last entry (the smallest positive sigma when it ends in 0)."""
    if sigmas.shape[0] < 3:
        raise ValueError("dropping the next-to-last sigma needs at least 3 sigmas")
    return torch.cat([sigmas[:-2], sigmas[-1:]])


def exponential_official(n: int, schedule: DiscreteSchedule, device: torch.device | str = "cpu") -> Tensor:
    """The official XL app's "Automatic" schedule of DPM++ 3M SDE: exponential sigmas computed for ``n + 1``
    steps, then the next-to-last sigma (sigma_min) dropped — ``n + 1`` sigmas ending in 0, whose last step
    goes from the second-smallest sigma straight to 0 (tellurion-kanata/ColorizeDiffusionXL at ec78784,
    ``refnet/sampling/sampler.py:74-192``)."""
    return drop_next_to_last(exponential(n + 1, schedule, device))


#: The sigma schedules by name (``leading`` is separate: the sampler's own diffusers timesteps).
SCHEDULERS: dict[str, Callable[..., Tensor]] = {
    "karras": karras,
    "uniform": uniform_sigmas,
    "exponential": exponential,
    "exponential_official": exponential_official,
}
#: Each sampler's own default schedule, as the official app's "Automatic" (k-diffusion / diffusers defaults).
AUTO_SCHEDULER: dict[str, str] = {
    "dpm_solver": "leading",
    "ddim": "leading",
    "euler": "uniform",
    "euler_ancestral": "uniform",
    "dpmpp_2m": "karras",
    "dpmpp_2m_sde": "exponential",
    "dpmpp_3m_sde": "exponential_official",
}
SCHEDULER_CHOICES: tuple[str, ...] = ("auto", "leading", *SCHEDULERS)


def resolve_scheduler(sampler: str, scheduler: str) -> str:
    """The schedule a sampler runs on: ``auto`` resolved to its default (:data:`AUTO_SCHEDULER`)."""
    return AUTO_SCHEDULER[sampler] if scheduler == "auto" else scheduler


def sampler_sigmas(sampler: str, scheduler: str, steps: int, schedule: DiscreteSchedule,
                   device: torch.device | str = "cpu") -> Tensor:
    """The ``steps + 1`` sigmas of a sampler/scheduler choice; ``leading`` = the sampler's diffusers timesteps
    (DDIM's rule for ``ddim``, DPM-Solver's otherwise)."""
    name = resolve_scheduler(sampler, scheduler)
    if name == "leading":
        rule = ddim_timesteps if sampler == "ddim" else leading_timesteps
        return timestep_sigmas(rule(steps, schedule.num_timesteps), schedule, device)
    return SCHEDULERS[name](steps, schedule, device=device)


__all__ = [
    "AUTO_SCHEDULER",
    "SCHEDULERS",
    "SCHEDULER_CHOICES",
    "ddim_timesteps",
    "drop_next_to_last",
    "leading_timesteps",
    "timestep_sigmas",
    "exponential",
    "exponential_official",
    "exponential_sigmas",
    "karras",
    "karras_sigmas",
    "resolve_scheduler",
    "sampler_sigmas",
    "uniform_sigmas",
]
