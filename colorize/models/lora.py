"""Split LoRA for the cross-attention projections of v1.5 / v2 (thesis §5.5.2, Eq. 5.4).

A :class:`SplitLoraLinear` is the frozen base projection ``W`` plus two low-rank pairs, one for the
foreground branch and one for the background branch of split cross-attention:
``Ŵ_{f,b} x = W x + scale · up_{f,b}(down_{f,b}(x))``.  The pairs are never merged into ``W``: the plain
``forward`` is exactly the base projection, and a branch's delta is added only when the split attention asks
for it (reference notes §5.4, §7.12: the official LoRA mode is sticky module state; here it is not state).

State-dict keys equal the official ones: ``weight``, ``lora_down_fg.weight``, ``lora_up_fg.weight``,
``lora_down_bg.weight``, ``lora_up_bg.weight`` (all bias-free).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Branch = Literal["fg", "bg"]


class SplitLoraLinear(nn.Linear):
    """Bias-free ``nn.Linear`` with a foreground and a background LoRA pair that ``forward`` ignores.

    ``fg_rank`` / ``bg_rank`` are absolute ranks (see ``colorize.models.switch_config.resolve_rank`` for the
    official rank rule).  Initialisation as in LoRA training: ``down ~ N(0, 1/r)``, ``up = 0``.
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

    def project(self, x: Tensor, branch: Branch | None, scale: float = 1.0, base: Tensor | None = None) -> Tensor:
        """``W x`` (``branch=None``) or ``W x + delta``; ``base`` = a precomputed ``W x`` to reuse."""
        base = self.forward(x) if base is None else base
        return base if branch is None else base + self.delta(x, branch, scale)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, fg_rank={self.lora_down_fg.out_features}, "
                f"bg_rank={self.lora_down_bg.out_features}")


def project(linear: nn.Linear, x: Tensor, branch: Branch | None, scale: float = 1.0,
            base: Tensor | None = None) -> Tensor:
    """Branch projection for any ``to_q/k/v``: plain layers (no LoRA) always give ``W x``."""
    if isinstance(linear, SplitLoraLinear):
        return linear.project(x, branch, scale, base)
    return linear(x) if base is None else base


__all__ = ["Branch", "SplitLoraLinear", "project"]
