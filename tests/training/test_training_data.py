"""Training data: folder and zip-shard sources, filters, augmentations, batch plan, preparation command."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from training.augment import (
    augment_triplet,
    blank_borders,
    border_blank_sizes,
    color_jitter,
    joint_resize_crop,
    resize,
    to_model_sketch,
    tps_warp,
)
from training.batches import BatchPlan, PlanSampler, TripletDataset
from training.config import AugmentConfig, DataConfig, ObjectiveConfig
from training.data import FolderTriplets, ZipShardTriplets, open_source
from training.objective import NoiseSpec
from training.synthetic import make_synthetic_dataset

COUNT = 10


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("data")
    return {
        "folders": make_synthetic_dataset(base / "folders", COUNT, (72, 96), "folders", seed=5),
        "zip": make_synthetic_dataset(base / "zip", COUNT, (72, 96), "zip", seed=5, shard_size=4),
    }


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------ sources
def test_folder_and_zip_layouts_give_the_same_triplets(datasets: dict[str, Path]) -> None:
    folders, shards = FolderTriplets(datasets["folders"]), ZipShardTriplets(datasets["zip"])
    assert [r.name for r in folders.records] == [r.name for r in shards.records] == [f"{i:05d}.png" for i in range(COUNT)]
    assert sorted({r.shard for r in shards.records}) == ["0000", "0001", "0002"]
    for a, b in zip(folders.records, shards.records):
        assert np.array_equal(np.asarray(folders.open(a.color)), np.asarray(shards.open(b.color)))
        assert np.array_equal(np.asarray(folders.open(a.sketch)), np.asarray(shards.open(b.sketch)))
    assert open_source(DataConfig(root=str(datasets["zip"]))).__class__ is ZipShardTriplets


def test_zip_members_without_sketch_are_skipped(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path, 4, (64, 64), "zip", shard_size=4)
    with zipfile.ZipFile(root / "color" / "0000.zip", "a") as z:
        z.writestr("extra.png", (root / "image_list.json").read_bytes())
    assert len(ZipShardTriplets(root).records) == 4


def test_score_resolution_and_always_include_filters(datasets: dict[str, Path], tmp_path: Path) -> None:
    # synthetic image list: item i has aesthetic_score i % 10 and resolution 72 (short edge)
    kept = open_source(DataConfig(root=str(datasets["folders"]), score_threshold=5.5)).records
    assert [r.name for r in kept] == [f"{i:05d}.png" for i in range(COUNT) if i % 10 >= 5.5]
    assert len(open_source(DataConfig(root=str(datasets["folders"]), min_resolution=72)).records) == COUNT
    with pytest.raises(ValueError, match="no \\(color, sketch\\) pairs"):
        open_source(DataConfig(root=str(datasets["folders"]), min_resolution=73))
    # the official rule: every member of matching shards passes (here shard 0001 = items 4..7)
    kept = open_source(DataConfig(root=str(datasets["zip"]), score_threshold=5.5, always_include=("0001",))).records
    assert [r.name for r in kept] == [f"{i:05d}.png" for i in (4, 5, 6, 7, 8, 9)]
    # without an image list the resolution filter reads the image headers
    root = make_synthetic_dataset(tmp_path / "nolist", 3, (64, 80), "folders", image_list=False)
    assert len(open_source(DataConfig(root=str(root), min_resolution=64)).records) == 3
    with pytest.raises(ValueError):
        open_source(DataConfig(root=str(root), min_resolution=65))


# ------------------------------------------------------------------------------------------ augmentations
def test_joint_resize_crop_uses_one_geometry_for_sketch_and_color() -> None:
    img = torch.rand(3, 90, 120, generator=gen(1))
    cfg = AugmentConfig(load_size=None, scale_range=(1.0, 1.3), flip_p=0.5)
    for seed in range(6):
        color, sketch = joint_resize_crop(img, img.clone(), (64, 128), cfg, gen(seed))
        assert color.shape == (3, 64, 128)
        assert torch.equal(color, sketch)


def test_short_edge_range_official_and_thesis() -> None:
    from training.augment import short_edge_target

    off = AugmentConfig(load_size=961)
    edges = [short_edge_target((768, 704), off, gen(s)) for s in range(200)]
    assert min(edges) >= 768 and max(edges) <= 960 and len(set(edges)) > 50
    th = AugmentConfig(load_size=None, scale_range=(1.0, 1.3))
    edges = [short_edge_target((512, 512), th, gen(s)) for s in range(200)]
    assert min(edges) >= 512 and max(edges) <= round(512 * 1.3)


def test_reference_is_the_uncropped_color_resized_only() -> None:
    color = torch.rand(3, 80, 120, generator=gen(2))
    sketch = torch.ones(3, 80, 120)
    out = augment_triplet(color, sketch, (64, 64), AugmentConfig(load_size=None, reference_size=32), gen(3))
    assert out["reference"].shape == (3, 32, 32)
    assert torch.allclose(out["reference"], resize(color, (32, 32)) * 2 - 1, atol=1e-6)
    assert out["color"].shape == out["sketch"].shape == (3, 64, 64)
    assert out["color"].min() >= -1 and out["color"].max() <= 1


def test_polarity_inversion_lines_plus_one() -> None:
    s = torch.ones(1, 8, 8)
    s[0, 2, :] = 0.0  # one black line on white paper
    x = to_model_sketch(s, invert=True)
    assert x.shape == (3, 8, 8) and (x[:, 2] == 1).all() and (x[:, 3:] == -1).all()
    assert torch.equal(to_model_sketch(1 - s, invert=False), x)


def test_border_blanking_sides_fractions_at_most_015() -> None:
    cfg = AugmentConfig(border_mode="sides", border_max_frac=0.15)
    sizes = torch.tensor([border_blank_sizes((200, 100), cfg, gen(s)) for s in range(300)])
    assert (sizes[:, :2] <= 30).all() and (sizes[:, 2:] <= 15).all()
    assert (sizes[:, :2].max(0).values >= 25).all()  # the range is used, independently per side
    assert len({tuple(r) for r in sizes.tolist()}) > 250
    full = torch.ones(3, 200, 100)
    t, b, l, r = 5, 7, 3, 0
    out = blank_borders(full, (t, b, l, r))
    assert (out[:, :t] == -1).all() and (out[:, 200 - b:] == -1).all() and (out[:, :, :l] == -1).all()
    assert (out[:, t:200 - b, l:] == 1).all()


def test_border_blanking_official_modes() -> None:
    cfg = AugmentConfig(border_mode="official")
    seen = set()
    for s in range(300):
        t, b, l, r = border_blank_sizes((768, 768), cfg, gen(s))
        assert t == b <= 150 and l == r <= 150
        seen.add(("tb" if t else "") + ("lr" if l else ""))
        if t and l:
            assert l <= 100  # the "both" mode draws the horizontal width from U{0..100}
    assert seen == {"", "tb", "lr", "tblr"}


def test_augmented_sketch_borders_hold_no_lines() -> None:
    sketch = torch.zeros(3, 64, 64)  # all ink: every pixel is a line
    out = augment_triplet(torch.rand(3, 64, 64), sketch, (64, 64),
                          AugmentConfig(load_size=None, scale_range=(1.0, 1.0), border_max_frac=0.15), gen(4))
    s = out["sketch"]
    assert set(s.unique().tolist()) <= {-1.0, 1.0}
    assert (s == -1).any() and (s[:, 10:54, 10:54] == 1).all()  # blanked margins ≤ 15 %, centre intact


def test_tps_warp_and_color_jitter() -> None:
    img = torch.rand(3, 40, 40, generator=gen(6))
    assert torch.allclose(tps_warp(img, gen(1), strength=0.0), img, atol=1e-5)
    warped = tps_warp(img, gen(1), strength=0.15)
    assert warped.shape == img.shape and not torch.allclose(warped, img, atol=1e-2)
    assert warped.min() >= img.min() - 1e-5 and warped.max() <= img.max() + 1e-5
    assert torch.allclose(color_jitter(img, 0.0, gen(0)), img, atol=1e-6)
    j = color_jitter(img, 0.1, gen(0))
    assert not torch.allclose(j, img) and j.min() >= 0 and j.max() <= 1


# ------------------------------------------------------------------------------------------ batch plan
def test_batch_plan_ranks_partition_the_global_batch() -> None:
    buckets = ((64, 64), (64, 128), (128, 64))
    single = BatchPlan(13, batch_size=4, grad_accum=1, world_size=1, seed=3, buckets=buckets)
    multi = BatchPlan(13, batch_size=1, grad_accum=2, world_size=2, seed=3, buckets=buckets)
    for step in range(8):
        a = single.micro_batch(step, 0, 0)
        b = [it for m in range(2) for r in range(2) for it in multi.micro_batch(step, m, r)]
        assert sorted(b, key=lambda s: s.slot) == a
        assert len({it.bucket for it in a}) == 1
    # each epoch visits every item once
    seen = [single.item(s, k, (64, 64)).index for s in range(13) for k in range(4)]
    for e in range(4):
        assert sorted(seen[e * 13:(e + 1) * 13]) == list(range(13))
    assert single.position(5) == {"step": 5, "epoch": 1, "offset": 7, "global_batch": 4}
    assert len({single.bucket(s) for s in range(30)}) == 3
    assert list(PlanSampler(single, 0, 3, 5)) == [single.micro_batch(3, 0, 0), single.micro_batch(4, 0, 0)]


def test_dataset_items_are_deterministic_per_step_and_slot(datasets: dict[str, Path]) -> None:
    source = open_source(DataConfig(root=str(datasets["zip"])))
    spec = NoiseSpec(4, 8, 16, 8)
    ds = TripletDataset(source, AugmentConfig(buckets=((64, 64),), load_size=80), ObjectiveConfig(), spec, seed=1)
    plan = BatchPlan(len(ds), 2, 1, 1, 1, ((64, 64),))
    a = [ds[s] for s in plan.micro_batch(3, 0, 0)]
    b = [ds[s] for s in plan.micro_batch(3, 0, 0)]
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    assert a[0]["sketch"].shape == (3, 64, 64) and a[0]["noise"].shape == (4, 8, 8)
    assert a[0]["ref_noise"].shape == (16, 8) and a[0]["reference"].shape == (3, 224, 224)
    c = ds[plan.micro_batch(4, 0, 0)[0]]
    assert not torch.equal(a[0]["noise"], c["noise"])


# ------------------------------------------------------------------------------------------ preparation
@pytest.mark.parametrize("layout", ["folders", "zip"])
def test_prepare_extracts_sketches(tmp_path: Path, layout: str) -> None:
    from training.prepare import main as prepare_main

    src = make_synthetic_dataset(tmp_path / "src", 5, (64, 80), "folders", seed=2)
    (src / "color" / "sub").mkdir()
    (src / "color" / "00004.png").rename(src / "color" / "sub" / "00004.png")
    out = tmp_path / "out"
    prepare_main(["--images", str(src / "color"), "--out", str(out), "--layout", layout, "--shard-size", "2", "--masks"])
    source = open_source(DataConfig(root=str(out)))
    assert len(source.records) == 5
    info = json.loads((out / "image_list.json").read_text())
    assert set(info) == {r.name for r in source.records} and all(v["resolution"] == 64 for v in info.values())
    rec = source.records[0]
    sketch = torch.from_numpy(np.asarray(source.open(rec.sketch).convert("L"), dtype=np.float32)) / 255
    assert sketch.mean() > 0.7 and sketch.min() < 0.3  # mostly paper, some dark lines
    assert rec.mask is not None
    assert len(open_source(DataConfig(root=str(out), min_resolution=64)).records) == 5


def test_loader_workers_give_the_same_batches(datasets: dict[str, Path]) -> None:
    """Forked workers reopen the zip shards (no shared file offsets) and produce the same samples."""
    from torch.utils.data import DataLoader

    from training.batches import collate

    source = open_source(DataConfig(root=str(datasets["zip"])))
    ds = TripletDataset(source, AugmentConfig(buckets=((64, 64),), load_size=80, reference_size=32), ObjectiveConfig(),
                        NoiseSpec(4, 8, 4, 4), seed=2)
    plan = BatchPlan(len(ds), 3, 1, 1, 2, ((64, 64),))
    ds[plan.micro_batch(0, 0, 0)[0]]  # the parent opens shards before the workers fork
    runs = [list(DataLoader(ds, batch_sampler=PlanSampler(plan, 0, 0, 4), collate_fn=collate, num_workers=w))
            for w in (0, 2)]
    assert len(runs[0]) == len(runs[1]) == 4
    for a, b in zip(*runs):
        assert all(torch.equal(a[k], b[k]) for k in a)
