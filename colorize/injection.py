"""Attention injection for a generation (official "Attention injection", reference notes §2.7).

Per generation: ``r = scale_factor · VAE(reference resized to H×W)`` (a seeded posterior sample) and, when the
"sketch fidelity" ``control`` is non-zero, the sketch-encoder hints of ``−reference`` × control (official
``injection_control``; at its default 0 the hints are zero, i.e. none).  Per U-Net call with
``1 − t/T ≥ start``: a write pass on ``q(r_t | r) = √ᾱ_t·r + √(1−ᾱ_t)·ε`` (t rounded, ε seeded per generation)
with the call's context, then the read pass (:mod:`colorize.models.injection`).  The fidelity blend applies to
the reference-unconditional rows only (official ``gr_indice``: none with sketch-only guidance).  The write pass runs once per
*distinct* context (reference / empty) instead of once per CFG row: the rows with the same context have
identical write inputs, so this equals the official full-batch write at a fraction of its cost.

Deviations from the official (documented fixes): ε and the posterior sample come from CPU generators seeded
from the generation seed (official: the global RNG, so results did not reproduce), and batches above 1 work
(the official broadcast of a batch-1 reference latent fails for larger batches).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colorize.errors import InputError
from colorize.models.injection import AttentionBank, WriteComplete, attention_injection
from colorize.sampling.denoiser import UNCOND_REF
from colorize.settings import MAX_SEED, GenerationSettings
from colorize.speedups import eager
from colorize.variants.inputs import SeededLatentEncoder

UNetCall = Callable[..., Tensor]


@dataclass
class InjectionInputs:
    """What the write pass needs, computed once per generation.

    latent: ``(b or 1, 4, H/8, W/8)`` reference latent in diffusion space (× scale_factor).
    hints: sketch-encoder hints of the negated reference × control, or ``None`` (control 0).
    """

    latent: Tensor
    hints: list[Tensor] | None = None


@torch.no_grad()
def injection_inputs(
    reference: Tensor,
    size: tuple[int, int],
    encode_latent: Callable[[Tensor], Tensor],
    sketch_encoder: nn.Module | None = None,
    control: float = 0.0,
) -> InjectionInputs:
    """Reference in [-1, 1] (b, 3, h, w) → :class:`InjectionInputs` for an output of ``size`` (H, W).

    The reference is squashed to exactly H×W (bilinear, antialiased: the official ``Resize`` on a PIL image);
    ``encode_latent`` maps an image to its diffusion-space latent (e.g.
    :class:`colorize.variants.SeededLatentEncoder`).  ``sketch_encoder`` is needed only when ``control`` ≠ 0."""
    image = F.interpolate(reference.float(), size=tuple(size), mode="bilinear", align_corners=False,
                          antialias=True).clamp(-1, 1)
    latent = encode_latent(image)
    hints = None
    if control != 0.0:
        if sketch_encoder is None:
            raise ValueError("attention injection with a non-zero sketch fidelity needs the sketch encoder")
        w = next(sketch_encoder.parameters())
        hints = [h * control for h in sketch_encoder((-image).to(w.device, w.dtype))]
    return InjectionInputs(latent, hints)


def generation_injection(reference: Tensor, size: tuple[int, int], vae: nn.Module,
                         sketch_encoder: nn.Module | None, settings: GenerationSettings) -> InjectionInputs | None:
    """The injection inputs of one generation (``None`` unless ``settings.injection``): the reference latent is a
    posterior sample seeded with ``seed + 4``; ``sketch_encoder`` is only used for a non-zero
    ``settings.injection_control``."""
    if not settings.injection:
        return None
    encoder = SeededLatentEncoder(vae, (int(settings.seed) + 4) % (MAX_SEED + 1))
    return injection_inputs(reference, size, encoder, sketch_encoder, settings.injection_control)


class AttentionInjector:
    """Runs the write and read passes of each U-Net call of one generation (see the module docstring).

    ``alphas_cumprod``: the model's ᾱ table (T entries).  ``fidelity``: blend weight of the plain
    self-attention on the reference-unconditional rows (0–1, official default 0.5).  ``start``: first
    ``tr = 1 − t/T`` at which injection runs (0 = from the first step).  ``seed``: seed of the noise ε.
    """

    def __init__(self, unet: nn.Module, inputs: InjectionInputs, alphas_cumprod: Tensor, fidelity: float = 0.5,
                 start: float = 0.0, seed: int = 0) -> None:
        self.unet = unet
        self.inputs = inputs
        self.fidelity = float(fidelity)
        self.start = float(start)
        self.alphas_cumprod = alphas_cumprod.float().cpu()
        self.last_t = self.alphas_cumprod.shape[0] - 1
        self.generator = torch.Generator().manual_seed(int(seed))

    def active(self, t: Tensor) -> bool:
        """Official rule: inject when ``1 − t/T ≥ start`` (t of the first row)."""
        return 1.0 - float(t.reshape(-1)[0]) / self.last_t >= self.start

    def noisy_reference(self, t: Tensor, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``√ᾱ_t·r + √(1−ᾱ_t)·ε`` at the rounded timestep, ``(batch, 4, h, w)``; one ε per call."""
        r = self.inputs.latent.to(device, torch.float32)
        if r.shape[0] not in (1, batch):
            raise InputError(f"the attention-injection reference batch of {r.shape[0]} cannot be paired with a "
                             f"generation batch of {batch}; use 1 reference image or one per generated image")
        noise = torch.randn(r.shape, generator=self.generator).to(device)
        step = int(torch.round(t.reshape(-1)[0].float()).clamp(0, self.last_t))
        a = float(self.alphas_cumprod[step])
        noisy = (a**0.5 * r + (1.0 - a) ** 0.5 * noise).to(dtype)
        return noisy.expand(batch, *noisy.shape[1:]) if noisy.shape[0] == 1 else noisy

    def __call__(self, call: UNetCall, x: Tensor, t: Tensor, context: Tensor, hints: Any,
                 rows: Sequence[str]) -> Tensor:
        """One guided-batch U-Net call with injection: ``x``, ``t``, ``context``, ``hints`` hold ``len(rows)``
        stacked row groups (the :class:`~colorize.sampling.GuidedDenoiser` layout); ``call(x, t, context,
        hints)`` is the U-Net with the generation's other arguments bound."""
        b = x.shape[0] // len(rows)
        groups = [1 if r == UNCOND_REF else 0 for r in rows]  # 0: the reference context, 1: the empty one
        # The empty-context bank is read only by the reference-uncond rows, which ignore it at fidelity 1.
        written = [0] + ([1] if 1 in groups and self.fidelity != 1.0 else [])
        write_ctx = torch.cat([context[groups.index(g) * b:(groups.index(g) + 1) * b] for g in written])
        n = len(written)
        write_x = self.noisy_reference(t, b, x.device, x.dtype).repeat(n, 1, 1, 1)
        write_hints = None
        if self.inputs.hints is not None:
            write_hints = [h.to(x.device).expand(b, *h.shape[1:]).repeat(n, 1, 1, 1) for h in self.inputs.hints]
        row_index: list[int] = []
        plain_rows: list[int] = []
        for i, g in enumerate(groups):
            src = written.index(g) if g in written else 0
            row_index += range(src * b, (src + 1) * b)
            if g == 1:
                plain_rows += range(i * b, (i + 1) * b)
        bank = AttentionBank(self.fidelity)
        # eager(): a captured CUDA graph or compiled forward of the same call signature would replay the plain
        # self-attention and silently ignore the bank.
        with eager(), attention_injection(self.unet, bank):
            bank.mode = "write"
            try:
                call(write_x, t[:b].repeat(n), write_ctx, write_hints)
            except WriteComplete:  # the last block has written: the rest of the pass is not needed
                pass
            bank.mode = "read"
            if row_index != list(range(x.shape[0])):
                bank.row_index = torch.tensor(row_index, dtype=torch.long, device=x.device)
            if plain_rows:
                bank.plain_rows = torch.tensor(plain_rows, dtype=torch.long, device=x.device)
            return call(x, t, context, hints)


__all__ = ["AttentionInjector", "InjectionInputs", "generation_injection", "injection_inputs"]
