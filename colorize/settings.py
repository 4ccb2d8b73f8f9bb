"""Generation settings: sampler and schedule choice, guidance, strengths, seed, size, guidance window.

Defaults are the official app's (§2.5, §2.6); :meth:`GenerationSettings.validate` turns every bad value
into an :class:`~colorize.preprocess.InputError` naming the field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from colorize.config import ColorizerConfig
from colorize.errors import InputError
from colorize.models.strength import (
    NUM_ATTENTION_BLOCKS,
    block_reference_scales,
    level_reference_scales,
)
from colorize.sampling import SAMPLERS, SCHEDULERS
from colorize.sampling.noise_schedule import DiscreteSchedule
from colorize.sampling.sigmas import ddim_timesteps, leading_timesteps, timestep_sigmas

SCHEDULER_CHOICES = ("auto", "leading", *SCHEDULERS)
# "auto": each sampler's own default, as the official app's "Automatic" (k-diffusion / diffusers).
AUTO_SCHEDULER = {
    "dpm_solver": "leading",
    "ddim": "leading",
    "euler": "uniform",
    "euler_ancestral": "uniform",
    "dpmpp_2m": "karras",
    "dpmpp_2m_sde": "exponential",
}
MAX_SEED = 2**64 - 1


@dataclass
class GenerationSettings:
    """Everything a generation needs besides the images.

    Sampling defaults are the official app's: ``dpm_solver`` on its diffusers "leading" timesteps,
    20 steps, reference CFG 4, sketch CFG 1. ``scheduler="auto"`` picks each sampler's own default
    (:data:`AUTO_SCHEDULER`); ``leading`` means the diffusers timesteps of the sampler (DDIM's rule
    for ``ddim``, DPM-Solver's otherwise). ``level_strengths`` maps ``encoder``/``middle``/``low`` to
    the app's per-level cross-attention sliders; ``block_strengths`` (16 values) overrides them.
    Two deliberate differences from the app: ``polarity="auto"`` (the app always inverts) and, when
    width/height are not given, a size that follows the sketch's aspect at about 512² (the app: 512×512).

    Advanced controls (§2.6, §2.2, §2.9): ``guidance_start``/``guidance_end`` and ``no_guidance``
    (start, end) form the guidance window on ``tr = 1 − t/999`` (0 = first, noisiest step): outside
    ``[start, end]`` or inside ``no_guidance`` every CFG row gets a zero (empty) reference context
    (see :func:`reference_off`); the official honours it for v1 only, here it works for every version.
    ``reference_pad_scale`` (1–2) pads the reference and background width with white before CLIP;
    ``crop_result`` crops the decoded image to the un-padded sketch area.

    Attention injection (§2.7, :mod:`colorize.injection`): ``injection`` on/off; ``injection_fidelity`` (0–1,
    official "Injection fidelity (reference)" 0.5) blends the plain self-attention into the
    reference-unconditional rows; ``injection_control`` (official "Injection fidelity (sketch)", 0) scales
    the hints of the negated reference in the write pass; ``injection_start`` is the first ``tr`` injected.
    """

    steps: int = 20
    sampler: str = "dpm_solver"
    scheduler: str = "auto"
    reference_cfg: float = 4.0
    sketch_cfg: float = 1.0
    reference_strength: float = 1.0
    level_strengths: Mapping[str, float] | None = None
    block_strengths: Sequence[float] | None = None
    sketch_strength: float = 1.0
    seed: int = 0
    width: int | None = None
    height: int | None = None
    polarity: str = "auto"
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    no_guidance: tuple[float, float] = (-0.05, -0.05)
    reference_pad_scale: float = 1.0
    crop_result: bool = False
    injection: bool = False
    injection_fidelity: float = 0.5
    injection_control: float = 0.0
    injection_start: float = 0.0

    def validate(self) -> None:
        if self.sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.scheduler not in SCHEDULER_CHOICES:
            raise InputError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULER_CHOICES)}")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 500:
            raise InputError(f"steps must be a whole number between 1 and 500, got {self.steps!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise InputError(f"seed must be a whole number between 0 and 2**64 - 1, got {self.seed!r}")
        numbers = {"reference_cfg": self.reference_cfg, "sketch_cfg": self.sketch_cfg,
                   "reference_strength": self.reference_strength, "sketch_strength": self.sketch_strength,
                   **{f"level_strengths[{k}]": v for k, v in (self.level_strengths or {}).items()},
                   **{f"block_strengths[{i}]": v for i, v in enumerate(self.block_strengths or ())}}
        for name, value in numbers.items():
            if not math.isfinite(float(value)):
                raise InputError(f"{name} must be a finite number, got {value!r}")
        if self.block_strengths is not None and len(self.block_strengths) != NUM_ATTENTION_BLOCKS:
            raise InputError(f"block_strengths needs {NUM_ATTENTION_BLOCKS} values, got {len(self.block_strengths)}")
        self._validate_advanced()

    def _validate_advanced(self) -> None:
        start, end = self.guidance_start, self.guidance_end
        if not (_finite(start) and _finite(end) and 0.0 <= start <= end <= 1.0):
            raise InputError(f"guidance window needs 0 <= guidance_start <= guidance_end <= 1, got {start!r}, {end!r}")
        ng = tuple(self.no_guidance) if isinstance(self.no_guidance, (tuple, list)) else ()
        if len(ng) != 2 or not all(_finite(v) for v in ng) or ng[0] > ng[1]:
            raise InputError(f"no_guidance must be two finite numbers (start <= end), got {self.no_guidance!r}")
        if not _finite(self.reference_pad_scale) or not 1.0 <= self.reference_pad_scale <= 2.0:
            raise InputError(f"reference_pad_scale must be between 1 and 2, got {self.reference_pad_scale!r}")
        for name in ("injection_fidelity", "injection_start"):
            value = getattr(self, name)
            if not _finite(value) or not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be between 0 and 1, got {value!r}")
        if not _finite(self.injection_control) or not 0.0 <= self.injection_control <= 3.0:
            raise InputError(f"injection_control must be between 0 and 3, got {self.injection_control!r}")

    @property
    def guidance_window_active(self) -> bool:
        """Whether the guidance window can switch the reference off at some step in ``tr`` ∈ [0, 1]."""
        no_start, no_end = self.no_guidance
        return self.guidance_start > 0.0 or self.guidance_end < 1.0 or (no_end >= 0.0 and no_start <= 1.0)

    @property
    def resolved_scheduler(self) -> str:
        """The scheduler actually used (``auto`` resolved for the sampler)."""
        return AUTO_SCHEDULER[self.sampler] if self.scheduler == "auto" else self.scheduler

    def reference_scales(self) -> list[float]:
        if self.block_strengths is not None:
            return block_reference_scales(self.block_strengths, self.reference_strength)
        return level_reference_scales(self.reference_strength, self.level_strengths)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def reference_off(
    t: Tensor, start: float = 0.0, end: float = 1.0, no_guidance: tuple[float, float] = (-0.05, -0.05),
    last_timestep: int = 999,
) -> Tensor:
    """The guidance window (official ``apply_model`` of v1, §2.6): True where the reference is off.

    ``tr = 1 − t / last_timestep`` (t may be continuous); the reference is off where ``tr < start``,
    ``tr > end`` or ``no_start <= tr <= no_end``. With the defaults (0, 1, −0.05/−0.05) it never is."""
    tr = 1.0 - t.float() / float(last_timestep)
    no_start, no_end = no_guidance
    return (tr < start) | (tr > end) | ((tr >= no_start) & (tr <= no_end))


def sampling_sigmas(settings: GenerationSettings, schedule: DiscreteSchedule, cfg: ColorizerConfig, device: torch.device) -> Tensor:
    """The sigma schedule for the k-diffusion-style samplers (``leading`` = the sampler's diffusers timesteps)."""
    name = settings.resolved_scheduler
    if name == "leading":
        rule = ddim_timesteps if settings.sampler == "ddim" else leading_timesteps
        return timestep_sigmas(rule(settings.steps, cfg.schedule.timesteps), schedule, device)
    return SCHEDULERS[name](settings.steps, schedule, device=device)
