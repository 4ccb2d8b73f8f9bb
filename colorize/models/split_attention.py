"""Split cross-attention (thesis §5.5.2, Eq. 5.4): the cross-attention processor of v1.5, v2 and the bridge.

With a sketch foreground mask ``m_s`` the context holds ``2N`` tokens: ``[e (foreground/reference) | e_b
(background)]``. Every query position attends to each half separately (the foreground half with the foreground
LoRA, the background half with the background LoRA, each when enabled and when the layer has LoRA), both results
are scaled by the block's reference strength and by ``fg_scale`` / ``bg_scale``, the background result is
blended into the foreground one by ``merge_scale``, and each position takes the foreground result where the
mask (bicubic-resized to the block's token grid) is above the threshold, else the background one; ``to_out``
follows. Tie rule at ``mask == threshold``: LoRA layers pick the background (``mask > t`` is foreground),
layers without LoRA pick the foreground (``mask < t`` is background), as the official layers do (official
``refnet/modules/lora.py:25-62`` and ``refnet/modules/attention.py:253-288`` at commit ``c9bd9fb``).

:class:`SplitAttention` is an attention processor (:mod:`colorize.models.attention`): it is passed per call in
``AttentionPatches(cross_attention=...)`` and holds only that generation's options, so a U-Net called without
it computes exactly the plain path.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from colorize.models.attention import AttentionCall, Scale, apply_scale
from colorize.models.lora import Branch


@dataclass(frozen=True)
class SplitOptions:
    """Per-generation settings of split cross-attention.

    mask: sketch foreground mask at latent resolution, ``(b, 1, h, w)`` (or ``(h, w)`` / ``(b, h, w)``; a batch
    that divides the model batch is tiled, as CFG batches ``[cond, uncond…]`` need), values in [0, 1].
    threshold: ``τ_s`` (app default 0.05; a ``(b, 1, 1)`` tensor gives per-sample thresholds, training).
    fg_scale / bg_scale: "Foreground/Background strength" (default 1). merge_scale: share of the background
    result blended into the foreground one (default 0). use_fg_lora / use_bg_lora: apply the LoRA pair in that
    branch (layers that have LoRA). lora_scale: multiplier of every LoRA delta (1 = as trained).
    """

    mask: Tensor
    threshold: float | Tensor = 0.05
    fg_scale: float = 1.0
    bg_scale: float = 1.0
    merge_scale: float = 0.0
    use_fg_lora: bool = False
    use_bg_lora: bool = False
    lora_scale: float = 1.0


def as_mask4d(mask: Tensor) -> Tensor:
    """A mask as ``(b, 1, h, w)`` float32 (from ``(h, w)``, ``(b, h, w)`` or ``(b, 1, h, w)``)."""
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (b, 1, h, w), got {tuple(mask.shape)}")
    return mask.float()


def tile_batch(t: Tensor, batch: int, what: str) -> Tensor:
    """Repeat a per-image tensor over a model batch it divides (CFG batches stack ``[cond, uncond…]``)."""
    if t.shape[0] == batch:
        return t
    if batch % t.shape[0]:
        raise ValueError(f"{what} batch {t.shape[0]} does not divide the model batch {batch}")
    return t.repeat(batch // t.shape[0], *([1] * (t.ndim - 1)))


def resize_mask_tokens(mask: Tensor, h: int, w: int) -> Tensor:
    """A latent mask ``(b, 1, H, W)`` bicubic-resized to an ``h×w`` token grid, as ``(b, h·w, 1)`` float32.

    Equal to the official ``interpolate(mask, scale_factor=1/ds, mode="bicubic")`` whenever the latent size is
    divisible by the block's downsample factor ``ds`` (always for image sizes that are multiples of 64)."""
    mask = mask.float()
    if tuple(mask.shape[-2:]) != (h, w):
        mask = F.interpolate(mask, size=(h, w), mode="bicubic", align_corners=False)
    return mask.flatten(2).transpose(1, 2)


class MaskTokens:
    """A latent mask on the token grids of one model batch: tiled to the batch, then resized (cached per grid)."""

    def __init__(self, mask: Tensor) -> None:
        self.mask = as_mask4d(mask)
        self._cache: dict[tuple[int, int, int, torch.device], Tensor] = {}

    def __call__(self, grid: tuple[int, int], batch: int, device: torch.device) -> Tensor:
        key = (grid[0], grid[1], batch, device)
        if key not in self._cache:
            mask = tile_batch(self.mask.to(device), batch, "mask")
            self._cache[key] = resize_mask_tokens(mask, *grid)
        return self._cache[key]


def combine_split(fg: Tensor, bg: Tensor, mask: Tensor, o: SplitOptions, scale: Scale, lora: bool) -> Tensor:
    """Eq. 5.4's merge of the two attention halves (before ``to_out``): each scaled by reference × fg/bg strength,
    the background blended into the foreground by ``merge_scale``, then picked per position by the mask tokens
    ``(b, n, 1)`` with the tie rule of the module docstring."""
    bg = apply_scale(bg, scale * o.bg_scale)
    fg = apply_scale(fg, scale * o.fg_scale)
    if o.merge_scale != 0.0:
        fg = fg * (1.0 - o.merge_scale) + bg * o.merge_scale
    if lora:
        return torch.where(mask > o.threshold, fg, bg)
    return torch.where(mask < o.threshold, bg, fg)


class SplitAttention:
    """The Eq. 5.4 cross-attention processor for one generation (see the module docstring)."""

    def __init__(self, options: SplitOptions) -> None:
        self.options = options
        self.mask_tokens = MaskTokens(options.mask)

    def __call__(self, call: AttentionCall) -> Tensor:
        o, lora = self.options, call.lora
        tokens = call.context.shape[1]
        if tokens % 2:
            raise ValueError(f"split attention needs a [foreground N | background N] context, got {tokens} tokens")
        n = tokens // 2
        use = {"fg": lora is not None and o.use_fg_lora, "bg": lora is not None and o.use_bg_lora}
        q_base = call.query()

        def branch(part: slice, name: Branch) -> Tensor:
            if not use[name]:
                return call.attend(q_base, call.key(part), call.value(part))
            half, s = call.tokens(part), o.lora_scale
            q = q_base + lora.to_q.delta(call.x, name, s).to(q_base.dtype)  # type: ignore[union-attr]
            k = call.key(part)
            k = k + lora.to_k.delta(half, name, s).to(k.dtype)  # type: ignore[union-attr]
            v = call.value(part)
            v = v + lora.to_v.delta(half, name, s).to(v.dtype)  # type: ignore[union-attr]
            return call.attend(q, k, v)

        bg = branch(slice(n, None), "bg")
        fg = branch(slice(0, n), "fg")
        mask = self.mask_tokens(call.site.grid, q_base.shape[0], q_base.device)
        return call.output(combine_split(fg, bg, mask, o, call.scale, lora is not None))


__all__ = [
    "MaskTokens",
    "SplitAttention",
    "SplitOptions",
    "as_mask4d",
    "combine_split",
    "resize_mask_tokens",
    "tile_batch",
]
