"""Image loading and sketch/reference preprocessing, including awkward inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from colorize.errors import InputError
from colorize.preprocess import fit_and_pad, load_image, prepare_reference, prepare_sketch, target_size


def _lines_on_white(h: int = 100, w: int = 60) -> np.ndarray:
    a = np.full((h, w), 255, np.uint8)
    a[h // 2, :] = 0
    return a


def test_grayscale_png_becomes_rgb(tmp_path: Path) -> None:
    Image.fromarray(_lines_on_white()).save(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png")
    assert x.shape == (1, 3, 100, 60) and x.min() == 0 and x.max() == 1
    assert torch.equal(x[:, 0], x[:, 2])


def test_rgba_transparent_background_is_white(tmp_path: Path) -> None:
    a = np.zeros((20, 30, 4), np.uint8)
    a[5, :, 3] = 255  # one opaque black line, the rest fully transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    x = load_image(tmp_path / "t.png")
    assert x.shape == (1, 3, 20, 30)
    assert torch.all(x[0, :, 5] == 0) and torch.all(x[0, :, 6:] == 1)


def test_16bit_png_scaled_to_unit_range(tmp_path: Path) -> None:
    a = np.full((16, 16), 65535, np.uint16)
    a[3] = 0
    a[4] = 32768
    Image.fromarray(a).save(tmp_path / "d.png")
    x = load_image(tmp_path / "d.png")
    assert x.shape == (1, 3, 16, 16) and x.max() == 1 and x.min() == 0
    assert abs(float(x[0, 0, 4, 0]) - 32768 / 65535) < 1e-6


def test_unreadable_and_missing_files_raise_input_error(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize("polarity", ["invert", "auto"])
def test_sketch_lines_become_plus_one_and_padding_minus_one(polarity: str) -> None:
    x = torch.from_numpy(_lines_on_white(128, 64)).float().div(255)[None, None].expand(1, 3, -1, -1)
    s = prepare_sketch(x, (128, 128), polarity)
    assert s.shape == (1, 3, 128, 128)
    assert torch.all(s[..., :32] == -1) and torch.all(s[..., 96:] == -1)  # centre-padded sides
    assert s[0, 0, 64, 64] > 0.9 and s[0, 0, 10, 64] < -0.9  # the line is +1, paper is -1


def test_keep_polarity_and_auto_on_white_lines() -> None:
    white_lines = 1 - torch.from_numpy(_lines_on_white(64, 64)).float().div(255)[None, None].expand(1, 3, -1, -1)
    kept = prepare_sketch(white_lines, (64, 64), "keep")
    auto = prepare_sketch(white_lines, (64, 64), "auto")
    assert torch.equal(kept, auto) and kept[0, 0, 32, 10] > 0.9


def test_fit_keeps_aspect() -> None:
    x = torch.ones(1, 3, 50, 100)
    y = fit_and_pad(x, (128, 128), fill=-1.0)
    rows = (y[0, 0] > 0).any(1).nonzero().flatten()
    assert y.shape == (1, 3, 128, 128) and len(rows) == 64


def test_target_size_rounds_to_multiples_of_64() -> None:
    assert target_size((500, 300), width=500, height=300) == (320, 512)
    h, w = target_size((1000, 500))
    assert h % 64 == 0 and w % 64 == 0 and abs(h / w - 2) < 0.3
    with pytest.raises(InputError, match="multiple of 8"):  # the latent grid; each family checks its own multiple
        fit_and_pad(torch.ones(1, 3, 8, 8), (100, 64), fill=-1)
    assert fit_and_pad(torch.ones(1, 3, 8, 8), (96, 64), fill=-1).shape == (1, 3, 96, 64)  # an XL size


def test_nan_and_bad_shapes_rejected() -> None:
    x = torch.zeros(1, 3, 64, 64)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        prepare_reference(x)
    with pytest.raises(InputError, match="channels"):
        prepare_reference(torch.zeros(1, 2, 64, 64))
    assert prepare_reference(torch.zeros(1, 4, 64, 64)).shape == (1, 3, 64, 64)


def test_integer_tensors_are_scaled_and_out_of_range_floats_rejected() -> None:
    u8 = torch.full((1, 3, 16, 16), 255, dtype=torch.uint8)
    u8[..., 0, 0] = 0
    x = prepare_reference(u8)
    assert x.max() == 1 and x.min() == -1
    with pytest.raises(InputError, match=r"\[0, 1\].*255"):
        prepare_reference(torch.full((1, 3, 16, 16), 200.0))
    with pytest.raises(InputError, match=r"\(x \+ 1\) / 2"):
        prepare_sketch(torch.full((1, 3, 64, 64), -1.0), (64, 64))


def test_rgba_tensor_is_composited_over_white() -> None:
    rgba = torch.zeros(1, 4, 64, 64)  # black, fully transparent except one opaque line
    rgba[:, 3, 32, :] = 1.0
    s = prepare_sketch(rgba, (64, 64), "invert")
    assert torch.all(s[:, :, 32, :] == 1) and torch.all(s[:, :, 10, :] == -1)
