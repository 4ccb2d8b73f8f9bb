"""Attention injection (the official app's "Attention injection": ``refnet/sampling/hook.py:284-383`` and
``refnet/models/basemodel.py:399-431`` at commit ``c9bd9fb``).

Per generation: ``r = scale_factor · VAE(reference resized to H×W)`` (a seeded posterior sample) and, when the
"sketch fidelity" ``control`` is non-zero, the sketch-encoder hints of ``−reference`` × control (official
``injection_control``; at its default 0 the hints are zero, i.e. none).  Per U-Net call with
``1 − t/T ≥ start``: a write pass on ``q(r_t | r) = √ᾱ_t·r + √(1−ᾱ_t)·ε`` (t rounded, ε seeded per generation)
with the call's context, then the read pass. The write pass records the self-attention input ``norm1(x)`` of every
transformer block; in the read pass (the real denoising call) each self-attention attends to its own tokens *and*
the recorded ones, ``attn1(n, context=[n ‖ bank])``. On the reference-unconditional CFG rows the result is blended
with the plain self-attention, ``f·attn1(n) + (1 − f)·attn1(n, [n ‖ bank])``, ``f`` = the injection fidelity
(official ``style_cfg``; below 1e-5 no blend, as the official; official ``gr_indice``: no such rows with
sketch-only guidance).  The write pass runs once per
*distinct* context (reference / empty) instead of once per CFG row: the rows with the same context have
identical write inputs, so this equals the official full-batch write at a fraction of its cost.

Both passes run through the self-attention processor :class:`InjectionBank` (``AttentionPatches.self_attention``,
:mod:`colorize.models.attention`), passed with the two U-Net calls only: unlike the official monkey-patching (which
replaces ``forward`` methods and leaves them in place on an exception), nothing is attached to the U-Net.

Deviations from the official (documented fixes): ε and the posterior sample come from CPU generators seeded
from the generation seed (official: the global RNG, so results did not reproduce), and batches above 1 work
(the official broadcast of a batch-1 reference latent fails for larger batches).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colorize.errors import InputError
from colorize.models.attention import AttentionCall, BasicTransformerBlock, plain_attention
from colorize.models.vae import SeededLatentEncoder
from colorize.sampling.denoiser import UNCOND_REF
from colorize.settings import MAX_SEED, GenerationSettings
from colorize.speedups import eager

Mode = Literal["write", "read"]
MIN_FIDELITY = 1e-5  # official: the blend is skipped for style_cfg <= 1e-5
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
    :class:`colorize.models.vae.SeededLatentEncoder`).  ``sketch_encoder`` is needed only when ``control`` ≠ 0."""
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


def injected_self_attention(call: AttentionCall, bank: Tensor, plain_rows: Tensor | None = None,
                            fidelity: float = 0.5) -> Tensor:
    """Self-attention of ``call.x`` (b, n, c) over ``[x ‖ bank]`` (b, n + m, c); on ``plain_rows`` (row indices)
    blended with the plain self-attention: ``f·plain + (1 − f)·injected`` (after ``to_out``, as the official)."""
    x = call.x
    out = plain_attention(AttentionCall(x, torch.cat([x, bank.to(x.dtype)], dim=1), call.site, layer=call.layer))
    if plain_rows is None or plain_rows.numel() == 0 or fidelity <= MIN_FIDELITY:
        return out
    rows = x.index_select(0, plain_rows)
    plain = plain_attention(AttentionCall(rows, rows, call.site, layer=call.layer))
    mixed = plain if fidelity == 1.0 else fidelity * plain + (1.0 - fidelity) * out.index_select(0, plain_rows)
    return out.index_copy(0, plain_rows, mixed)


class WriteComplete(Exception):
    """Raised by the write pass once the last transformer block has stored its tokens: nothing after it
    (that block's own attention and feed-forward, the rest of the U-Net) can change the bank."""


class InjectionBank:
    """The self-attention processor of attention injection: a store of self-attention inputs per block.

    ``mode="write"``: each block stores its ``norm1(x)`` (the write batch) and attends plainly.
    ``mode="read"``: each block takes its stored tokens, picks the rows ``row_index`` (read row → write row;
    ``None`` = the same rows) and attends over ``[x ‖ bank]``; ``plain_rows`` get the fidelity blend. An entry is
    consumed by its read, so a bank is written once per read. ``blocks`` is the U-Net's number of transformer
    blocks; the write pass stops with :class:`WriteComplete` once all have stored.
    """

    def __init__(self, fidelity: float = 0.5, blocks: int = 0) -> None:
        self.fidelity = float(fidelity)
        self.blocks = blocks
        self.mode: Mode | None = None
        self.row_index: Tensor | None = None
        self.plain_rows: Tensor | None = None
        self._stored: dict[tuple[int, int], Tensor] = {}

    def __len__(self) -> int:
        return len(self._stored)

    def __call__(self, call: AttentionCall) -> Tensor:
        key = (call.site.index, call.site.depth)
        if self.mode == "write":
            self._stored[key] = call.x.detach()
            if len(self._stored) == self.blocks:
                raise WriteComplete
            return plain_attention(call)
        if self.mode == "read":
            bank = self._stored.pop(key, None)
            if bank is None:
                raise RuntimeError("attention injection: read pass without a written bank for this block")
            if self.row_index is not None:
                bank = bank.index_select(0, self.row_index)
            return injected_self_attention(call, bank, self.plain_rows, self.fidelity)
        return plain_attention(call)


def transformer_block_count(unet: nn.Module) -> int:
    """The number of transformer blocks (self-attention layers the bank covers) of a U-Net."""
    return sum(1 for m in unet.modules() if isinstance(m, BasicTransformerBlock))


class AttentionInjector:
    """Runs the write and read passes of each U-Net call of one generation (see the module docstring).

    ``alphas_cumprod``: the model's ᾱ table (T entries).  ``fidelity``: blend weight of the plain
    self-attention on the reference-unconditional rows (0–1, official default 0.5).  ``start``: first
    ``tr = 1 − t/T`` at which injection runs (0 = from the first step).  ``seed``: seed of the noise ε.
    """

    def __init__(self, unet: nn.Module, inputs: InjectionInputs, alphas_cumprod: Tensor, fidelity: float = 0.5,
                 start: float = 0.0, seed: int = 0) -> None:
        self.blocks = transformer_block_count(unet)
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
        hints, self_attention)`` is the U-Net with the generation's other arguments bound and ``self_attention``
        as the self-attention processor."""
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
        bank = InjectionBank(self.fidelity, self.blocks)
        # eager(): a compiled forward of the same call signature must not stand in for the processor calls.
        with eager():
            bank.mode = "write"
            try:
                call(write_x, t[:b].repeat(n), write_ctx, write_hints, bank)
            except WriteComplete:  # the last block has written: the rest of the pass is not needed
                pass
            bank.mode = "read"
            if row_index != list(range(x.shape[0])):
                bank.row_index = torch.tensor(row_index, dtype=torch.long, device=x.device)
            if plain_rows:
                bank.plain_rows = torch.tensor(plain_rows, dtype=torch.long, device=x.device)
            return call(x, t, context, hints, bank)


__all__ = [
    "MIN_FIDELITY",
    "AttentionInjector",
    "InjectionBank",
    "InjectionInputs",
    "WriteComplete",
    "generation_injection",
    "injected_self_attention",
    "injection_inputs",
    "transformer_block_count",
]
