"""The checkpoint loader node refuses crafted files with the library's named errors, before building anything."""
from __future__ import annotations

from _helpers import require_node_api

require_node_api()  # the nodes import ComfyUI's comfy_api

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import colorize.weights as w
from colorize.checkpoint import CONFIG_METADATA_KEY
from colorize.config import TINY_MULT
from colorize.errors import CheckpointError
from colorize.tiny import build_tiny_state_dicts
from nodes import NODE_CLASSES as M


@pytest.fixture
def checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(w.MODELS_DIR_ENV, str(tmp_path))
    folder = tmp_path / "colorizediffusion"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("change, message", [
    (lambda c: replace(c, unet=replace(c.unet, transformer_depth=100_000)), r"unet\.transformer_depth=100000"),
    (lambda c: replace(c, unet=replace(c.unet, num_head_channels=0)), r"unet\.num_head_channels=0"),
], ids=["absurd-depth", "zero-head-width"])
def test_the_loader_node_refuses_a_crafted_config(checkpoints: Path, change, message: str) -> None:
    sd = build_tiny_state_dicts(TINY_MULT)[0]
    save_file(sd, str(checkpoints / "crafted.safetensors"),
              metadata={CONFIG_METADATA_KEY: json.dumps(change(TINY_MULT).to_dict())})
    with pytest.raises(CheckpointError, match=message):
        M["ColorizeDiffusionCheckpointLoader"].execute("crafted.safetensors", "auto")


def test_the_loader_node_refuses_integer_weights(checkpoints: Path) -> None:
    sd = {k: (v.to(torch.int64) if k.endswith("out.2.weight") else v) for k, v in build_tiny_state_dicts(TINY_MULT)[0].items()}
    save_file(sd, str(checkpoints / "ints.safetensors"), metadata={CONFIG_METADATA_KEY: json.dumps(TINY_MULT.to_dict())})
    with pytest.raises(CheckpointError, match=r"not floating point: model\.diffusion_model\.out\.2\.weight \(int64\)"):
        M["ColorizeDiffusionCheckpointLoader"].execute("ints.safetensors", "auto")
