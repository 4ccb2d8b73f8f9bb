"""Parity kind ``sampler``: full sampling loops of the v1 U-Net with dual CFG (the official k-diffusion and diffusers loops).

Each case runs one sampler through :class:`GuidedDenoiser`; a recording row model stores the timesteps,
inputs and raw outputs of every U-Net call so that ``model_t`` / ``model_in`` / ``model_out`` can be compared.
"""
from __future__ import annotations

import torch
from torch import Tensor

from colorize.config import ScheduleConfig
from colorize.models import unet
from colorize.parity.core import Fixture, register
from colorize.sampling import SAMPLERS, SCHEDULERS, GuidedDenoiser, dpm_solver_schedule, sample_dpm_solver
from colorize.sampling.denoiser import COND, UNCOND_REF, UNCOND_SKETCH
from colorize.sampling.noise_schedule import DiscreteSchedule

_K_SAMPLERS = {"Euler": "euler", "DPM++ 2M": "dpmpp_2m"}
_K_SCHEDULERS = {"Karras": "karras"}


def _row_model(model: unet.DualCondUNet, context: Tensor, hints: list[Tensor], hints_uncond: list[Tensor], log: list):
    """Row model for the official batch layout; appends (t, x, out) of every call to ``log``."""
    conds = {
        COND: (context, hints),
        UNCOND_REF: (torch.zeros_like(context), hints),
        UNCOND_SKETCH: (context, hints_uncond),
    }

    def fn(x: Tensor, t: Tensor, rows: tuple[str, ...]) -> Tensor:
        ctx = torch.cat([conds[r][0] for r in rows])
        hs = [torch.cat([conds[r][1][i] for r in rows]) for i in range(len(hints))]
        out = model(x, t, ctx, hs)
        log.append((t, x, out))
        return out

    return fn


@register("sampler")
def run(fx: Fixture) -> dict[str, Tensor]:
    cfg = fx.config
    model = unet.DualCondUNet(unet.config_from_official(cfg["unet_config"]["params"]))
    model.load_state_dict(fx.weights("model.diffusion_model."), strict=True)
    model.eval()
    sc = cfg["schedule"]
    sched_cfg = ScheduleConfig(sc["linear_start"], sc["linear_end"], sc["timesteps"])
    schedule = DiscreteSchedule(fx.state_dict["alphas_cumprod"])

    s = fx.scalars
    steps, (g_ref, g_sketch) = int(s["steps"]), s["cfg_scale"]
    ins = fx.inputs
    n_hints = sum(1 for k in ins if k.startswith("hint_cond"))
    hints = [ins[f"hint_cond{i}"] for i in range(n_hints)]  # already x control_scale
    hints_uncond = [ins[f"hint_uncond{i}"] for i in range(n_hints)]
    noise = ins["noise"]

    out: dict[str, Tensor] = {}
    for case in s["cases"]:
        name, p = case["name"], case["parameterization"]
        log: list = []
        den = GuidedDenoiser(_row_model(model, ins["context"], hints, hints_uncond, log), schedule, p, g_ref, g_sketch)
        if case["sampler"] == "diffuser_dpm":
            timesteps, sigmas = dpm_solver_schedule(steps, sched_cfg)
            final = sample_dpm_solver(den.model_output, noise, steps, sched_cfg, p)
            out[f"{name}.timesteps"] = timesteps.float()
        else:
            sigmas = SCHEDULERS[_K_SCHEDULERS[case["scheduler"]]](steps, schedule)
            final = SAMPLERS[_K_SAMPLERS[case["sampler"]]](den, noise * sigmas[0], sigmas)
        out[f"{name}.final"] = final
        out[f"{name}.sigmas"] = sigmas
        out[f"{name}.model_t"] = torch.stack([t for t, _, _ in log])
        out[f"{name}.model_in"] = torch.stack([x for _, x, _ in log])
        out[f"{name}.model_out"] = torch.stack([o for _, _, o in log])
    return out
