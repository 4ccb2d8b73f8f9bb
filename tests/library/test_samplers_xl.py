"""Samplers added for ColorizeDiffusion XL: DPM++ 3M SDE, its Brownian noise, the official "Automatic"
exponential schedule, the v-prediction denoiser scalings, and the teacher-forced replay of the official loops
(parity kind ``xl_sampler``). The SD2.1 samplers' own results are pinned by ``test_samplers.py``."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from _helpers import skip_or_fail

from colorize.sampling import (
    AUTO_SCHEDULER,
    SAMPLERS,
    SCHEDULER_CHOICES,
    SCHEDULERS,
    BrownianNoiseSampler,
    GuidedDenoiser,
    drop_next_to_last,
    exponential_official,
    sample_dpmpp_3m_sde,
    sampler_sigmas,
    scalings,
    to_denoised,
)
from colorize.sampling.denoiser import COND
from colorize.sampling.noise_schedule import DiscreteSchedule
from colorize.sampling.sigmas import exponential, exponential_sigmas

REPO = Path(__file__).resolve().parents[2]
SCHED = DiscreteSchedule.from_config()

# A Gaussian data distribution N(MU, S²) per element: in the sigma view x = x0 + sigma·n the exact denoiser is
# D(x, sigma) = MU + S²/(S² + sigma²)(x − MU), and the probability-flow ODE moves x − MU ∝ sqrt(S² + sigma²).
MU, S = 0.3, 0.5


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    sig = sigma.reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)
    return MU + S**2 / (S**2 + sig**2) * (x - MU)


def exact_final(x_t: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Exact ODE solution at the last positive sigma, then its exact x0 (what a final step to 0 returns)."""
    hi, last = sigmas[0].double(), sigmas[-2].double()
    x_last = MU + ((S**2 + last**2) / (S**2 + hi**2)).sqrt() * (x_t - MU)
    return MU + S**2 / (S**2 + last**2) * (x_last - MU)


# ------------------------------------------------------------------ names
def test_node_visible_lists_keep_their_names_and_add_the_xl_ones() -> None:
    """The sampler node's combo choices keep every earlier name in its place (saved workflows depend on them);
    the XL app's sampler and schedule are added at the end."""
    assert tuple(SAMPLERS) == ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "dpm_solver",
                               "dpmpp_3m_sde")
    assert SCHEDULER_CHOICES == ("auto", "leading", "karras", "uniform", "exponential", "exponential_official")
    assert SAMPLERS["dpmpp_3m_sde"] is sample_dpmpp_3m_sde
    assert SCHEDULERS["exponential_official"] is exponential_official
    assert AUTO_SCHEDULER == {
        "euler": "uniform", "euler_ancestral": "uniform", "dpmpp_2m": "karras", "dpmpp_2m_sde": "exponential",
        "ddim": "leading", "dpm_solver": "leading", "dpmpp_3m_sde": "exponential_official"}


@pytest.mark.parametrize("name", ["karras", "uniform", "exponential"])
def test_existing_schedules_bit_identical_through_sampler_sigmas(name: str) -> None:
    assert torch.equal(sampler_sigmas("dpmpp_2m", name, 9, SCHED), SCHEDULERS[name](9, SCHED))


# ------------------------------------------------------------------ the official "Automatic" schedule
@pytest.mark.parametrize("steps", [1, 2, 5, 20])
def test_exponential_official_is_steps_plus_one_with_next_to_last_dropped(steps: int) -> None:
    sig = exponential_official(steps, SCHED)
    full = exponential(steps + 1, SCHED)  # steps + 2 values: steps + 1 exponential sigmas, then 0
    assert sig.shape == (steps + 1,) and sig.dtype == torch.float32
    assert sig[-1] == 0 and bool((sig.diff() < 0).all())
    assert torch.equal(sig[:-1], full[:-2])  # every sigma but sigma_min, bit for bit
    assert sig[0].item() == pytest.approx(SCHED.sigma_max, rel=1e-6)
    assert full[-2].item() == pytest.approx(SCHED.sigma_min, rel=1e-6) and bool((sig[:-1] > full[-2]).all())
    log_steps = sig[:-1].log().diff()
    assert torch.allclose(log_steps, log_steps.new_full(log_steps.shape, log_steps.mean().item()), atol=1e-5)


def test_auto_resolves_dpmpp_3m_sde_to_the_official_schedule() -> None:
    assert AUTO_SCHEDULER["dpmpp_3m_sde"] == "exponential_official"
    assert torch.equal(sampler_sigmas("dpmpp_3m_sde", "auto", 20, SCHED), exponential_official(20, SCHED))
    # the app default, 20 steps: 21 sigmas, sigma_max ... (no sigma_min) ... 0
    assert sampler_sigmas("dpmpp_3m_sde", "auto", 20, SCHED).shape == (21,)


def test_drop_next_to_last() -> None:
    assert drop_next_to_last(torch.tensor([3.0, 2.0, 1.0, 0.0])).tolist() == [3.0, 2.0, 0.0]
    with pytest.raises(ValueError):
        drop_next_to_last(torch.tensor([1.0, 0.0]))


# ------------------------------------------------------------------ DPM++ 3M SDE
def _refuse(*_):  # a noise sampler that must not be called
    raise AssertionError("eta 0 must not draw noise")


def test_3m_sde_eta0_is_deterministic_and_draws_no_noise() -> None:
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 14.6
    sig = exponential_sigmas(8, 0.03, 14.6)
    a = sample_dpmpp_3m_sde(gaussian_denoiser, x, sig, eta=0.0, noise_sampler=_refuse)
    b = sample_dpmpp_3m_sde(gaussian_denoiser, x, sig, eta=0.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_3m_sde_exact_for_a_constant_x0() -> None:
    """With D ≡ c every difference term vanishes: eta 0 gives x(σ') − c = (σ'/σ)(x − c) at every step, and
    with zero noise eta > 0 gives x' − c = e^{-(1+eta)h}(x − c)."""
    c = torch.full((1, 4), 0.7, dtype=torch.float64)
    x = torch.tensor([[3.0, -2.0, 0.5, 9.0]], dtype=torch.float64)
    sig = torch.tensor([10.0, 4.0, 1.5, 0.4, 0.1], dtype=torch.float64)
    seen: list[torch.Tensor] = []
    sample_dpmpp_3m_sde(lambda z, s: c.expand_as(z), x, sig, eta=0.0, callback=lambda d: seen.append(d["x"]))
    for i, xi in enumerate(seen):
        assert torch.allclose(xi, c + sig[i] / sig[0] * (x - c), rtol=1e-12, atol=1e-12)
    eta = 0.5
    out = sample_dpmpp_3m_sde(lambda z, s: c.expand_as(z), x, sig, eta=eta,
                              noise_sampler=lambda s, sn: torch.zeros_like(x))
    h_total = (sig[0] / sig[-1]).log()
    assert torch.allclose(out, c + torch.exp(-(1 + eta) * h_total) * (x - c), rtol=1e-12, atol=1e-12)


def test_3m_sde_final_step_to_zero_returns_x0() -> None:
    x = torch.randn(1, 8, dtype=torch.float64) * 5
    out = sample_dpmpp_3m_sde(gaussian_denoiser, x, torch.tensor([5.0, 0.0], dtype=torch.float64))
    assert torch.equal(out, gaussian_denoiser(x, torch.tensor([5.0], dtype=torch.float64)))


def _errors(name: str, ns: list[int], **kw) -> list[float]:
    x_t = torch.randn(4, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 14.6
    errs = []
    for n in ns:
        sig = exponential_sigmas(n, 0.03, 14.6).double()
        out = SAMPLERS[name](gaussian_denoiser, x_t.clone(), sig, **kw)
        errs.append((out - exact_final(x_t, sig)).abs().max().item())
    return errs


def test_3m_ode_converges_on_a_gaussian() -> None:
    """eta 0 integrates the probability-flow ODE: error shrinks at least quadratically with the step count
    (measured ≈ 4.4–9× per doubling), and beats DPM++ 2M from 20 steps on."""
    ns = [10, 20, 40, 80]
    e3 = _errors("dpmpp_3m_sde", ns, eta=0.0)
    e2 = _errors("dpmpp_2m", ns)
    assert e3[-1] < 5e-4
    assert all(a / b > 3.5 for a, b in zip(e3, e3[1:])), e3
    assert all(a < b for a, b in zip(e3[1:], e2[1:])), (e3, e2)


def test_3m_sde_keeps_the_data_distribution() -> None:
    """eta 1 with Brownian noise: from x_T ~ N(MU, S² + σ_max²) the samples end distributed as N(MU, S²)
    (a wrongly scaled noise term would inflate or shrink the spread)."""
    g = torch.Generator().manual_seed(1)
    x_t = MU + torch.randn(1, 200_000, generator=g) * (S**2 + 14.6**2) ** 0.5
    out = sample_dpmpp_3m_sde(gaussian_denoiser, x_t, exponential_sigmas(40, 0.03, 14.6),
                              generator=torch.Generator().manual_seed(2))
    assert out.mean().item() == pytest.approx(MU, abs=0.01)
    assert out.std().item() == pytest.approx(S, abs=0.01)


def test_3m_sde_default_noise_follows_the_generator() -> None:
    x = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(0)) * 14.6
    sig = exponential_official(6, SCHED)

    def run(seed: int) -> torch.Tensor:
        return sample_dpmpp_3m_sde(gaussian_denoiser, x, sig, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert (run(3) - run(4)).abs().max() > 1e-3
    assert (run(3) - sample_dpmpp_3m_sde(gaussian_denoiser, x, sig, eta=0.0)).abs().max() > 1e-3


def test_3m_sde_noise_sampler_called_once_per_noisy_step_in_order() -> None:
    sig = exponential_official(5, SCHED)
    calls: list[tuple[float, float]] = []

    def ns(s, sn):
        calls.append((float(s), float(sn)))
        return torch.zeros(1, 4)

    sample_dpmpp_3m_sde(gaussian_denoiser, torch.ones(1, 4), sig, noise_sampler=ns)
    assert calls == [(float(sig[i]), float(sig[i + 1])) for i in range(len(sig) - 2)]


def test_2m_sde_takes_a_noise_sampler_without_changing_its_default() -> None:
    """Passing noise that draws exactly what the default draws gives the bit-identical result; a Brownian
    noise sampler still keeps the data distribution."""
    from colorize.sampling.samplers import _noise_like, sample_dpmpp_2m_sde

    x = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(0)) * 14.6
    sig = exponential_sigmas(7, 0.03, 14.6)
    a = sample_dpmpp_2m_sde(gaussian_denoiser, x, sig, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    b = sample_dpmpp_2m_sde(gaussian_denoiser, x, sig, noise_sampler=lambda s, sn: _noise_like(x, g))
    assert torch.equal(a, b)
    x_t = MU + torch.randn(1, 200_000, generator=torch.Generator().manual_seed(1)) * (S**2 + 14.6**2) ** 0.5
    sig = exponential_sigmas(40, 0.03, 14.6)
    ns = BrownianNoiseSampler(x_t, 0.03, 14.6, torch.Generator().manual_seed(2))
    out = sample_dpmpp_2m_sde(gaussian_denoiser, x_t, sig, noise_sampler=ns)
    assert out.mean().item() == pytest.approx(MU, abs=0.01)
    assert out.std().item() == pytest.approx(S, abs=0.01)


# ------------------------------------------------------------------ Brownian noise
def test_brownian_increments_are_standard_normal_and_independent() -> None:
    like = torch.zeros(400_000)
    ns = BrownianNoiseSampler(like, 0.03, 14.6, torch.Generator().manual_seed(0))
    sig = exponential_official(6, SCHED)
    sig = sig[sig > 0]
    sig = torch.cat([sig.clamp(max=14.6), sig.new_tensor([0.03])])
    zs = [ns(sig[i], sig[i + 1]) for i in range(len(sig) - 1)]
    for z in zs:
        assert z.shape == like.shape and z.dtype == torch.float32
        assert z.mean().item() == pytest.approx(0.0, abs=0.01)
        assert z.var().item() == pytest.approx(1.0, abs=0.01)
    for a, b in zip(zs, zs[1:]):
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.01


def test_brownian_path_is_consistent() -> None:
    """One path: an interval's increment is the sum of its parts' (in any query order), queries repeat."""
    ns = BrownianNoiseSampler(torch.zeros(200_000), 0.1, 10.0, torch.Generator().manual_seed(1))
    mid = ns(4.0, 2.0)  # an inner interval first: both ends drawn from bridges
    whole = ns(10.0, 0.1)
    top, bottom = ns(10.0, 4.0), ns(2.0, 0.1)
    parts = top * 6.0**0.5 + mid * 2.0**0.5 + bottom * 1.9**0.5
    assert torch.allclose(whole * 9.9**0.5, parts, atol=1e-5)
    assert torch.equal(ns(2.0, 4.0), mid)  # either order of the two sigmas
    for z in (mid, top, bottom):
        assert z.var().item() == pytest.approx(1.0, abs=0.015)
    assert abs(torch.corrcoef(torch.stack([top, mid]))[0, 1].item()) < 0.015
    outside = BrownianNoiseSampler(torch.zeros(200_000), 1.0, 2.0, torch.Generator().manual_seed(2))(0.5, 5.0)
    assert outside.var().item() == pytest.approx(1.0, abs=0.015)


def test_brownian_is_seeded_and_refuses_empty_intervals() -> None:
    def draw(seed: int) -> torch.Tensor:
        return BrownianNoiseSampler(torch.zeros(3, 5), 0.1, 5.0, torch.Generator().manual_seed(seed))(5.0, 1.0)

    assert torch.equal(draw(7), draw(7)) and not torch.equal(draw(7), draw(8))
    with pytest.raises(ValueError):
        BrownianNoiseSampler(torch.zeros(2), 0.1, 5.0)(1.0, 1.0)
    with pytest.raises(ValueError):
        BrownianNoiseSampler(torch.zeros(2), 5.0, 0.1)


# ------------------------------------------------------------------ v-prediction
def test_v_scalings_and_round_trip() -> None:
    """CompVisVDenoiser semantics (sigma_data 1): c_skip = 1/(σ²+1), c_out = −σ/√(σ²+1), c_in = 1/√(σ²+1);
    x0 from the true v of a noised sample is exact (eps likewise)."""
    sigma = torch.tensor([0.03, 0.5, 1.0, 14.6], dtype=torch.float64)
    c_skip, c_out, c_in = scalings(sigma, "v")
    assert torch.allclose(c_skip, 1 / (sigma**2 + 1))
    assert torch.allclose(c_out, -sigma / (sigma**2 + 1).sqrt())
    assert torch.allclose(c_in, 1 / (sigma**2 + 1).sqrt())
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 5, dtype=torch.float64, generator=g)
    eps = torch.randn(4, 3, 5, dtype=torch.float64, generator=g)
    a = (1 / (sigma**2 + 1).sqrt()).reshape(-1, 1, 1)  # VP: z = a x0 + s eps, s = sigma a
    s = sigma.reshape(-1, 1, 1) * a
    z = a * x0 + s * eps
    v = a * eps - s * x0
    x = z / a  # the sigma view; the U-Net input c_in·x is z again
    assert torch.allclose(c_in.reshape(-1, 1, 1) * x, z)
    assert torch.allclose(to_denoised(x, sigma, v, "v"), x0, atol=1e-12)
    assert torch.allclose(to_denoised(x, sigma, eps, "eps"), x0, atol=1e-12)


def test_guided_denoiser_v_feeds_c_in_x_and_continuous_t() -> None:
    seen = {}

    def model(x, t, rows):
        seen.update(x=x, t=t, rows=rows)
        return torch.zeros_like(x)

    den = GuidedDenoiser(model, SCHED, "v")
    x = torch.randn(1, 4, 2, 2)
    sigma = torch.tensor([3.0])
    x0 = den(x, sigma)
    assert seen["rows"] == (COND,)
    assert torch.allclose(seen["x"], x / (sigma**2 + 1).sqrt())
    assert torch.allclose(seen["t"], SCHED.sigma_to_t(sigma))
    assert torch.allclose(x0, x / (sigma**2 + 1))  # v = 0 → x0 = c_skip·x


# ------------------------------------------------------------------ official loops, teacher forced
def _xl_sampler_fixture():
    from colorize.parity.core import load_fixture

    path = REPO.parent / "shared" / "fixtures" / "official-xl" / "xl_sampler.json"
    if not path.is_file():
        skip_or_fail(f"{path} not found (the XL golden fixtures)")
    return load_fixture(path)


def test_golden_fixture_teacher_forced() -> None:
    # the kind alone (not run_fixture, which imports every kind): this file tests the samplers only
    from colorize.parity.core import compare
    from colorize.parity.kinds.xl_sampler import run

    fx = _xl_sampler_fixture()
    res = compare(fx, run(fx))
    assert res.passed, res.line()
    for name, (diff, tol, _) in res.per_output.items():
        assert diff <= tol / 10, (name, diff, tol)  # far inside: the loops are replayed, not approximated


def test_golden_fixture_pins_the_noise_order() -> None:
    """Swapping two stored Brownian increments moves the 3M SDE latents out of tolerance: each increment
    belongs to one step."""
    from colorize.parity.core import compare
    from colorize.parity.kinds.xl_sampler import run

    fx = copy.copy(_xl_sampler_fixture())
    noise = fx.inputs["sde_noise"].clone()
    noise[[0, 1]] = noise[[1, 0]]
    fx.inputs = {**fx.inputs, "sde_noise": noise}
    res = compare(fx, run(fx))
    assert not res.per_output["dpmpp_3m_sde_ref_eps.final"][2]
    assert res.per_output["dpmpp_2m_karras_dual_eps.final"][2]


def test_kind_reads_every_size_and_setting_from_the_fixture() -> None:
    """A synthetic twin with other latent sizes, step counts, scales and a toy row model (the expected calls
    recorded from the library directly): the kind reproduces it, so nothing is tied to the public numbers."""
    from colorize.config import ScheduleConfig
    from colorize.parity.core import Fixture, compare
    from colorize.parity.kinds.xl_sampler import run
    from colorize.sampling import sample_dpm_solver

    g = torch.Generator().manual_seed(3)
    noise = torch.randn(1, 4, 6, 5, generator=g)
    sde = torch.randn(9, 1, 4, 6, 5, generator=g)
    cfg = ScheduleConfig(0.001, 0.011, 1000)
    sched = DiscreteSchedule.from_config(cfg)
    cases = {
        "a": dict(sampler="DPM++ 3M SDE", scheduler="Automatic", guidance="ref", cfg_scale=2.5,
                  parameterization="eps", steps=7),
        "b": dict(sampler="DPM++ 3M SDE", scheduler="Automatic", guidance="sketch", cfg_scale=3.0,
                  parameterization="v", steps=9),
        "c": dict(sampler="DPM++ 2M", scheduler="Karras", guidance="dual", cfg_scale=[2.0, 3.5],
                  parameterization="eps", steps=6),
        "d": dict(sampler="diffuser_dpm", scheduler="Automatic", guidance="dual", cfg_scale=[1.5, 2.5],
                  parameterization="v", steps=8),
    }
    outputs: dict[str, torch.Tensor] = {}
    for name, case in cases.items():
        log: list = []

        def toy(x, t, rows, log=log):
            out = 0.1 * torch.tanh(x) * (1 + 0.2 * torch.arange(len(rows)).repeat_interleave(x.shape[0] // len(rows))
                                         .reshape(-1, 1, 1, 1)) + 1e-4 * t.reshape(-1, 1, 1, 1)
            log.append((t, x, out))
            return out

        g_r, g_s = {"a": (2.5, 1.0), "b": (1.0, 3.0), "c": (2.0, 3.5), "d": (1.5, 2.5)}[name]
        den = GuidedDenoiser(toy, sched, case["parameterization"], g_r, g_s)
        pairs: list = []

        def replay(s_, sn, pairs=pairs):
            pairs.append([float(s_), float(sn)])
            return sde[len(pairs) - 1]

        if case["sampler"] == "diffuser_dpm":
            final = sample_dpm_solver(den.model_output, noise, case["steps"], cfg, case["parameterization"])
        else:
            name_ = "dpmpp_3m_sde" if "3M" in case["sampler"] else "dpmpp_2m"
            sig = sampler_sigmas(name_, "auto" if case["scheduler"] == "Automatic" else "karras", case["steps"], sched)
            kw = {"noise_sampler": replay} if name_ == "dpmpp_3m_sde" else {}
            final = SAMPLERS[name_](den, noise * sig[0], sig, **kw)
            outputs[f"{name}.sigmas"] = sig
        case.update(model_calls=len(log), sde_noise_used=len(pairs), sde_noise_sigma_pairs=pairs)
        outputs[f"{name}.final"] = final
        for k, j in (("model_t", 0), ("model_in", 1), ("model_out", 2)):
            outputs[f"{name}.{k}"] = torch.stack([e[j] for e in log])
    assert outputs["b.model_in"].shape == (9, 2, 4, 6, 5) and outputs["c.model_in"].shape[1] == 3
    meta = {"scalar_args": {"steps": 5, "linear_start": 0.001, "linear_end": 0.011, "timesteps": 1000,
                            "beta_schedule": "scaled_linear", "cases": cases},
            "tolerance": {"per_group_max_abs": {"all": 1e-6}}}
    fx = Fixture("twin", "xl_sampler", meta, {}, {"noise": noise, "sde_noise": sde}, outputs)
    res = compare(fx, run(fx))
    assert res.passed, res.line()
    # the kind refuses a run whose noise use differs from the record
    cases["a"]["sde_noise_used"] = 5
    with pytest.raises(RuntimeError, match="SDE increments"):
        run(fx)
