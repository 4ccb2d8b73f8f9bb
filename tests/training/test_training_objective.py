"""Training objective: Stage I reference noise (Eq. 5.2), t-mapping, drops, offset noise, targets, keyed RNG."""
from __future__ import annotations

import math

import pytest
import torch

from training.config import ObjectiveConfig
from training.objective import (
    NoiseSpec,
    ScheduleTable,
    draw_sample_noise,
    keyed_generator,
    loss_weights,
    make_inputs,
    reference_timestep,
)


def reference_alphas_cumprod() -> torch.Tensor:
    """SD2.1 scaled-linear ᾱ_t computed here from the definition (float64), independent of colorize.sampling.noise_schedule."""
    betas = [(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * i / 999) ** 2 for i in range(1000)]
    acp, out = 1.0, []
    for b in betas:
        acp *= 1.0 - b
        out.append(acp)
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture(scope="module")
def table() -> ScheduleTable:
    from colorize.sampling.noise_schedule import ddpm_buffers

    return ScheduleTable(ddpm_buffers()["alphas_cumprod"])


SPEC = NoiseSpec(latent_channels=4, downsample=8, tokens=16, token_dim=8)


def draws(n: int, cfg: ObjectiveConfig, hw: tuple[int, int] = (64, 64), seed: int = 3) -> dict[str, torch.Tensor]:
    items = [draw_sample_noise(keyed_generator(seed, 1, 0, i), SPEC, hw, cfg) for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def test_official_timestep_mapping() -> None:
    t = torch.tensor([0, 1, 500, 899, 900, 901, 950, 998, 999])
    expected = torch.tensor([v if v < 900 else 999 - v for v in t.tolist()])
    assert torch.equal(reference_timestep(t), expected)
    assert reference_timestep(torch.tensor([950])).item() == 49


@pytest.mark.parametrize("t_value", [10, 400, 850, 950])
def test_stage1_reference_noise_follows_eq_5_2(table: ScheduleTable, t_value: int) -> None:
    """c_t = √ᾱ_{t'} c + √(1-ᾱ_{t'}) ε_r with t' from the official map: check slope, residual mean and std."""
    cfg = ObjectiveConfig(noisy_reference=True, reference_drop=0.0, offset_noise=0.0)
    n = 256
    batch = draws(n, cfg)
    batch["t"] = torch.full((n,), t_value)
    ctx = torch.randn(n, SPEC.tokens, SPEC.token_dim, generator=torch.Generator().manual_seed(0)) * 3.0
    z = torch.zeros(n, 4, 8, 8)
    out = make_inputs(z, ctx, torch.zeros(n, 3, 64, 64), batch, cfg, table).context.double()
    tp = t_value if t_value < 900 else 999 - t_value
    acp = reference_alphas_cumprod()[tp]
    a, s = acp.sqrt(), (1 - acp).sqrt()
    c = ctx.double()
    slope = ((out * c).sum() / (c * c).sum()).item()  # least squares through the origin; noise ⟂ c
    resid = (out - a * c) / s
    assert slope == pytest.approx(a.item(), abs=4 * s.item() / math.sqrt((c * c).sum().item()) + 1e-6)
    assert abs(resid.mean().item()) < 5 / math.sqrt(resid.numel())
    assert resid.std().item() == pytest.approx(1.0, rel=0.02)
    # the noise is the drawn ε_r itself
    assert torch.allclose(resid.float(), batch["ref_noise"], atol=1e-3)


def test_clean_reference_when_not_noisy(table: ScheduleTable) -> None:
    cfg = ObjectiveConfig(noisy_reference=False, reference_drop=0.0)
    batch = draws(8, cfg)
    ctx = torch.randn(8, SPEC.tokens, SPEC.token_dim)
    out = make_inputs(torch.zeros(8, 4, 8, 8), ctx, torch.zeros(8, 3, 64, 64), batch, cfg, table)
    assert torch.equal(out.context, ctx)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_reference_drop_rate_and_zero_context(table: ScheduleTable, p: float) -> None:
    cfg = ObjectiveConfig(noisy_reference=True, reference_drop=p)
    n = 3000
    keep = torch.stack([draw_sample_noise(keyed_generator(7, 1, s, i), SPEC, (64, 64), cfg)["ref_keep"]
                        for s in range(3) for i in range(n // 3)])
    rate = 1.0 - keep.mean().item()
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n)
    batch = draws(64, cfg)
    out = make_inputs(torch.zeros(64, 4, 8, 8), torch.randn(64, SPEC.tokens, SPEC.token_dim),
                      torch.zeros(64, 3, 64, 64), batch, cfg, table)
    dropped = batch["ref_keep"] == 0
    assert dropped.any() and (~dropped).any()
    assert torch.equal(out.context[dropped], torch.zeros_like(out.context[dropped]))  # exactly the CFG uncond
    assert (out.context[~dropped].abs().sum(dim=(1, 2)) > 0).all()


def test_sketch_drop_blanks_sketch(table: ScheduleTable) -> None:
    cfg = ObjectiveConfig(sketch_drop=0.5, reference_drop=0.0)
    batch = draws(40, cfg)
    sketch = torch.rand(40, 3, 64, 64) * 2 - 1
    out = make_inputs(torch.zeros(40, 4, 8, 8), torch.zeros(40, SPEC.tokens, SPEC.token_dim), sketch, batch, cfg, table)
    dropped = batch["sketch_keep"] == 0
    assert dropped.any() and (~dropped).any()
    assert (out.sketch[dropped] == -1).all()
    assert torch.equal(out.sketch[~dropped], sketch[~dropped])


def test_offset_noise_variance() -> None:
    """Per-(sample, channel) spatial means have variance 1/(h·w) + offset² (offset noise, official
    ``refnet/models/trainer/trainer.py:64-108``)."""
    for offset in (0.0, 0.1):
        cfg = ObjectiveConfig(offset_noise=offset)
        noise = draws(600, cfg, hw=(256, 256))["noise"]  # latent 32×32
        var = noise.mean(dim=(2, 3)).var().item()
        expected = 1 / (32 * 32) + offset**2
        assert var == pytest.approx(expected, rel=0.15)


def test_v_and_eps_targets(table: ScheduleTable) -> None:
    """v-target inverts to z via z = √ᾱ x_t - √(1-ᾱ) v; eps-target is the noise."""
    batch = draws(16, ObjectiveConfig())
    z = torch.randn(16, 4, 8, 8)
    ctx, sk = torch.zeros(16, SPEC.tokens, SPEC.token_dim), torch.zeros(16, 3, 64, 64)
    eps = make_inputs(z, ctx, sk, batch, ObjectiveConfig(prediction="eps"), table)
    assert torch.equal(eps.target, batch["noise"])
    v = make_inputs(z, ctx, sk, batch, ObjectiveConfig(prediction="v"), table)
    acp = reference_alphas_cumprod()[batch["t"]].float().view(-1, 1, 1, 1)
    assert torch.allclose(acp.sqrt() * v.x_t - (1 - acp).sqrt() * v.target, z, atol=1e-4)
    assert torch.allclose(v.x_t, acp.sqrt() * z + (1 - acp).sqrt() * batch["noise"], atol=1e-5)


def test_min_snr_weights(table: ScheduleTable) -> None:
    t = torch.tensor([0, 100, 500, 999])
    acp = reference_alphas_cumprod()[t]
    snr = acp / (1 - acp)
    w = loss_weights("eps", t, table, 5.0).double()
    assert torch.allclose(w, snr.clamp(max=5.0) / snr, rtol=1e-4)
    assert torch.equal(loss_weights("eps", t, table, 0.0), torch.ones(4))


def test_keyed_draws_are_reproducible_and_distinct() -> None:
    cfg = ObjectiveConfig()
    a = draw_sample_noise(keyed_generator(1, 1, 5, 2), SPEC, (64, 64), cfg)
    b = draw_sample_noise(keyed_generator(1, 1, 5, 2), SPEC, (64, 64), cfg)
    c = draw_sample_noise(keyed_generator(1, 1, 5, 3), SPEC, (64, 64), cfg)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["noise"], c["noise"])
    ts = torch.stack([draw_sample_noise(keyed_generator(2, 1, 0, i), SPEC, (64, 64), cfg)["t"] for i in range(2000)])
    assert ts.min() >= 0 and ts.max() <= 999 and abs(ts.float().mean().item() - 499.5) < 4 * 288.7 / math.sqrt(2000)
