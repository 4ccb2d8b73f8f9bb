"""The nodes that take sizes refuse outputs above the library's limits before any encoding or sampling."""
from __future__ import annotations

from _helpers import require_node_api

require_node_api()  # the nodes import ComfyUI's comfy_api

import importlib
import types
from typing import Any

import pytest
import torch

from colorize.errors import SizeLimitError
from colorize.preprocess import MAX_PIXELS_ENV, MAX_SIDE_ENV, output_limits
from nodes import NODE_CLASSES as M
from nodes import sampler as node_sampler
from nodes import sketch as node_sketch
from nodes import widgets


@pytest.fixture(autouse=True)
def _no_limit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (MAX_SIDE_ENV, MAX_PIXELS_ENV):
        monkeypatch.delenv(name, raising=False)


class EncodingStarted(Exception):
    pass


def _no_encoding(*args: Any, **kwargs: Any) -> Any:
    raise EncodingStarted  # the size check must come first


def _stub_model() -> Any:
    config = types.SimpleNamespace(version="mult", unet=types.SimpleNamespace(context_dim=8))
    return types.SimpleNamespace(config=config, name="stub")


def test_the_size_widgets_stop_at_the_library_side_limit() -> None:
    assert widgets.MAX_SIZE == output_limits().side == 4096
    width, height = widgets.size_inputs("Output")
    for widget in (width, height):
        assert widget.max == widgets.MAX_SIZE
    assert "2048×2048 px by default" in width.tooltip and MAX_PIXELS_ENV in width.tooltip


def test_sketch_preprocess_refuses_an_area_above_the_limit() -> None:
    image = torch.ones(1, 64, 64, 3)
    with pytest.raises(SizeLimitError, match=r"output size 4096x4096 px: 16,777,216 pixels, above the limit"):
        M["ColorizeDiffusionSketchPreprocess"].execute(image, "auto", 4096, 4096)
    assert M["ColorizeDiffusionSketchPreprocess"].execute(image, "auto", 4096, 1024)[0].shape == (1, 1024, 4096, 3)


def test_sketch_hints_refuse_an_oversized_sketch_before_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_sketch, "encode_hints", _no_encoding)
    sketch = torch.zeros(1, 64, 8192, 3)  # an IMAGE straight from a loader, never through Sketch Preprocess
    with pytest.raises(SizeLimitError, match=r"output size 8192x64 px: the width is above the limit of 4096"):
        M["ColorizeDiffusionSketchHints"].execute(_stub_model(), sketch, 1.0)


def test_sampler_refuses_an_oversized_override_before_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_sampler, "encode_hints", _no_encoding)
    model = _stub_model()
    reference = types.SimpleNamespace(dim=8)
    hints = types.SimpleNamespace(model=model, size=(512, 512), sketch=torch.zeros(1, 3, 512, 512), strength=1.0)
    args = {"seed": 0, "steps": 2, "sampler": "dpm_solver", "scheduler": "auto", "reference_cfg": 4.0,
            "sketch_cfg": 1.0, "reference_strength": 1.0, "encoder_strength": 1.0, "middle_strength": 1.0,
            "low_strength": 1.0}
    with pytest.raises(SizeLimitError, match=r"output size 3072x3072 px: 9,437,184 pixels.*COLORIZE_MAX_PIXELS"):
        M["ColorizeDiffusionSampler"].execute(model, reference, hints, width=3072, height=3072, **args)
    monkeypatch.setenv(MAX_PIXELS_ENV, "3072x3072")  # raised: the check passes and the (stubbed) encoding starts
    with pytest.raises(EncodingStarted):
        M["ColorizeDiffusionSampler"].execute(model, reference, hints, width=3072, height=3072, **args)


def test_a_bad_or_raised_limit_variable_never_stops_the_pack_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        monkeypatch.setenv(MAX_SIDE_ENV, "big")
        assert importlib.reload(widgets).MAX_SIZE == 4096  # the nodes name the variable when they run
        monkeypatch.setenv(MAX_SIDE_ENV, "8192")
        assert importlib.reload(widgets).MAX_SIZE == 8192  # a raised limit reaches the widgets at start
    finally:
        monkeypatch.delenv(MAX_SIDE_ENV)
        importlib.reload(widgets)
