"""Crafted checkpoint and layout files: each is refused with a named error before any module is built."""
from __future__ import annotations

import gzip
import json
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from colorize.checkpoint import CONFIG_METADATA_KEY, inspection, read_header
from colorize.config import TINY_MULT, ColorizerConfig
from colorize.errors import CheckpointError
from colorize.loader import load_checkpoint_modules, load_reference_encoder, read_checkpoint_info
from colorize.tiny import build_tiny_state_dicts, tiny_config


@pytest.fixture(scope="module")
def tiny_mult() -> dict[str, torch.Tensor]:
    return build_tiny_state_dicts(TINY_MULT)[0]


def _write(path: Path, sd: dict[str, torch.Tensor], config: ColorizerConfig | dict | str) -> Path:
    text = config if isinstance(config, str) else json.dumps(config if isinstance(config, dict) else config.to_dict())
    save_file(sd, str(path), metadata={CONFIG_METADATA_KEY: text})
    return path


def _never_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the loader gets as far as building a U-Net."""
    import colorize.families.base as base

    def refuse(*args, **kwargs):
        raise AssertionError("a module was built from a config that should have been refused")

    monkeypatch.setattr(base, "DualCondUNet", refuse)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: replace(c, unet=replace(c.unet, transformer_depth=100_000)),
         r"unet\.transformer_depth=100000 but the weights have 1"),
        (lambda c: replace(c, unet=replace(c.unet, channel_mult=(1,) * 5000)), r"unet\.channel_mult="),
        (lambda c: replace(c, unet=replace(c.unet, num_head_channels=0)), r"unet\.num_head_channels=0, expected"),
        (lambda c: replace(c, unet=replace(c.unet, num_head_channels=7)), r"num_head_channels=7 does not divide"),
        (lambda c: replace(c, unet=replace(c.unet, num_head_channels=True)), r"num_head_channels=True"),
        (lambda c: replace(c, vae=replace(c.vae, scale_factor=float("nan"))), r"vae\.scale_factor=nan"),
        (lambda c: replace(c, parameterization="x0"), r"parameterization='x0'"),
        (lambda c: replace(c, schedule=replace(c.schedule, timesteps=10**9)), r"schedule\.timesteps=1000000000"),
        (lambda c: replace(c, clip=replace(c.clip, vision={**c.clip.vision, "layers": 10**6})),
         r"clip\.vision\.layers=1000000"),
        (lambda c: replace(c, clip=replace(c.clip, vision={**c.clip.vision, "head_width": 0})),
         r"clip\.vision\.head_width=0"),
        (lambda c: replace(c, extras={"transformer_dim_head": 0}), r"extras\.transformer_dim_head=0"),
    ],
    ids=["absurd-depth", "absurd-levels", "zero-head-width", "head-not-dividing", "bool-head", "nan-scale",
         "unknown-target", "absurd-schedule", "absurd-clip-depth", "zero-clip-head", "zero-extra-head"],
)
def test_a_stored_config_that_contradicts_or_exceeds_is_refused_before_building(
    tmp_path: Path, tiny_mult: dict, monkeypatch: pytest.MonkeyPatch, change, message: str
) -> None:
    path = _write(tmp_path / "crafted.safetensors", tiny_mult, change(TINY_MULT))
    _never_built(monkeypatch)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint_modules(path)
    assert str(info.value).startswith("crafted.safetensors: the stored config is not usable")
    assert "\n" not in str(info.value)


def test_the_honest_stored_config_still_loads(tmp_path: Path, tiny_mult: dict) -> None:
    path = _write(tmp_path / "ok.safetensors", tiny_mult, TINY_MULT)
    info = read_checkpoint_info(path)
    assert info.config_source == "metadata" and info.config == TINY_MULT
    for version in ("switch", "v2"):  # the families' extras (head widths) come through
        cfg = tiny_config(version, TINY_MULT)
        sd = build_tiny_state_dicts(cfg)[0]
        assert read_checkpoint_info(_write(tmp_path / f"{version}.safetensors", sd, cfg)).config == cfg


@pytest.mark.parametrize("text, message", [
    ("[" * 20_000 + "]" * 20_000, "nested too deeply"),
    ('{"unet": ' * 5_000 + "{}" + "}" * 5_000, "nested too deeply"),
    ("x" * 100_000, "100,000 characters"),
    ("[1, 2]", "not a JSON object"),
    ('{"unet": {"model_channels": 32, "bogus": 1}}', "TypeError"),
])
def test_a_malformed_stored_config_is_a_named_error(tmp_path: Path, tiny_mult: dict, text: str, message: str) -> None:
    path = _write(tmp_path / "crafted.safetensors", tiny_mult, text)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint_info(path)


def _raw_safetensors(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_a_deeply_nested_header_is_a_named_error(tmp_path: Path) -> None:
    path = _raw_safetensors(tmp_path / "deep.safetensors", b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_header(path)


@pytest.mark.parametrize("entry", [
    {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]},
    {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]},
])
def test_negative_sizes_in_a_header_are_refused(tmp_path: Path, entry: dict) -> None:
    path = _raw_safetensors(tmp_path / "neg.safetensors", json.dumps({"w": entry}).encode(), bytes(16))
    with pytest.raises(CheckpointError, match="malformed header entry"):
        read_header(path)


def test_metadata_values_must_be_strings(tmp_path: Path) -> None:
    header = {"__metadata__": {"colorize_config": {"unet": {}}}, "w": {"dtype": "F32", "shape": [1],
                                                                      "data_offsets": [0, 4]}}
    path = _raw_safetensors(tmp_path / "meta.safetensors", json.dumps(header).encode(), bytes(4))
    with pytest.raises(CheckpointError, match="__metadata__ must map names to strings"):
        read_header(path)


def test_integer_weights_of_the_right_shapes_are_a_named_error(tmp_path: Path, tiny_mult: dict,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    sd = dict(tiny_mult)
    for key in [k for k in sd if k.startswith("model.diffusion_model.input_blocks.")][:4]:
        sd[key] = sd[key].to(torch.int32)
    path = _write(tmp_path / "ints.safetensors", sd, TINY_MULT)
    _never_built(monkeypatch)
    with pytest.raises(CheckpointError, match=r"ints\.safetensors: 4 weights are not floating point: "
                                              r"model\.diffusion_model\.input_blocks\.\S+ \(int32\)"):
        load_checkpoint_modules(path)
    assert inspection.main([str(path)]) == 2  # inspect no longer calls it OK


def test_integer_weights_in_a_clip_file_are_a_named_error(tmp_path: Path) -> None:
    clip = dict(build_tiny_state_dicts(TINY_MULT)[1])
    key = next(k for k in clip if k.endswith("conv1.weight"))
    clip[key] = clip[key].to(torch.int16)
    path = _write(tmp_path / "clip.safetensors", clip, TINY_MULT)
    with pytest.raises(CheckpointError, match=r"not floating point: .*conv1\.weight \(int16\)"):
        load_reference_encoder(path)


def test_a_layout_gzip_bomb_is_refused_after_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inspection, "MAX_LAYOUT_BYTES", 1 << 20)
    bomb = tmp_path / "keys_bomb.json.gz"
    bomb.write_bytes(gzip.compress(b'{"k": [' + b" " * (64 << 20) + b"1]}", compresslevel=1))
    assert bomb.stat().st_size < (1 << 20)
    read_sizes: list[int] = []
    real_open = gzip.open

    def spy_open(*args, **kwargs):
        f = real_open(*args, **kwargs)
        real_read = f.read
        f.read = lambda n=-1: (read_sizes.append(n), real_read(n))[1]
        return f

    monkeypatch.setattr(gzip, "open", spy_open)
    with pytest.raises(CheckpointError, match="holds more than 1 MiB of JSON"):
        inspection.inspect_path(bomb)
    assert read_sizes == [(1 << 20) + 1]  # never asked for the whole stream


@pytest.mark.parametrize("content, message", [
    (b"\x1f\x8b\x08\x00garbage", "cannot read this layout file"),
    (gzip.compress(b"[" * 100_000 + b"]" * 100_000), "not a layout JSON"),
    (gzip.compress(b'{"k": ["a"]}'), "not a layout JSON"),
])
def test_a_broken_layout_file_is_a_named_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "keys_x.json.gz"
    path.write_bytes(content)
    assert inspection.main([str(path)]) == 2
    with pytest.raises(CheckpointError, match=message):
        inspection.inspect_path(path)
