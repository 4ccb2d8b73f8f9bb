"""The v2 decoder extras (thesis §5.6) on a cloned native MODEL: background warping of the decoder skips
(``output_block_patch``) and style modulation after each decoder block (a :class:`StyleTap` appended to each output
block, handled through ``forward_timestep_embed_patch``, which hands over the time embedding). The modules and the
math are the library's (:func:`colorize.families.v2.unet.warp_skip`, :class:`colorize.families.v2.unet.StyleModulation`).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from colorize.families.v2.unet import warp_skip
from colorize.models.split_attention import MaskTokens, tile_batch

from .model import NativeParts
from .patches import Shared, on_device, set_patch


class WarpPatch(Shared):
    """v2: replaces the background part of each decoder skip by its warped version (before the concat)."""

    def __init__(self, parts: NativeParts, hs_bg: list[Tensor], mask: Tensor | MaskTokens, threshold: float) -> None:
        self.parts, self.hs_bg, self.threshold = parts, hs_bg, float(threshold)
        self.mask_tokens = mask if isinstance(mask, MaskTokens) else MaskTokens(mask)

    def __call__(self, h: Tensor, hsp: Tensor, transformer_options: dict[str, Any]) -> tuple[Tensor, Tensor]:
        i = int(transformer_options["block"][1])
        warp = on_device(self.parts.module.warp_modules[i], hsp.device)  # type: ignore[index]
        mask = self.mask_tokens((hsp.shape[-2], hsp.shape[-1]), hsp.shape[0], hsp.device)
        return h, warp_skip(warp, hsp, self.hs_bg[i], mask, self.threshold)


class StyleTap(nn.Module):
    """Marker appended to output block ``index``: the host hands it to :class:`StylePatch` with the time
    embedding (``forward_timestep_embed_patch``). It has no weights."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: Tensor) -> Tensor:  # only reached without the StylePatch handler
        raise RuntimeError("ColorizeDiffusion style modulation ran without its patch")


class StylePatch(Shared):
    """v2: ``h · (1 + scale) + shift`` after each decoder block, from the style vectors and the time embedding."""

    def __init__(self, parts: NativeParts, style: list[Tensor]) -> None:
        self.parts, self.style = parts, style

    def __call__(self, layer: StyleTap, x: Tensor, emb: Tensor, *args: Any) -> Tensor:
        module = on_device(self.parts.module.style_modules[layer.index], x.device)  # type: ignore[index]
        return module(x, tile_batch(self.style[layer.index], x.shape[0], "style").to(x.device), emb)


def set_v2(model: Any, parts: NativeParts, warp: WarpPatch | None, style: list[Tensor] | None) -> None:
    """Install (or, with ``None``, remove earlier) skip warping and style modulation. Style appends a
    :class:`StyleTap` to every output block through object patches that keep the blocks' own layers, so
    weight patches such as LoRA still reach them."""
    set_patch(model, "output_block_patch", warp, WarpPatch)
    handler = (StyleTap, StylePatch(parts, style)) if style is not None else None
    set_patch(model, "forward_timestep_embed_patch", handler, StylePatch)
    for name, block in list(model.object_patches.items()):
        if name.startswith("diffusion_model.output_blocks.") and any(isinstance(m, StyleTap) for m in block):
            del model.object_patches[name]  # an earlier Native Enhance's taps
    for i in range(len(style or ())):
        name = f"diffusion_model.output_blocks.{i}"
        block = model.get_model_object(name)
        model.add_object_patch(name, type(block)(*block, StyleTap(i)))


__all__ = ["StylePatch", "StyleTap", "WarpPatch", "set_v2"]
