"""v1.5 ("switch") conditioning assembly: masks → split-attention context and LoRA flags (thesis §5.5).

Official recipe (``refnet/models/switch.py:156-277`` and ``backend/appfunc.py:250-266`` at commit ``c9bd9fb``):

* ``th_r, th_s = thresh_embedder([reference_threshold, sketch_threshold])`` (one token each).
* background tokens = ``φ(CLIP_local(where(rmask < th_ref, reference, white)) + th_r)`` with the recovery
  transformer φ, or ``CLIP_local(background) + th_r`` (no φ) when a separate background image is given.
* background enhance: context ``[fg + th_s | bg]``, LoRA (fg off, bg on);
  foreground enhance: context ``[fg | fg]``, LoRA (fg on, bg off);
  both: context ``[fg + th_s | bg]``, LoRA (on, on).

Official quirks and what is done here:

* Inference adds ``th_s`` to the foreground tokens although training did not (``refnet/models/switch.py:221-241``
  against ``refnet/models/trainer/mask.py:62-92``).  Kept by default
  (``sketch_threshold_on_fg=True``: the released weights are used with it and the parity fixture pins it);
  ``False`` gives the training-time assembly.
* With both enhancements the official app repeats the 512-token context to 1024, so each half of the split
  attends to ``[fg, bg]`` (probably unintended; ``refnet/models/switch.py:221-241``).  Not reproduced by default (each half gets its own
  tokens, as Eq. 5.4 states); ``repeat_both=True`` reproduces it.
* With background enhance the official app resets the user's foreground/background strengths to 1
  (``prepare_conditions`` calls ``adjust_fgbg_scale(1, 1)``).
  Not reproduced: :meth:`SwitchConditioning.split_options` uses the given strengths (default 1, i.e. the
  official result); :func:`official_fgbg_scales` gives the app's values for exact reproduction.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from colorize.errors import InputError
from colorize.families.base import SeparationInputs, UNetInputs
from colorize.families.v15.recovery import ClusterTransformer, ScalarEmbedder
from colorize.masks.inputs import background_only_reference
from colorize.models.split_attention import SplitAttention, SplitOptions
from colorize.settings import DEFAULT_REFERENCE_THRESHOLD, DEFAULT_SKETCH_THRESHOLD, EnhanceSettings

EnhanceMode = Literal["background", "foreground", "both"]
ENHANCE_MODES: tuple[str, ...] = ("background", "foreground", "both")


def lora_flags(mode: EnhanceMode) -> tuple[bool, bool]:
    """``(use_fg_lora, use_bg_lora)`` of an enhance mode (official ``refnet/models/switch.py:221-241``)."""
    if mode not in ENHANCE_MODES:
        raise ValueError(f"unknown enhance mode {mode!r}; expected one of {ENHANCE_MODES}")
    return mode != "background", mode != "foreground"


def official_fgbg_scales(mode: EnhanceMode, fg_scale: float, bg_scale: float) -> tuple[float, float]:
    """The strengths the official app actually uses: reset to (1, 1) whenever background enhance is on."""
    return (1.0, 1.0) if lora_flags(mode)[1] else (fg_scale, bg_scale)


def threshold_tokens(embedder: ScalarEmbedder, reference_threshold: float,
                     sketch_threshold: float) -> tuple[Tensor, Tensor]:
    """``(th_r, th_s)``, each ``(1, 1, c)``: the embedded reference- and sketch-mask thresholds."""
    th = embedder([reference_threshold, sketch_threshold])
    return th[0:1], th[1:2]




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
        """:class:`SplitOptions` of :class:`~colorize.models.split_attention.SplitAttention` with this
        conditioning's LoRA flags."""
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
    ``sketch_threshold_on_fg`` and ``repeat_both``.
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


def enhance_mode(enhance: EnhanceSettings) -> EnhanceMode | None:
    """The v1.5 enhance mode of the settings (``None``: neither, i.e. the plain v1 computation)."""
    if enhance.background_enhance and enhance.foreground_enhance:
        return "both"
    return "background" if enhance.background_enhance else "foreground" if enhance.foreground_enhance else None


@torch.no_grad()
def separation(extras: Mapping[str, nn.Module], enhance: EnhanceSettings, inputs: SeparationInputs) -> UNetInputs:
    """The U-Net inputs of one v1.5 generation: the context ``[fg N | bg N]`` of the enhance mode and
    :class:`~colorize.models.split_attention.SplitAttention` with the latent sketch mask and the LoRA flags."""
    mode = enhance_mode(enhance)
    if mode is None or inputs.latent_mask is None:
        raise ValueError("v1.5 separation needs background or foreground enhance and the latent sketch mask")
    tau = enhance.reference_threshold
    bg_tokens = bg_ref_tokens = None
    if mode != "foreground":
        background = inputs.background
        if background is not None:
            if enhance.remove_background_foreground:
                if inputs.background_mask is None:
                    raise InputError("removing the foreground from the background image needs its mask")
                background = background_only_reference(background, inputs.background_mask, tau)
            bg_tokens = inputs.encode_tokens(background)
        else:
            if inputs.reference_mask is None:
                raise InputError("background enhance needs the reference mask or a background image")
            bg_ref_tokens = inputs.encode_tokens(background_only_reference(inputs.reference, inputs.reference_mask,
                                                                           tau))
    cond = switch_context(mode, inputs.tokens, thresh_embedder=extras.get("thresh_embedder"),  # type: ignore[arg-type]
                          transformer=extras.get("transformer"),  # type: ignore[arg-type]
                          bg_reference_tokens=bg_ref_tokens, background_tokens=bg_tokens,
                          reference_threshold=tau, sketch_threshold=enhance.sketch_threshold)
    split = cond.split_options(inputs.latent_mask, threshold=enhance.sketch_threshold, fg_scale=enhance.fg_scale,
                               bg_scale=enhance.bg_scale, merge_scale=enhance.merge_scale,
                               lora_scale=enhance.lora_scale)
    return UNetInputs(cond.context, SplitAttention(split))


__all__ = [
    "ENHANCE_MODES",
    "EnhanceMode",
    "SwitchConditioning",
    "enhance_mode",
    "lora_flags",
    "official_fgbg_scales",
    "recover_background",
    "separation",
    "switch_context",
    "threshold_tokens",
]
