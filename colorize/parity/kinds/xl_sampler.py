"""Parity kind ``xl_sampler``: the official XL sampling loops (``CustomizedLDM.sample``) checked by teacher forcing.

The XL U-Net is replaced by a *replay* row model: call ``i`` checks the latent and timesteps it receives
against the stored ``model_in[i]`` / ``model_t[i]`` and returns the stored ``model_out[i]`` (all rows). The
sampler then runs as in the app, from the fixture's ``noise`` and with the stored Brownian increments
``sde_noise`` (one per SDE step, in call order), so the schedule, the timestep map, the eps / v denoiser
scalings, the dual-CFG combination (on x0 for the k-diffusion samplers, on the raw output for ``diffuser_*``)
and the solver are checked at every step without the U-Net. The produced ``model_in`` / ``model_t`` / ``final``
/ ``sigmas`` are this implementation's own; ``model_out`` is the replayed one (so it matches by construction
until a real XL U-Net is plugged in as the row model).

Everything is read from the fixture: schedule constants, steps, guidance kind and scales, parameterization,
the sampler / scheduler names and how many SDE increments each case uses. Official facts: ColorizeDiffusionXL
at commit ec78784, ``refnet/models/basemodel.py:94-151`` (sample), ``refnet/sampling/sampler.py:74-192``
(k-diffusion / diffusers samplers), ``refnet/sampling/denoiser.py:40-73`` (guidance on x0 / raw output).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from colorize.config import ScheduleConfig
from colorize.parity.core import Fixture, register
from colorize.sampling import SAMPLERS, GuidedDenoiser, dpm_solver_schedule, sample_dpm_solver, sampler_sigmas
from colorize.sampling.noise_schedule import DiscreteSchedule

#: Official sampler / scheduler labels → names in :data:`colorize.sampling.SAMPLERS` / ``SCHEDULERS``.
K_SAMPLERS = {
    "DPM++ 3M SDE": "dpmpp_3m_sde",
    "DPM++ 2M": "dpmpp_2m",
    "DPM++ 2M SDE": "dpmpp_2m_sde",
    "Euler": "euler",
    "Euler a": "euler_ancestral",
}
K_SCHEDULERS = {"Automatic": "auto", "Karras": "karras", "Exponential": "exponential", "Uniform": "uniform"}
DIFFUSER_SAMPLERS = {"diffuser_dpm"}
#: Samplers that take a ``noise_sampler`` (the official ones draw Brownian-tree noise, replayed from ``sde_noise``).
REPLAYABLE_SDE = {"dpmpp_3m_sde", "dpmpp_2m_sde"}


def guidance_scales(case: dict[str, Any]) -> tuple[float, float]:
    """(reference scale, sketch scale) of a case: ``cfg_scale`` is a pair [ref, sketch] or one number that
    belongs to the guidance named by ``guidance`` (ref / sketch; none → no CFG)."""
    g, kind = case.get("cfg_scale", 1.0), case.get("guidance", "dual")
    if isinstance(g, (list, tuple)):
        return float(g[0]), float(g[1])
    if kind == "ref":
        return float(g), 1.0
    if kind == "sketch":
        return 1.0, float(g)
    if kind == "none":
        return 1.0, 1.0
    raise ValueError(f"cannot read guidance {kind!r} with one scale {g!r}")


class ReplayModel:
    """Row model returning the stored U-Net outputs in call order, recording what it was given."""

    def __init__(self, stored_t: Tensor, stored_in: Tensor, stored_out: Tensor):
        self.stored_t, self.stored_in, self.stored_out = stored_t, stored_in, stored_out
        self.log: list[tuple[Tensor, Tensor, Tensor]] = []
        self.max_in_diff = 0.0
        self.max_t_diff = 0.0

    def __call__(self, x: Tensor, t: Tensor, rows: tuple[str, ...]) -> Tensor:
        i = len(self.log)
        if i >= self.stored_in.shape[0]:
            raise RuntimeError(f"the sampler made more than the stored {self.stored_in.shape[0]} U-Net calls")
        if tuple(x.shape) != tuple(self.stored_in.shape[1:]):
            raise RuntimeError(f"call {i}: model input {tuple(x.shape)} (rows {rows}), "
                               f"stored {tuple(self.stored_in.shape[1:])}")
        self.max_in_diff = max(self.max_in_diff, (x - self.stored_in[i]).abs().max().item())
        self.max_t_diff = max(self.max_t_diff, (t - self.stored_t[i]).abs().max().item())
        out = self.stored_out[i]
        self.log.append((t, x, out))
        return out


class ReplayNoise:
    """Noise sampler handing out the stored Brownian increments ``noise[k]`` for its k-th call."""

    def __init__(self, noise: Tensor):
        self.noise = noise
        self.pairs: list[tuple[float, float]] = []

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        k = len(self.pairs)
        if k >= self.noise.shape[0]:
            raise RuntimeError(f"the sampler asked for more than the stored {self.noise.shape[0]} SDE increments")
        self.pairs.append((float(sigma), float(sigma_next)))
        return self.noise[k]


def _check_noise_use(name: str, case: dict[str, Any], noise: ReplayNoise, tol: float) -> None:
    """The SDE increments were used as often, and on the same sigma intervals, as in the official run."""
    used = case.get("sde_noise_used")
    if used is not None and len(noise.pairs) != int(used):
        raise RuntimeError(f"{name}: used {len(noise.pairs)} SDE increments, the official run used {used}")
    want = case.get("sde_noise_sigma_pairs")
    if want is not None:
        for k, (got, ref) in enumerate(zip(noise.pairs, want)):
            if max(abs(got[0] - ref[0]), abs(got[1] - ref[1])) > tol:
                raise RuntimeError(f"{name}: SDE increment {k} on sigmas {got}, official {tuple(ref)}")


@register("xl_sampler")
def run(fx: Fixture) -> dict[str, Tensor]:
    s = fx.scalars
    if s.get("beta_schedule", "scaled_linear") != "scaled_linear":
        raise ValueError(f"beta schedule {s['beta_schedule']!r} is not implemented")
    sched_cfg = ScheduleConfig(float(s["linear_start"]), float(s["linear_end"]), int(s["timesteps"]))
    schedule = DiscreteSchedule.from_config(sched_cfg)
    ins, outs = fx.inputs, fx.outputs
    noise = ins["noise"]
    sde_noise = ins.get("sde_noise")

    produced: dict[str, Tensor] = {}
    for name, case in s["cases"].items():
        steps = int(case.get("steps", s["steps"]))
        g_ref, g_sketch = guidance_scales(case)
        p = case["parameterization"]
        model = ReplayModel(outs[f"{name}.model_t"], outs[f"{name}.model_in"], outs[f"{name}.model_out"])
        den = GuidedDenoiser(model, schedule, p, g_ref, g_sketch)
        label = case["sampler"]
        if label in DIFFUSER_SAMPLERS:
            timesteps, sigmas = dpm_solver_schedule(steps, sched_cfg)
            final = sample_dpm_solver(den.model_output, noise, steps, sched_cfg, p)
            produced[f"{name}.timesteps"] = timesteps.float()
        else:
            sampler = K_SAMPLERS[label]
            sigmas = sampler_sigmas(sampler, K_SCHEDULERS[case["scheduler"]], steps, schedule)
            kwargs: dict[str, Any] = {}
            replay_noise = None
            if sampler in REPLAYABLE_SDE:
                kwargs["eta"] = float(case.get("eta", 1.0))
                if kwargs["eta"]:
                    if sde_noise is None:
                        raise ValueError(f"{name}: an SDE case needs the input 'sde_noise'")
                    kwargs["noise_sampler"] = replay_noise = ReplayNoise(sde_noise)
            elif int(case.get("sde_noise_used", 0)):
                raise ValueError(f"{name}: sampler {label!r} cannot replay stored SDE noise")
            final = SAMPLERS[sampler](den, noise * sigmas[0], sigmas, **kwargs)
            if replay_noise is not None:
                _check_noise_use(name, case, replay_noise, fx.tolerance(f"{name}.sigmas"))
        calls = int(case.get("model_calls", outs[f"{name}.model_in"].shape[0]))
        if len(model.log) != calls:
            raise RuntimeError(f"{name}: {len(model.log)} U-Net calls, the official run made {calls}")
        produced[f"{name}.final"] = final
        produced[f"{name}.sigmas"] = sigmas
        produced[f"{name}.model_t"] = torch.stack([t for t, _, _ in model.log])
        produced[f"{name}.model_in"] = torch.stack([x for _, x, _ in model.log])
        produced[f"{name}.model_out"] = torch.stack([o for _, _, o in model.log])
    return produced
