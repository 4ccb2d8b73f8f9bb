"""The diffusion training objective (official ``refnet/models/trainer/trainer.py:64-108``; thesis §5.4, Eq. 5.2 and 5.3).

``z_t = √ᾱ_t z + √(1-ᾱ_t) ε`` with ``t ~ U{0..T-1}``; target ε (eps) or ``v = √ᾱ_t ε - √(1-ᾱ_t) z``; plain MSE,
optionally min-SNR-γ weighted. Offset noise adds ``offset · N(0,1)`` per (sample, channel) to ε.

Stage I noisy training (Eq. 5.2): the reference embedding is diffused with the *same* schedule,
``c ← √ᾱ_{t'} c + √(1-ᾱ_{t'}) ε_r`` with the official mapping ``t' = t if t < 900 else 999 - t`` (so the
noisiest latents see a nearly clean reference). Reference drop multiplies the whole embedding of a sample by
0 (the unconditional input at inference is an all-zero context); it is applied *after* the noise so dropped
samples match inference exactly (the official order is not documented).

All randomness of a sample is drawn by :func:`draw_sample_noise` from a generator keyed by (seed, step, slot),
where ``slot`` is the sample's position in the *global* batch: a run is reproducible, resumable and gives the
same samples whatever the number of processes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from training.config import ObjectiveConfig

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def stream_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (stable across processes and Python versions)."""
    h = 0
    for k in keys:
        h = _splitmix64(h ^ (int(k) & _MASK64))
    return h & ((1 << 63) - 1)


def keyed_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from ``keys`` (e.g. ``(seed, STREAM, step, slot)``)."""
    return torch.Generator().manual_seed(stream_seed(*keys))


# stream ids keep the random streams of one sample independent
STREAM_NOISE, STREAM_AUGMENT, STREAM_BUCKET, STREAM_ORDER, STREAM_THRESHOLD, STREAM_CONDITION = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class TrainingProgress:
    """Where a run is when a micro-batch's loss is computed: the step being taken (0-based) and the data epoch
    (fractional: samples seen ÷ dataset size). Losses that switch on later (the XL Gram loss) read it."""

    step: int = 0
    epoch: float = 0.0


@dataclass(frozen=True)
class NoiseSpec:
    """Shapes the per-sample noise needs: latent channels and downsampling, reference tokens × width."""

    latent_channels: int
    downsample: int
    tokens: int
    token_dim: int
    timesteps: int = 1000


def draw_sample_noise(gen: torch.Generator, spec: NoiseSpec, hw: tuple[int, int], cfg: ObjectiveConfig) -> dict[str, Tensor]:
    """Every random draw of one training sample, in a fixed order, from ``gen``.

    ``t`` (int64), ``noise`` (C, h, w) including the offset noise, ``ref_noise`` (tokens, dim),
    ``ref_keep`` / ``sketch_keep`` (float 0/1: 0 = dropped), ``vae_noise`` (C, h, w) for the posterior sample.
    """
    h, w = hw[0] // spec.downsample, hw[1] // spec.downsample
    c = spec.latent_channels
    t = torch.randint(0, spec.timesteps, (), generator=gen)
    noise = torch.randn(c, h, w, generator=gen)
    offset = torch.randn(c, 1, 1, generator=gen)
    ref_noise = torch.randn(spec.tokens, spec.token_dim, generator=gen)
    ref_keep = (torch.rand((), generator=gen) >= cfg.reference_drop).float()
    sketch_keep = (torch.rand((), generator=gen) >= cfg.sketch_drop).float()
    vae_noise = torch.randn(c, h, w, generator=gen)
    return {
        "t": t,
        "noise": noise + cfg.offset_noise * offset,
        "ref_noise": ref_noise,
        "ref_keep": ref_keep,
        "sketch_keep": sketch_keep,
        "vae_noise": vae_noise,
    }


def draw_thresholds(gen: torch.Generator, cfg: ObjectiveConfig) -> dict[str, Tensor]:
    """Per-sample mask thresholds of the v1.5/v2 stages (official ``refnet/models/trainer/mask.py:36-98``): ``th_s, th_r ~ U[lo, hi]`` (float32),
    and ``bg_active`` (float 0/1, 1 with probability ``background_p``; used by ``v2_style``). Own stream, so the
    v1 draws of :func:`draw_sample_noise` are unchanged."""
    lo, hi = cfg.threshold_range
    u = torch.rand(3, generator=gen)
    th = lo + (hi - lo) * u[:2]
    return {"th_s": th[0], "th_r": th[1], "bg_active": (u[2] < cfg.background_p).float()}


def draw_condition_drops(gen: torch.Generator, cfg: ObjectiveConfig) -> dict[str, Tensor]:
    """Per-sample conditioning draws of the XL stages (official ``refnet/models/trainer/sdxl.py`` at commit
    ``ec78784``): ``hint_keep`` (one 0/1 per sketch hint, 0 with probability ``hint_drop[i]``: ``control_drop``,
    ``:226``) and ``inpaint`` (1 with probability ``inpaint_p``, ``:180-187``). Own stream, so the draws of the
    other families are unchanged."""
    n = len(cfg.hint_drop)
    u = torch.rand(n + 1, generator=gen)
    drops = torch.tensor(cfg.hint_drop, dtype=torch.float32)
    return {"hint_keep": (u[:n] >= drops).float(), "inpaint": (u[n] < cfg.inpaint_p).float()}


class ScheduleTable:
    """√ᾱ_t and √(1-ᾱ_t) as float32 tables (``colorize.sampling.noise_schedule.ddpm_buffers``), moved to the data's device."""

    def __init__(self, alphas_cumprod: Tensor) -> None:
        acp = alphas_cumprod.double()
        self.alphas_cumprod = acp.float()
        self.sqrt_acp = acp.sqrt().float()
        self.sqrt_1m_acp = (1.0 - acp).sqrt().float()

    @property
    def timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def coeffs(self, t: Tensor, ndim: int) -> tuple[Tensor, Tensor]:
        shape = (-1,) + (1,) * (ndim - 1)
        a = self.sqrt_acp.to(t.device)[t].reshape(shape)
        s = self.sqrt_1m_acp.to(t.device)[t].reshape(shape)
        return a, s


def reference_timestep(t: Tensor, switch: int = 900, timesteps: int = 1000) -> Tensor:
    """Official noisy-training map: ``t' = t`` if ``t < switch`` else ``T - 1 - t``."""
    return torch.where(t < switch, t, timesteps - 1 - t)


def diffuse(x0: Tensor, t: Tensor, noise: Tensor, table: ScheduleTable) -> Tensor:
    """``√ᾱ_t x0 + √(1-ᾱ_t) noise`` per sample."""
    a, s = table.coeffs(t, x0.ndim)
    return a * x0 + s * noise


def noisy_reference(context: Tensor, t: Tensor, noise: Tensor, table: ScheduleTable, switch: int = 900) -> Tensor:
    """Eq. 5.2: the reference embedding diffused to ``t' = reference_timestep(t)``."""
    return diffuse(context, reference_timestep(t, switch, table.timesteps), noise, table)


def target_for(prediction: str, z: Tensor, noise: Tensor, t: Tensor, table: ScheduleTable) -> Tensor:
    """ε for eps-prediction; ``v = √ᾱ_t ε - √(1-ᾱ_t) z`` for v-prediction."""
    if prediction == "eps":
        return noise
    if prediction == "v":
        a, s = table.coeffs(t, z.ndim)
        return a * noise - s * z
    raise ValueError(f"unknown prediction {prediction!r}")


def loss_weights(prediction: str, t: Tensor, table: ScheduleTable, snr_gamma: float) -> Tensor:
    """Per-sample weights: 1, or min-SNR-γ (``min(SNR, γ)/SNR`` for eps, ``min(SNR, γ)/(SNR+1)`` for v)."""
    if snr_gamma <= 0:
        return torch.ones(t.shape, device=t.device)
    acp = table.alphas_cumprod.to(t.device)[t]
    snr = acp / (1.0 - acp)
    clipped = snr.clamp(max=snr_gamma)
    return clipped / snr if prediction == "eps" else clipped / (snr + 1.0)


@dataclass
class DiffusionInputs:
    """What the trainable denoiser sees and must predict."""

    x_t: Tensor
    t: Tensor
    context: Tensor
    sketch: Tensor
    target: Tensor
    weights: Tensor


def make_inputs(
    z: Tensor, context: Tensor, sketch: Tensor, batch: dict[str, Tensor], cfg: ObjectiveConfig, table: ScheduleTable
) -> DiffusionInputs:
    """Latents ``z`` (already × scale factor), reference tokens and sketches → noised inputs and target."""
    dev = z.device
    t = batch["t"].to(dev)
    noise = batch["noise"].to(dev, z.dtype)
    x_t = diffuse(z, t, noise, table)
    if cfg.noisy_reference:
        context = noisy_reference(context, t, batch["ref_noise"].to(dev, context.dtype), table, cfg.noisy_t_switch)
    context = context * batch["ref_keep"].to(dev, context.dtype).view(-1, 1, 1)
    keep_s = batch["sketch_keep"].to(dev, sketch.dtype).view(-1, 1, 1, 1)
    sketch = keep_s * sketch + (1.0 - keep_s) * -1.0  # dropped sketch = all -1 (no lines)
    target = target_for(cfg.prediction, z, noise, t, table)
    return DiffusionInputs(x_t, t, context, sketch, target, loss_weights(cfg.prediction, t, table, cfg.snr_gamma))


def weighted_mse(pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Mean over all elements of ``weights_b · (pred - target)²`` (plain MSE when all weights are 1)."""
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return (per_sample * weights).mean()
