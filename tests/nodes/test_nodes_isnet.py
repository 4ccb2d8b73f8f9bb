"""The ISNet mask nodes: masks of the input's exact size in [0, 1] from the tiny files make-tiny-weights writes, a
white image is no error, the model folder and the first-use download."""
from __future__ import annotations

from _helpers import require_node_api

require_node_api()  # the nodes import ComfyUI's comfy_api

from pathlib import Path

import pytest
import torch

import colorize.weights as w
from colorize.masks import anime_mask, line_art_mask, load_isnet
from colorize.tiny import write_tiny_weights
from nodes import NODE_CLASSES as M
from nodes import models as node_models

ANIME, SKETCH = "ColorizeDiffusionAnimeMask", "ColorizeDiffusionSketchMaskISNet"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("isnet-models")
    write_tiny_weights(d, versions=("mult",), masks=True)
    return d


@pytest.fixture
def models(tiny_models: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(w.MODELS_DIR_ENV, str(tiny_models))
    monkeypatch.setenv(w.NO_DOWNLOAD_ENV, "1")
    return tiny_models


@pytest.mark.parametrize("height, width", [(98, 60), (33, 77), (64, 64)])
def test_anime_mask_is_the_images_size_and_the_librarys_mask(models: Path, height: int, width: int) -> None:
    image = torch.rand(2, height, width, 3, generator=torch.Generator().manual_seed(height))
    mask = M[ANIME].execute("isnetis.safetensors", image, 0.0, 5, 64)[0]
    assert mask.shape == (2, height, width) and 0 <= mask.min() and mask.max() <= 1
    net = load_isnet(models / "isnet" / "isnetis.safetensors")
    expected = anime_mask(net, image.permute(0, 3, 1, 2), canvas=64, dilate=11)
    torch.testing.assert_close(mask, expected, rtol=0, atol=1e-6)


def test_sketch_mask_is_the_images_size_and_thresholded(models: Path) -> None:
    image = torch.ones(1, 75, 50, 3)
    image[:, 20:55, 24:26] = 0  # a line
    soft = M[SKETCH].execute("sketch-segment.safetensors", image, 0.0, "dark_lines", 64)[0]
    assert soft.shape == (1, 75, 50) and 0 <= soft.min() and soft.max() <= 1
    net = load_isnet(models / "isnet" / "sketch-segment.safetensors")
    torch.testing.assert_close(soft, line_art_mask(net, image.permute(0, 3, 1, 2), canvas=64), rtol=0, atol=1e-6)
    cut = float(soft.median())
    hard = M[SKETCH].execute("sketch-segment.safetensors", image, cut, "dark_lines", 64)[0]
    assert torch.equal(hard, torch.where(soft < cut, torch.zeros_like(soft), soft))


def test_a_white_image_gives_an_empty_mask_not_an_error(models: Path) -> None:
    for node, name in ((ANIME, "isnetis.safetensors"), (SKETCH, "sketch-segment.safetensors")):
        args = (5, 64) if node == ANIME else ("auto", 64)
        images = torch.ones(2, 40, 30, 3)
        images[1, 10:30, 14:16] = 0  # the second image has a line: it is segmented
        mask = M[node].execute(name, images, 0.0, *args)[0]
        assert mask.shape == (2, 40, 30) and torch.equal(mask[0], torch.zeros(40, 30))
        assert mask[1].max() > 0


def test_the_files_live_in_models_isnet_and_are_offered(models: Path) -> None:
    assert "isnet" in node_models.PACK_FOLDERS
    assert {"isnetis.safetensors", "sketch-segment.safetensors"} <= set(node_models.list_files("isnet"))


def test_a_missing_file_names_itself_the_folder_and_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(w.MODELS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(w.NO_DOWNLOAD_ENV, "1")
    with pytest.raises(w.WeightsMissingError) as e:
        M[ANIME].execute("isnetis.safetensors", torch.ones(1, 8, 8, 3), 0.0, 5, 64)
    msg = str(e.value)
    assert "isnetis.safetensors" in msg and str(tmp_path / "isnet") in msg and "COLORIZE_NO_DOWNLOAD" in msg
    assert "https://huggingface.co/tellurion/line_extractor/resolve/main/isnetis.safetensors" in msg
