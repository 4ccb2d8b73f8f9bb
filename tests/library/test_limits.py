"""Size limits: output sizes above the limits are named errors before any expensive work."""
from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from colorize.errors import InputError, SizeLimitError
from colorize.families import FAMILIES, Family
from colorize.pipeline import Colorizer
from colorize.preprocess import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    DEFAULT_MAX_OUTPUT_SIDE,
    MAX_PIXELS_ENV,
    MAX_SIDE_ENV,
    output_limits,
    target_size,
)
from colorize.settings import GenerationSettings

REPO = Path(__file__).resolve().parents[2]
SKETCH = REPO / "workflows" / "colorizediffusion_sketch.png"
REFERENCE = REPO / "workflows" / "colorizediffusion_reference.png"


@pytest.fixture(autouse=True)
def _no_limit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (MAX_SIDE_ENV, MAX_PIXELS_ENV):
        monkeypatch.delenv(name, raising=False)


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
    no_model = types.SimpleNamespace()  # any attribute access (family, encoders, U-Net) would fail
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
