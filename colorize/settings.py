"""Generation settings: sampler and schedule, guidance, reference strengths, seed, size, the advanced controls,
and the foreground/background controls of v1.5 / v2.

Defaults are the official app's (``backend/appfunc.py`` and the Gradio UI of the official repository at commit
``c9bd9fb``); :meth:`GenerationSettings.validate` and :meth:`EnhanceSettings.validate` turn every bad value into
an :class:`~colorize.errors.InputError` naming the field; output sizes above the limits of
:func:`colorize.preprocess.output_limits` (see there for the defaults and how to raise them; re-exported here) are a
:class:`~colorize.errors.SizeLimitError`. The reference
strength reaches the cross-attention as :meth:`GenerationSettings.reference_scales`: one value per attention block
in the official order (:data:`colorize.models.unet.ATTENTION_BLOCK_ORDER`), built by the app's slider rules below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

from torch import Tensor

from colorize.errors import InputError
from colorize.models.unet import NUM_ATTENTION_BLOCKS
from colorize.preprocess import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    DEFAULT_MAX_OUTPUT_SIDE,
    MAX_PIXELS_ENV,
    MAX_SIDE_ENV,
    OutputLimits,
    check_output_size,
    check_requested_size,
    output_limits,
)
from colorize.sampling import SAMPLERS, SCHEDULER_CHOICES, resolve_scheduler

#: Largest seed (64-bit, as ComfyUI's seed widgets).
MAX_SEED = 2**64 - 1

#: Level groups of the official app's cross-attention sliders (indices into the official attention-block order);
#: ``encoder`` overlaps the others (official ``backend/appfunc.py:187-204``).
LEVEL_GROUPS: dict[str, tuple[int, ...]] = {
    "high": (0, 1, 13, 14, 15),
    "middle": (2, 3, 10, 11, 12),
    "low": (4, 5, 7, 8, 9),
    "bottom": (6,),
    "encoder": (0, 1, 2, 3, 4, 5),
}
#: The app's three level sliders, in the order it applies them (later groups overwrite earlier ones).
APP_LEVELS: tuple[str, ...] = ("encoder", "middle", "low")
#: How the XL ``sdxl`` family turns the level sliders into block strengths (``GenerationSettings.level_rule``).
LEVEL_RULES: tuple[str, ...] = ("official", "levels")
#: Groups the app has no slider for; applied after ``APP_LEVELS`` and only when given.
EXTRA_LEVELS: tuple[str, ...] = ("high", "bottom")
#: v1.5 / v2 mask thresholds of the app: reference mask 0.5, sketch mask 0.05 (official ``app.py:175-176``).
DEFAULT_REFERENCE_THRESHOLD = 0.5
DEFAULT_SKETCH_THRESHOLD = 0.05
BackgroundContext = Literal["background", "official", "reference"]
BACKGROUND_CONTEXTS: tuple[str, ...] = ("background", "official", "reference")

@dataclass
class GenerationSettings:
    """Everything a generation needs besides the images.

    Sampling defaults are the official app's: ``dpm_solver`` on its diffusers "leading" timesteps,
    20 steps, reference CFG 4, sketch CFG 1. ``scheduler="auto"`` picks each sampler's own default
    (:data:`colorize.sampling.AUTO_SCHEDULER`); ``leading`` means the diffusers timesteps of the sampler (DDIM's rule
    for ``ddim``, DPM-Solver's otherwise). ``level_strengths`` maps ``encoder``/``middle``/``low`` to
    the app's per-level cross-attention sliders; ``block_strengths`` (16 values) overrides them.
    Two deliberate differences from the app: ``polarity="auto"`` (the app always inverts) and, when
    width/height are not given, a size that follows the sketch's aspect at about 512² (the app: 512×512).

    Advanced controls (official ``refnet/models/basemodel.py:273-280``, ``backend/functool.py:120-128``,
    ``app.py``): ``guidance_start``/``guidance_end`` and ``no_guidance``
    (start, end) form the guidance window on ``tr = 1 − t/999`` (0 = first, noisiest step): outside
    ``[start, end]`` or inside ``no_guidance`` every CFG row gets a zero (empty) reference context
    (see :func:`reference_off`); the official honours it for v1 only, here it works for every version.
    ``reference_pad_scale`` (1–2) pads the reference and background width with white before CLIP;
    ``crop_result`` crops the decoded image to the un-padded sketch area.

    Attention injection (official ``refnet/sampling/hook.py:284-383``; :mod:`colorize.injection`): ``injection`` on/off; ``injection_fidelity`` (0–1,
    official "Injection fidelity (reference)" 0.5) blends the plain self-attention into the
    reference-unconditional rows; ``injection_control`` (official "Injection fidelity (sketch)", 0) scales
    the hints of the negated reference in the write pass; ``injection_start`` is the first ``tr`` injected.

    ``hint_strengths``: one multiplier per sketch hint on top of ``sketch_strength`` (the XL app's four per-level
    sketch strengths; SD2.1 has five hints); ``None`` = all 1.

    ColorizeDiffusion XL (``sdxl``): ``level_rule`` ``official`` reproduces the app, where only the ``encoder``
    slider acts (on every block); ``levels`` makes all three act (high ← encoder, bottom ← middle, low ← low;
    :mod:`colorize.families.xl.blocks`). ``block_strengths`` has one value per transformer block of the loaded
    family (16 SD2.1, 70 XL).

    Output size limits: ``max_output_side`` / ``max_output_pixels`` (``None`` = ``$COLORIZE_MAX_SIDE`` /
    ``$COLORIZE_MAX_PIXELS``, else the family's defaults, 4096 px and 2048²; ``0`` = no limit; see
    :func:`colorize.preprocess.output_limits`).
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
    max_output_side: int | None = None
    max_output_pixels: int | None = None
    level_rule: str = "official"
    hint_strengths: Sequence[float] | None = None

    def validate(self, family: Any = None, sketch_hw: tuple[int, int] | None = None) -> None:
        """An :class:`~colorize.errors.InputError` naming the first bad field; sizes above the output limits
        (:func:`output_limits` of ``family``, the loaded model's; ``None`` = not known yet) are a
        :class:`~colorize.errors.SizeLimitError`. With ``sketch_hw`` (the sketch's height, width) the size that
        will actually run is checked (:func:`colorize.preprocess.target_size`, a missing side following the
        sketch's aspect); without it, the sides given and, when both are, their product."""
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
                   **{f"block_strengths[{i}]": v for i, v in enumerate(self.block_strengths or ())},
                   **{f"hint_strengths[{i}]": v for i, v in enumerate(self.hint_strengths or ())}}
        for name, value in numbers.items():
            if not math.isfinite(float(value)):
                raise InputError(f"{name} must be a finite number, got {value!r}")
        for name in ("reference_cfg", "sketch_cfg"):
            if float(getattr(self, name)) < 1.0:
                raise InputError(f"{name} must be at least 1 (1 switches that guidance off), got {getattr(self, name)!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InputError(f"{name} must be a whole number of pixels (0 or None = automatic), got {value!r}")
        blocks = int(getattr(family, "attention_block_count", NUM_ATTENTION_BLOCKS))
        if self.block_strengths is not None and len(self.block_strengths) != blocks:
            raise InputError(f"block_strengths needs {blocks} values (one per transformer block), got "
                             f"{len(self.block_strengths)}")
        if self.level_rule not in LEVEL_RULES:
            raise InputError(f"level_rule must be one of {', '.join(LEVEL_RULES)}, got {self.level_rule!r}")
        self._validate_advanced()
        self.check_size(family, sketch_hw)

    def check_size(self, family: Any = None, sketch_hw: tuple[int, int] | None = None) -> None:
        """The output-size part of :meth:`validate` (same arguments; width/height already checked)."""
        if family is not None:
            family.check_size(self.width, self.height)
        limits = output_limits(family, self.max_output_side, self.max_output_pixels)
        check_requested_size(self.width, self.height, limits, sketch_hw, int(getattr(family, "base_resolution", 512)))

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
        return resolve_scheduler(self.sampler, self.scheduler)

    def reference_scales(self) -> list[float]:
        """The reference strength of each cross-attention block, in the official order (the
        ``AttentionPatches.reference_scales`` of every U-Net call, :func:`colorize.generate.sample_latent`)."""
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
    """The guidance window (official ``refnet/models/basemodel.py:273-280``, v1's ``apply_model``): True where the
    reference is off.

    ``tr = 1 − t / last_timestep`` (t may be continuous); the reference is off where ``tr < start``,
    ``tr > end`` or ``no_start <= tr <= no_end``. With the defaults (0, 1, −0.05/−0.05) it never is."""
    tr = 1.0 - t.float() / float(last_timestep)
    no_start, no_end = no_guidance
    return (tr < start) | (tr > end) | ((tr >= no_start) & (tr <= no_end))


def level_reference_scales(strength: float = 1.0, levels: Mapping[str, float] | None = None) -> list[float]:
    """The 16 per-block scales of the reference strength and the per-level sliders, as the official app builds them.

    Each of ``encoder``, ``middle``, ``low`` (missing = 1, like an untouched slider) sets its blocks to
    ``strength · level`` in that order, later groups overwriting earlier ones. Blocks 6, 13, 14, 15 (the middle
    block and the top decoder level) are never touched by these sliders and stay 1, whatever the strength: this
    matches the released app. ``high`` / ``bottom`` are an extension: when given they set their blocks (also
    times ``strength``) after the app's groups.
    """
    levels = dict(levels or {})
    unknown = set(levels) - set(LEVEL_GROUPS)
    if unknown:
        raise ValueError(f"unknown level group(s) {sorted(unknown)}; known: {sorted(LEVEL_GROUPS)}")
    scales = [1.0] * NUM_ATTENTION_BLOCKS
    for name in list(APP_LEVELS) + [name for name in EXTRA_LEVELS if name in levels]:
        value = float(levels.get(name, 1.0)) * strength
        for i in LEVEL_GROUPS[name]:
            scales[i] = value
    return scales


def block_reference_scales(scales: Sequence[float], strength: float = 1.0) -> list[float]:
    """16 explicit per-block scales ("accurate" mode) times ``strength``.

    Unlike the released app, which assigns its 16 sliders shifted by one (slider 0 dropped, block 15 untouched;
    official ``backend/appfunc.py:187-204``), value ``i`` goes to block ``i``.
    """
    if len(scales) != NUM_ATTENTION_BLOCKS:
        raise ValueError(f"expected {NUM_ATTENTION_BLOCKS} per-block scales, got {len(scales)}")
    return [float(s) * strength for s in scales]


@dataclass(frozen=True)
class EnhanceSettings:
    """The foreground/background controls of v1.5 and v2: "BG enhance", "FG enhance", "Style enhance" (v2) and
    their sliders, named and defaulted as in the official app (all off; ``backend/appfunc.py:250-266``,
    ``refnet/models/basemodel.py:261-266``). Which of them a checkpoint can use is its family's decision
    (``Family.check_enhance``).

    background_enhance / foreground_enhance need the sketch foreground mask (computed from the line art when not
    given); background enhance without a separate background image also needs the reference foreground mask.
    style_enhance (v2) needs no mask. fg_scale / bg_scale: "Foreground/Background strength" of the two split
    attention halves; merge_scale: "Merging scale", blends background into foreground (split attention, and the
    v2 style vectors with a separate background image); background_factor (v2): "Background factor", multiplies
    the background-encoder tokens; sketch_threshold: τ_s of the sketch mask (split attention, v2 skip warping);
    reference_threshold: τ_ref of the reference / background masks; remove_background_foreground: whiten the
    foreground of a separate background image (needs its mask); lora_scale: multiplier of the fg/bg LoRA deltas
    (1 = as trained, 0 = LoRA off); background_context (v2): which tokens the background encoder reads
    (``colorize.families.v2.conditioning``).
    """

    background_enhance: bool = False
    style_enhance: bool = False
    foreground_enhance: bool = False
    background_factor: float = 1.0
    merge_scale: float = 0.0
    fg_scale: float = 1.0
    bg_scale: float = 1.0
    sketch_threshold: float = DEFAULT_SKETCH_THRESHOLD
    reference_threshold: float = DEFAULT_REFERENCE_THRESHOLD
    remove_background_foreground: bool = False
    background_context: BackgroundContext = "background"
    lora_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.background_context not in BACKGROUND_CONTEXTS:
            raise ValueError(f"background_context must be one of {BACKGROUND_CONTEXTS}, got {self.background_context!r}")

    @property
    def masked(self) -> bool:
        """Foreground or background enhance: split attention with the sketch mask."""
        return self.background_enhance or self.foreground_enhance

    @property
    def active(self) -> bool:
        return self.masked or self.style_enhance

    def validate(self) -> None:
        """Clear errors for values no family can use (which family can use which control: ``check_enhance``)."""
        numbers = {"fg_scale": self.fg_scale, "bg_scale": self.bg_scale, "merge_scale": self.merge_scale,
                   "background_factor": self.background_factor, "sketch_threshold": self.sketch_threshold,
                   "reference_threshold": self.reference_threshold, "lora_scale": self.lora_scale}
        for name, value in numbers.items():
            if not math.isfinite(float(value)):
                raise InputError(f"{name} must be a finite number, got {value!r}")


__all__ = [
    "APP_LEVELS",
    "BACKGROUND_CONTEXTS",
    "DEFAULT_REFERENCE_THRESHOLD",
    "DEFAULT_SKETCH_THRESHOLD",
    "EXTRA_LEVELS",
    "LEVEL_GROUPS",
    "LEVEL_RULES",
    "MAX_SEED",
    "DEFAULT_MAX_OUTPUT_PIXELS",
    "DEFAULT_MAX_OUTPUT_SIDE",
    "MAX_PIXELS_ENV",
    "MAX_SIDE_ENV",
    "BackgroundContext",
    "EnhanceSettings",
    "GenerationSettings",
    "OutputLimits",
    "block_reference_scales",
    "check_output_size",
    "level_reference_scales",
    "output_limits",
    "reference_off",
]
