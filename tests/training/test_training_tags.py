"""Tags files, the tag vocabulary, ``training.prepare --tags`` and the tagged synthetic data (the data of the stages
that read tags: the thesis' chapter-4 GAN, §4.2.1 and §4.3)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.errors import TrainingDataError
from training.prepare import main as prepare_main
from training.synthetic import PALETTE, make_synthetic_dataset
from training.tags import (
    Vocabulary,
    build_vocabulary,
    load_vocabulary,
    read_tags_file,
    split_tags,
    tags_for,
    write_vocabulary,
)


def test_tag_strings_split_at_commas_else_whitespace() -> None:
    assert split_tags("red_hair, long hair ,, smile", "x") == ["red_hair", "long hair", "smile"]
    assert split_tags("red_hair  long_hair red_hair", "x") == ["red_hair", "long_hair"]
    assert split_tags(["a", " b ", "", "a"], "x") == ["a", "b"]
    with pytest.raises(TrainingDataError, match="list of strings"):
        split_tags(3, "entry")


def test_json_and_csv_tags_files(tmp_path: Path) -> None:
    j = tmp_path / "tags.json"
    j.write_text(json.dumps({"a/1.png": ["x", "y"], "2": "y z"}))
    assert read_tags_file(j) == {"a/1.png": ["x", "y"], "2": ["y", "z"]}
    c = tmp_path / "tags.csv"
    c.write_text("Name,Tags\n1.png,\"x, y\"\n2.png,y z\n")
    assert read_tags_file(c) == {"1.png": ["x", "y"], "2.png": ["y", "z"]}
    bad = tmp_path / "bad.csv"
    bad.write_text("file,labels\n1.png,x\n")
    with pytest.raises(TrainingDataError, match="'name' and 'tags' columns"):
        read_tags_file(bad)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(TrainingDataError, match="not valid JSON"):
        read_tags_file(tmp_path / "broken.json")
    with pytest.raises(TrainingDataError, match="does not exist"):
        read_tags_file(tmp_path / "missing.json")


def test_vocabulary_orders_by_frequency_and_counts_images(tmp_path: Path) -> None:
    tags = {"1": ["b", "a", "c"], "2": ["a", "c"], "3": ["a", "d"], "4": []}
    vocab = build_vocabulary(tags, max_tags=3)
    assert vocab.names == ("a", "c", "b") and vocab.counts == (3, 2, 1) and vocab.images == 3
    assert build_vocabulary(tags, min_count=2).names == ("a", "c")
    assert torch.equal(vocab.multi_hot(["c", "zzz", "a"]), torch.tensor([1.0, 1.0, 0.0]))
    assert torch.allclose(vocab.frequencies(), torch.tensor([1.0, 2 / 3, 1 / 3], dtype=torch.float64))
    path = write_vocabulary(vocab, tmp_path / "vocabulary.json")
    assert load_vocabulary(path) == vocab
    with pytest.raises(TrainingDataError, match="no tag is on at least 9"):
        build_vocabulary(tags, min_count=9)
    with pytest.raises(TrainingDataError, match="not a vocabulary file"):
        Vocabulary.from_json({"images": 1, "tags": [{"index": 1, "name": "a", "count": 1}]})


def test_tags_are_found_by_path_name_or_stem() -> None:
    tags = {"sub/1.png": ["a"], "2.jpg": ["b"], "3": ["c"]}
    assert tags_for(tags, "sub/1.png") == ["a"]
    assert tags_for(tags, "other/2.jpg") == ["b"]
    assert tags_for(tags, "x/3.webp") == ["c"]
    assert tags_for(tags, "4.png") is None


def test_prepare_writes_the_vocabulary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "tags.json"
    src.write_text(json.dumps({"1": ["a", "b"], "2": ["a"]}))
    prepare_main(["--tags", str(src), "--out", str(tmp_path / "root"), "--max-tags", "1"])
    assert load_vocabulary(tmp_path / "root" / "vocabulary.json").names == ("a",)
    assert "vocabulary" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="error: tags file"):
        prepare_main(["--tags", str(tmp_path / "none.json"), "--out", str(tmp_path / "root")])


def test_tagged_synthetic_data_names_its_colours(tmp_path: Path) -> None:
    """The tags say the background colour and every shape colour; the pixels agree (the background colour fills
    the unmasked corner area, each shape colour appears inside the mask)."""
    root = make_synthetic_dataset(tmp_path / "data", 6, (64, 64), masks=True, tags=True, seed=2)
    tags = json.loads((root / "tags.json").read_text())
    vocab = load_vocabulary(root / "vocabulary.json")
    assert set(vocab.names) == {t for ts in tags.values() for t in ts} and vocab.images == 6
    for name, ts in tags.items():
        rgb = np.asarray(Image.open(root / "color" / name).convert("RGB")).reshape(-1, 3)
        mask = np.asarray(Image.open(root / "mask" / name)).reshape(-1) > 0
        backgrounds = [t for t in ts if t.endswith("_background")]
        assert len(backgrounds) == 1
        colours = {tuple(c) for c in rgb[~mask]}
        assert PALETTE[backgrounds[0].removesuffix("_background")] in colours
        inside = {tuple(c) for c in rgb[mask]}
        for t in ts:
            if t.endswith("_shape"):
                assert PALETTE[t.removesuffix("_shape")] in inside, (name, t)
