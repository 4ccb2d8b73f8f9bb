"""The colorizer's own weights that run inside a host's U-Net call (sketch encoder, split LoRA, v2 decoder extras).

A host U-Net (e.g. ComfyUI's SD2.1 ``UNetModel``) holds only the SD2.1 weights. What ColorizeDiffusion adds
and needs at every denoising step lives here, in one module that the host loads and offloads beside its
U-Net:

* ``sketch_encoder`` — the five sketch hints (thesis Eq. 5.1);
* ``lora`` — per cross-attention layer, the foreground/background LoRA pairs of ``to_q/to_k/to_v``
  (v1.5 all blocks, v2 decoder blocks; thesis §5.5.2, Eq. 5.4), never merged into the base weights;
* the family's other U-Net additions (``Family.unet_additions``), e.g. v2's ``warp_modules`` / ``style_modules``
  for skip warping and style modulation (thesis §5.6).

State-dict keys map one to one onto the official checkpoint keys (:func:`extras_state_dict`).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from colorize.config import ColorizerConfig
from colorize.models.lora import Branch
from colorize.models.sketch_encoder import SketchEncoder

#: ``<path>.attn2.to_q.lora_down_fg.weight`` (U-Net key without the ``model.diffusion_model.`` prefix).
LORA_KEY = re.compile(r"(?P<path>.+\.attn2)\.(?P<proj>to_[qkv])\.lora_(?P<kind>down|up)_(?P<branch>fg|bg)\.weight$")
PROJECTIONS = ("to_q", "to_k", "to_v")
LoraShapes = Mapping[str, tuple[int, int, int, int]]  # projection -> (in, out, fg rank, bg rank)


def lora_module_name(path: str) -> str:
    """ModuleDict name of an ``attn2`` path (``input_blocks.1.1.transformer_blocks.0.attn2``)."""
    return path.replace(".", "__")


class LoraPairs(nn.Module):
    """The foreground and background LoRA pair of one projection: ``delta = scale · up(down(x))``."""

    def __init__(self, in_features: int, out_features: int, fg_rank: int, bg_rank: int) -> None:
        super().__init__()
        self.lora_down_fg = nn.Linear(in_features, fg_rank, bias=False)
        self.lora_up_fg = nn.Linear(fg_rank, out_features, bias=False)
        self.lora_down_bg = nn.Linear(in_features, bg_rank, bias=False)
        self.lora_up_bg = nn.Linear(bg_rank, out_features, bias=False)

    def delta(self, x: Tensor, branch: Branch, scale: float = 1.0) -> Tensor:
        down, up = (self.lora_down_fg, self.lora_up_fg) if branch == "fg" else (self.lora_down_bg, self.lora_up_bg)
        out = up(down(x.to(down.weight.dtype)))
        return out if scale == 1.0 else out * scale


class AttentionLora(nn.Module):
    """LoRA pairs of one cross-attention layer's ``to_q``, ``to_k``, ``to_v``."""

    def __init__(self, shapes: LoraShapes) -> None:
        super().__init__()
        for proj in PROJECTIONS:
            self.add_module(proj, LoraPairs(*shapes[proj]))


class NativeExtras(nn.Module):
    """Sketch encoder, split LoRA (v1.5/v2) and the family's other U-Net additions of one checkpoint.

    ``lora``: ``{attn2 path: {projection: (in, out, fg rank, bg rank)}}`` (empty for v1); ``additions``: modules
    by their U-Net key prefix (v2: ``warp_modules``, ``style_modules``), registered under that name.
    """

    def __init__(self, config: ColorizerConfig, lora: Mapping[str, LoraShapes] | None = None,
                 additions: Mapping[str, nn.Module] | None = None, *,
                 device: torch.device | str | None = None, sketch_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.lora_paths = {path: lora_module_name(path) for path in (lora or {})}
        with torch.device(device) if device is not None else nullcontext():
            # the SD2.1 MultiEncoder unless the family built its own (XL: the multi-scale attention encoder)
            self.sketch_encoder = sketch_encoder if sketch_encoder is not None else SketchEncoder(config.sketch)
            self.lora = nn.ModuleDict({name: AttentionLora(lora[path])  # type: ignore[index]
                                       for path, name in self.lora_paths.items()})
        for name, module in (additions or {}).items():
            self.add_module(name, module)

    def lora_for(self, path: str) -> AttentionLora | None:
        """The LoRA of the ``attn2`` at ``path`` (``None``: that layer has none)."""
        name = self.lora_paths.get(path)
        return self.lora[name] if name is not None else None  # type: ignore[return-value]


def lora_shapes(unet_extra: Mapping[str, Any]) -> dict[str, dict[str, tuple[int, int, int, int]]]:
    """``{attn2 path: {projection: (in, out, fg rank, bg rank)}}`` from the U-Net's LoRA key shapes."""
    found: dict[str, dict[str, dict[str, tuple[int, ...]]]] = {}
    for key, value in unet_extra.items():
        m = LORA_KEY.match(key)
        if m:
            shape = tuple(value.shape) if hasattr(value, "shape") else tuple(value)
            found.setdefault(m["path"], {}).setdefault(m["proj"], {})[f"{m['kind']}_{m['branch']}"] = shape
    out: dict[str, dict[str, tuple[int, int, int, int]]] = {}
    for path, projs in found.items():
        out[path] = {}
        for proj in PROJECTIONS:
            s = projs[proj]
            out[path][proj] = (s["down_fg"][1], s["up_fg"][0], s["down_fg"][0], s["down_bg"][0])
    return out


def extras_state_dict(sketch_encoder: Mapping[str, Tensor], unet_extra: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """:class:`NativeExtras` keys from the checkpoint's sketch-encoder and U-Net-addition tensors."""
    out = {"sketch_encoder." + k: v for k, v in sketch_encoder.items()}
    for key, value in unet_extra.items():
        m = LORA_KEY.match(key)
        if m:
            out[f"lora.{lora_module_name(m['path'])}.{m['proj']}.lora_{m['kind']}_{m['branch']}.weight"] = value
        else:
            out[key] = value  # the family's additions (v2: warp_modules.*, style_modules.*)
    return out


__all__ = ["AttentionLora", "LoraPairs", "NativeExtras", "extras_state_dict", "lora_module_name", "lora_shapes"]
