"""Parity kind ``manipulation``: local/global text edits, ``compute_pwv`` and the control heatmap.

The CLIP text encoder is replaced by the fixture's fixed unit vectors (``text_vectors``: prompt name →
``input:text_<name>``); every case is built from ``scalar_args``.
"""
from __future__ import annotations

import torch

from colorize.manipulation import (
    Edit,
    compute_pwv,
    control_heatmap,
    global_manipulate,
    levels_to_uint8,
    local_manipulate,
)
from colorize.parity.core import Fixture, register


def _text_encoder(fx: Fixture):
    table = {name: fx.inputs[key.split(":", 1)[1]] for name, key in fx.meta["text_vectors"].items()}

    def encode_text(prompts: list[str]) -> torch.Tensor:
        missing = [p for p in prompts if p not in table]
        if missing:
            raise KeyError(f"prompts {missing} have no fixed vector in the fixture")
        return torch.stack([table[p] for p in prompts])[:, None]

    return encode_text


def _edits(entries: list[dict]) -> list[Edit]:
    return [Edit.from_dict(e) for e in entries]


@register("manipulation")
def run(fx: Fixture) -> dict[str, torch.Tensor]:
    sa, enc, out = fx.scalars, _text_encoder(fx), {}
    for name, entries in sa["local_cases"].items():
        out[name] = local_manipulate(fx.inputs["v"], _edits(entries), enc)
    for name, entries in sa["global_cases"].items():
        out[name] = global_manipulate(fx.inputs["v_cls"], _edits(entries), enc)
    s = fx.inputs["pwv_s"]
    for name, case in sa["pwv_cases"].items():
        dscale = torch.tensor(case["dscale_per_batch"], dtype=s.dtype).view(-1, *([1] * (s.ndim - 1)))
        out[name] = compute_pwv(s, dscale, case["thresholds"], case.get("ratio", 2.0))
    hm = sa["heatmap"]
    tokens = fx.inputs["v_heat"]
    reference = torch.zeros(tokens.shape[0], 3, hm["height"], hm["width"])
    heat = control_heatmap(tokens, reference, hm["vis_control"], enc, hm["ts"], _edits(hm["entries"]),
                           grid=hm.get("grid"))
    out["heatmap_scale"] = heat.scores[0]
    out["heatmap_levels"] = heat.levels[0]
    out["heatmap_uint8_sum"] = levels_to_uint8(heat.levels)[0].float()
    return out
