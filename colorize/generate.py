"""The steps of one generation as functions: encoders, conditioning rows, the sampling loop, the decode.

Thesis §5.3: the reference's 256 CLIP patch tokens are read by every cross-attention, the sketch encoder's five
hints are added to the U-Net features (Eq. 5.1) and sampling uses dual classifier-free guidance over the reference
and the sketch. Everything reference- or sketch-derived is computed once per generation (:class:`Conditioning`)
and reused at every step; a family's foreground/background separation (:func:`separation_inputs`) adds its
context, cross-attention processor and U-Net arguments, attention injection its reference latent
(``injection``). Every U-Net call gets the generation's attention extensions as one
:class:`~colorize.models.attention.AttentionPatches` (reference strengths, processors).
:class:`colorize.pipeline.Colorizer` strings these steps together.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from colorize.config import ColorizerConfig
from colorize.errors import InputError, NonFiniteResultError
from colorize.families import SeparationInputs, UNetInputs, get_family
from colorize.injection import AttentionInjector, InjectionInputs
from colorize.masks.inputs import (
    check_mask,
    fit_sketch_mask,
    reference_mask_or_fallback,
    sketch_mask_from_prepared,
)
from colorize.models.attention import AttentionPatches, Processor
from colorize.models.vae_tiling import TilingMode
from colorize.models.vae_tiling import decode as decode_maybe_tiled
from colorize.preprocess import blank_sketch
from colorize.sampling import (
    COND,
    SAMPLERS,
    UNCOND_REF,
    UNCOND_SKETCH,
    DiscreteSchedule,
    GuidedDenoiser,
    sample_dpm_solver,
    sampler_sigmas,
)
from colorize.settings import MAX_SEED, EnhanceSettings, GenerationSettings, reference_off

Encoder = Callable[[Tensor], Tensor]
StepCallback = Callable[[dict[str, Any]], None]


@dataclass
class Conditioning:
    """Per-generation inputs of the U-Net: the context and sketch hints (cond and all -1 sketch).

    ``cross_attention`` and ``unet_kwargs``: a family's cross-attention processor and other U-Net arguments
    (v1.5/v2 split attention; v2 ``hs_bg``, ``style``, warp mask: :func:`separation_inputs`), the same for every
    CFG row (their per-image tensors are tiled over the rows; the reference-unconditional rows get a zero context,
    as the official app). ``injection``: the reference latent (and hints) of attention injection, when asked
    for. ``self_attention``: a family's self-attention processor (the xlv2 reference bank). ``dataclasses.replace``
    gives a fresh row cache.
    """

    context: Tensor
    hints: list[Tensor]
    hints_uncond: list[Tensor]
    cross_attention: Processor | None = None
    unet_kwargs: dict[str, Any] = field(default_factory=dict)
    injection: InjectionInputs | None = None
    self_attention: Processor | None = None
    _stacked: dict[tuple[str, ...], tuple[Tensor, list[Tensor]]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def rows(self, rows: tuple[str, ...]) -> tuple[Tensor, list[Tensor]]:
        """Context and hints stacked for the given CFG row groups (cached per row layout)."""
        if rows not in self._stacked:
            ctx = {COND: self.context, UNCOND_REF: torch.zeros_like(self.context), UNCOND_SKETCH: self.context}
            hin = {COND: self.hints, UNCOND_REF: self.hints, UNCOND_SKETCH: self.hints_uncond}
            context = torch.cat([ctx[r] for r in rows])
            hints = [torch.cat([hin[r][i] for r in rows]) for i in range(len(self.hints))]
            self._stacked[rows] = (context, hints)
        return self._stacked[rows]


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (modules may be moved between calls, e.g. by ComfyUI)."""
    return next(module.parameters()).device


def module_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def noise_schedule(config: ColorizerConfig, alphas_cumprod: Tensor | None = None) -> DiscreteSchedule:
    """The checkpoint's stored ``alphas_cumprod`` when it has them, else the config's scaled-linear schedule."""
    if alphas_cumprod is not None:
        return DiscreteSchedule(alphas_cumprod.float())
    return DiscreteSchedule.from_config(config.schedule)


def cast_for_inference(
    unet: nn.Module, sketch_encoder: nn.Module, vae: nn.Module, device: torch.device, dtype: torch.dtype
) -> None:
    """Place and cast in place, as the official app: U-Net and sketch encoder in ``dtype`` (the U-Net's time
    embedding and output head stay fp32), the VAE in fp32; all frozen and in eval mode."""
    unet.to(device, dtype).eval().requires_grad_(False)
    if dtype != torch.float32:
        unet.time_embed.float()
        unet.out.float()
        if getattr(unet, "label_emb", None) is not None:  # the SDXL adm embedding, like the time embedding
            unet.label_emb.float()
    sketch_encoder.to(device, dtype).eval().requires_grad_(False)
    vae.to(device, torch.float32).eval().requires_grad_(False)


@torch.no_grad()
def sketch_hints(sketch_encoder: nn.Module, sketch: Tensor, strength: float = 1.0,
                 hint_strengths: Sequence[float] | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """Prepared sketch(es) (lines +1, background -1) → (hints, hints of the blank sketch), both × ``strength``
    (and hint ``i`` × ``hint_strengths[i]`` when given: the XL app's per-level sketch strengths, official
    ``refnet/models/colorizerXL.py:189-200``, ``control_scale × control_scale_i``).

    Runs on the encoder's device and dtype (Eq. 5.1: the hints are added to the U-Net features)."""
    sketch = sketch.to(module_device(sketch_encoder), module_dtype(sketch_encoder))
    both = sketch_encoder(torch.cat([sketch, blank_sketch(sketch.shape[0], tuple(sketch.shape[-2:])).to(sketch)]))
    if hint_strengths is not None and len(hint_strengths) != len(both):
        raise InputError(f"hint_strengths needs one value per sketch hint ({len(both)} for this checkpoint), got "
                         f"{len(hint_strengths)}")
    scales = [strength * (1.0 if hint_strengths is None else float(hint_strengths[i])) for i in range(len(both))]
    b = sketch.shape[0]
    return [h[:b] * s for h, s in zip(both, scales)], [h[b:] * s for h, s in zip(both, scales)]


def make_conditioning(
    tokens: Tensor | UNetInputs, hints: Sequence[Tensor], hints_uncond: Sequence[Tensor], dtype: torch.dtype,
    device: torch.device | None = None,
) -> Conditioning:
    """Pair reference tokens, or a family's :class:`~colorize.families.UNetInputs` (v1.5/v2 separation: context,
    cross-attention processor, U-Net arguments), with sketch hints (a batch of 1 is repeated to the other's
    batch size)."""
    inputs = tokens if isinstance(tokens, UNetInputs) else UNetInputs(tokens)
    b = max(inputs.context.shape[0], hints[0].shape[0])
    move = (lambda t: t.to(device)) if device is not None else (lambda t: t)
    context = move(_repeat_to(inputs.context, b, "reference"))
    hints = [move(_repeat_to(h, b, "sketch")) for h in hints]
    hints_uncond = [move(_repeat_to(h, b, "sketch")) for h in hints_uncond]
    return Conditioning(context.to(dtype), hints, hints_uncond, inputs.cross_attention, dict(inputs.kwargs),
                        self_attention=inputs.self_attention)


@torch.no_grad()
def separation_inputs(
    config: ColorizerConfig,
    extras: Mapping[str, nn.Module],
    enhance: EnhanceSettings | None,
    *,
    tokens: Tensor,
    reference: Tensor,
    sketch: Tensor,
    sketch_hw: tuple[int, int],
    encode_tokens: Encoder,
    encode_latent: Encoder,
    sketch_mask: Tensor | None = None,
    reference_mask: Tensor | None = None,
    background: Tensor | None = None,
    background_mask: Tensor | None = None,
) -> UNetInputs:
    """The U-Net inputs of one generation: the plain reference tokens without enhancement, else the family's
    foreground/background separation (``Family.separation``: v1.5 / v2).

    tokens: CLIP local tokens of the reference; reference / background: images in [-1, 1] at their own size;
    sketch: the prepared sketch (lines +1) at the output size; sketch_hw: the user sketch's size (the frame of
    ``sketch_mask``). Masks are ``(B, H, W)`` in [0, 1] in their image's frame. Without ``sketch_mask`` it is
    computed from the line art (:func:`colorize.masks.sketch_foreground_mask`); without ``reference_mask`` (and
    no background image) background enhance warns and treats the whole reference as foreground.
    """
    enhance = enhance or EnhanceSettings()
    enhance.validate()
    family = get_family(config.version)
    family.check_enhance(enhance)
    device, size = tokens.device, (int(sketch.shape[-2]), int(sketch.shape[-1]))
    every_call = family.unet_kwargs(size, device)
    given = {"sketch_mask": sketch_mask, "reference_mask": reference_mask, "background": background,
             "background_mask": background_mask}
    if not enhance.active:
        unused = [k for k, v in given.items() if v is not None]
        if unused:
            raise InputError(f"{', '.join(unused)} given but no enhancement is on: enable background, "
                             "foreground or style enhance (v1.5/v2/XL checkpoints) to use them")
        return UNetInputs(tokens, kwargs=every_call)
    latent_mask = pixel = None
    if enhance.masked:
        pixel = fit_sketch_mask(sketch_mask, sketch_hw, size) if sketch_mask is not None \
            else sketch_mask_from_prepared(sketch)
        pixel = pixel.to(device)
        latent_mask = family.latent_mask(pixel, config.vae.downsample_factor)
    if enhance.background_enhance and background is None:
        reference_mask = reference_mask_or_fallback(reference_mask, reference)
    elif reference_mask is not None:
        reference_mask = check_mask(reference_mask, "reference mask").to(device)
    if background_mask is not None:
        background_mask = check_mask(background_mask, "background mask").to(device)
    inputs = SeparationInputs(tokens, reference, size, encode_tokens, encode_latent, latent_mask, reference_mask,
                              background, background_mask, sketch_mask=pixel)
    out = family.separation(extras, enhance, inputs)
    return replace(out, kwargs={**every_call, **out.kwargs}) if every_call else out


def initial_noise(config: ColorizerConfig, batch: int, size: tuple[int, int], seed: int, device: torch.device) -> Tensor:
    """Seeded standard-normal latent, drawn on the CPU so a seed gives the same image on any device."""
    f = config.vae.downsample_factor
    g = torch.Generator().manual_seed(int(seed))
    shape = (batch, config.vae.z_channels, size[0] // f, size[1] // f)
    return torch.randn(shape, generator=g).to(device)


@torch.no_grad()
def sample_latent(
    unet: nn.Module,
    schedule: DiscreteSchedule,
    config: ColorizerConfig,
    cond: Conditioning,
    size: tuple[int, int],
    settings: GenerationSettings,
    callback: StepCallback | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Dual-CFG sampling on the U-Net's device; returns the final latent (b, 4, H/8, W/8) in the
    diffusion space (VAE latent × ``scale_factor``, 0.18215). ``callback`` gets every step's info dict
    plus ``total``; an exception raised there stops sampling (how hosts interrupt). ``noise`` replaces the
    seeded initial latent (b, 4, H/8, W/8) when given. Stochastic samplers draw their noise from a CPU
    generator seeded with ``seed + 1``, so a seed gives the same image on any device.

    A non-finite result (fp16 overflow, broken weights) raises :class:`InputError` instead of
    silently decoding to a black image."""
    family = get_family(config.version)
    settings.validate(family)
    scales: list[float] | None = family.reference_scales(config.unet, settings)
    n_blocks = getattr(unet, "num_attention_blocks", len(scales))
    if len(scales) != n_blocks:  # a topology other than the released one (e.g. a custom training run)
        if any(s != 1.0 for s in scales):
            raise InputError(f"per-level/per-block reference strengths need the released layout of {len(scales)} "
                             f"attention blocks; this U-Net has {n_blocks}: leave the strengths at 1")
        scales = None
    device = module_device(unet)

    window = settings.guidance_window_active
    last_t = config.schedule.timesteps - 1
    injector = _injector(unet, schedule, cond, settings)
    patches = AttentionPatches(self_attention=cond.self_attention, cross_attention=cond.cross_attention,
                               reference_scales=scales)

    def call(x: Tensor, t: Tensor, context: Tensor, hints: list[Tensor] | None,
             self_attention: Processor | None = None) -> Tensor:
        attention = patches if self_attention is None else replace(patches, self_attention=self_attention)
        return unet(x, t, context, hints, attention, **cond.unet_kwargs)

    def model_fn(x: Tensor, t: Tensor, rows: tuple[str, ...]) -> Tensor:
        context, hints = cond.rows(rows)
        if window:
            context = _window_context(context, t, settings, last_t)
        if injector is not None and injector.active(t):
            return injector(call, x, t, context, hints, rows).float()
        return call(x, t, context, hints).float()

    den = GuidedDenoiser(model_fn, schedule, config.parameterization, settings.reference_cfg, settings.sketch_cfg)
    noise = initial_noise(config, cond.context.shape[0], size, settings.seed, device) if noise is None else noise.to(device)
    total = settings.steps

    def step(info: dict[str, Any]) -> None:
        if callback is not None:
            callback({**info, "total": total})

    if settings.sampler == "dpm_solver" and settings.resolved_scheduler == "leading":
        latent = sample_dpm_solver(den.model_output, noise, settings.steps, config.schedule,
                                   config.parameterization, callback=step)
    else:
        sigmas = sampler_sigmas(settings.sampler, settings.scheduler, settings.steps, schedule, device)
        gen = torch.Generator().manual_seed((int(settings.seed) + 1) % (MAX_SEED + 1))
        latent = SAMPLERS[settings.sampler](den, noise * sigmas[0], sigmas, callback=step, generator=gen)
    if not torch.isfinite(latent).all():
        raise InputError(
            f"sampling produced NaN/inf values (precision {module_dtype(unet)}). This usually means a "
            "half-precision overflow: retry with precision fp32 or bf16; if it persists, the checkpoint may be damaged."
        )
    return latent


def _injector(unet: nn.Module, schedule: DiscreteSchedule, cond: Conditioning,
              settings: GenerationSettings) -> AttentionInjector | None:
    if not settings.injection:
        return None
    if cond.self_attention is not None:
        raise InputError("attention injection and XL v2 background enhance both replace the self-attention: "
                         "turn one of them off")
    if cond.injection is None:
        raise InputError("attention injection needs the reference latent: build the conditioning with "
                         "settings.injection on (Colorizer.conditioning) or pass InjectionInputs")
    return AttentionInjector(unet, cond.injection, schedule.alphas_cumprod, settings.injection_fidelity,
                             settings.injection_start, (int(settings.seed) + 3) % (MAX_SEED + 1))


def _window_context(context: Tensor, t: Tensor, settings: GenerationSettings, last_timestep: int) -> Tensor:
    """``context`` with the rows whose timestep lies outside the guidance window zeroed.

    The official replaces the whole context by one zero token; a zero context of the same shape is the
    same empty reference for plain attention (keys/values without bias: the attention result is exactly 0)
    and also keeps the ``[fg N | bg N]`` layout that v1.5/v2 split attention needs (every branch, LoRA
    included, then reads zeros). Only the context changes: hints and the v2 background/style inputs stay,
    exactly as in the reference-unconditional CFG rows."""
    off = reference_off(t.reshape(-1).to(context.device), settings.guidance_start, settings.guidance_end,
                        tuple(settings.no_guidance), last_timestep)  # type: ignore[arg-type]
    if off.numel() == 1:
        off = off.expand(context.shape[0])
    if not bool(off.any()):
        return context
    return torch.where(off.view(-1, *([1] * (context.ndim - 1))), torch.zeros((), dtype=context.dtype,
                       device=context.device), context)


@torch.no_grad()
def vae_decode(vae: nn.Module, z: Tensor, tiling: TilingMode = "off", check_finite: bool = True) -> Tensor:
    """Raw VAE latent (ComfyUI's LATENT convention, *not* × 0.18215) → image in [-1, 1], on the VAE's device.

    ``tiling`` (``off``/``auto``/``on``): tiled decode of large images, :mod:`colorize.models.vae_tiling`.
    With ``check_finite`` raises :class:`NonFiniteResultError` when the decoded image holds NaN or infinite
    values (an overflow in sampling, e.g. a huge guidance scale or fp16): such an image would be saved as
    silently black.
    """
    image = decode_maybe_tiled(vae, z.to(module_device(vae), module_dtype(vae)), tiling).float()
    if check_finite and not torch.isfinite(image).all():
        raise NonFiniteResultError(
            "the decoded image has NaN or infinite values (numbers overflowed while sampling or decoding): lower the "
            "guidance scales, or run the U-Net (and the VAE) in fp32 or bf16 instead of fp16"
        )
    return image.clamp(-1, 1)


def _repeat_to(x: Tensor, batch: int, what: str) -> Tensor:
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, *x.shape[1:])
    raise InputError(f"{what} batch of {x.shape[0]} cannot be paired with a batch of {batch}; use 1 or the same size")
