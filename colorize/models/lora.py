"""Split LoRA for the cross-attention projections of v1.5 / v2 (thesis §5.5.2, Eq. 5.4).

A :class:`SplitLoraLinear` is the frozen base projection ``W`` plus two low-rank pairs, one for the
foreground branch and one for the background branch of split cross-attention:
``Ŵ_{f,b} x = W x + scale · up_{f,b}(down_{f,b}(x))``.  The pairs are never merged into ``W``: the plain
``forward`` is exactly the base projection, and a branch's delta is added only when the split attention asks
for it (the official LoRA mode, ``refnet/modules/lora.py:25-62``, is sticky module state; here it is not state).

State-dict keys equal the official ones: ``weight``, ``lora_down_fg.weight``, ``lora_up_fg.weight``,
``lora_down_bg.weight``, ``lora_up_bg.weight`` (all bias-free).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colorize.checkpoint.common import shape_of

Branch = Literal["fg", "bg"]
Rank = int | float
LoraBlocks = Literal["all", "output", "none"]


def resolve_rank(rank: Rank, in_features: int, out_features: int) -> int:
    """The official rank rule: an ``int`` is the rank; a ``float`` ≤ 1 is a fraction of ``min(in, out)``.

    ``fr=4`` → 4, ``br=0.5`` → ``int(0.5·min(in, out))`` (160/320/640 for to_q of width 320/640/1280,
    160/320/512 for to_k/to_v with context 1024). A float > 1 is read as an absolute rank.
    """
    if isinstance(rank, bool) or rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank!r}")
    if isinstance(rank, float) and rank <= 1.0:
        return max(1, int(rank * min(in_features, out_features)))
    return int(rank)


@dataclass(frozen=True)
class SplitLoraConfig:
    """Which cross-attention blocks carry the fg/bg LoRA pair and their ranks (see :func:`resolve_rank`).

    ``blocks``: ``"all"`` (v1.5: all attention blocks), ``"output"`` (v2: decoder blocks only; the other blocks
    still use split attention, without LoRA), ``"none"`` (split attention without any LoRA). The released
    layouts: v1.5 ``fr=4, br=0.5`` on every ``attn2`` (official ``configs/inference/switch.yaml``), v2
    ``fr=4, br=4`` on the decoder (``configs/inference/v2.yaml``).
    """

    fg_rank: Rank = 4
    bg_rank: Rank = 0.5
    blocks: LoraBlocks = "all"


def lora_config_from_official(params: Mapping[str, Any], blocks: LoraBlocks = "all") -> SplitLoraConfig:
    """From the official ``LoraModules`` arguments ``{"fr": 4, "br": 0.5}``."""
    return SplitLoraConfig(fg_rank=params.get("fr", 4), bg_rank=params.get("br", 0.5), blocks=blocks)



def _infer_rank(ranks: list[tuple[int, int, int]]) -> Rank:
    """One rank spec reproducing every (rank, in, out) triple: absolute if constant, else a fraction."""
    values = {r for r, _, _ in ranks}
    if len(values) == 1:
        return values.pop()
    r, i, o = ranks[0]
    frac = r / min(i, o)
    if all(resolve_rank(frac, i2, o2) == r2 for r2, i2, o2 in ranks):
        return frac
    raise ValueError(f"LoRA ranks {sorted(values)} follow neither a constant nor a min(in, out) fraction")


def infer_lora_config(unet: Mapping[str, Any]) -> SplitLoraConfig | None:
    """:class:`SplitLoraConfig` from U-Net shapes (keys without ``model.diffusion_model.``); None if no LoRA."""
    fg: list[tuple[int, int, int]] = []
    bg: list[tuple[int, int, int]] = []
    in_decoder: list[bool] = []
    for k, v in unet.items():
        m = re.match(r"(.*attn2\.to_[qkv])\.lora_down_(fg|bg)\.weight$", k)
        if not m:
            continue
        r, i = shape_of(v)
        o = shape_of(unet[m.group(1) + ".weight"])[0]
        (fg if m.group(2) == "fg" else bg).append((r, i, o))
        in_decoder.append(k.startswith("output_blocks."))
    if not fg:
        return None
    blocks: LoraBlocks = "output" if all(in_decoder) else "all"
    return SplitLoraConfig(fg_rank=_infer_rank(fg), bg_rank=_infer_rank(bg), blocks=blocks)


class SplitLoraLinear(nn.Linear):
    """Bias-free ``nn.Linear`` with a foreground and a background LoRA pair that ``forward`` ignores.

    ``fg_rank`` / ``bg_rank`` are absolute ranks (see :func:`resolve_rank` for the official rank rule).  Initialisation as in LoRA training: ``down ~ N(0, 1/r)``, ``up = 0``.
    """

    def __init__(self, in_features: int, out_features: int, fg_rank: int, bg_rank: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.lora_down_fg = nn.Linear(in_features, fg_rank, bias=False)
        self.lora_up_fg = nn.Linear(fg_rank, out_features, bias=False)
        self.lora_down_bg = nn.Linear(in_features, bg_rank, bias=False)
        self.lora_up_bg = nn.Linear(bg_rank, out_features, bias=False)
        if not self.weight.is_meta:
            with torch.no_grad():
                for down, up in ((self.lora_down_fg, self.lora_up_fg), (self.lora_down_bg, self.lora_up_bg)):
                    nn.init.normal_(down.weight, std=1.0 / down.out_features)
                    nn.init.zeros_(up.weight)

    def forward(self, x: Tensor) -> Tensor:  # the base projection only
        return F.linear(x, self.weight)

    def delta(self, x: Tensor, branch: Branch, scale: float = 1.0) -> Tensor:
        """``scale · up(down(x))`` of the ``"fg"`` or ``"bg"`` pair."""
        down, up = (self.lora_down_fg, self.lora_up_fg) if branch == "fg" else (self.lora_down_bg, self.lora_up_bg)
        out = up(down(x))
        return out if scale == 1.0 else out * scale

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, fg_rank={self.lora_down_fg.out_features}, "
                f"bg_rank={self.lora_down_bg.out_features}")


__all__ = [
    "Branch",
    "LoraBlocks",
    "Rank",
    "SplitLoraConfig",
    "SplitLoraLinear",
    "infer_lora_config",
    "lora_config_from_official",
    "resolve_rank",
]
