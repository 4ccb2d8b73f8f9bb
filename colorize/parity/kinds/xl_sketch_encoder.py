"""Parity kind ``xl_sketch_encoder``: the official XL ``MultiScaleAttentionEncoder`` alone (module-level keys;
``refnet/modules/encoder.py:90-174`` of ``tellurion-kanata/ColorizeDiffusionXL`` at commit ``ec78784``)."""
from __future__ import annotations

import torch

from colorize.families.xl.sketch_encoder import MultiScaleAttentionEncoder, config_from_official
from colorize.parity.core import Fixture, register


@register("xl_sketch_encoder")
def run(fx: Fixture) -> dict[str, torch.Tensor]:
    enc = MultiScaleAttentionEncoder(config_from_official(fx.config["params"]))
    enc.load_state_dict(fx.weights(), strict=True)
    hints = enc.eval()(fx.inputs["sketch"])
    return {f"hint{i}": h for i, h in enumerate(hints)}
