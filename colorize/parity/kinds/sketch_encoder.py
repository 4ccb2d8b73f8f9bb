"""Parity kind ``sketch_encoder``: the official ``MultiEncoder`` alone (module-level keys)."""
from __future__ import annotations

import torch

from colorize.models.sketch_encoder import SketchEncoder, config_from_official
from colorize.parity.core import Fixture, register


@register("sketch_encoder")
def run(fx: Fixture) -> dict[str, torch.Tensor]:
    enc = SketchEncoder(config_from_official(fx.config["params"]))
    enc.load_state_dict(fx.weights(), strict=True)
    hints = enc.eval()(fx.inputs["sketch"])
    return {f"hint{i}": h for i, h in enumerate(hints)}
