"""Parity kind ``clip_embedder``: OpenCLIP image and text paths built from the fixture's open_clip config."""
from __future__ import annotations

import torch

from colorize.models.clip import ReferenceEncoder, clip_config_from_open_clip
from colorize.parity.core import Fixture, register


@register("clip_embedder")
def run(fx: Fixture) -> dict[str, torch.Tensor]:
    oc = fx.meta["open_clip_model_config"]
    enc = ReferenceEncoder(clip_config_from_open_clip(oc["name"], oc["config"]))
    enc.load_reference_state_dict(fx.state_dict)  # module-level 'visual.model.*' / 'transformer.model.*'
    image = fx.inputs["image"]
    return {
        "preprocessed": enc.preprocess(image),
        "tokens_full": enc.encode_image(image, "full"),
        "tokens_local": enc.encode_image(image, "local"),
        "text_emb": enc.encode_text_ids(fx.inputs["token_ids"].round().long()),
    }
