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

import bisect
from typing import Any, Callable

import torch
from torch import Tensor

Callback = Callable[[dict[str, Any]], None]
Denoiser = Callable[..., Tensor]
NoiseSampler = Callable[[Tensor, Tensor], Tensor]  # (sigma, sigma_next) -> standard normal noise like x


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
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """DPM-Solver++(2M) SDE, midpoint correction (Lu et al., 2022, SDE variant with eta).

    The noise of a step is ``noise_sampler(sigma, sigma_next)`` when given (e.g. a
    :class:`BrownianNoiseSampler`, or stored increments to replay), otherwise fresh normal noise from
    ``generator``."""
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
            z = _noise_like(x, generator) if noise_sampler is None else noise_sampler(s, s_next)
            x = x + z * s_next * (-torch.expm1(-2 * eta_h)).sqrt() * s_noise
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


class BrownianNoiseSampler:
    """Standard normal noise from one Brownian path W(t), t = sigma, queried by intervals.

    ``sampler(sigma, sigma_next)`` returns ``(W(hi) - W(lo)) / sqrt(hi - lo)`` for ``lo, hi`` the two sigmas in
    increasing order: the normalised increment over that interval, shaped like ``x``. The path is built lazily:
    ``W(sigma_min) = 0``, ``W(sigma_max) ~ N(0, sigma_max - sigma_min)``, and every new time is drawn from the
    Brownian bridge between its known neighbours (``N`` of the linear interpolation, variance
    ``(t - a)(b - t) / (b - a)``), or as a free increment outside them. So any set of queries, in any order, sees
    increments of one Brownian motion: disjoint intervals are independent and an interval split into parts
    sums back to the whole (the property the official SDE samplers want from their Brownian noise).

    Same distribution as the torchsde ``BrownianTree`` the official k-diffusion samplers use (seeded from the
    global RNG: tellurion-kanata/ColorizeDiffusionXL at ec78784, ``refnet/sampling/sampler.py:74-192``), not
    the same numbers: torchsde's tree has its
    own seeding and search. Draws come from ``generator`` (the global RNG when None) in float32 on the
    generator's device, in query order; a seeded generator and the same queries give the same noise.
    """

    def __init__(self, x: Tensor, sigma_min: float | Tensor, sigma_max: float | Tensor,
                 generator: torch.Generator | None = None):
        lo, hi = float(sigma_min), float(sigma_max)
        if not 0 <= lo < hi:
            raise ValueError(f"need 0 <= sigma_min < sigma_max, got {lo}, {hi}")
        self.like, self.generator = x, generator
        self.times = [lo, hi]
        self.values = [torch.zeros_like(x), self._normal() * (hi - lo) ** 0.5]

    def _normal(self) -> Tensor:
        return _noise_like(self.like, self.generator)

    def _w(self, t: float) -> Tensor:
        """W(t), drawing it (bridge or free increment) if not known yet."""
        ts = self.times
        k = bisect.bisect_left(ts, t)
        if k < len(ts) and ts[k] == t:
            return self.values[k]
        if k == 0:  # left of every known time: W(t) = W(t0) - sqrt(t0 - t) z
            w = self.values[0] - self._normal() * (ts[0] - t) ** 0.5
        elif k == len(ts):  # right of every known time
            w = self.values[-1] + self._normal() * (t - ts[-1]) ** 0.5
        else:
            a, b = ts[k - 1], ts[k]
            wa, wb = self.values[k - 1], self.values[k]
            f = (t - a) / (b - a)
            w = wa + f * (wb - wa) + self._normal() * ((t - a) * (b - t) / (b - a)) ** 0.5
        ts.insert(k, t)
        self.values.insert(k, w)
        return w

    def __call__(self, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
        lo, hi = sorted((float(sigma), float(sigma_next)))
        if hi == lo:
            raise ValueError("a Brownian increment needs two different sigmas")
        return (self._w(hi) - self._w(lo)) / (hi - lo) ** 0.5


@torch.no_grad()
def sample_dpmpp_3m_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """DPM-Solver++(3M) SDE: multistep in lambda = -log sigma with up to two previous x0 predictions
    (the default sampler "DPM++ 3M SDE" of the official XL app, tellurion-kanata/ColorizeDiffusionXL at ec78784,
    ``refnet/sampling/sampler.py:74-192``, which runs k-diffusion's ``sample_dpmpp_3m_sde``).

    A step sigma → sigma' (h = log sigma - log sigma', H = (1 + eta) h) solves the data-prediction SDE whose
    noise share is set by eta exactly for constant x0 ``D``:
    ``x' = e^{-H} x + (1 - e^{-H}) D + sigma' sqrt(1 - e^{-2 eta h}) s_noise z``; the multistep corrections add
    ``phi2 d1 - phi3 d2`` with ``phi2 = 1 + (e^{-H} - 1)/H``, ``phi3 = phi2/H - 1/2``, ``d1`` ≈ h·dD/dlambda and
    ``d2`` the second divided difference (``(d1_0 - d1_1) / (r0 + r1)``, r = previous h / h) — the weights of
    DPM-Solver's third-order multistep update (with these, the d2 weight is half the Taylor integral's; the
    official numbers, fixture ``xl_sampler``, need exactly this). One previous x0: second order with ``phi2``
    alone; none: first order. A final step to sigma = 0 returns x0. eta = 0 is the deterministic 3M ODE solver.

    ``noise_sampler(sigma, sigma_next)`` gives the standard normal z of a step (called once per step with
    sigma_next > 0, in order, only when eta > 0); by default a :class:`BrownianNoiseSampler` over the positive
    sigmas drawing from ``generator``.
    """
    prev: list[Tensor] = []  # x0 of the previous steps, newest first
    prev_h: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = _step(model, x, sigmas[i], i, extra_args, callback)
        s, s_next = sigmas[i], sigmas[i + 1]
        if s_next == 0:
            x = denoised
            break
        h = s.log() - s_next.log()
        big_h = (1 + eta) * h
        phi1 = torch.expm1(-big_h)  # e^{-H} - 1
        phi2 = phi1 / big_h + 1
        x = torch.exp(-big_h) * x - phi1 * denoised
        if len(prev) >= 2:
            r0, r1 = prev_h[0] / h, prev_h[1] / h
            d1_0 = (denoised - prev[0]) / r0
            d1_1 = (prev[0] - prev[1]) / r1
            d2 = (d1_0 - d1_1) / (r0 + r1)
            d1 = d1_0 + r0 * d2
            x = x + phi2 * d1 - (phi2 / big_h - 0.5) * d2
        elif prev:
            x = x + phi2 * (denoised - prev[0]) / (prev_h[0] / h)
        if eta:
            if noise_sampler is None:  # first noisy step: there are two distinct positive sigmas
                positive = sigmas[sigmas > 0]
                noise_sampler = BrownianNoiseSampler(x, positive.min(), positive.max(), generator)
            z = noise_sampler(s, s_next)
            x = x + z * s_next * (-torch.expm1(-2 * eta * h)).sqrt() * s_noise
        prev, prev_h = [denoised, *prev[:1]], [h, *prev_h[:1]]
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "ddim": sample_ddim,
    "dpm_solver": sample_dpm_solver_on_sigmas,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,  # the official XL app's default; works for every family
}

__all__ = [
    "BrownianNoiseSampler",
    "NoiseSampler",
    "SAMPLERS",
    "ancestral_step",
    "sample_ddim",
    "sample_dpm_solver_on_sigmas",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m_sde",
    "sample_euler",
    "sample_euler_ancestral",
]
