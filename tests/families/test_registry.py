"""The family registry: what each family is called, how a file's family is found, and that a new family plugs in
with its folder and one registry entry."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import colorize.families as registry
from colorize.checkpoint import COMPONENT_PREFIXES, CONFIG_METADATA_KEY
from colorize.config import TINY_MULT
from colorize.errors import CheckpointError
from colorize.families import FAMILIES, Family, component_prefixes, detect_family, get_family, split_checkpoint
from colorize.families.base import TrainingStart
from colorize.loader import checkpoint_config, load_checkpoint_modules
from colorize.tiny import build_tiny_state_dicts, tiny_config


def test_names_labels_and_folders_are_one_mapping() -> None:
    """The official file prefixes / model types (mult, switch, v2, sdxl, xlv2), the chapter-4 GAN and the names
    users see, in one place; both XL model types live in one folder."""
    assert {f.name: f.label for f in FAMILIES.values()} == {"mult": "v1", "switch": "v1.5", "v2": "v2", "sdxl": "XL",
                                                           "xlv2": "XL v2", "gan": "GAN"}
    assert {f.name: f.parameterization for f in FAMILIES.values()} == {"mult": "eps", "switch": "eps", "v2": "v",
                                                                       "sdxl": "v", "xlv2": "v", "gan": "none"}
    assert {f.name: f.base_resolution for f in FAMILIES.values()} == {"mult": 512, "switch": 512, "v2": 768,
                                                                      "sdxl": 1024, "xlv2": 1024, "gan": 512}
    assert [f.name for f in FAMILIES.values() if f.standalone] == ["gan"]  # its own colorizer, no diffusion
    assert FAMILIES["sdxl"].folder == FAMILIES["xlv2"].folder
    for family in FAMILIES.values():
        assert family.folder.parent == Path(registry.__file__).parent  # colorize/families/<folder>/
        assert family.layout()  # the released key layout ships in the family's folder
        assert get_family(family.name) is family
    with pytest.raises(CheckpointError, match="unknown model family 'xl'"):
        get_family("xl")


def test_component_prefixes_never_overlap() -> None:
    prefixes = list(component_prefixes().values())
    assert len(set(prefixes)) == len(prefixes)
    assert not [(a, b) for a in prefixes for b in prefixes if a != b and a.startswith(b)]
    assert dict(COMPONENT_PREFIXES).items() <= component_prefixes().items()  # the shared ones come first


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_released_layout_is_detected_as_its_family(name: str) -> None:
    layout = get_family(name).layout()
    assert detect_family(layout) is get_family(name)
    # a v2 file also carries v1.5's LoRA keys and v1's sketch encoder, an XL file v1's markers and an xlv2 file
    # v2's bg_encoder.*: detection asks the most specific first
    assert [f.name for f in FAMILIES.values() if f.matches(layout)][-1] == name


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if not f.standalone])
def test_tiny_weights_round_trip_through_detection_and_config(name: str) -> None:
    config = tiny_config(name, TINY_MULT)
    ckpt, _ = build_tiny_state_dicts(config)
    meta = {CONFIG_METADATA_KEY: json.dumps(config.to_dict())}
    family = detect_family(ckpt)
    assert family.name == name
    assert checkpoint_config(family, ckpt, meta)[0] == config
    parts = split_checkpoint(ckpt)
    assert set(family.components) <= {c for c, v in parts.items() if v}
    assert not parts["unexpected"]


def test_the_keys_decide_the_family_not_a_stored_config() -> None:
    """A v1 file whose metadata claims to be v2 is still v1; a stored config whose sizes contradict the weights is
    refused (the shapes decide every size they show)."""
    ckpt, _ = build_tiny_state_dicts(TINY_MULT)
    fake = {CONFIG_METADATA_KEY: json.dumps(replace(TINY_MULT, version="v2").to_dict())}
    family = detect_family(ckpt)
    assert family.name == "mult" and checkpoint_config(family, ckpt, fake)[0].version == "mult"
    other_sizes = {CONFIG_METADATA_KEY: json.dumps(tiny_config("v2", TINY_MULT).to_dict())}
    with pytest.raises(CheckpointError, match=r"unet\.channel_mult=\(1, 2, 2, 2\) but the weights have \(1, 1, 1, 2\)"):
        checkpoint_config(family, ckpt, other_sizes)


def test_foreign_files_are_named_in_the_error() -> None:
    with pytest.raises(CheckpointError, match=r"not a ColorizeDiffusion checkpoint: looks like an SDXL checkpoint"):
        detect_family(["conditioner.embedders.0.transformer.x", "model.diffusion_model.input_blocks.0.0.weight"])
    with pytest.raises(CheckpointError, match="v1.5 adds thresh_embedder.*, transformer.*; v2 adds bg_encoder.*"):
        detect_family(["first_stage_model.encoder.conv_in.weight"], source="vae.safetensors")


class _ToyUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_blocks = nn.ModuleList([nn.Conv2d(4, 8, 3)])


class ToyFamily(Family):
    """A family with its own component and marker: what a new family folder would define."""

    name = "toy"
    label = "toy"
    title = "a toy family"
    components = {"toy_encoder": "toy_encoder."}
    training_sources = ("toy",)

    def matches(self, keys: Any) -> bool:
        return super().matches(keys) and any(k.startswith("toy_encoder.") for k in keys)

    def build_extras(self, config, parts, name):  # type: ignore[no-untyped-def]
        return {"toy_encoder": nn.Linear(2, 2)}


def test_a_new_family_plugs_in_with_one_registry_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Registering a family is enough for detection, the component split, the loader and training to see it."""
    toy = ToyFamily()
    monkeypatch.setattr(registry, "FAMILIES", {**FAMILIES, toy.name: toy})
    ckpt, _ = build_tiny_state_dicts(TINY_MULT)
    ckpt = {**ckpt, "toy_encoder.weight": torch.zeros(2, 2)}
    assert detect_family(ckpt) is toy  # asked before v2 / v1.5 / v1
    assert split_checkpoint(ckpt)["toy_encoder"] == {"weight": ckpt["toy_encoder.weight"]}
    config, _ = checkpoint_config(toy, ckpt)
    assert config.version == "toy"
    start = TrainingStart({}, config, False, "eps")
    with pytest.raises(NotImplementedError, match="toy has no training stage"):
        toy.training_model(start)

    from safetensors.torch import save_file

    path = tmp_path / "toy.safetensors"
    save_file({k: v.contiguous() for k, v in ckpt.items()}, str(path),
              metadata={CONFIG_METADATA_KEY: json.dumps(TINY_MULT.to_dict())})
    mods = load_checkpoint_modules(path)
    assert mods.config.version == "toy" and set(mods.extras) == {"toy_encoder"}
