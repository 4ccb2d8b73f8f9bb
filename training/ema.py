"""Exponential moving average of the trainable parameters (optional; official configs: ``use_ema: false``)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class EMA:
    """fp32 shadow copies of ``module``'s trainable parameters: ``s ← decay·s + (1 - decay)·p`` after each step."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError("ema_decay must be in (0, 1)")
        self.decay = decay
        self.shadow: dict[str, Tensor] = {
            n: p.detach().float().clone() for n, p in module.named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for n, p in module.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, object]) -> None:
        shadow = state["shadow"]
        assert isinstance(shadow, dict)
        if set(shadow) != set(self.shadow):
            raise ValueError("EMA state does not match the trainable parameters")
        for n, t in shadow.items():
            self.shadow[n].copy_(t)
        self.decay = float(state["decay"])  # type: ignore[arg-type]

    def averaged_state_dict(self, module: nn.Module) -> dict[str, Tensor]:
        """``module.state_dict()`` with the trainable parameters replaced by their averages."""
        return {k: self.shadow.get(k, v) for k, v in module.state_dict().items()}
