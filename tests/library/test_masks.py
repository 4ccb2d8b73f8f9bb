"""Foreground masks: the weight-free sketch mask, the SAM wrapper, previews.

Sketch masks are checked on drawn shapes against expectations computed from the drawing
itself; morphology and the flood fill against naive loops / BFS; SAM against
segment_anything's own ``SamPredictor`` on a tiny random model.
"""
from __future__ import annotations

import collections
import json
import pickle
import re
import time
import warnings
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from colorize import weights as w
from colorize.errors import CheckpointError, SamWeightsError
from colorize.masks import (
    SAM_VARIANTS,
    build_tiny_sam,
    centre_prompt,
    dilate,
    erode,
    flood_from_border,
    infer_sam_variant,
    load_sam,
    overlay_masks,
    sam_foreground_mask,
    sam_from_state_dict,
    sketch_foreground_mask,
)
from colorize.masks.sam import sam_input

pytestmark = pytest.mark.usefixtures("single_thread")


# --- drawing helpers ---------------------------------------------------------------------------


def paper(h: int = 64, w: int = 64) -> torch.Tensor:
    """A white (1, 3, h, w) page."""
    return torch.ones(1, 3, h, w)


def rect_outline(img: torch.Tensor, y0: int, x0: int, y1: int, x1: int, t: int = 1) -> torch.Tensor:
    """Draw a black axis-aligned outline (inclusive corners, thickness t) in place."""
    img[..., y0 : y0 + t, x0 : x1 + 1] = 0
    img[..., y1 - t + 1 : y1 + 1, x0 : x1 + 1] = 0
    img[..., y0 : y1 + 1, x0 : x0 + t] = 0
    img[..., y0 : y1 + 1, x1 - t + 1 : x1 + 1] = 0
    return img


def filled(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> torch.Tensor:
    m = torch.zeros(1, h, w)
    m[:, y0 : y1 + 1, x0 : x1 + 1] = 1
    return m


def diamond_points(cy: int, cx: int, r: int) -> list[tuple[int, int]]:
    """The 1-pixel, 8-connected outline |y - cy| + |x - cx| = r, edge by edge (top→right first)."""
    pts = []
    for i in range(r):
        pts.append((cy - r + i, cx + i))  # top → right
    for i in range(r):
        pts.append((cy + i, cx + r - i))  # right → bottom
    for i in range(r):
        pts.append((cy + r - i, cx - i))  # bottom → left
    for i in range(r):
        pts.append((cy - i, cx - r + i))  # left → top
    return pts


def draw(img: torch.Tensor, pts: list[tuple[int, int]]) -> torch.Tensor:
    for y, x in pts:
        img[..., y, x] = 0
    return img


# --- morphology and flood fill vs naive references ---------------------------------------------


def naive_dilate(x: torch.Tensor, size: int, reflect: bool) -> torch.Tensor:
    hi = size // 2
    lo = size - 1 - hi
    if reflect:
        lo, hi = hi, lo
    out = torch.zeros_like(x)
    _, h, w_ = x.shape
    for i in range(h):
        for j in range(w_):
            out[:, i, j] = x[:, max(0, i - lo) : i + hi + 1, max(0, j - lo) : j + hi + 1].flatten(1).any(1)
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("reflect", [False, True])
def test_dilate_erode_match_naive_square(size: int, reflect: bool) -> None:
    g = torch.Generator().manual_seed(size)
    x = torch.rand(2, 13, 17, generator=g) > 0.9
    ref = naive_dilate(x, size, reflect)
    assert torch.equal(dilate(x, size, reflect), ref)
    assert torch.equal(dilate(x.float(), size, reflect), ref.float())
    y = torch.rand(2, 13, 17, generator=g) > 0.2
    assert torch.equal(erode(y, size, reflect), ~naive_dilate(~y, size, reflect))


def bfs(free: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    h, w_ = free.shape
    out = seeds & free
    q = deque(zip(*np.nonzero(out)))
    while q:
        i, j = q.popleft()
        for a, b in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
            if 0 <= a < h and 0 <= b < w_ and free[a, b] and not out[a, b]:
                out[a, b] = True
                q.append((a, b))
    return out


def test_flood_fill_matches_bfs() -> None:
    rng = np.random.default_rng(0)
    for trial in range(40):
        h, w_ = (int(v) for v in rng.integers(1, 30, 2))
        free = rng.random((h, w_)) > rng.random() * 0.6
        seeds = rng.random((h, w_)) > 0.95
        if trial % 2:
            seeds[:] = False
            seeds[[0, -1], :] = True
            seeds[:, [0, -1]] = True
        got = flood_from_border(torch.from_numpy(free)[None], torch.from_numpy(seeds)[None])[0].numpy()
        assert (got == bfs(free, seeds)).all(), trial


def test_flood_fill_follows_a_long_spiral() -> None:
    """A corridor with many turns: the run-based fill must still reach its far end."""
    n = 41
    wall = np.zeros((n, n), dtype=bool)
    for k in range(0, n // 2, 2):  # concentric square walls, each with one door alternating sides
        wall[k, k : n - k] = wall[n - 1 - k, k : n - k] = True
        wall[k : n - k, k] = wall[k : n - k, n - 1 - k] = True
        door = (k, n // 2) if (k // 2) % 2 == 0 else (n - 1 - k, n // 2)
        wall[door] = False
    free = ~wall
    seeds = np.zeros_like(free)
    seeds[0, n // 2] = True
    got = flood_from_border(torch.from_numpy(free)[None], torch.from_numpy(seeds)[None])[0].numpy()
    assert (got == bfs(free, seeds)).all()
    assert got[n // 2, n // 2]


# --- sketch mask ------------------------------------------------------------------------------


def test_closed_outline_gives_filled_interior() -> None:
    img = rect_outline(paper(), 10, 12, 50, 45, t=2)
    mask = sketch_foreground_mask(img, gap=4)
    assert mask.shape == (1, 64, 64) and mask.dtype == torch.float32
    assert torch.equal(mask, filled(64, 64, 10, 12, 50, 45))


@pytest.mark.parametrize("gap", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("shape", ["horizontal", "vertical", "diagonal"])
def test_gaps_up_to_width_are_bridged_and_wider_ones_leak(gap: int, shape: str) -> None:
    """Guarantee: a break of ≤ gap missing pixels is closed; gap + 1 lets the background in."""
    for missing, should_fill in ((gap, True), (gap + 1, False)):
        if shape == "diagonal":
            img = paper(72, 72)
            pts = diamond_points(36, 36, 28)
            pts = pts[:8] + pts[8 + missing :]  # break on the top→right diagonal edge
            img = draw(img, pts)
            centre = (36, 36)
        else:
            img = rect_outline(paper(), 8, 8, 55, 55, t=1)
            if shape == "horizontal":
                img[..., 8, 30 : 30 + missing] = 1.0  # break in the top edge
            else:
                img[..., 30 : 30 + missing, 55] = 1.0  # break in the right edge
            centre = (32, 32)
        mask = sketch_foreground_mask(img, gap=gap)[0]
        if should_fill:
            assert mask[centre] == 1, f"{shape} break of {missing} px not bridged with gap={gap}"
            if shape != "diagonal":
                interior = filled(64, 64, 8 + gap + 1, 8 + gap + 1, 55 - gap - 1, 55 - gap - 1)[0].bool()
                assert bool(mask[interior].all())
                assert mask[~filled(64, 64, 8, 8, 55, 55)[0].bool()].sum() == 0
        else:
            assert mask[centre] == 0, f"{shape} break of {missing} px bridged with gap={gap}"
            ink = img[0, 0] < 0.5
            assert bool(mask[ink].all()), "the lines themselves stay foreground"
            assert mask.mean() < 0.25


def test_gap_zero_bridges_nothing() -> None:
    img = rect_outline(paper(), 8, 8, 55, 55)
    assert sketch_foreground_mask(img, gap=0)[0, 32, 32] == 1
    img[..., 8, 30] = 1.0
    assert sketch_foreground_mask(img, gap=0)[0, 32, 32] == 0


def test_empty_sketch_gives_empty_mask_and_warning() -> None:
    blank = paper(32, 40)
    with pytest.warns(UserWarning, match=r"no line pixels in batch item\(s\) \[0\]"):
        mask = sketch_foreground_mask(blank)
    assert mask.shape == (1, 32, 40) and mask.sum() == 0
    # Only the empty item of a batch is reported; the other keeps its mask.
    shape = rect_outline(paper(32, 40), 4, 4, 27, 35)
    with pytest.warns(UserWarning, match=r"\[1\]"):
        both = sketch_foreground_mask(torch.cat([shape, blank]))
    assert torch.equal(both[0], filled(32, 40, 4, 4, 27, 35)[0]) and both[1].sum() == 0
    # Empty even if no edge seeds the background: no lines means no foreground.
    with pytest.warns(UserWarning):
        assert sketch_foreground_mask(blank, edges=()).sum() == 0


def test_no_warning_for_a_real_sketch() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sketch_foreground_mask(rect_outline(paper(), 5, 5, 40, 40))


def test_outline_on_the_image_border() -> None:
    img = rect_outline(paper(), 0, 0, 40, 63, t=1)  # top, left and right sides on the border
    assert torch.equal(sketch_foreground_mask(img, gap=3), filled(64, 64, 0, 0, 40, 63))


def test_figure_cut_by_the_bottom_edge() -> None:
    """A U open at the bottom border: background floods in unless the bottom edge is left out."""
    img = paper()
    img[..., 10, 10:54] = 0  # top
    img[..., 10:64, 10] = 0  # left side down to the border
    img[..., 10:64, 53] = 0  # right side down to the border
    assert sketch_foreground_mask(img)[0, 40, 32] == 0
    mask = sketch_foreground_mask(img, edges=("top", "left", "right"))
    assert torch.equal(mask, filled(64, 64, 10, 10, 63, 53))
    with pytest.raises(ValueError, match="unknown edges"):
        sketch_foreground_mask(img, edges=("up",))


def test_multiple_shapes_and_nesting() -> None:
    img = rect_outline(paper(64, 96), 6, 6, 30, 30, t=2)
    img = draw(img, diamond_points(40, 70, 15))
    img = rect_outline(img, 40, 8, 60, 40, t=1)
    img = rect_outline(img, 46, 16, 54, 30, t=1)  # nested inside the previous one
    mask = sketch_foreground_mask(img, gap=2)[0]
    expected = filled(64, 96, 6, 6, 30, 30)[0] + filled(64, 96, 40, 8, 60, 40)[0]
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(96), indexing="ij")
    expected += ((yy - 40).abs() + (xx - 70).abs() <= 15).float()
    assert torch.equal(mask, expected.clamp(max=1))


def test_polarity_and_channels() -> None:
    dark = rect_outline(paper(), 10, 10, 50, 50)
    ref = sketch_foreground_mask(dark)
    light = 1.0 - dark
    assert torch.equal(sketch_foreground_mask(light, polarity="light_lines"), ref)
    assert torch.equal(sketch_foreground_mask(torch.cat([dark, light]), polarity="auto"), ref.expand(2, -1, -1))
    assert torch.equal(sketch_foreground_mask(dark[:, :1]), ref)
    # Wrong polarity: white paper read as light lines is all ink, so all foreground.
    assert sketch_foreground_mask(paper(), polarity="light_lines").sum() == 64 * 64
    with pytest.raises(ValueError, match="polarity"):
        sketch_foreground_mask(dark, polarity="bright")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        sketch_foreground_mask(dark[0])


def test_line_threshold_selects_faint_lines() -> None:
    img = rect_outline(paper(), 10, 10, 50, 50)
    img[img < 0.5] = 0.7  # faint grey lines: ink 0.3
    with pytest.warns(UserWarning):
        assert sketch_foreground_mask(img, line_threshold=0.5).sum() == 0
    assert torch.equal(sketch_foreground_mask(img, line_threshold=0.25), filled(64, 64, 10, 10, 50, 50))


def test_dilation_erosion_and_feather() -> None:
    img = rect_outline(paper(), 20, 20, 40, 40)
    assert torch.equal(sketch_foreground_mask(img, dilation=3), filled(64, 64, 17, 17, 43, 43))
    assert torch.equal(sketch_foreground_mask(img, erosion=2), filled(64, 64, 22, 22, 38, 38))
    hard = sketch_foreground_mask(img)
    soft = sketch_foreground_mask(img, feather=2.0)
    assert soft.min() >= 0 and soft.max() <= 1
    edge = (soft > 0.01) & (soft < 0.99)
    assert edge.any() and torch.equal(soft[edge.logical_not()].round(), hard[edge.logical_not()])
    torch.testing.assert_close(soft.sum(), hard.sum())  # a normalised blur keeps the area
    assert soft[0, 30, 20] > 0.5 > soft[0, 30, 19]  # the edge stays where it was


def test_sketch_mask_speed_1024() -> None:
    """Brief: < ~1 s for a 1024² sketch on CPU (asserted with headroom for a loaded machine)."""
    img = paper(1024, 1024)
    yy, xx = torch.meshgrid(torch.arange(1024), torch.arange(1024), indexing="ij")
    r = ((yy - 512) ** 2 + (xx - 512) ** 2).float().sqrt()
    img[..., (r > 300) & (r < 303)] = 0
    for i in range(12):  # a zigzag corridor around the circle
        img[..., 40 + i * 80 : 42 + i * 80, 30 : 1000 if i % 2 else 994] = 0
    sketch_foreground_mask(img[..., :64, :64])  # warm-up
    t = time.perf_counter()
    mask = sketch_foreground_mask(img, gap=6)
    elapsed = time.perf_counter() - t
    assert mask[0, 512, 512] == 1 and mask[0, 5, 5] == 0
    assert elapsed < 3.0, f"{elapsed:.2f} s"


# --- SAM ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_tiny_sam()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(2, 3, 48, 80, generator=torch.Generator().manual_seed(1))


def predictor_probs(sam, image, points=None, labels=None, box=None, multimask=False) -> torch.Tensor:
    """segment_anything's own SamPredictor on the same resized input: an independent path for
    coordinate transforms, prompt encoding, candidate choice and post-processing."""
    from segment_anything import SamPredictor

    pred = SamPredictor(sam)
    out = []
    for i in range(image.shape[0]):
        pred.set_torch_image(sam_input(image[i : i + 1], sam.image_encoder.img_size), tuple(image.shape[-2:]))
        logits, iou, _ = pred.predict(
            point_coords=None if points is None else np.asarray(points, dtype=np.float64),
            point_labels=None if labels is None else np.asarray(labels),
            box=None if box is None else np.asarray(box, dtype=np.float64),
            multimask_output=multimask,
            return_logits=True,
        )
        out.append(torch.sigmoid(torch.from_numpy(logits[int(iou.argmax())])))
    return torch.stack(out)


def test_sam_shapes_and_threshold(sam, image) -> None:
    probs = sam_foreground_mask(sam, image, threshold=None)
    assert probs.shape == (2, 48, 80) and probs.dtype == torch.float32
    assert probs.min() >= 0 and probs.max() <= 1
    for t in (0.3, 0.5, 0.52):
        assert torch.equal(sam_foreground_mask(sam, image, threshold=t), (probs > t).float())
    gray = image[:, :1]
    torch.testing.assert_close(
        sam_foreground_mask(sam, gray, threshold=None), sam_foreground_mask(sam, gray.expand(-1, 3, -1, -1), threshold=None)
    )
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        sam_foreground_mask(sam, image[0])


def test_sam_points_box_and_default_match_predictor(sam, image) -> None:
    pts, labels = [[10.0, 12.0], [60.0, 30.0]], [1, 0]
    got = sam_foreground_mask(sam, image, points=pts, point_labels=labels, threshold=None)
    torch.testing.assert_close(got, predictor_probs(sam, image, pts, labels), atol=1e-5, rtol=0)
    box = [5.0, 4.0, 50.0, 40.0]
    got = sam_foreground_mask(sam, image, box=box, threshold=None)
    torch.testing.assert_close(got, predictor_probs(sam, image, box=box), atol=1e-5, rtol=0)
    # One point alone: SAM's ambiguous case, three candidates, best predicted IoU kept.
    got = sam_foreground_mask(sam, image, points=[[20.0, 20.0]], threshold=None)
    torch.testing.assert_close(got, predictor_probs(sam, image, [[20.0, 20.0]], [1], multimask=True), atol=1e-5, rtol=0)
    # Default prompt: centre point (39.5, 23.5) + box inset 5 % on each side, computed here by hand.
    default = sam_foreground_mask(sam, image, threshold=None)
    box = [0.05 * 79, 0.05 * 47, 79 - 0.05 * 79, 47 - 0.05 * 47]
    torch.testing.assert_close(default, predictor_probs(sam, image, [[39.5, 23.5]], [1], box), atol=1e-5, rtol=0)


def test_sam_prompts_change_the_mask(sam, image) -> None:
    a = sam_foreground_mask(sam, image, points=[[5.0, 5.0]], threshold=None)
    b = sam_foreground_mask(sam, image, points=[[5.0, 5.0]], point_labels=[0], threshold=None)
    c = sam_foreground_mask(sam, image, box=[0.0, 0.0, 20.0, 20.0], threshold=None)
    assert (a - b).abs().max() > 1e-4 and (a - c).abs().max() > 1e-4


def test_sam_auto_prompt_modes(sam, image) -> None:
    pts, labels, box = centre_prompt(48, 80, "point")
    assert box is None and pts.tolist() == [[39.5, 23.5]] and labels.tolist() == [1.0]
    explicit = sam_foreground_mask(sam, image, points=[[39.5, 23.5]], threshold=None)
    torch.testing.assert_close(sam_foreground_mask(sam, image, auto_prompt="point", threshold=None), explicit)
    explicit = sam_foreground_mask(sam, image, box=[0.0, 0.0, 79.0, 47.0], threshold=None)
    torch.testing.assert_close(sam_foreground_mask(sam, image, auto_prompt="box", box_margin=0.0, threshold=None), explicit)
    default = sam_foreground_mask(sam, image, threshold=None)
    torch.testing.assert_close(sam_foreground_mask(sam, image, points=[], box=[], threshold=None), default)
    with pytest.raises(ValueError, match="auto_prompt"):
        sam_foreground_mask(sam, image, auto_prompt="centre")


def test_sam_per_image_and_normalized_prompts(sam, image) -> None:
    pts = torch.tensor([[[10.0, 10.0]], [[70.0, 40.0]]])
    both = sam_foreground_mask(sam, image, points=pts, threshold=None)
    for i in range(2):
        one = sam_foreground_mask(sam, image[i : i + 1], points=pts[i], threshold=None)
        torch.testing.assert_close(both[i : i + 1], one)
    norm = pts / torch.tensor([79.0, 47.0])
    torch.testing.assert_close(sam_foreground_mask(sam, image, points=norm, normalized=True, threshold=None), both)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 30.0], [30.0, 10.0, 79.0, 47.0]])
    per = sam_foreground_mask(sam, image, box=boxes, threshold=None)
    torch.testing.assert_close(per[1:], sam_foreground_mask(sam, image[1:], box=boxes[1], threshold=None))
    with pytest.raises(ValueError, match="points"):
        sam_foreground_mask(sam, image, points=torch.zeros(3, 1, 2))
    with pytest.raises(ValueError, match="point_labels"):
        sam_foreground_mask(sam, image, points=[[1.0, 1.0]], point_labels=[1, 0])
    with pytest.raises(ValueError, match="box"):
        sam_foreground_mask(sam, image, box=[1.0, 2.0, 3.0])


def test_sam_dilation(sam, image) -> None:
    base = sam_foreground_mask(sam, image, points=[[40.0, 24.0]])
    grown = sam_foreground_mask(sam, image, points=[[40.0, 24.0]], dilation=2)
    assert torch.equal(grown, F.max_pool2d(base[:, None], 5, stride=1, padding=2)[:, 0])


# --- SAM weights: loading through files, errors, manifest --------------------------------------


def test_load_sam_from_pth_and_safetensors(sam, image, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = sam.state_dict()
    pth, st = tmp_path / "tiny_sam.pth", tmp_path / "tiny_sam.safetensors"
    torch.save(collections.OrderedDict(sd), pth)  # the official files are pickled OrderedDicts
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    ref = sam_foreground_mask(sam, image, threshold=None)
    for path in (pth, st, str(pth)):
        model = load_sam(path)
        assert all(p.device.type == "cpu" for p in model.parameters())
        torch.testing.assert_close(sam_foreground_mask(model, image, threshold=None), ref, atol=0, rtol=0)
    model64 = load_sam(pth, dtype=torch.float64)
    assert next(model64.image_encoder.parameters()).dtype == torch.float64
    assert next(model64.mask_decoder.parameters()).dtype == torch.float32  # prompts need float32
    torch.testing.assert_close(sam_foreground_mask(model64, image, threshold=None), ref, atol=1e-4, rtol=0)
    half = sam_foreground_mask(load_sam(st, dtype=torch.bfloat16), image, threshold=None)
    assert half.dtype == torch.float32 and (half - ref).abs().max() < 0.05


def test_foreign_or_damaged_state_dicts_are_refused(sam, tmp_path: Path) -> None:
    sd = sam.state_dict()
    foreign = tmp_path / "unet.safetensors"
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, str(foreign))
    with pytest.raises(SamWeightsError, match="not a segment-anything"):
        load_sam(foreign)
    missing = {k: v for k, v in sd.items() if k != "mask_decoder.iou_token.weight"}
    with pytest.raises(SamWeightsError, match="iou_token"):
        sam_from_state_dict(missing)
    partial_sd = {k: v for k, v in sd.items() if not k.startswith("mask_decoder.transformer.layers.1")}
    with pytest.raises(SamWeightsError, match=r"missing \(\d+\)"):
        sam_from_state_dict(partial_sd)
    with pytest.raises(SamWeightsError, match="unexpected"):
        sam_from_state_dict({**sd, "mask_decoder.hf_token.weight": torch.zeros(1, 32)})
    wrong = dict(sd)
    wrong["mask_decoder.mask_tokens.weight"] = torch.zeros(3, 32)
    with pytest.raises(SamWeightsError, match="wrong shape"):
        sam_from_state_dict(wrong)
    with pytest.raises(SamWeightsError, match="variant='vit_b' was requested"):
        sam_from_state_dict(sd, variant="vit_b")
    # A pickle with arbitrary objects never gets unpickled.
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"x": collections.Counter(a=1)}, f, protocol=2)
    with pytest.raises(CheckpointError):
        load_sam(evil)


def test_infer_variant_from_encoder_width() -> None:
    base = {k: torch.zeros(1) for k in (
        "image_encoder.pos_embed",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "mask_decoder.iou_token.weight",
    )}
    for variant, (_, width) in SAM_VARIANTS.items():
        sd = {**base, "image_encoder.patch_embed.proj.weight": torch.empty(width, 3, 1, 1)}
        assert infer_sam_variant(sd) == variant
    with pytest.raises(SamWeightsError, match="width 100"):
        infer_sam_variant({**base, "image_encoder.patch_embed.proj.weight": torch.empty(100, 3, 1, 1)})


def test_full_size_vit_b_layout_loads() -> None:
    """The official ViT-B key set (from segment_anything's builder) fills a real vit_b build."""
    from segment_anything import build_sam_vit_b

    with torch.device("meta"):
        ref = build_sam_vit_b()
    sd = {k: torch.zeros(v.shape) for k, v in ref.state_dict().items()}
    assert "pixel_mean" not in sd  # non-persistent: not in the official files either
    model = sam_from_state_dict(sd, variant="vit_b")
    assert model.image_encoder.img_size == 1024 and len(model.image_encoder.blocks) == 12
    assert model.pixel_mean.device.type == "cpu"
    assert model.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])


def test_manifest_sam_entries() -> None:
    entries = {e["name"]: e for e in w.load_manifest()}
    official = {"sam-vit-b": "sam_vit_b_01ec64.pth", "sam-vit-l": "sam_vit_l_0b3195.pth", "sam-vit-h": "sam_vit_h_4b8939.pth"}
    for name, filename in official.items():
        e = entries[name]
        assert e["filename"] == filename == e["hub_filename"]
        assert e["kind"] == "sam" and e["models_subdir"] == "sams" and e["licence"] == "Apache-2.0"
        assert e["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", e["sha256"])
        assert all(f in e for f in w.REQUIRED_FIELDS)
    for name, _ in SAM_VARIANTS.values():
        assert not name or name in entries
    root = json.loads((Path(w.__file__).resolve().parents[1] / "weights_manifest.json").read_text())
    assert sum(e["kind"] == "sam" for e in root["files"]) == 3


def test_load_sam_by_manifest_name(sam, image, tmp_path: Path) -> None:
    target = tmp_path / "sams" / "sam_vit_b_01ec64.pth"
    target.parent.mkdir()
    torch.save(sam.state_dict(), target)  # stands in for the real file
    ref = sam_foreground_mask(sam, image, threshold=None)
    for key in ("sam-vit-b", "vit_b", "sam_vit_b_01ec64.pth"):
        model = load_sam(key, models_dir=tmp_path)
        torch.testing.assert_close(sam_foreground_mask(model, image, threshold=None), ref, atol=0, rtol=0)
    with pytest.raises(w.WeightsMissingError, match="mashb1t/misc"):
        load_sam("sam-vit-h", models_dir=tmp_path)


# --- preview --------------------------------------------------------------------------------


def test_overlay_tints_only_inside_the_mask() -> None:
    img = torch.rand(2, 3, 20, 30, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 20, 30)
    mask[:, 5:15, 10:25] = 1
    out = overlay_masks(img, mask, colours=[(1.0, 0.0, 0.0)], alpha=0.4, outline=0)
    assert out.shape == img.shape
    inside = mask.bool()[:, None].expand_as(img)
    torch.testing.assert_close(out[~inside], img[~inside])
    c = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand_as(img)
    torch.testing.assert_close(out[inside], (img * 0.6 + c * 0.4)[inside])


def test_overlay_outline_resize_and_several_masks() -> None:
    img = torch.full((1, 3, 40, 40), 0.5)
    small = torch.zeros(1, 20, 20)
    small[:, 5:15, 5:15] = 1  # resized ×2 → rows/cols 10..29
    out = overlay_masks(img, small, colours=[(0.0, 1.0, 0.0)], alpha=0.0, outline=2)
    green = (out[0] == torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1)).all(0)
    ring = filled(40, 40, 10, 10, 29, 29)[0].bool() & ~filled(40, 40, 12, 12, 27, 27)[0].bool()
    assert torch.equal(green, ring)
    a, b = torch.zeros(2, 40, 40), torch.zeros(1, 40, 40)
    a[:, :, :20] = 1
    b[:, 20:, :] = 1
    out = overlay_masks(img.expand(2, -1, -1, -1), [a, b], alpha=1.0, outline=0, dim_background=0.5)
    assert out.shape == (2, 3, 40, 40)
    torch.testing.assert_close(out[:, :, 30, 30], torch.tensor([0.2, 0.5, 1.0]).expand(2, 3))  # b's colour
    torch.testing.assert_close(out[:, :, 5, 30], torch.full((2, 3), 0.25))  # outside both: dimmed
    with pytest.raises(ValueError, match="batch"):
        overlay_masks(img, torch.zeros(3, 40, 40))
