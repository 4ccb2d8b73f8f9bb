"""The discrete DDPM noise schedule (scaled-linear betas) and its sigma / timestep maps.

Every ColorizeDiffusion version uses the SD2.1 schedule: ``betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)**2``
computed in float64, the 12 DDPM buffers of Ho et al. (2020) stored as float32 (official ``refnet/ldm/ddpm.py:125-146``).

Samplers work in the k-diffusion ("variance exploding") view ``x = z_t / sqrt(acp_t)``, whose noise level is
``sigma_t = sqrt((1 - acp_t) / acp_t)``. :class:`DiscreteSchedule` maps a continuous sigma to a continuous
timestep by linear interpolation of log-sigma between neighbouring integer timesteps, in float32 (the
arithmetic the official k-diffusion path uses; fixture ``sampler`` pins ``model_t`` to 2e-3).
"""
from __future__ import annotations

import torch
from torch import Tensor

from colorize.config import ScheduleConfig

BUFFER_NAMES: tuple[str, ...] = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def scaled_linear_betas(cfg: ScheduleConfig = ScheduleConfig()) -> Tensor:
    """float64 betas: linearly spaced in sqrt(beta), then squared."""
    return torch.linspace(cfg.linear_start**0.5, cfg.linear_end**0.5, cfg.timesteps, dtype=torch.float64) ** 2


def ddpm_buffers(cfg: ScheduleConfig = ScheduleConfig()) -> dict[str, Tensor]:
    """The 12 DDPM schedule buffers (computed in float64, returned as float32), keyed by official name.

    Posterior q(x_{t-1} | x_t, x_0) terms follow Ho et al. (2020), eqs. 6-7, with ``v_posterior = 0``.
    """
    betas = scaled_linear_betas(cfg)
    alphas = 1.0 - betas
    acp = torch.cumprod(alphas, dim=0)
    acp_prev = torch.cat([acp.new_ones(1), acp[:-1]])
    post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
    bufs = {
        "betas": betas,
        "alphas_cumprod": acp,
        "alphas_cumprod_prev": acp_prev,
        "sqrt_alphas_cumprod": acp.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - acp).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - acp).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / acp).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / acp - 1.0).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * acp_prev.sqrt() / (1.0 - acp),
        "posterior_mean_coef2": (1.0 - acp_prev) * alphas.sqrt() / (1.0 - acp),
    }
    return {k: bufs[k].to(torch.float32) for k in BUFFER_NAMES}


def sigmas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """``sigma_t = sqrt((1 - acp_t) / acp_t)`` in the dtype of ``alphas_cumprod``."""
    return ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5


def sigma_to_t(sigma: Tensor, log_sigmas: Tensor) -> Tensor:
    """Continuous timestep of ``sigma``: linear interpolation of log-sigma between integer timesteps.

    ``log_sigmas`` must be increasing (index = timestep). Values outside the table are clamped to
    ``[0, T-1]``; sigma = 0 maps to t = 0. Computed in the dtype of ``log_sigmas``.
    """
    log_sigmas = log_sigmas.to(sigma.device)
    log_sigma = sigma.to(log_sigmas.dtype).log()
    n = log_sigmas.shape[0]
    # index of the last table entry <= log_sigma, kept inside [0, n-2] so that [low, low+1] is an interval
    low = (torch.searchsorted(log_sigmas, log_sigma.reshape(-1), right=True) - 1).clamp(0, n - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = ((lo - log_sigma.reshape(-1)) / (lo - hi)).clamp(0, 1)
    t = (1 - w) * low + w * (low + 1)
    return t.reshape(sigma.shape)


def t_to_sigma(t: Tensor, log_sigmas: Tensor) -> Tensor:
    """Inverse of :func:`sigma_to_t`: interpolate log-sigma at a continuous timestep, then exponentiate."""
    log_sigmas = log_sigmas.to(t.device)
    t = t.to(log_sigmas.dtype)
    low = t.floor().long().clamp(0, log_sigmas.shape[0] - 1)
    high = t.ceil().long().clamp(0, log_sigmas.shape[0] - 1)
    w = t - low
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


class DiscreteSchedule:
    """A trained discrete schedule seen as a table of sigmas (k-diffusion's ``DiscreteSchedule`` idea).

    Build it from a :class:`ScheduleConfig` or from a checkpoint's float32 ``alphas_cumprod`` buffer. All
    tables are float32 on CPU; functions move them to the input's device.
    """

    def __init__(self, alphas_cumprod: Tensor):
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float32)
        self.sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def from_config(cls, cfg: ScheduleConfig = ScheduleConfig()) -> "DiscreteSchedule":
        return cls(ddpm_buffers(cfg)["alphas_cumprod"])

    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.shape[0])

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        return sigma_to_t(sigma, self.log_sigmas)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        return t_to_sigma(t, self.log_sigmas)


__all__ = [
    "BUFFER_NAMES",
    "DiscreteSchedule",
    "ddpm_buffers",
    "scaled_linear_betas",
    "sigma_to_t",
    "sigmas_from_alphas_cumprod",
    "t_to_sigma",
]
