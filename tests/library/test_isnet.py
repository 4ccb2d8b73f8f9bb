"""ISNetDIS (the apps' anime segmentation network) and the official ``proceed`` around it.

The full-size network is only built on the meta device (its layout against the official one); everything that
runs uses the tiny widths, which load through the same code path. Numerical parity with the official code is
the job of the ``isnet`` / ``rsu_blocks`` parity fixtures (one test below runs them when they are present).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _helpers import REPO, randomize, skip_or_fail
from safetensors.torch import save_file

from colorize.errors import CheckpointError, InputError
from colorize.masks import (
    TINY_ISNET,
    ISNetConfig,
    ISNetDIS,
    anime_mask,
    background_reference,
    infer_isnet_config,
    is_isnet_state_dict,
    isnet_from_state_dict,
    isnet_layout,
    line_art_mask,
    load_isnet,
    threshold_mask,
)
from colorize.masks import anime_segment as seg

NUM_PARAMETERS = 44_046_790


def mask_fixtures_dir() -> Path:
    """``$COLORIZE_MASK_FIXTURES``, or ``official-masks`` next to ``$COLORIZE_FIXTURES`` / in ``../shared/fixtures``."""
    candidates = [Path(p) for p in (os.environ.get("COLORIZE_MASK_FIXTURES"),) if p]
    if os.environ.get("COLORIZE_FIXTURES"):
        candidates.append(Path(os.environ["COLORIZE_FIXTURES"]).parent / "official-masks")
    candidates.append(REPO.parent / "shared" / "fixtures" / "official-masks")
    for c in candidates:
        if (c / "isnet_layout.json").is_file():
            return c
    skip_or_fail("anime segmentation fixtures not found: set COLORIZE_MASK_FIXTURES to the project's "
                 "shared/fixtures/official-masks or place it at ../shared/fixtures/official-masks")


@pytest.fixture(scope="module")
def tiny() -> ISNetDIS:
    torch.manual_seed(0)
    net = ISNetDIS(TINY_ISNET)
    randomize(net, seed=1)
    g = torch.Generator().manual_seed(2)
    for name, buf in net.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
        elif name.endswith("running_var"):
            buf.copy_(0.5 + torch.rand(buf.shape, generator=g))
    return net.eval()


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_thread):  # type: ignore[no-untyped-def]
    yield


# ---------------------------------------------------------------------------------------------
# Layout, configs, key detection
# ---------------------------------------------------------------------------------------------


def test_full_size_network_has_the_official_keys_shapes_and_order() -> None:
    layout = json.loads((mask_fixtures_dir() / "isnet_layout.json").read_text())
    with torch.device("meta"):
        net = ISNetDIS()
    mine = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    assert mine == [(k, list(s)) for k, s in layout["keys"].items()]
    assert len(mine) == layout["num_state_dict_entries"] == 798
    assert sum(p.numel() for p in net.parameters()) == layout["num_parameters"] == NUM_PARAMETERS
    assert list(isnet_layout()) == list(layout["keys"])


def test_parameter_count_and_config_inference_of_the_released_layout() -> None:
    with torch.device("meta"):
        net = ISNetDIS()
    assert sum(p.numel() for p in net.parameters()) == NUM_PARAMETERS
    assert not any(k.startswith(("outconv", "pool_in")) for k in net.state_dict())
    assert infer_isnet_config(isnet_layout()) == ISNetConfig()
    assert infer_isnet_config(isnet_layout(TINY_ISNET)) == TINY_ISNET == ISNetConfig.tiny()


def test_config_rejects_wrong_stage_counts_and_widths() -> None:
    with pytest.raises(ValueError, match="6 widths"):
        ISNetConfig(encoder_mid=(1, 2, 3))
    with pytest.raises(ValueError, match="positive"):
        ISNetConfig(stem=0)


def test_key_detection_accepts_prefixes_and_rejects_other_networks() -> None:
    keys = list(isnet_layout(TINY_ISNET))
    assert is_isnet_state_dict(keys)
    assert is_isnet_state_dict(["module." + k for k in keys])
    assert is_isnet_state_dict(["net." + k for k in keys] + ["gt_encoder.conv_in.weight"])
    assert not is_isnet_state_dict([k for k in keys if not k.startswith("side1.")])
    assert not is_isnet_state_dict(["image_encoder.patch_embed.proj.weight", "conv_in.weight"])


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def test_tiny_round_trip_through_a_file(tiny: ISNetDIS, tmp_path: Path) -> None:
    sd = {k: v.clone() for k, v in tiny.state_dict().items() if not k.endswith("num_batches_tracked")}
    plain, prefixed = tmp_path / "isnet.safetensors", tmp_path / "module.safetensors"
    save_file(sd, str(plain))
    save_file({"module." + k: v.half() for k, v in sd.items()}, str(prefixed))
    x = torch.rand(2, 3, 37, 50)
    with torch.no_grad():
        expected = tiny(x)
        loaded = load_isnet(plain)
        assert not loaded.training and next(loaded.parameters()).dtype == torch.float32
        assert loaded.config == TINY_ISNET
        assert torch.equal(loaded(x), expected)
        half = load_isnet(prefixed)  # fp16 file: loaded as float32
        assert next(half.parameters()).dtype == torch.float32
        assert (half(x) - expected).abs().max() < 2e-2
    assert infer_isnet_config(sd) == TINY_ISNET


def test_loading_refuses_other_files_and_wrong_shapes(tiny: ISNetDIS, tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    save_file({"image_encoder.pos_embed": torch.zeros(1, 2)}, str(other))
    with pytest.raises(CheckpointError, match="not an ISNetDIS"):
        load_isnet(other)
    sd = dict(tiny.state_dict())
    sd["stage3.rebnconv2.conv_s1.weight"] = torch.zeros(1, 1, 3, 3)
    with pytest.raises(CheckpointError, match="wrong shape"):
        isnet_from_state_dict(sd)
    sd = dict(tiny.state_dict())
    del sd["side4.bias"]
    with pytest.raises(CheckpointError, match="missing"):
        isnet_from_state_dict(sd)


# ---------------------------------------------------------------------------------------------
# The network on odd sizes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (13, 21), (50, 74)])
def test_forward_keeps_any_input_size(tiny: ISNetDIS, hw: tuple[int, int]) -> None:
    with torch.no_grad():
        feats = tiny.forward_features(torch.rand(1, 3, *hw))
    assert feats["mask"].shape == (1, 1, *hw)
    assert feats["side1"].shape[-2:] == ((hw[0] + 1) // 2, (hw[1] + 1) // 2)
    assert ((feats["mask"] > 0) & (feats["mask"] < 1)).all()
    assert torch.equal(feats["mask"], torch.sigmoid(F.interpolate(feats["side1"], hw, mode="bilinear")))


# ---------------------------------------------------------------------------------------------
# proceed and its wrappers
# ---------------------------------------------------------------------------------------------


def test_proceed_without_output_size_on_the_no_crop_path_is_a_named_error(tiny: ISNetDIS) -> None:
    x = torch.rand(1, 3, 20, 16) * 2 - 1
    with pytest.raises(InputError, match="th"):
        seg.proceed(tiny, x, canvas=32, crop=False)
    with pytest.raises(InputError, match="th"):
        seg.proceed(tiny, x, th=20, canvas=32, crop=False)
    with pytest.raises(InputError, match="canvas"):
        seg.proceed(tiny, x, canvas=0)
    with pytest.raises(InputError, match="too thin"):
        seg.proceed(tiny, torch.rand(1, 3, 1, 200), canvas=64)


def test_crop_path_reproduces_the_one_pixel_short_window(tiny: ISNetDIS) -> None:
    x = torch.rand(1, 3, 98, 60) * 2 - 1
    with torch.no_grad():
        steps = seg.proceed_steps(tiny, x, canvas=64)
    assert steps.window == (0, 12, 63, 39)  # int(98 * (64 / 98)) == 63: the long side is one short
    assert steps.mask.shape == (1, 1, 98, 60)
    canvas = steps.net_input
    assert torch.equal(canvas[:, :, 63], torch.ones_like(canvas[:, :, 63]))  # the inverted -1 padding
    assert torch.equal(canvas[:, :, :, :12], torch.ones_like(canvas[:, :, :, :12]))
    resized = F.interpolate(x, scale_factor=64 / 98, mode="bicubic")
    assert torch.allclose(canvas[:, :, :63, 12:51], 1 - (resized + 1) / 2)


def test_no_crop_path_feeds_the_network_uninverted(tiny: ISNetDIS) -> None:
    x = torch.rand(1, 3, 30, 22) * 2 - 1
    with torch.no_grad():
        steps = seg.proceed_steps(tiny, x, 40, 28, canvas=32, crop=False)
    assert torch.equal(steps.net_input, F.interpolate(x, (32, 32), mode="bicubic"))
    assert steps.mask.shape == (1, 1, 40, 28) and steps.window == (0, 0, 32, 32)


@pytest.mark.parametrize("hw", [(98, 60), (49, 33), (37, 53)])
def test_wrappers_return_exactly_the_input_size_in_unit_range(tiny: ISNetDIS, hw: tuple[int, int]) -> None:
    images = torch.rand(2, 3, *hw)
    for mask in (anime_mask(tiny, images, canvas=64), anime_mask(tiny, images, canvas=64, dilate=seg.DILATE_XL),
                 line_art_mask(tiny, images, canvas=64), line_art_mask(tiny, images, canvas=64, polarity="auto")):
        assert mask.shape == (2, *hw) and mask.dtype == torch.float32
        assert mask.min() >= 0 and mask.max() <= 1


def test_wrappers_match_the_official_calls_and_take_gray_and_alpha(tiny: ISNetDIS) -> None:
    images = torch.rand(1, 3, 45, 31)
    with torch.no_grad():
        ref = seg.reference_mask(tiny, images * 2 - 1, canvas=48)
        sk = seg.sketch_mask(tiny, images * 2 - 1, 45, 31, canvas=48)
    assert torch.equal(anime_mask(tiny, images, canvas=48), ref[:, 0])
    assert torch.equal(line_art_mask(tiny, images, canvas=48), sk[:, 0])
    assert torch.equal(line_art_mask(tiny, 1 - images, canvas=48, polarity="light_lines"),
                       line_art_mask(tiny, images, canvas=48))
    rgba = torch.cat([images, torch.zeros(1, 1, 45, 31)], 1)
    assert torch.equal(anime_mask(tiny, rgba, canvas=48), anime_mask(tiny, images, canvas=48))
    gray = images[:, :1]
    assert torch.equal(anime_mask(tiny, gray, canvas=48), anime_mask(tiny, gray.expand(-1, 3, -1, -1), canvas=48))
    with pytest.raises(InputError, match="channels"):
        anime_mask(tiny, torch.rand(1, 2, 8, 8))


def test_a_fully_white_image_gives_a_mask_of_its_size(tiny: ISNetDIS) -> None:
    white = torch.ones(1, 3, 98, 60)
    for mask in (anime_mask(tiny, white, canvas=64), line_art_mask(tiny, white, canvas=64)):
        assert mask.shape == (1, 98, 60) and torch.isfinite(mask).all()
        assert mask.min() >= 0 and mask.max() <= 1


# ---------------------------------------------------------------------------------------------
# Dilation, threshold, background reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [seg.DILATE_SD, seg.DILATE_XL, 3])
def test_dilation_grows_one_pixel_into_a_centred_k_square(k: int) -> None:
    m = torch.zeros(1, 1, 41, 45)
    m[0, 0, 20, 22] = 0.7
    m[0, 0, 0, 0] = 0.3
    out = seg.dilate_mask(m, k)
    r = k // 2
    expected = torch.zeros_like(m)
    expected[0, 0, :r + 1, :r + 1] = 0.3
    expected[0, 0, 20 - r:21 + r, 22 - r:23 + r] = 0.7
    assert out.shape == m.shape and torch.equal(out, expected)


def test_dilation_kernel_zero_or_one_is_none_and_even_kernels_are_refused(tiny: ISNetDIS) -> None:
    m = torch.rand(1, 1, 9, 9)
    assert seg.dilate_mask(m, 0) is m and seg.dilate_mask(m, 1) is m
    for bad in (2, 10, -1):
        with pytest.raises(InputError, match="odd"):
            seg.dilate_mask(m, bad)
    x = torch.rand(1, 3, 33, 27) * 2 - 1
    with torch.no_grad():
        plain = seg.reference_mask(tiny, x, canvas=32, dilate=0)
        sd = seg.reference_mask(tiny, x, canvas=32)
    assert torch.equal(sd, F.max_pool2d(plain, 11, stride=1, padding=5)) and (sd >= plain).all()


def test_threshold_and_background_reference() -> None:
    mask = torch.tensor([[[[0.1, 0.5], [0.49, 0.9]]]])
    assert torch.equal(threshold_mask(mask, 0.5), torch.tensor([[[[0.0, 0.5], [0.0, 0.9]]]]))
    image = -torch.ones(1, 3, 2, 2) * 0.5
    bg = background_reference(image, mask, 0.5)
    keep = (mask < 0.5).expand_as(image)
    assert torch.equal(bg[keep], image[keep]) and torch.equal(bg[~keep], torch.ones_like(bg[~keep]))
    assert torch.equal(background_reference(image, mask[:, 0], 0.5), bg)
    with pytest.raises(InputError):
        background_reference(image, torch.zeros(1, 1, 3, 3), 0.5)


def test_latent_mask_is_the_bicubic_eighth() -> None:
    m = torch.rand(1, 1, 75, 57)
    out = seg.latent_mask(m)
    assert out.shape == (1, 1, 9, 7)
    assert torch.equal(out, F.interpolate(m, scale_factor=0.125, mode="bicubic"))


# ---------------------------------------------------------------------------------------------
# Parity with the official code (the fixtures, when present)
# ---------------------------------------------------------------------------------------------


def test_the_anime_segmentation_fixtures_pass() -> None:
    from colorize.parity.core import run_directory

    results = run_directory(mask_fixtures_dir())
    assert {r.kind for r in results} >= {"isnet", "rsu_blocks"}
    assert all(r.passed for r in results), [r.line() for r in results if not r.passed]


def test_inspect_names_the_anime_and_the_sketch_segmenter(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from colorize.checkpoint.inspection import main as inspect_main
    from colorize.tiny import write_tiny_weights

    paths = write_tiny_weights(tmp_path, versions=("mult",), masks=True)
    assert inspect_main([str(paths["isnet-anime"])]) == 0
    out = capsys.readouterr().out
    assert "ISNet mask network" in out and "the anime segmenter" in out and "OK" in out
    assert inspect_main([str(paths["isnet-sketch"])]) == 0
    assert "the sketch segmenter (ISNet-sketch)" in capsys.readouterr().out
