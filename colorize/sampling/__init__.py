"""Sampling: dual-CFG denoiser wrappers, sigma schedules and samplers.

Typical use (k-diffusion-style samplers)::

    schedule = DiscreteSchedule.from_config(cfg.schedule)
    den = GuidedDenoiser(model_fn, schedule, "eps", ref_scale=4.0, sketch_scale=1.0)
    sigmas = SCHEDULERS["karras"](steps, schedule, device)
    x = SAMPLERS["dpmpp_2m"](den, noise * sigmas[0], sigmas, callback=cb, generator=gen)

The official default ("diffuser_dpm") has its own integer timesteps and starting latent::

    x = sample_dpm_solver(den.model_output, noise, steps, cfg.schedule, "eps", callback=cb)

The XL app's default, DPM++ 3M SDE on the "Automatic" schedule (not yet in the nodes' :data:`SAMPLERS`)::

    sigmas = sampler_sigmas("dpmpp_3m_sde", "auto", steps, schedule)  # exponential_official
    x = SAMPLERS["dpmpp_3m_sde"](den, noise * sigmas[0], sigmas, generator=gen)
"""
from __future__ import annotations

from colorize.sampling.denoiser import (
    COND,
    UNCOND_REF,
    UNCOND_SKETCH,
    GuidedDenoiser,
    combine_guidance,
    guidance_rows,
    scalings,
    to_denoised,
)
from colorize.sampling.dpm_solver import dpm_solver_schedule, sample_dpm_solver
from colorize.sampling.noise_schedule import DiscreteSchedule, ddpm_buffers
from colorize.sampling.samplers import SAMPLERS, BrownianNoiseSampler, sample_dpmpp_3m_sde
from colorize.sampling.sigmas import (
    AUTO_SCHEDULER,
    SCHEDULER_CHOICES,
    SCHEDULERS,
    ddim_timesteps,
    drop_next_to_last,
    exponential_official,
    karras_sigmas,
    leading_timesteps,
    resolve_scheduler,
    sampler_sigmas,
    timestep_sigmas,
)

__all__ = [
    "AUTO_SCHEDULER",
    "BrownianNoiseSampler",
    "SCHEDULER_CHOICES",
    "COND",
    "DiscreteSchedule",
    "GuidedDenoiser",
    "SAMPLERS",
    "SCHEDULERS",
    "UNCOND_REF",
    "UNCOND_SKETCH",
    "combine_guidance",
    "ddim_timesteps",
    "ddpm_buffers",
    "dpm_solver_schedule",
    "drop_next_to_last",
    "exponential_official",
    "guidance_rows",
    "karras_sigmas",
    "leading_timesteps",
    "sample_dpm_solver",
    "sample_dpmpp_3m_sde",
    "resolve_scheduler",
    "sampler_sigmas",
    "scalings",
    "timestep_sigmas",
    "to_denoised",
]
