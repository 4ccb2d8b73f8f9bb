"""The native bridge's sampling nodes: the official dual CFG as a GUIDER, and the official schedules as SIGMAS.

Dual CFG (thesis Eq. 2.16 applied per condition, then averaged; :mod:`colorize.sampling.denoiser`):
``out = ½[(u_ref + g_ref (c − u_ref)) + (u_sk + g_sk (c − u_sk))]`` on the denoised estimates, a scale
counting only when > 1. Rows: ``cond`` = positive with the sketch's hints, ``uncond_ref`` = negative (zero
reference) with the sketch's hints, ``uncond_sketch`` = positive with the blank sketch's hints. The guider
tells the sketch patch which ``cond_or_uncond`` indices are sketch-unconditional, so the rows are right
whether ComfyUI runs them in one batch or in several.
"""
from __future__ import annotations

from inspect import cleandoc
from typing import Any

import torch

from colorize.errors import InputError
from colorize.sampling import (
    COND,
    SCHEDULERS,
    UNCOND_REF,
    UNCOND_SKETCH,
    combine_guidance,
    guidance_rows,
)
from colorize.sampling.noise_schedule import DiscreteSchedule
from colorize.sampling.sigmas import ddim_timesteps, leading_timesteps, timestep_sigmas
from colorize.settings import GenerationSettings, reference_off

from ..schema import io, output
from ..sockets import AdvancedSocket
from .patches import SKETCH_UNCOND_KEY

CONDS = {COND: "positive", UNCOND_REF: "negative", UNCOND_SKETCH: "sketch_uncond"}
SIGMA_SCHEDULES = ("leading", "ddim_leading", *SCHEDULERS)
_GUIDER: list[type] = []


def guider_class() -> type:
    """The dual-CFG guider, a ``comfy.samplers.CFGGuider`` subclass (built once, when ComfyUI is loaded)."""
    if not _GUIDER:
        import comfy.samplers

        class DualReferenceSketchGuider(comfy.samplers.CFGGuider):  # type: ignore[misc,name-defined]
            def set_scales(self, positive: Any, negative: Any, reference_cfg: float, sketch_cfg: float) -> None:
                self.reference_cfg, self.sketch_cfg = float(reference_cfg), float(sketch_cfg)
                self.rows = guidance_rows(self.reference_cfg, self.sketch_cfg)
                conds = {"positive": positive, "negative": negative}
                if UNCOND_SKETCH in self.rows:
                    conds["sketch_uncond"] = positive
                self.inner_set_conds(conds)
                self.window: GenerationSettings | None = None

            def set_window(self, settings: GenerationSettings, schedule: DiscreteSchedule) -> None:
                """The guidance window (:func:`colorize.settings.reference_off`): at steps
                outside it every row reads the empty reference (the negative), as the Sampler does."""
                self.window, self.window_schedule = settings, schedule

            def reference_is_off(self, sigma: torch.Tensor) -> bool:
                if self.window is None:
                    return False
                w = self.window
                t = self.window_schedule.sigma_to_t(sigma.reshape(-1)[:1].float().cpu())
                return bool(reference_off(t, w.guidance_start, w.guidance_end, tuple(w.no_guidance),
                                          self.window_schedule.num_timesteps - 1).all())

            def predict_noise(self, x: torch.Tensor, timestep: torch.Tensor,
                              model_options: dict[str, Any] | None = None, seed: int | None = None) -> torch.Tensor:
                model_options = model_options or {}
                options = dict(model_options)
                options["transformer_options"] = {
                    **model_options.get("transformer_options", {}),
                    SKETCH_UNCOND_KEY: tuple(i for i, r in enumerate(self.rows) if r == UNCOND_SKETCH)}
                off = self.reference_is_off(timestep)
                conds = [self.conds.get("negative" if off else CONDS[r]) for r in self.rows]
                out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, options)
                return combine_guidance(out, self.rows, self.reference_cfg, self.sketch_cfg)

        _GUIDER.append(DualReferenceSketchGuider)
    return _GUIDER[0]


class NativeGuider(io.ComfyNode):
    """MODEL + positive / negative → GUIDER with the official dual CFG (reference and sketch)."""

    HELP = cleandoc("""
        Reference CFG compares the positive with the empty reference; sketch CFG compares the sketch with a blank
        sketch (through **Native Sketch**). The two are averaged:

        `½[(u_ref + g_ref(c − u_ref)) + (u_sketch + g_sketch(c − u_sketch))]`

        A scale of 1 switches its branch off (one U-Net row less). An optional **Guidance Window** limits the
        reference to part of the trajectory, as on **Colorize Sampler**; **Attention Injection** needs Colorize
        Sampler.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionNativeGuider", display_name="Native Guider", category="ColorizeDiffusion/native",
            description=(
                "The official dual guidance (reference CFG and sketch CFG) as a GUIDER for SamplerCustomAdvanced. A "
                "scale of 1 switches that guidance off. With KSampler, only the reference scale (its cfg) is available."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The patched native MODEL (Native Sketch, and optionally Enhance / "
                                                "Reference Strength)."),
                io.Conditioning.Input("positive", tooltip="Native Conditioning's (or Native Enhance's) positive."),
                io.Conditioning.Input("negative", tooltip="Native Conditioning's (or Native Enhance's) negative: the "
                                                          "empty reference."),
                io.Float.Input("reference_cfg", default=4.0, min=1.0, max=30.0, step=0.1,
                               tooltip="Reference guidance scale (official 1–15, default 4; 1 = off)."),
                io.Float.Input("sketch_cfg", default=1.0, min=1.0, max=30.0, step=0.1,
                               tooltip="Sketch guidance scale (official 1–5, default 1 = off)."),
                AdvancedSocket.Input("advanced", optional=True,
                                     tooltip="Optional: a Guidance Window (the reference only inside [start, end] of "
                                             "the trajectory). Attention injection needs the ColorizeDiffusion "
                                             "Sampler."),
            ],
            outputs=[output(io.Guider, "guider", "The guider for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model: Any, positive: Any, negative: Any, reference_cfg: float,
                sketch_cfg: float, advanced: Any = None) -> io.NodeOutput:
        want = model.model.model_config.unet_config.get("context_dim")
        for name, cond in (("positive", positive), ("negative", negative)):
            dims = {int(c[0].shape[-1]) for c in cond}
            if want is not None and dims != {want}:
                raise InputError(f"the {name} conditioning is {sorted(dims)}-dimensional but this MODEL reads "
                                 f"{want}-dimensional reference tokens: embed the reference with the OpenCLIP "
                                 "ViT-H/14 encoder that belongs to this checkpoint (Native Conditioning / Enhance)")
        guider = guider_class()(model)
        guider.set_scales(positive, negative, reference_cfg, sketch_cfg)
        if advanced is not None:
            settings = advanced.apply(GenerationSettings())
            if settings.injection:
                raise InputError("attention injection is not available on the native path: connect the Attention "
                                 "Injection node to the ColorizeDiffusion Sampler's 'advanced' input instead")
            if settings.guidance_window_active:
                guider.set_window(settings, host_schedule(model))
        return io.NodeOutput(guider)


def host_schedule(model: Any) -> DiscreteSchedule:
    """The MODEL's own discrete schedule (its sigma table, e.g. after ModelSamplingDiscrete) as the library's."""
    sigmas = model.get_model_object("model_sampling").sigmas.detach().float().cpu()
    schedule = DiscreteSchedule(1.0 / (1.0 + sigmas.double() ** 2))
    schedule.sigmas, schedule.log_sigmas = sigmas, sigmas.log()  # the host's table exactly (no float32 round trip)
    return schedule


def official_sigmas(schedule: DiscreteSchedule, name: str, steps: int) -> torch.Tensor:
    """``steps + 1`` sigmas ending in 0: ``leading`` = the official DPM-Solver timesteps (diffusers "leading",
    also the Sampler's Euler/DPM++ ``leading``), ``ddim_leading`` = DDIM's, else karras/uniform/exponential."""
    if name == "leading":
        return timestep_sigmas(leading_timesteps(steps, schedule.num_timesteps), schedule)
    if name == "ddim_leading":
        return timestep_sigmas(ddim_timesteps(steps, schedule.num_timesteps), schedule)
    return SCHEDULERS[name](steps, schedule)


class NativeSigmas(io.ComfyNode):
    """MODEL + schedule → SIGMAS (the ColorizeDiffusion Sampler's schedules for custom samplers)."""

    HELP = cleandoc("""
        - `leading`: the official app's DPM-Solver timesteps (diffusers 'leading' spacing). They start below the
          maximum noise, so the starting latent is noise × sigma, as in the app.
        - `ddim_leading`: DDIM's timesteps.
        - `karras`, `uniform`, `exponential`: between the model's own sigma_min and sigma_max.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionNativeSigmas", display_name="Native Sigmas", category="ColorizeDiffusion/native",
            description=(
                "Colorize Sampler's schedules as SIGMAS for SamplerCustomAdvanced. 'leading' is the official default; "
                "with the same sampler, steps and seed the result matches Colorize Sampler."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The native MODEL (its noise schedule is used)."),
                io.Combo.Input("scheduler", options=list(SIGMA_SCHEDULES), default="leading",
                               tooltip="leading = the official default's timesteps."),
                io.Int.Input("steps", default=20, min=1, max=500, tooltip="Number of denoising steps."),
            ],
            outputs=[output(io.Sigmas, "sigmas", "Decreasing noise levels ending in 0.")],
        )

    @classmethod
    def execute(cls, model: Any, scheduler: str, steps: int) -> io.NodeOutput:
        return io.NodeOutput(official_sigmas(host_schedule(model), scheduler, steps))


__all__ = ["SIGMA_SCHEDULES", "NativeGuider", "NativeSigmas", "guider_class", "host_schedule", "official_sigmas"]
