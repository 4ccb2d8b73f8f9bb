"""Samplers, sigma schedules, the dual-CFG denoiser and the DPM-Solver++ path."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from colorize.config import ScheduleConfig
from colorize.parity.core import load_fixture
from colorize.sampling import (
    SAMPLERS,
    SCHEDULERS,
    GuidedDenoiser,
    dpm_solver_schedule,
    karras_sigmas,
    leading_timesteps,
    sample_dpm_solver,
)
from colorize.sampling.denoiser import COND, UNCOND_REF, UNCOND_SKETCH
from colorize.sampling.noise_schedule import DiscreteSchedule
from colorize.sampling.samplers import sample_ddim, sample_euler

SCHED = DiscreteSchedule.from_config()


# ------------------------------------------------------------------ replay of the official sampling loops
def _replay_model(stored_t, stored_in, stored_out, seen: dict):
    """Row model that checks its inputs against the stored ones and returns the stored raw U-Net output."""
    step = [0]

    def fn(x, t, rows):
        i = step[0]
        step[0] += 1
        assert x.shape[0] == stored_in.shape[1]
        seen["in"] = max(seen.get("in", 0.0), (x - stored_in[i]).abs().max().item())
        seen["t"] = max(seen.get("t", 0.0), (t - stored_t[i]).abs().max().item())
        seen["calls"] = step[0]
        return stored_out[i]

    return fn


def test_replay_matches_official_loops(fixture_dir: Path) -> None:
    """With the U-Net replaced by its stored outputs, every case reproduces the stored loop:
    sigmas / timesteps, per-step U-Net inputs and timesteps, and the final latent."""
    fx = load_fixture(fixture_dir / "sampler.json")
    s, out = fx.scalars, fx.outputs
    schedule = DiscreteSchedule(fx.state_dict["alphas_cumprod"])
    steps, (g_ref, g_sketch) = int(s["steps"]), s["cfg_scale"]
    noise = fx.inputs["noise"]
    names = {"Euler": "euler", "DPM++ 2M": "dpmpp_2m"}
    for case in s["cases"]:
        n, p = case["name"], case["parameterization"]
        seen: dict = {}
        model = _replay_model(out[f"{n}.model_t"], out[f"{n}.model_in"], out[f"{n}.model_out"], seen)
        den = GuidedDenoiser(model, schedule, p, g_ref, g_sketch)
        if case["sampler"] == "diffuser_dpm":
            ts, sigmas = dpm_solver_schedule(steps)
            assert torch.equal(ts.float(), out[f"{n}.timesteps"])
            final = sample_dpm_solver(den.model_output, noise, steps, ScheduleConfig(), p)
        else:
            sigmas = SCHEDULERS[case["scheduler"].lower()](steps, schedule)
            final = SAMPLERS[names[case["sampler"]]](den, noise * sigmas[0], sigmas)
        tol = fx.tolerance
        assert seen["calls"] == steps
        assert (sigmas - out[f"{n}.sigmas"]).abs().max() <= tol(f"{n}.sigmas"), n
        assert seen["t"] <= tol(f"{n}.model_t"), n
        assert seen["in"] <= tol(f"{n}.model_in"), n
        assert (final - out[f"{n}.final"]).abs().max() <= tol(f"{n}.final"), n


# ------------------------------------------------------------------ schedules
def test_karras_endpoints_and_spacing() -> None:
    sig = SCHEDULERS["karras"](8, SCHED)
    assert sig.shape == (9,) and sig.dtype == torch.float32 and sig[-1] == 0
    assert sig[0].item() == pytest.approx(SCHED.sigma_max, rel=1e-6)
    assert sig[-2].item() == pytest.approx(SCHED.sigma_min, rel=1e-6)
    assert bool((sig.diff() < 0).all())
    root = sig[:-1] ** (1 / 7)  # linear in sigma^(1/rho)
    torch.testing.assert_close(root.diff(), root.diff().mean().expand(7), rtol=1e-4, atol=0)
    r3 = karras_sigmas(5, 0.1, 10.0, rho=3.0)[:-1] ** (1 / 3)
    torch.testing.assert_close(r3.diff(), r3.diff().mean().expand(4), rtol=1e-4, atol=0)


def test_uniform_and_exponential_schedules() -> None:
    u = SCHEDULERS["uniform"](4, SCHED)
    torch.testing.assert_close(u[:-1], SCHED.sigmas[[999, 666, 333, 0]])
    assert u[-1] == 0
    e = SCHEDULERS["exponential"](5, SCHED)[:-1].log()
    torch.testing.assert_close(e.diff(), e.diff().mean().expand(4), rtol=1e-4, atol=0)
    assert e[0].exp().item() == pytest.approx(SCHED.sigma_max, rel=1e-5)


def test_leading_timesteps() -> None:
    for steps in (6, 20, 25):
        ts = leading_timesteps(steps)
        ratio = 1000 // (steps + 1)
        assert ts.tolist() == [ratio * k + 1 for k in range(steps, 0, -1)]
    ts, sig = dpm_solver_schedule(10)
    torch.testing.assert_close(sig[:-1], SCHED.sigmas[ts], rtol=1e-5, atol=0)
    assert sig[-1] == 0


# ------------------------------------------------------------------ denoiser
@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_denoiser_recovers_x0_from_exact_prediction(parameterization: str) -> None:
    """A model that returns the true eps (or v) of a known x0 makes the denoiser return that x0."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 5, 6, generator=g), torch.randn(3, 4, 5, 6, generator=g)
    sigma = torch.tensor([0.05, 1.3, 14.0])
    x = x0 + sigma[:, None, None, None] * eps  # sigma view

    def model(z, t, rows):
        sig = SCHED.t_to_sigma(t)[:, None, None, None]
        alpha, s = (sig**2 + 1) ** -0.5, sig * (sig**2 + 1) ** -0.5
        torch.testing.assert_close(z, alpha * x0 + s * eps, rtol=1e-4, atol=1e-5)  # the VP latent
        return eps if parameterization == "eps" else alpha * eps - s * x0

    den = GuidedDenoiser(model, SCHED, parameterization)
    torch.testing.assert_close(den(x, sigma), x0, rtol=1e-4, atol=2e-4)


def _row_constant_model(calls: list):
    """Each row group returns its own constant: cond 1, uncond_ref -2, uncond_sketch 5."""
    value = {COND: 1.0, UNCOND_REF: -2.0, UNCOND_SKETCH: 5.0}

    def fn(x, t, rows):
        calls.append((rows, x.shape[0]))
        b = x.shape[0] // len(rows)
        return torch.cat([torch.full((b, *x.shape[1:]), value[r]) for r in rows])

    return fn


@pytest.mark.parametrize(
    "g_ref, g_sketch, rows, expected",
    [
        (4.0, 1.0, (COND, UNCOND_REF), -2 + 4.0 * (1 + 2)),
        (1.0, 2.5, (COND, UNCOND_SKETCH), 5 + 2.5 * (1 - 5)),
        (1.0, 1.0, (COND,), 1.0),
        (3.0, 1.5, (COND, UNCOND_REF, UNCOND_SKETCH), 0.5 * ((-2 + 3.0 * 3) + (5 + 1.5 * -4))),
    ],
)
def test_guidance_modes(g_ref: float, g_sketch: float, rows: tuple, expected: float) -> None:
    calls: list = []
    den = GuidedDenoiser(_row_constant_model(calls), SCHED, "eps", g_ref, g_sketch)
    x = torch.zeros(2, 4, 3, 3)
    out = den.model_output(x, torch.tensor([500.0, 500.0]))
    assert calls == [(rows, 2 * len(rows))]
    torch.testing.assert_close(out, torch.full_like(x, expected))
    # on x0 (k-diffusion path) the same combination applies: x0 = x - sigma * eps_guided
    sigma = torch.tensor([2.0, 2.0])
    torch.testing.assert_close(den(x, sigma), torch.full_like(x, -2.0 * expected))


# ------------------------------------------------------------------ samplers on toy models
def _gaussian_denoiser(c: float):
    """Exact denoiser for data x0 ~ N(0, c^2): D(x, sigma) = c^2 / (c^2 + sigma^2) x."""
    return lambda x, sigma: x * (c**2 / (c**2 + sigma**2))[:, None, None, None]


def test_ode_samplers_follow_exact_gaussian_flow() -> None:
    """For Gaussian data the probability-flow ODE from sigma_T to sigma_min followed by the final denoise gives
    x_T c^2 / sqrt((c^2 + sigma_T^2)(c^2 + sigma_min^2)). Euler (= DDIM) converges at first order, DPM++ 2M and
    the DPM-Solver++ variant at second order."""
    c, lo, hi = 0.7, 0.03, 14.6
    den = _gaussian_denoiser(c)
    x_t = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(1)) * hi
    exact = x_t * c**2 / math.sqrt((c**2 + hi**2) * (c**2 + lo**2))

    def err(name: str, n: int) -> float:
        return (SAMPLERS[name](den, x_t, karras_sigmas(n, lo, hi)) - exact).abs().max().item()

    e = {(name, n): err(name, n) for name in ("euler", "ddim", "dpmpp_2m", "dpm_solver") for n in (16, 32)}
    assert 1.8 < e["euler", 16] / e["euler", 32] < 2.2
    assert e["dpmpp_2m", 16] / e["dpmpp_2m", 32] > 3.5
    assert e["dpmpp_2m", 32] < 0.15 * e["euler", 32]
    for n in (16, 32):
        assert e["ddim", n] == pytest.approx(e["euler", n], rel=1e-3)
        assert e["dpm_solver", n] == pytest.approx(e["dpmpp_2m", n], rel=1e-3)


def _toy_eps(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.4 * z + 0.2 * torch.tanh(z) + 1e-4 * t[:, None, None, None]


def test_ddim_matches_closed_form_update() -> None:
    """DDIM in the sigma view equals the textbook DDPM-space update z' = sqrt(a') x0 + sqrt(1-a') eps."""
    ts = [999, 700, 400, 120]
    acp = SCHED.alphas_cumprod.double()
    den = GuidedDenoiser(lambda x, t, rows: _toy_eps(x, t.round()), SCHED, "eps")
    sig = torch.cat([SCHED.sigmas[ts], torch.zeros(1)])
    z = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(3)).double()
    states: list = []
    got = sample_ddim(den, (z / acp[999].sqrt()).float(), sig, callback=lambda d: states.append(d["x"]))
    for i, t in enumerate(ts):
        a = acp[t]
        torch.testing.assert_close(states[i].double() * a.sqrt(), z, atol=1e-4, rtol=1e-4)  # same trajectory
        eps = _toy_eps(z, torch.tensor([float(t)] * 2, dtype=torch.float64))
        x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
        a_next = acp[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        z = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    torch.testing.assert_close(got.double(), z, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got, sample_euler(den, (states[0]), sig), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_dpm_solver_vp_path_equals_sigma_path(parameterization: str) -> None:
    """The integer-timestep DPM-Solver++(2M) in the VP view equals the sigma-view solver on the same sigmas
    (x = z sqrt(sigma^2+1)), and it starts from the unscaled noise."""
    steps = 7
    noise = torch.randn(1, 4, 4, 6, generator=torch.Generator().manual_seed(4))
    ts, sig = dpm_solver_schedule(steps)
    seen_t: list = []

    def raw(z, t):
        seen_t.append(t.clone())
        return _toy_eps(z, t)

    vp_states: list = []
    vp = sample_dpm_solver(raw, noise, steps, ScheduleConfig(), parameterization, callback=lambda d: vp_states.append(d))
    assert torch.equal(vp_states[0]["x"], noise)
    assert torch.equal(torch.stack(seen_t)[:, 0], ts.float())
    den = GuidedDenoiser(lambda x, t, rows: _toy_eps(x, t.round()), SCHED, parameterization)
    ve = SAMPLERS["dpm_solver"](den, noise * (sig[0] ** 2 + 1).sqrt(), sig)
    torch.testing.assert_close(vp, ve, atol=1e-4, rtol=1e-4)
    assert [d["i"] for d in vp_states] == list(range(steps))


# ------------------------------------------------------------------ determinism, callbacks, interruption
@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde"])
def test_stochastic_samplers_deterministic_per_seed(name: str) -> None:
    den = _gaussian_denoiser(0.8)
    sig = karras_sigmas(6, 0.03, 14.6)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * sig[0]

    def run(seed: int) -> torch.Tensor:
        return SAMPLERS[name](den, x, sig, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(11), run(11), run(12)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    # the noise matters: the deterministic (eta = 0) limit differs
    assert (a - SAMPLERS["dpmpp_2m"](den, x, sig)).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_and_interruption(name: str) -> None:
    den = _gaussian_denoiser(0.5)
    sig = karras_sigmas(5, 0.03, 10.0)
    x = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0)) * sig[0]
    seen: list = []
    SAMPLERS[name](den, x, sig, callback=seen.append, generator=torch.Generator().manual_seed(0))
    assert [d["i"] for d in seen] == list(range(5))
    assert all({"i", "x", "sigma", "denoised"} <= set(d) for d in seen)
    torch.testing.assert_close(seen[0]["x"], x)

    class Stop(Exception):
        pass

    def stop(d):
        if d["i"] == 2:
            raise Stop

    with pytest.raises(Stop):
        SAMPLERS[name](den, x, sig, callback=stop, generator=torch.Generator().manual_seed(0))
