"""v1.5 ("switch") conditioning assembly: masks → split-attention context and LoRA flags (thesis §5.5).

Official recipe (reference notes §1.9, §2.3, §2.4):

* ``th_r, th_s = thresh_embedder([reference_threshold, sketch_threshold])`` (one token each).
* background tokens = ``φ(CLIP_local(where(rmask < th_ref, reference, white)) + th_r)`` with the recovery
  transformer φ, or ``CLIP_local(background) + th_r`` (no φ) when a separate background image is given.
* background enhance: context ``[fg + th_s | bg]``, LoRA (fg off, bg on);
  foreground enhance: context ``[fg | fg]``, LoRA (fg on, bg off);
  both: context ``[fg + th_s | bg]``, LoRA (on, on).

Official quirks and what is done here:

* §7.15 — inference adds ``th_s`` to the foreground tokens although training did not.  Kept by default
  (``sketch_threshold_on_fg=True``: the released weights are used with it and the parity fixture pins it);
  ``False`` gives the training-time assembly.
* §7.11 — with both enhancements the official app repeats the 512-token context to 1024, so each half of
  the split attends to ``[fg, bg]`` (probably unintended).  Not reproduced by default (each half gets its own
  tokens, as Eq. 5.4 states); ``repeat_both=True`` reproduces it.
* §7.10 — with background enhance the official app resets the user's foreground/background strengths to 1.
  Not reproduced: :meth:`SwitchConditioning.split_options` uses the given strengths (default 1, i.e. the
  official result); :func:`official_fgbg_scales` gives the app's values for exact reproduction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from colorize.models.recovery import ClusterTransformer, ScalarEmbedder
from colorize.models.split_attention import SplitOptions

EnhanceMode = Literal["background", "foreground", "both"]
ENHANCE_MODES: tuple[str, ...] = ("background", "foreground", "both")
#: App defaults (reference notes §2.3): reference-mask threshold, sketch-mask threshold.
DEFAULT_REFERENCE_THRESHOLD = 0.5
DEFAULT_SKETCH_THRESHOLD = 0.05


def lora_flags(mode: EnhanceMode) -> tuple[bool, bool]:
    """``(use_fg_lora, use_bg_lora)`` of an enhance mode (reference notes §1.9)."""
    if mode not in ENHANCE_MODES:
        raise ValueError(f"unknown enhance mode {mode!r}; expected one of {ENHANCE_MODES}")
    return mode != "background", mode != "foreground"


def official_fgbg_scales(mode: EnhanceMode, fg_scale: float, bg_scale: float) -> tuple[float, float]:
    """The strengths the official app actually uses: reset to (1, 1) whenever background enhance is on (§7.10)."""
    return (1.0, 1.0) if lora_flags(mode)[1] else (fg_scale, bg_scale)


def threshold_tokens(embedder: ScalarEmbedder, reference_threshold: float,
                     sketch_threshold: float) -> tuple[Tensor, Tensor]:
    """``(th_r, th_s)``, each ``(1, 1, c)``: the embedded reference- and sketch-mask thresholds."""
    th = embedder([reference_threshold, sketch_threshold])
    return th[0:1], th[1:2]


def background_only_reference(reference: Tensor, reference_mask: Tensor,
                              threshold: float | Tensor = DEFAULT_REFERENCE_THRESHOLD) -> Tensor:
    """``where(rmask < threshold, reference, white)`` for a reference in [-1, 1] ``(b, 3, H, W)`` and its
    foreground mask ``(b|1, 1, H, W)`` (resized bilinearly first if its size differs); a ``(b, 1, 1, 1)``
    threshold tensor gives per-sample thresholds (training)."""
    if reference_mask.ndim == 3:
        reference_mask = reference_mask[:, None]
    if reference_mask.shape[-2:] != reference.shape[-2:]:
        reference_mask = F.interpolate(reference_mask.float(), size=reference.shape[-2:], mode="bilinear",
                                       align_corners=False)
    keep = reference_mask.to(reference.device) < threshold
    return torch.where(keep, reference, torch.ones_like(reference))


def sketch_mask_to_latent(mask: Tensor, factor: int = 8) -> Tensor:
    """Pixel-resolution sketch mask ``(b, 1, H, W)`` → latent resolution by bicubic ×1/factor (§2.3)."""
    if mask.ndim == 3:
        mask = mask[:, None]
    return F.interpolate(mask.float(), scale_factor=1.0 / factor, mode="bicubic", align_corners=False)


def recover_background(transformer: ClusterTransformer, bg_reference_tokens: Tensor, th_r: Tensor) -> Tensor:
    """``φ(bg_reference_tokens + th_r)``: background tokens from the background-only reference's CLIP tokens."""
    return transformer(bg_reference_tokens + th_r.to(bg_reference_tokens.dtype))


@dataclass(frozen=True)
class SwitchConditioning:
    """The v1.5 context ``(b, 2N, c)`` and which LoRA branches the U-Net should use with it."""

    context: Tensor
    use_fg_lora: bool
    use_bg_lora: bool

    def split_options(self, mask: Tensor, *, threshold: float = DEFAULT_SKETCH_THRESHOLD, fg_scale: float = 1.0,
                      bg_scale: float = 1.0, merge_scale: float = 0.0, lora_scale: float = 1.0) -> SplitOptions:
        """:class:`SplitOptions` for ``SwitchUNet.forward(split=...)`` with this conditioning's LoRA flags."""
        return SplitOptions(mask=mask, threshold=threshold, fg_scale=fg_scale, bg_scale=bg_scale,
                            merge_scale=merge_scale, use_fg_lora=self.use_fg_lora, use_bg_lora=self.use_bg_lora,
                            lora_scale=lora_scale)


def switch_context(
    mode: EnhanceMode,
    fg_tokens: Tensor,
    *,
    thresh_embedder: ScalarEmbedder | None = None,
    transformer: ClusterTransformer | None = None,
    bg_reference_tokens: Tensor | None = None,
    background_tokens: Tensor | None = None,
    reference_threshold: float = DEFAULT_REFERENCE_THRESHOLD,
    sketch_threshold: float = DEFAULT_SKETCH_THRESHOLD,
    sketch_threshold_on_fg: bool = True,
    repeat_both: bool = False,
) -> SwitchConditioning:
    """Assemble the split-attention context for an enhance mode.

    fg_tokens: CLIP local tokens of the reference ``(b, N, c)``.  For ``"background"``/``"both"`` also give
    ``thresh_embedder`` and either ``background_tokens`` (CLIP local tokens of a separate background image,
    used as ``tokens + th_r`` without φ) or ``bg_reference_tokens`` (CLIP local tokens of
    :func:`background_only_reference`) together with ``transformer`` (φ).  See the module docstring for
    ``sketch_threshold_on_fg`` (§7.15) and ``repeat_both`` (§7.11).
    """
    use_fg, use_bg = lora_flags(mode)
    if not use_bg:  # foreground only: both halves are the reference tokens
        return SwitchConditioning(fg_tokens.repeat(1, 2, 1), use_fg, use_bg)
    if thresh_embedder is None:
        raise ValueError(f"enhance mode {mode!r} needs the threshold embedder")
    th_r, th_s = (t.to(fg_tokens.dtype) for t in threshold_tokens(thresh_embedder, reference_threshold,
                                                                  sketch_threshold))
    if background_tokens is not None:
        bg = background_tokens + th_r
    elif bg_reference_tokens is not None and transformer is not None:
        bg = recover_background(transformer, bg_reference_tokens, th_r).to(fg_tokens.dtype)
    else:
        raise ValueError(f"enhance mode {mode!r} needs background_tokens, or bg_reference_tokens and the "
                         "recovery transformer")
    fg = fg_tokens + th_s if sketch_threshold_on_fg else fg_tokens
    context = torch.cat([fg, bg.expand(fg.shape[0], -1, -1)], dim=1)
    if mode == "both" and repeat_both:
        context = context.repeat(1, 2, 1)
    return SwitchConditioning(context, use_fg, use_bg)


__all__ = [
    "DEFAULT_REFERENCE_THRESHOLD",
    "DEFAULT_SKETCH_THRESHOLD",
    "ENHANCE_MODES",
    "EnhanceMode",
    "SwitchConditioning",
    "background_only_reference",
    "lora_flags",
    "official_fgbg_scales",
    "recover_background",
    "sketch_mask_to_latent",
    "switch_context",
    "threshold_tokens",
]
