"""Version dispatch on top of the v1 pipeline: v1.5 ("switch") and v2 modules and per-generation inputs.

* :func:`build_modules` — the U-Net of a checkpoint's version plus its extra modules
  (``thresh_embedder``/``transformer`` for v1.5, ``bg_encoder``/``style_encoder`` for v2).
* :func:`separation_inputs` — the context and extra U-Net keyword arguments of one generation
  (split options, background tokens, style vectors) from :class:`EnhanceSettings` and the masks; v1 or
  no enhancement gives the plain reference tokens and no extras.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from colorize.config import ColorizerConfig
from colorize.errors import InputError
from colorize.switch import sketch_mask_to_latent
from colorize.variants import switch, v2
from colorize.variants.inputs import (
    SeededLatentEncoder,
    check_mask,
    fit_sketch_mask,
    reference_mask_or_fallback,
    sketch_mask_from_prepared,
)
from colorize.variants.settings import EnhanceSettings

#: Extra checkpoint components per version (``colorize.checkpoint.COMPONENT_PREFIXES`` names).
EXTRA_COMPONENTS: dict[str, tuple[str, ...]] = {"mult": (), "switch": switch.COMPONENTS, "v2": v2.COMPONENTS}
Encoder = Callable[[Tensor], Tensor]


def build_modules(config: ColorizerConfig, parts: dict[str, dict[str, Tensor]],
                  name: str) -> tuple[nn.Module, dict[str, nn.Module]]:
    """``(unet, extras)`` for ``config.version`` from the checkpoint's split tensors (consumed)."""
    if config.version == "switch":
        return switch.build_modules(config, parts, name)
    if config.version == "v2":
        return v2.build_modules(config, parts, name)
    from colorize.loader import materialize
    from colorize.models.unet import DualCondUNet

    return materialize(lambda: DualCondUNet(config.unet), parts.pop("unet"), f"{name} (U-Net)"), {}


def cast_extras(version: str, extras: Mapping[str, nn.Module], device: torch.device, dtype: torch.dtype) -> None:
    """Place and cast a version's extra modules for inference (in place, frozen, eval)."""
    if version == "switch":
        switch.cast_extras(extras, device, dtype)
    elif version == "v2":
        v2.cast_extras(extras, device, dtype)


def base_resolution(version: str) -> int:
    """The side of the square whose area the output gets when no size is given (v2: 768, else 512)."""
    return v2.BASE_RESOLUTION if version == "v2" else 512


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
) -> tuple[Tensor, dict[str, Any]]:
    """``(context, unet_kwargs)`` of one generation (``(tokens, {})`` for v1 or no enhancement).

    tokens: CLIP local tokens of the reference; reference / background: images in [-1, 1] at their own size;
    sketch: the prepared sketch (lines +1) at the output size; sketch_hw: the user sketch's size (the frame
    of ``sketch_mask``). Masks are ``(B, H, W)`` in [0, 1] in their image's frame. Without ``sketch_mask``
    it is computed from the line art (:func:`colorize.masks.sketch_foreground_mask`); without
    ``reference_mask`` (and no background image) background enhance warns and treats the whole reference
    as foreground.
    """
    enhance = enhance or EnhanceSettings()
    enhance.validate(config.version)
    given = {"sketch_mask": sketch_mask, "reference_mask": reference_mask, "background": background,
             "background_mask": background_mask}
    if not enhance.active:
        unused = [k for k, v in given.items() if v is not None]
        if unused:
            raise InputError(f"{', '.join(unused)} given but no enhancement is on: enable background, "
                             "foreground or style enhance (v1.5/v2 checkpoints) to use them")
        return tokens, {}
    device, size = tokens.device, (int(sketch.shape[-2]), int(sketch.shape[-1]))
    latent_mask = None
    if enhance.masked:
        pixel = fit_sketch_mask(sketch_mask, sketch_hw, size) if sketch_mask is not None \
            else sketch_mask_from_prepared(sketch)
        latent_mask = sketch_mask_to_latent(pixel.to(device), config.vae.downsample_factor)
    if enhance.background_enhance and background is None:
        reference_mask = reference_mask_or_fallback(reference_mask, reference)
    elif reference_mask is not None:
        reference_mask = check_mask(reference_mask, "reference mask").to(device)
    if background_mask is not None:
        background_mask = check_mask(background_mask, "background mask").to(device)
    if config.version == "switch":
        assert latent_mask is not None  # every v1.5 enhancement is masked (style enhance was refused above)
        return switch.unet_inputs(extras, enhance, tokens, reference, latent_mask, encode_tokens,
                                  reference_mask=reference_mask, background=background,
                                  background_mask=background_mask)
    return v2.unet_inputs(extras, enhance, size, tokens, reference, encode_tokens, encode_latent,
                          latent_mask=latent_mask, reference_mask=reference_mask, background=background,
                          background_mask=background_mask)


__all__ = [
    "EXTRA_COMPONENTS",
    "EnhanceSettings",
    "SeededLatentEncoder",
    "base_resolution",
    "build_modules",
    "cast_extras",
    "check_mask",
    "fit_sketch_mask",
    "reference_mask_or_fallback",
    "separation_inputs",
    "sketch_mask_from_prepared",
]
