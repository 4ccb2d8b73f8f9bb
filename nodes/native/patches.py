"""The callables the native bridge installs on a cloned MODEL (ComfyUI's ``transformer_options`` patch points:
``input_block_patch``, ``attn2_patch``, the ``attn2`` replace of ``comfy/model_patcher.py``
``set_model_attn2_replace``) and the helpers that install them. The attention is the library's own processors
(:class:`colorize.models.attention.AttentionPatches`, :class:`colorize.models.split_attention.SplitAttention`),
called with the host's projections.

* :class:`HintPatch` (``input_block_patch``): sketch hints after input blocks 0, 3, 6, 9, 11 (Eq. 5.1),
  computed on the U-Net's device at the latent's size on first use; per CFG chunk (``cond_or_uncond``) the
  blank sketch's hints for the chunks the guider marks sketch-unconditional, so it works whether the host
  batches cond and uncond together or not.
* :class:`AttentionPatch` (``attn2`` replace): per-block reference strength and, for v1.5/v2, split
  cross-attention with the fg/bg LoRA and the sketch mask (Eq. 5.4); :class:`RawInputs` (``attn2_patch``)
  keeps the layer's raw inputs for the LoRA deltas.
* v2 skip warping and style modulation (thesis §5.6): :mod:`.decoder`.

Patch objects are immutable handles: ``copy.deepcopy`` (every ``MODEL.clone()``) returns them as they are,
so the sketch, masks and module references are never copied; the weights are an additional model of the MODEL.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from colorize.errors import InputError
from colorize.families.xl.split_attention import XLSplitAttention
from colorize.generate import sketch_hints
from colorize.models.attention import Attend, AttentionCall, AttentionPatches, AttentionSite, attend_heads
from colorize.models.split_attention import SplitAttention
from colorize.native import chunk_hints, token_grid
from colorize.preprocess import fit_and_pad

from ..host import comfy_module
from .model import NativeParts

M = TypeVar("M", bound=nn.Module)
PACK_KEY = "colorizediffusion"  # additional-model key of the colorizer's modules on a MODEL
SKETCH_UNCOND_KEY = "colorizediffusion_sketch_uncond"  # transformer_options: cond indices without the sketch
RAW_KEY = "colorizediffusion_raw"  # extra_options: the attn2 inputs before projection


def on_device(module: M, device: torch.device) -> M:
    """``module`` with every weight on ``device``: ComfyUI loads the colorizer's modules with the U-Net; this
    covers a host that did not, or loaded them only partly (low-VRAM mode)."""
    if any(p.device != device for p in module.parameters()):
        module.to(device)
    return module


def host_attend(heads: int, precision: Any = None) -> Attend:
    """The host's attention kernel (ComfyUI's ``optimized_attention``: its backend choice, upcasting); the
    library's SDPA outside ComfyUI."""
    attention = comfy_module("comfy.ldm.modules.attention")
    if attention is None:
        return lambda q, k, v: attend_heads(q, k, v, heads)
    return lambda q, k, v: attention.optimized_attention(q, k, v, heads, attn_precision=precision)


class Shared:
    """Immutable patch handle: shared by clones (``deepcopy`` returns it) and left in place by ``.to``."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Shared:
        return self

    def to(self, device: Any) -> Shared:
        return self


class HintPatch(Shared):
    """Adds the sketch encoder's hints (× strength) after the hint input blocks."""

    def __init__(self, parts: NativeParts, sketch: Tensor, strength: float) -> None:
        self.parts, self.sketch, self.strength = parts, sketch, float(strength)
        self.level = {block: i for i, block in enumerate(parts.hint_indices)}
        self._cache: dict[tuple[Any, ...], tuple[list[Tensor], list[Tensor]]] = {}

    def hints(self, latent_hw: tuple[int, int], device: torch.device) -> tuple[list[Tensor], list[Tensor]]:
        """(hints, blank-sketch hints) for a latent of this size (the sketch re-fitted if its size differs)."""
        f = self.parts.config.vae.downsample_factor
        key = (latent_hw, device)
        if key not in self._cache:
            size = (latent_hw[0] * f, latent_hw[1] * f)
            sketch = self.sketch if tuple(self.sketch.shape[-2:]) == size else fit_and_pad(self.sketch, size, fill=-1.0)
            encoder = on_device(self.parts.module.sketch_encoder, device)  # type: ignore[union-attr]
            self._cache = {key: sketch_hints(encoder, sketch, self.strength)}
        return self._cache[key]

    def __call__(self, h: Tensor, transformer_options: dict[str, Any]) -> Tensor:
        block = transformer_options.get("block")
        if not block or block[0] != "input" or block[1] not in self.level:
            return h
        shape = transformer_options.get("original_shape") or list(h.shape)
        hints, blank = self.hints((int(shape[-2]), int(shape[-1])), h.device)
        chunks = list(transformer_options.get("cond_or_uncond") or [0])
        uncond = set(transformer_options.get(SKETCH_UNCOND_KEY, ()))
        level = self.level[block[1]]
        add = chunk_hints([hints[level]], [blank[level]], [c in uncond for c in chunks], h.shape[0] // len(chunks))
        return h + add[0].to(h.device, h.dtype)


@dataclass(frozen=True)
class SplitState:
    """v1.5/v2 split attention of one generation: its processor (mask at latent size) and the context length."""

    processor: SplitAttention | XLSplitAttention
    tokens: int  # 2N: the [fg | bg] context length the positive/negative conditioning carries

    @property
    def lora(self) -> bool:
        o = self.processor.options  # (the XL split attention has no fg/bg LoRA)
        return bool(getattr(o, "use_fg_lora", False) or getattr(o, "use_bg_lora", False))


class RawInputs(Shared):
    """``attn2_patch`` keeping the un-projected query input and context for the LoRA deltas."""

    def __call__(self, n: Tensor, context: Tensor, value: Tensor, extra_options: dict[str, Any]) -> tuple[Tensor, ...]:
        extra_options[RAW_KEY] = (n, context)
        return n, context, value


@dataclass(frozen=True, eq=False)
class AttentionPatch(Shared):
    """Replaces the attention product of every cross-attention block with the library's processors: reference
    strength (``scales``, 16 values in the official order, or None = 1) and v1.5/v2 split attention (``split``,
    or None), on the host's ``q, k, v``."""

    parts: NativeParts
    scales: tuple[float, ...] | None = None
    split: SplitState | None = None

    def with_(self, **changes: Any) -> AttentionPatch:
        return replace(self, **changes)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, extra_options: dict[str, Any]) -> Tensor:
        attend = host_attend(extra_options["n_heads"], extra_options.get("attn_precision"))
        block = next(b for b in self.parts.blocks if b.key == tuple(extra_options["block"]))
        depth = int(extra_options.get("block_index", 0))
        grid = self.grid(q, extra_options) if self.split is not None else (0, 0)  # only the split mask needs it
        site = AttentionSite(block.index + depth, depth, True, grid)  # the transformer block's own index
        lora = None
        x, context = extra_options.get(RAW_KEY, (None, None))
        if self.split is not None:
            if k.shape[1] != self.split.tokens:
                raise InputError(f"split attention expects the {self.split.tokens}-token [foreground | background] "
                                 f"context of Native Enhance for positive and negative, got {k.shape[1]} tokens")
            lora = self.parts.module.lora_for(f"{block.path}.transformer_blocks.{depth}.attn2")
            lora = on_device(lora, q.device) if lora is not None else None
            if lora is not None and self.split.lora and (x is None or context is None):
                raise ValueError("split attention with LoRA needs the raw query input and context (RawInputs)")
        call = AttentionCall(q if x is None else x, k if context is None else context, site, attend=attend, q=q, k=k,
                             v=v, lora=lora)
        patches = AttentionPatches(cross_attention=self.split.processor if self.split is not None else None,
                                   reference_scales=self.scales)
        return patches(call)

    @staticmethod
    def grid(q: Tensor, extra_options: dict[str, Any]) -> tuple[int, int]:
        """This block's token grid: the host's activation shape, else recovered from the token count."""
        shape = extra_options.get("activations_shape")
        latent = extra_options["original_shape"]
        return (int(shape[-2]), int(shape[-1])) if shape else token_grid(q.shape[1], latent[-2], latent[-1])


# ------------------------------------------------------------------------------------------ installing


def set_patch(model: Any, name: str, patch: Any | None, kind: type) -> None:
    """Put ``patch`` in the MODEL's ``name`` patch list in place of any earlier one of ``kind`` (``None``: only
    remove them), so a node applied twice replaces instead of adding its effect twice."""
    patches = model.model_options["transformer_options"].setdefault("patches", {})
    kept = [p for p in patches.get(name, []) if not isinstance(p[1] if isinstance(p, tuple) else p, kind)]
    patches[name] = kept + ([patch] if patch is not None else [])


def attach(model: Any, parts: NativeParts) -> None:
    """Make the colorizer's modules an additional model of ``model`` (loaded and offloaded with it)."""
    if parts.extras.patcher is not None:
        model.set_additional_models(PACK_KEY, [parts.extras.patcher])


def attention_patch(model: Any, parts: NativeParts) -> AttentionPatch:
    """The AttentionPatch already on ``model`` (from another Native node), else a neutral one."""
    replaces = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    found = replaces.get(parts.blocks[0].key)
    return found if isinstance(found, AttentionPatch) and found.parts is parts else AttentionPatch(parts)


def set_attention(model: Any, patch: AttentionPatch) -> None:
    """Install ``patch`` on every cross-attention block (one object, so later nodes can combine settings); a
    neutral patch (all strengths 1, no split) is not installed unless it replaces an earlier one."""
    replaces = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    neutral = patch.split is None and (patch.scales is None or all(s == 1.0 for s in patch.scales))
    if neutral and not isinstance(replaces.get(patch.parts.blocks[0].key), AttentionPatch):
        return
    for block in patch.parts.blocks:
        model.set_model_attn2_replace(patch, block.key[0], block.key[1])
    set_patch(model, "attn2_patch", RawInputs() if patch.split is not None and patch.split.lora else None, RawInputs)


__all__ = [
    "PACK_KEY",
    "RAW_KEY",
    "SKETCH_UNCOND_KEY",
    "AttentionPatch",
    "HintPatch",
    "RawInputs",
    "Shared",
    "SplitState",
    "attach",
    "attention_patch",
    "host_attend",
    "on_device",
    "set_attention",
    "set_patch",
]
