"""The sampler node: reference tokens + sketch hints → LATENT, with progress, preview and Cancel."""
from __future__ import annotations

from inspect import cleandoc
from typing import Any

from colorize.errors import InputError
from colorize.families import UNetInputs, get_family
from colorize.generate import make_conditioning, module_device, sample_latent
from colorize.preprocess import check_output_size, fit_and_pad, output_limits
from colorize.sampling import SAMPLERS, SCHEDULER_CHOICES
from colorize.settings import GenerationSettings

from .advanced import AdvancedOptions
from .enhance import EnhanceRequest
from .host import LatentPreview, Progress, check_interrupted, intermediate_device, load_device
from .schema import io, output
from .sketch import encode_hints
from .sockets import (
    AdvancedSocket,
    ColorizeModel,
    EnhanceSocket,
    HintsSocket,
    ModelSocket,
    ReferenceSocket,
    ReferenceTokens,
    SketchHints,
)
from .widgets import level_inputs, level_strengths, seed_input, size_inputs


class Sampler(io.ComfyNode):
    """COLORIZE_MODEL + COLORIZE_REFERENCE + COLORIZE_HINTS → LATENT."""

    HELP = cleandoc("""
        - **Guidance**: dual classifier-free guidance, one scale for the reference (`reference_cfg`) and one for
          the sketch (`sketch_cfg`) (thesis §5.3).
        - **Defaults**: dpm_solver with its own schedule (`auto`, which is `leading` for dpm_solver), 20 steps and
          reference CFG 4 are the official app's.
        - **Output**: the LATENT is in ComfyUI's usual raw VAE space, so core **VAE Decode** with an SD2 VAE works
          as well as **Colorize Decode**.
        - Shows progress with a latent preview and stops on Cancel.
        - **v1.5 / v2**: the optional `enhance` input (**Background Encode** / **Style Encode (v2)**) adds
          foreground/background separation. v2 outputs are best near 768×768 in area (set the size on **Sketch
          Preprocess**).
        - **Advanced**: the optional `advanced` input takes **Guidance Window** and/or **Attention Injection**.
        - **XL** (sdxl, xlv2): reference tokens from **XL Reference Encoder Loader** → **Reference Embed**. The XL
          app samples with `dpmpp_3m_sde` on its `auto` (exponential) schedule; `exponential_official` is that
          app's exponential schedule by name. Output sides must be multiples of 32 (best near 1024×1024). The
          level sliders follow the XL app's rules: sdxl uses only `encoder_strength` (on every block) unless
          **XL Level Rule** says `levels`; xlv2 uses `encoder_strength` and `low_strength`. `enhance` takes
          **Background Encode** with background enhance only.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionSampler", display_name="Colorize Sampler", category="ColorizeDiffusion/sampling",
            description=(
                "Colorizes: denoises a latent guided by the reference tokens and the sketch hints, with separate "
                "reference and sketch guidance scales. The defaults are the official app's. Decode the result with "
                "Colorize Decode."
            ),
            inputs=[
                ModelSocket.Input("model", tooltip="The ColorizeDiffusion checkpoint."),
                ReferenceSocket.Input("reference", tooltip="Reference tokens from Reference Embed."),
                HintsSocket.Input("hints", tooltip="Sketch hints from Sketch Hints (made with the same checkpoint)."),
                seed_input("Seed of the starting noise (drawn on the CPU: same seed, same image on any device)."),
                io.Int.Input("steps", default=20, min=1, max=500,
                             tooltip="Number of denoising steps (official default 20)."),
                io.Combo.Input("sampler", options=list(SAMPLERS), default="dpm_solver",
                               tooltip="dpm_solver = the official DPM-Solver++ 2M (the v1-v2 app's default); the "
                                       "others are k-diffusion-style samplers; dpmpp_3m_sde = the XL app's default."),
                io.Combo.Input("scheduler", options=list(SCHEDULER_CHOICES), default="auto",
                               tooltip="Timestep schedule. auto = each sampler's own default (official 'Automatic'); "
                                       "leading = the sampler's diffusers DDPM steps; karras, uniform, exponential; "
                                       "exponential_official = the XL app's exponential schedule."),
                io.Float.Input("reference_cfg", default=4.0, min=1.0, max=30.0, step=0.1,
                               tooltip="Reference guidance scale (official 1–15, default 4). 1 switches reference "
                                       "guidance off."),
                io.Float.Input("sketch_cfg", default=1.0, min=1.0, max=30.0, step=0.1,
                               tooltip="Sketch guidance scale (official 1–5, default 1 = off). Above 1 the lines are "
                                       "followed more strictly (one more U-Net row per step)."),
                io.Float.Input("reference_strength", default=1.0, min=0.0, max=2.0, step=0.01,
                               tooltip="Scales how much the cross-attention reads the reference (0 = ignore it in the "
                                       "scaled blocks). XL: the level sliders follow the XL app (sdxl: only "
                                       "encoder_strength acts, on every block; xlv2: encoder and low)."),
                *level_inputs(),
                *size_inputs("Override of the output"),
                EnhanceSocket.Input("enhance", optional=True,
                                    tooltip="v1.5/v2/XL only: BG/FG enhance from Background Encode and/or v2 style "
                                            "enhance from Style Encode (XL: background enhance only). Leave "
                                            "unconnected for plain colorization (v1 behaviour)."),
                AdvancedSocket.Input("advanced", optional=True,
                                     tooltip="Optional advanced controls: Guidance Window and/or Attention Injection "
                                             "(chained). Unconnected = the plain path."),
            ],
            outputs=[output(io.Latent, "latent", "The colorized latent: decode it with ColorizeDiffusion Decode.")],
        )

    @classmethod
    def execute(cls, model: ColorizeModel, reference: ReferenceTokens, hints: SketchHints, seed: int, steps: int,
               sampler: str, scheduler: str, reference_cfg: float, sketch_cfg: float, reference_strength: float,
               encoder_strength: float, middle_strength: float, low_strength: float,
               width: int, height: int, enhance: EnhanceRequest | None = None,
               advanced: AdvancedOptions | None = None) -> io.NodeOutput:
        check_interrupted()
        family = get_family(model.config.version)
        if reference.dim != model.config.unet.context_dim:
            fix = ("embed the reference with XL Reference Encoder Loader connected to this checkpoint"
                   if family.reference_files else "use the OpenCLIP ViT-H/14 encoder that belongs to this checkpoint")
            raise InputError(f"the reference tokens are {reference.dim}-dimensional but {model.name} needs "
                             f"{model.config.unet.context_dim}: {fix}")
        if hints.model.config != model.config:
            raise InputError(f"the sketch hints were made with another checkpoint ({hints.model.name}); "
                             f"connect Sketch Hints to the same model as the sampler ({model.name})")
        size = hints.size
        if width or height:  # SD2.1: rounded to multiples of 64; XL: multiples of 32 or a named error
            size = family.output_size(hints.size, width or None, height or None)
        check_output_size(*size, output_limits(family))  # before any encoding
        if enhance is not None:
            family.check_enhance(enhance.settings)  # a control this family lacks fails before any encoding
        if size != hints.size:  # re-fit the prepared sketch and encode it again at the requested size
            hints = encode_hints(model, fit_and_pad(hints.sketch, size, fill=-1.0), hints.strength)
        settings = GenerationSettings(
            steps=steps, sampler=sampler, scheduler=scheduler, reference_cfg=reference_cfg, sketch_cfg=sketch_cfg,
            reference_strength=reference_strength,
            level_strengths=level_strengths(encoder_strength, middle_strength, low_strength),
            sketch_strength=hints.strength, seed=seed, width=size[1], height=size[0],
        )
        if advanced is not None:
            settings = advanced.apply(settings)
        settings.validate(family)
        injection = advanced.injection(model, size, settings) if advanced is not None else None
        if enhance is not None:  # the separation encoders run once, before the U-Net is placed for sampling
            inputs = enhance.unet_inputs(model, reference.tokens, hints.sketch, seed, load_device("unet"))
        unet = model.unet.ready()
        device = module_device(unet)
        if enhance is None:  # the family's every-call U-Net arguments (XL: the adm vector; SD2.1: none)
            inputs = UNetInputs(reference.tokens, kwargs=family.unet_kwargs(size, device))
        cond = make_conditioning(inputs, hints.hints, hints.hints_uncond, model.dtype, device)
        cond.injection = injection
        progress, preview = Progress(steps), LatentPreview(device)

        def on_step(info: dict[str, Any]) -> None:
            check_interrupted()  # Cancel stops within one step
            progress.update(info["i"] + 1, info["total"], preview(info["denoised"]))

        latent = sample_latent(unet, model.schedule, model.config, cond, size, settings, on_step)
        raw = latent.float() / model.config.vae.scale_factor  # diffusion space → ComfyUI's raw VAE latent
        return io.NodeOutput({"samples": raw.to(intermediate_device())})


__all__ = ["Sampler"]
