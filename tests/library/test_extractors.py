"""Line extractors (colorize.extractors): drawn images, polarity, sizes, official I/O facts, weights loading."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from colorize.errors import CheckpointError, InputError, LineExtractorWeightsError, WeightsMissingError
from colorize.extractors import (
    MODEL_SPECS,
    LineExtractor,
    extract_lines,
    lineart_standard,
    load_line_extractor,
    looks_inverted,
    sketch_keras,
    working_size,
)
from colorize.extractors.filters import crop, pad_to_multiple, reflect_pad
from colorize.preprocess import is_dark_on_light, prepare_sketch
from colorize.weights import hub_url, manifest_entry

H, W = 97, 131  # odd on purpose: not a multiple of any network's stride


def drawing(h: int = H, w: int = W) -> tuple[torch.Tensor, torch.Tensor]:
    """White paper with black strokes: a rectangle outline, a diagonal and a 1-px hair line."""
    img = torch.ones(1, 3, h, w)
    lines = torch.zeros(h, w, dtype=torch.bool)
    lines[20:22, 15 : w - 15] = True
    lines[h - 22 : h - 20, 15 : w - 15] = True
    lines[20 : h - 20, 15:17] = True
    lines[20 : h - 20, w - 17 : w - 15] = True
    for i in range(30, min(h, w) - 30):
        lines[i, i + 10 : i + 12] = True
    lines[h // 2, 30 : w - 30] = True
    img[:, :, lines] = 0.0
    return img, lines


def colour_drawing() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A flat red and a flat blue shape with dark outlines on white; returns image, outline, flat areas."""
    img = torch.ones(1, 3, H, W)
    outline = torch.zeros(H, W, dtype=torch.bool)
    flat = torch.zeros(H, W, dtype=torch.bool)
    for (t, l, b, r), colour in (((15, 10, 80, 60), (0.9, 0.15, 0.1)), ((25, 75, 70, 120), (0.2, 0.3, 0.85))):
        img[0, :, t:b, l:r] = torch.tensor(colour).view(3, 1, 1)
        outline[t:b, l:r] = True
        outline[t + 2 : b - 2, l + 2 : r - 2] = False
        flat[t + 12 : b - 12, l + 12 : r - 12] = True
    img[:, :, outline] = 0.05
    return img, outline, flat


def far_from(mask: torch.Tensor, distance: int) -> torch.Tensor:
    """Pixels at Chebyshev distance > ``distance`` from ``mask``."""
    grown = torch.nn.functional.max_pool2d(mask[None, None].float(), 2 * distance + 1, 1, distance)[0, 0]
    return grown == 0


# --- no-weight extractors --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["high_pass", "lineart_standard"])
def test_no_weight_extractor_finds_drawn_lines_black_on_white(method: str) -> None:
    img, lines = drawing()
    out = extract_lines(img, method)
    assert out.shape == (1, 3, H, W) and out.dtype == torch.float32
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    o = out[0, 0]
    assert float(o[lines].max()) < 0.75, "every drawn pixel is a (dark) line"
    assert torch.all(o[~lines] == 1.0), "everything else is paper"
    assert is_dark_on_light(out)


@pytest.mark.parametrize("method", ["high_pass", "lineart_standard"])
def test_no_weight_extractor_on_colour_image(method: str) -> None:
    img, outline, flat = colour_drawing()
    o = extract_lines(img, method)[0, 0]
    assert float(o[outline].mean()) < 0.5, "dark outlines become lines"
    assert torch.all(o[flat] == 1.0), "flat colour is paper"
    assert torch.all(o[far_from(outline, 6)] >= 0.99)




def _lineart_standard_numpy(img: np.ndarray, sigma: float = 6.0) -> np.ndarray:
    """Independent float64 re-derivation of A1111's lineart_standard (OpenCV float kernel: radius 4σ,
    BORDER_REFLECT_101 = numpy's "reflect"); returns the 8-bit intensity (lines bright)."""
    x = img.astype(np.float64)
    r = int(sigma * 4 * 2 + 1.5) // 2
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(x, ((r, r), (r, r), (0, 0)), mode="reflect")
    g = np.stack([np.convolve(row, k, mode="valid") for row in p.transpose(0, 2, 1).reshape(-1, p.shape[1])])
    g = g.reshape(p.shape[0], 3, -1).transpose(0, 2, 1)
    g = np.stack([np.convolve(col, k, mode="valid") for col in g.transpose(1, 2, 0).reshape(-1, p.shape[0])])
    g = g.reshape(x.shape[1], 3, x.shape[0]).transpose(2, 0, 1)
    intensity = np.min(g - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong))) if strong.size else 16.0
    return np.floor((intensity * 127).clip(0, 255))


def test_lineart_standard_matches_the_webui_formula() -> None:
    g = torch.Generator().manual_seed(0)
    img = colour_drawing()[0]
    img = (img * 0.8 + 0.2 * torch.rand(img.shape, generator=g))[..., :40, :53]
    img = (img * 255).round() / 255  # 8-bit input, as the official PIL path
    ours = lineart_standard(img)[0, 0].numpy()
    ref = 1.0 - _lineart_standard_numpy((img[0].permute(1, 2, 0).numpy() * 255).round()) / 255.0
    diff = np.abs(ours - ref)
    assert diff.max() <= 1.0 / 255 + 1e-6 and (diff > 1e-6).mean() < 0.01  # only floor() ties may differ
    assert torch.all(lineart_standard(torch.full((1, 3, 20, 20), 0.3)) == 1.0)  # nothing > 8: blank


# --- polarity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["high_pass", "lineart_standard"])
def test_inverted_sketch_is_detected_and_inverted_first(method: str) -> None:
    img, lines = drawing()
    inv = 1.0 - img
    assert looks_inverted(inv[0]) and not looks_inverted(img[0])
    both = extract_lines(torch.cat([img, inv]), method)
    assert torch.equal(both[0], both[1]), "auto: white-on-black gives the same lines as black-on-white"
    forced = extract_lines(inv, method, input_polarity="dark_on_light")[0, 0]
    assert float(forced[lines].min()) > 0.9, "without the inversion the strokes themselves are not lines"
    assert torch.equal(extract_lines(inv, method, input_polarity="light_on_dark"), both[1:])


def test_dark_colour_illustration_is_not_taken_for_an_inverted_sketch() -> None:
    g = torch.Generator().manual_seed(1)
    night = torch.rand(1, 3, 48, 64, generator=g) * 0.25
    night[:, 2] += 0.2  # a dark blue scene
    assert not is_dark_on_light(night) and not looks_inverted(night[0])


def test_extracted_lines_have_the_polarity_the_colorizer_expects() -> None:
    img, lines = drawing(64, 64)
    signed = prepare_sketch(extract_lines(img, "high_pass"), (64, 64))  # "auto" polarity
    assert torch.all(signed[0, 0][lines] > 0) and torch.all(signed[0, 0][~lines] == -1.0)


def test_working_resolution_keeps_the_output_size() -> None:
    img, lines = drawing()
    assert working_size(H, W, 48) == (48, 65) and working_size(H, W, None) == (H, W)
    out = extract_lines(img, "high_pass", resolution=48)
    assert out.shape == (1, 3, H, W)
    assert float(out[0, 0][lines].mean()) < float(out[0, 0][far_from(lines, 4)].mean()) - 0.3


# --- padding / cropping / network plumbing ----------------------------------------------------


def test_pad_to_multiple_and_crop_round_trip() -> None:
    x = torch.rand(2, 3, H, W)
    for m in (16, 256):
        padded, pad = pad_to_multiple(x, m)
        assert padded.shape[-2] % m == 0 and padded.shape[-1] % m == 0
        assert torch.equal(crop(padded, pad), x)
    small = torch.arange(35.0).view(1, 1, 5, 7)  # pads far wider than the image: mirrored repeatedly
    ref = np.pad(small[0, 0].numpy(), ((11, 0), (20, 3)), mode="reflect")
    assert np.array_equal(reflect_pad(small, (20, 3, 11, 0))[0, 0].numpy(), ref)


class _Toy(nn.Module):
    """Stand-in network: ``sign · channel mean`` of its input (plus a parameter for device/dtype)."""

    def __init__(self, sign: float = 1.0) -> None:
        super().__init__()
        self.sign = sign
        self.dummy = nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return self.sign * x.mean(1, keepdim=True) + self.dummy


@pytest.mark.parametrize("kind", ["anime2sketch", "manga_line"])
def test_network_path_pads_to_its_multiple_and_crops_back_in_place(kind: str) -> None:
    """With an identity network the extractor must return the drawing itself: no shift, no resize."""
    img, _ = drawing()
    net = _Toy()
    out = LineExtractor(kind, net)(img)
    m = MODEL_SPECS[kind].multiple
    assert len(net.seen) == 1 and net.seen[0][-2] % m == 0 and net.seen[0][-1] % m == 0
    assert net.seen[0][-2] - H < m and net.seen[0][-1] - W < m
    assert out.shape == (1, 3, H, W)
    torch.testing.assert_close(out, img, atol=1e-5, rtol=0)


def test_sketch_keras_path_feeds_channels_separately_and_keeps_lines_in_place() -> None:
    img, lines, _ = colour_drawing()
    net = _Toy(sign=-1.0)  # "line strength" = −high-pass: ink darker than its surroundings
    o = LineExtractor("sketch_keras", net)(img)[0, 0]
    assert net.seen == [(3, 1, 112, 144)]  # B·3 grey images, 97×131 padded to multiples of 16
    assert float(o[lines].mean()) < 0.3 and torch.all(o[far_from(lines, 12)] == 1.0)


def test_sketch_keras_io_follows_the_official_proceed() -> None:
    img = colour_drawing()[0]
    hp = sketch_keras.prepare(img)
    assert hp.shape == (3, 1, H, W)
    assert float(hp.max()) == 1.0  # divided by the image's maximum (over all channels)
    raw = torch.tensor([[0.05, 0.3, 2.0, 0.05], [0.02, -1.0, 0.0, 0.09], [0.0, 0.1, 0.5, 0.0]]).view(3, 1, 1, 4)
    out = sketch_keras.finish(raw, batch=1)
    p = raw.amax(0).view(-1)  # max over channels, < 0.1 cut, lines high
    p = torch.where(p < 0.1, torch.zeros_like(p), p)
    torch.testing.assert_close(out.view(-1), 1 - p.clamp(0, 1))
    official = 2 * p - 1  # the official [-1, 1] sketch (lines +1), where it lies in range
    torch.testing.assert_close(-(2 * out.view(-1) - 1), official.clamp(-1, 1))


# --- weights: real loading path ---------------------------------------------------------------


def _random_state_dict(kind: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = MODEL_SPECS[kind].build()
    for m in net.modules():  # non-trivial BatchNorm statistics, so a fill that skipped them would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, torch.Tensor], Path, Path]]:
    d = tmp_path_factory.mktemp("line_extractors")
    out = {}
    for i, kind in enumerate(MODEL_SPECS):
        sd = _random_state_dict(kind, i)
        pth, st = d / f"{kind}.pth", d / f"{kind}.safetensors"
        torch.save({"module." + k: v for k, v in sd.items()} if kind == "anime2sketch" else sd, pth)
        save_file(sd, str(st))
        out[kind] = (sd, pth, st)
    return out


@pytest.mark.parametrize("kind", list(MODEL_SPECS))
def test_model_extractor_loads_saved_weights_and_runs(kind: str, saved: dict) -> None:
    sd, pth, st = saved[kind]
    img, _ = drawing(33, 47)
    outs = []
    for path in (pth, st):
        ex = load_line_extractor(path)
        assert ex.kind == kind and ex.source == path.name
        got = ex.net.state_dict()
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
        assert not any(t.is_meta for t in got.values()) and not ex.net.training
        out = ex(img)
        assert out.shape == (1, 3, 33, 47) and torch.isfinite(out).all()
        assert float(out.min()) >= 0 and float(out.max()) <= 1
        outs.append(out)
    assert torch.equal(outs[0], outs[1])


def test_loading_casts_and_defaults_missing_batchnorm_counters(saved: dict, tmp_path: Path) -> None:
    sd, _, _ = saved["manga_line"]
    old = {k: v.half() for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # an old/fp16 file
    path = tmp_path / "erika_fp16.safetensors"
    save_file(old, str(path))
    ex = load_line_extractor(path, kind="lineart_denoise", dtype=torch.float64)
    assert ex.dtype == torch.float64
    got = ex.net.state_dict()
    key = "block4.model.3.conv1.model.2.weight"
    assert torch.equal(got[key], sd[key].half().double())
    assert int(got["block0.model.0.conv1.model.0.num_batches_tracked"]) == 0


def test_model_names_resolve_through_the_manifest(saved: dict, tmp_path: Path) -> None:
    for kind, spec in MODEL_SPECS.items():
        entry = manifest_entry(spec.manifest_name)
        assert entry["kind"] == "line_extractor" and entry["models_subdir"] == "lineart"
        with pytest.raises(WeightsMissingError) as e:
            load_line_extractor(kind, models_dir=tmp_path)
        assert hub_url(entry) in str(e.value)
    assert hub_url(manifest_entry("lineart-sketchkeras")).endswith("tellurion/line_extractor/resolve/main/model.pth")
    assert hub_url(manifest_entry("lineart-anime2sketch")).endswith("lllyasviel/Annotators/resolve/main/netG.pth")
    assert hub_url(manifest_entry("lineart-manga")).endswith("lllyasviel/Annotators/resolve/main/erika.pth")
    entry = manifest_entry("lineart-sketchkeras")
    target = tmp_path / entry["models_subdir"] / entry["filename"]
    target.parent.mkdir()
    target.write_bytes(saved["sketch_keras"][1].read_bytes())
    for name in ("sketch_keras", "lineart_keras", "lineart-sketchkeras"):
        assert load_line_extractor(name, models_dir=tmp_path).kind == "sketch_keras"
    img, _ = drawing(40, 40)
    assert extract_lines(img, "lineart_keras", models_dir=tmp_path).shape == (1, 3, 40, 40)


# --- foreign and damaged files ----------------------------------------------------------------


def test_foreign_state_dicts_give_clear_errors(saved: dict, tmp_path: Path) -> None:
    controlnet_lineart = {"model0.1.weight": torch.zeros(64, 3, 7, 7), "model0.1.bias": torch.zeros(64)}
    torch.save(controlnet_lineart, tmp_path / "sk_model.pth")
    with pytest.raises(LineExtractorWeightsError, match="not line-extractor weights.*sk_model.*SketchKeras"):
        load_line_extractor(tmp_path / "sk_model.pth")
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 320, 3, 3)}, str(tmp_path / "mult.safetensors"))
    with pytest.raises(LineExtractorWeightsError, match="ColorizeDiffusion"):
        load_line_extractor(tmp_path / "mult.safetensors")

    sd, pth, _ = saved["sketch_keras"]
    with pytest.raises(LineExtractorWeightsError, match="SketchKeras weights, but 'anime2sketch'"):
        load_line_extractor(pth, kind="anime2sketch")

    broken = dict(sd)
    del broken["upblock_2.6.weight"]
    broken["last_conv.weight"] = torch.zeros(1, 64, 5, 5)
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as e:
        load_line_extractor(tmp_path / "broken.pth")
    msg = str(e.value)
    assert "broken.pth" in msg and "SketchKeras" in msg
    assert "upblock_2.6.weight" in msg and "last_conv.weight" in msg and "extra.weight" in msg


def test_no_weight_names_are_not_files() -> None:
    with pytest.raises(ValueError, match="needs no weights"):
        load_line_extractor("lineart_standard")
    with pytest.raises(ValueError, match="unknown line extractor"):
        extract_lines(torch.ones(1, 3, 16, 16), "canny")
    with pytest.raises(InputError, match="input_polarity"):
        extract_lines(torch.ones(1, 3, 16, 16), "high_pass", input_polarity="inverted")
