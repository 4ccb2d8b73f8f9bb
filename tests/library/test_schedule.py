"""The DDPM schedule buffers and the sigma <-> timestep maps."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from colorize.config import ScheduleConfig
from colorize.sampling.noise_schedule import BUFFER_NAMES, DiscreteSchedule, ddpm_buffers, scaled_linear_betas


def test_buffers_match_official_fixture(fixture_dir: Path) -> None:
    stored = load_file(str(fixture_dir / "sampler.safetensors"))
    cfg = json.loads((fixture_dir / "sampler.json").read_text())["constructor_config"]["schedule"]
    mine = ddpm_buffers(ScheduleConfig(cfg["linear_start"], cfg["linear_end"], cfg["timesteps"]))
    assert set(mine) == set(BUFFER_NAMES) and len(BUFFER_NAMES) == 12
    for name in BUFFER_NAMES:
        assert mine[name].dtype == torch.float32
        torch.testing.assert_close(mine[name], stored[name], rtol=1e-6, atol=0, msg=name)


def test_betas_endpoints_and_identities() -> None:
    betas = scaled_linear_betas()
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.012, rel=1e-12)
    # sqrt(beta) is linear in t
    torch.testing.assert_close(betas.sqrt().diff(), betas.sqrt().diff().mean().expand(999), rtol=1e-9, atol=0)
    b = ddpm_buffers()
    torch.testing.assert_close(b["sqrt_alphas_cumprod"] ** 2 + b["sqrt_one_minus_alphas_cumprod"] ** 2, torch.ones(1000))
    torch.testing.assert_close(b["alphas_cumprod"][1:], b["alphas_cumprod"][:-1] * (1 - b["betas"][1:]))
    assert b["alphas_cumprod_prev"][0] == 1 and torch.equal(b["alphas_cumprod_prev"][1:], b["alphas_cumprod"][:-1])


def test_sigma_to_t_integer_and_midpoints() -> None:
    s = DiscreteSchedule.from_config()
    t = torch.tensor([0.0, 1.0, 437.0, 998.0, 999.0])
    sig = s.sigmas[t.long()]
    torch.testing.assert_close(s.sigma_to_t(sig), t, atol=2e-3, rtol=0)
    # geometric mean of neighbouring sigmas is the log-space midpoint
    mid = (s.log_sigmas[[10, 500]] + s.log_sigmas[[11, 501]]).div(2).exp()
    torch.testing.assert_close(s.sigma_to_t(mid), torch.tensor([10.5, 500.5]), atol=2e-3, rtol=0)
    # clamping: below the table (incl. 0) -> 0, above -> T-1
    out = s.sigma_to_t(torch.tensor([0.0, s.sigma_min * 0.5, s.sigma_max * 2]))
    assert out.tolist() == [0.0, 0.0, 999.0]
    assert s.sigma_to_t(torch.tensor(3.0)).shape == ()


def test_t_to_sigma_inverts_sigma_to_t() -> None:
    s = DiscreteSchedule.from_config()
    t = torch.tensor([0.0, 0.25, 17.5, 600.125, 999.0])
    torch.testing.assert_close(s.sigma_to_t(s.t_to_sigma(t)), t, atol=2e-3, rtol=0)
    torch.testing.assert_close(s.t_to_sigma(torch.tensor([3.0, 999.0])), s.sigmas[[3, 999]])
    assert s.sigma_min == pytest.approx(s.sigmas[0].item()) and s.sigma_max == pytest.approx(s.sigmas[-1].item())
