"""Size limits: output sizes above the limits and oversized or bomb input files are named errors before any
expensive work; huge input files are decoded scaled down."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import types
import warnings
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, JpegImagePlugin

from colorize.errors import InputError, SizeLimitError
from colorize.families import FAMILIES, Family
from colorize.pipeline import Colorizer
from colorize.preprocess import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    DEFAULT_MAX_OUTPUT_SIDE,
    INPUT_PIXELS_ENV,
    MAX_PIXELS_ENV,
    MAX_SIDE_ENV,
    input_pixel_limit,
    load_image,
    output_limits,
    target_size,
)
from colorize.settings import GenerationSettings

REPO = Path(__file__).resolve().parents[2]
SKETCH = REPO / "workflows" / "colorizediffusion_sketch.png"
REFERENCE = REPO / "workflows" / "colorizediffusion_reference.png"


@pytest.fixture(autouse=True)
def _no_limit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (MAX_SIDE_ENV, MAX_PIXELS_ENV, INPUT_PIXELS_ENV):
        monkeypatch.delenv(name, raising=False)


def _png_header(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file that declares ``width`` × ``height`` RGB pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------------------------------------- output size


def test_defaults_are_the_documented_ones_for_every_family() -> None:
    assert (DEFAULT_MAX_OUTPUT_SIDE, DEFAULT_MAX_OUTPUT_PIXELS) == (4096, 2048 * 2048)
    for family in FAMILIES.values():
        limits = output_limits(family)
        assert (limits.side, limits.pixels) == (family.max_output_side, family.max_output_pixels)
        assert limits.side >= 2048 and limits.pixels >= family.base_resolution ** 2 * 4


@pytest.mark.parametrize("width, height, needle", [
    (100000, 64, r"output size 100000x64 px .*width is above the limit of 4096 px per side.*COLORIZE_MAX_SIDE"),
    (64, 5000, r"output size 64x5000 px .*height is above the limit of 4096 px per side.*max_output_side"),
    (100000, None, r"output width 100000 px .*width is above the limit of 4096"),
    (3072, 3072, r"output size 3072x3072 px: 9,437,184 pixels, above the limit of 4,194,304 pixels = 2048x2048;"
                 r".*COLORIZE_MAX_PIXELS.*max_output_pixels"),
    (2112, 2048, r"output size 2112x2048 px: 4,325,376 pixels, above the limit"),
])
def test_oversized_outputs_are_refused_by_validate(width: int, height: int | None, needle: str) -> None:
    with pytest.raises(SizeLimitError, match=needle) as e:
        GenerationSettings(width=width, height=height).validate()
    assert "\n" not in str(e.value) and "choose a smaller width/height" in str(e.value)
    assert isinstance(e.value, InputError)  # the CLI and the nodes treat it as any input error


@pytest.mark.parametrize("width, height", [(2048, 2048), (4096, 1024), (1024, 4096), (64, 4096), (4100, 64),
                                           (None, None), (0, 0)])
def test_sizes_within_the_limits_pass(width: int | None, height: int | None) -> None:
    GenerationSettings(width=width, height=height).validate()
    GenerationSettings(width=width, height=height).validate(FAMILIES["v2"], sketch_hw=(600, 400))


def test_the_size_that_will_run_is_checked_when_the_sketch_is_known() -> None:
    tall = (10000, 10)  # one side given: the other follows the sketch's aspect
    GenerationSettings(width=64).validate()  # without the sketch the missing side is unknown
    with pytest.raises(SizeLimitError, match=r"output size 64x64000 px \(width 64 given, the other side from the "
                                             r"10x10000 sketch's aspect\): the height is above"):
        GenerationSettings(width=64).validate(sketch_hw=tall)
    with pytest.raises(SizeLimitError, match=r"about 768² in area from the 100000x10 sketch's aspect"):
        GenerationSettings().validate(FAMILIES["v2"], sketch_hw=(10, 100000))


def test_environment_variables_raise_or_lower_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_PIXELS_ENV, "3072x3072")
    GenerationSettings(width=3072, height=3072).validate()
    monkeypatch.setenv(MAX_PIXELS_ENV, str(3072 * 3072 - 1))
    with pytest.raises(SizeLimitError, match=r"limit of 9,437,183 pixels \(set by COLORIZE_MAX_PIXELS\)"):
        GenerationSettings(width=3072, height=3072).validate()
    monkeypatch.setenv(MAX_SIDE_ENV, "0")
    monkeypatch.setenv(MAX_PIXELS_ENV, "0")
    GenerationSettings(width=100000, height=64).validate()  # 0 = no limit
    monkeypatch.setenv(MAX_SIDE_ENV, "1024")
    with pytest.raises(SizeLimitError, match=r"limit of 1024 px per side \(set by COLORIZE_MAX_SIDE\)"):
        GenerationSettings(width=2048, height=64).validate()


def test_settings_fields_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_SIDE_ENV, "512")
    GenerationSettings(width=4096, height=64, max_output_side=4096).validate()
    GenerationSettings(width=100000, height=64, max_output_side=0, max_output_pixels=0).validate()
    with pytest.raises(SizeLimitError, match=r"limit of 1,000,000 pixels = 1000x1000 \(set by max_output_pixels\)"):
        GenerationSettings(width=1024, height=1024, max_output_side=0, max_output_pixels=1000 * 1000).validate()


@pytest.mark.parametrize("env, value, match", [
    (MAX_SIDE_ENV, "big", "COLORIZE_MAX_SIDE must be a whole number of pixels"),
    (MAX_SIDE_ENV, "-5", "COLORIZE_MAX_SIDE must be a whole number"),
    (MAX_PIXELS_ENV, "2048x", "COLORIZE_MAX_PIXELS must be a whole number of pixels or WxH"),
])
def test_bad_limit_variables_are_named(monkeypatch: pytest.MonkeyPatch, env: str, value: str, match: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(InputError, match=match):
        GenerationSettings(width=64, height=64).validate()


@pytest.mark.parametrize("field, value", [("max_output_side", -1), ("max_output_pixels", 1.5),
                                          ("max_output_side", True)])
def test_bad_limit_fields_are_named(field: str, value: Any) -> None:
    with pytest.raises(InputError, match=f"{field} must be a whole number of pixels"):
        GenerationSettings(width=64, height=64, **{field: value}).validate()


class _SmallFamily(Family):
    name = "small-test"
    label = "small"
    max_output_side: ClassVar[int] = 1024
    max_output_pixels: ClassVar[int] = 768 * 768


def test_a_family_can_lower_its_limits_and_unloaded_checks_take_the_defaults() -> None:
    small = _SmallFamily()
    GenerationSettings(width=768, height=768).validate(small)
    with pytest.raises(SizeLimitError, match="above the limit of 589,824 pixels = 768x768"):
        GenerationSettings(width=1024, height=768).validate(small)
    with pytest.raises(SizeLimitError, match="above the limit of 1024 px per side"):
        GenerationSettings(width=2048, height=64).validate(small)
    GenerationSettings(width=2048, height=64).validate()  # nothing loaded: the defaults
    for family in FAMILIES.values():  # so a check before loading never refuses what a loaded model accepts
        assert 0 < family.max_output_side <= output_limits().side
        assert 0 < family.max_output_pixels <= output_limits().pixels


def test_the_pipeline_refuses_before_touching_any_model() -> None:
    from colorize.families import get_family

    no_model = types.SimpleNamespace(family=get_family("mult"))  # any other attribute (encoders, U-Net) would fail
    sketch = reference = torch.ones(1, 3, 64, 64)
    settings = GenerationSettings(width=100000, height=64)
    with pytest.raises(SizeLimitError, match="100000x64"):
        Colorizer.colorize(no_model, sketch, reference, settings)  # type: ignore[arg-type]


def test_cli_refuses_an_oversized_output_in_one_line_before_loading(tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    cmd = [sys.executable, "-m", "colorize", "run", "--sketch", str(SKETCH), "--reference", str(REFERENCE),
           "--out", str(out), "--width", "100000", "--height", "64",
           "--models-dir", str(tmp_path / "no-models"), "--no-download"]  # a later check would name the weights
    env = {k: v for k, v in os.environ.items() if k not in (MAX_SIDE_ENV, MAX_PIXELS_ENV)}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: output size 100000x64 px"), r.stderr
    assert "4096 px per side" in lines[0] and "COLORIZE_MAX_SIDE" in lines[0]
    assert "Traceback" not in r.stderr + r.stdout and not out.exists()


def test_target_size_treats_zero_as_automatic() -> None:
    assert target_size((600, 400), 0, 0) == target_size((600, 400))
    assert target_size((600, 400), 0, 640) == target_size((600, 400), None, 640)


# ---------------------------------------------------------------------------------------------- input images


class _Spy:
    """Records the calls of ``Image.Image.reduce`` and ``JpegImageFile.draft`` (and lets them run)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reduce: list[Any] = []
        self.draft: list[Any] = []
        reduce, draft = Image.Image.reduce, JpegImagePlugin.JpegImageFile.draft

        def spy_reduce(im: Image.Image, factor: Any, box: Any = None) -> Image.Image:
            self.reduce.append((im.mode, im.size, factor))
            return reduce(im, factor, box)

        def spy_draft(im: Any, mode: Any, size: Any) -> Any:
            result = draft(im, mode, size)
            self.draft.append((size, im.size))
            return result

        monkeypatch.setattr(Image.Image, "reduce", spy_reduce)
        monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy_draft)


def _lines(width: int, height: int, mode: str = "L") -> Image.Image:
    im = Image.new(mode, (width, height), 255 if mode == "L" else (255, 255, 255))
    d = ImageDraw.Draw(im)
    for x in range(0, width, 97):
        d.line((x, 0, width - x, height - 1), fill=0, width=3)
    return im


def test_huge_jpeg_is_decoded_scaled_by_the_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _lines(8192 * 2 + 100, 96).save(tmp_path / "wide.jpg", quality=90)  # long side ≥ 4 × the 4096 side limit
    spy = _Spy(monkeypatch)
    x = load_image(tmp_path / "wide.jpg")
    assert spy.draft and spy.draft[0][1] == ((16484 + 3) // 4, 24)  # DCT scaling by 1/4, no full-size decode
    assert not spy.reduce  # nothing left to reduce
    assert x.shape == (1, 3, 24, 4121) and x.dtype == torch.float32


def test_huge_png_is_reduced_before_it_becomes_float(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _lines(8192 + 8192 // 2, 64, "RGB").save(tmp_path / "wide.png")
    spy = _Spy(monkeypatch)
    x = load_image(tmp_path / "wide.png")
    assert spy.reduce == [("RGB", (12288, 64), 3)]
    assert x.shape == (1, 3, 22, 4096)
    with Image.open(tmp_path / "wide.png") as im:  # the reduced image is the box average of the full one
        full = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    expected = torch.nn.functional.avg_pool2d(full[..., :63, :], 3)
    assert (x[..., :21, :] - expected).abs().max() < 1 / 255 + 1e-6


def test_normal_images_take_the_plain_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _lines(8191, 40).save(tmp_path / "just-below.jpg")  # long side < 2 × 4096: loaded as it is
    _lines(640, 480, "RGB").save(tmp_path / "normal.png")
    spy = _Spy(monkeypatch)
    assert load_image(tmp_path / "just-below.jpg").shape == (1, 3, 40, 8191)
    assert load_image(tmp_path / "normal.png").shape == (1, 3, 480, 640)
    assert not spy.draft and not spy.reduce


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "P+transparency", "1", "I;16", "CMYK"])
def test_every_mode_is_reduced_like_it_is_loaded(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (96, 192, 4), dtype=np.uint8), "RGBA")
    path, kw = tmp_path / "m.png", {}
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (96, 192), dtype=np.uint16))
    elif mode == "P+transparency":
        im, kw = base.convert("P"), {"transparency": 5}
    else:
        im = base.convert(mode)
        path = tmp_path / "m.jpg" if mode == "CMYK" else path
    im.save(path, **kw)
    full, small = load_image(path), load_image(path, max_side=48)
    assert small.shape == (1, 3, 24, 48)
    expected = torch.nn.functional.avg_pool2d(full, 4)
    assert (small - expected).abs().mean() < 0.02  # the same colours, averaged over 4×4 boxes


def test_exif_orientation_is_applied_after_the_scaled_decode(tmp_path: Path) -> None:
    im = _lines(400, 100, "RGB")
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° when shown
    im.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rotated.jpg").shape == (1, 3, 400, 100)
    assert load_image(tmp_path / "rotated.jpg", max_side=50).shape == (1, 3, 50, 13)


_MEMORY_PROBE = """
import json, resource, sys
from colorize.preprocess import load_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
shapes = [list(load_image(p).shape) for p in sys.argv[1:]]
print(json.dumps({"grew_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, "shapes": shapes}))
"""


def test_huge_files_load_without_materialising_their_full_size(tmp_path: Path) -> None:
    im = _lines(9000, 9000)  # 81 Mpx: 0.97 GB per float32 RGB copy at full size (over 2 GB peak before)
    im.save(tmp_path / "big.jpg", quality=85)
    im.save(tmp_path / "big.png", compress_level=1)
    del im
    r = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(tmp_path / "big.jpg"), str(tmp_path / "big.png")],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["shapes"] == [[1, 3, 4500, 4500]] * 2
    assert got["grew_kib"] < 1000 * 1024, got  # ~0.45 GB measured; a generous bound


# ---------------------------------------------------------------------------------------------- bombs


def test_a_decompression_bomb_is_a_named_error(tmp_path: Path) -> None:
    bomb = _png_header(tmp_path / "bomb.png", 100000, 100000)
    assert bomb.stat().st_size < 200
    saved = Image.MAX_IMAGE_PIXELS
    with pytest.raises(SizeLimitError) as e:
        load_image(bomb)
    msg = str(e.value)
    assert "\n" not in msg and str(bomb) in msg and "100000x100000 = 10,000,000,000 pixels" in msg
    assert f"{2 * saved:,} pixels" in msg and "use a smaller image" in msg and INPUT_PIXELS_ENV in msg
    assert Image.MAX_IMAGE_PIXELS == saved  # Pillow's setting is the host's again


def test_a_bomb_through_the_cli_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from colorize.cli import main

    bomb = _png_header(tmp_path / "bomb.png", 30000, 30000)
    code = main(["run", "--sketch", str(bomb), "--reference", str(REFERENCE), "--out", str(tmp_path / "o.png"),
                 "--models-dir", str(tmp_path / "none"), "--no-download"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "900,000,000 pixels" in err and "Traceback" not in err


def test_the_input_limit_follows_pillow_and_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _lines(100, 100).save(tmp_path / "100.png")  # 10,000 px
    _lines(40, 40).save(tmp_path / "40.png")  # 1,600 px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow: warns above 1000, refuses above 2000
    assert input_pixel_limit() == 2000
    with pytest.raises(SizeLimitError, match=r"100x100 = 10,000 pixels, above the input limit of 2,000 pixels"):
        load_image(tmp_path / "100.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning band is accepted, without a warning
        assert load_image(tmp_path / "40.png").shape == (1, 3, 40, 40)
    monkeypatch.setenv(INPUT_PIXELS_ENV, "10000")
    assert load_image(tmp_path / "100.png").shape == (1, 3, 100, 100)
    monkeypatch.setenv(INPUT_PIXELS_ENV, "1000")
    with pytest.raises(SizeLimitError, match="above the input limit of 1,000 pixels"):
        load_image(tmp_path / "40.png")
    assert Image.MAX_IMAGE_PIXELS == 1000  # never changed for the rest of the process
    monkeypatch.setenv(INPUT_PIXELS_ENV, "lots")
    with pytest.raises(InputError, match="COLORIZE_MAX_INPUT_PIXELS must be a whole number"):
        load_image(tmp_path / "40.png")
