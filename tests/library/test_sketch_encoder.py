"""SketchEncoder (official MultiEncoder): fixture parity, key layout and hint geometry."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from colorize.config import SketchEncoderConfig
from colorize.models.sketch_encoder import SketchEncoder, config_from_official
from colorize.parity.core import load_fixture, run_fixture


def test_sketch_encoder_fixture_parity(fixture_dir: Path) -> None:
    fx = load_fixture(fixture_dir / "sketch_encoder.json")
    res = run_fixture(fx)
    assert res.passed, (res.error, res.per_output)


def test_fixture_key_layout(fixture_dir: Path) -> None:
    meta = json.loads((fixture_dir / "sketch_encoder.json").read_text())
    with torch.device("meta"):
        enc = SketchEncoder(config_from_official(meta["constructor_config"]["params"]))
    want = {k: v["shape"] for k, v in meta["state_dict"]["keys"].items()}
    assert {k: list(v.shape) for k, v in enc.state_dict().items()} == want


def test_hint_geometry_and_zero_init() -> None:
    cfg = SketchEncoderConfig(model_channels=8, ch_mults=(1, 2, 3, 4))
    enc = SketchEncoder(cfg)
    hints = enc(torch.rand(1, 3, 128, 192) * 2 - 1)
    shapes = [tuple(h.shape) for h in hints]
    assert shapes == [(1, 8, 16, 24), (1, 8, 8, 12), (1, 16, 4, 6), (1, 24, 2, 3), (1, 32, 2, 3)]
    assert all((h == 0).all() for h in hints)  # zero convs start at zero, as in the real model
