"""Per-image tags and the tag vocabulary, for the stages that read tags (the thesis' chapter-4 GAN: the
tag-pretrained reference encoder, §4.2.1, Eq. 4.1-4.2, and the tag manipulation, §4.3).

* **Tags file** (``data.tags``): JSON mapping image name → list of tags (or one string of tags), or CSV with a
  header holding ``name`` and ``tags`` columns. A string of tags is split at commas when it has any, else at
  whitespace (Danbooru's export style: ``red_hair long_hair``); tags are stripped, empty ones dropped, repeats
  kept once. Names are matched to a record like the image list's: the colour file's relative path, its file name
  or its stem.
* **Vocabulary** (``vocabulary.json``, written by ``python -m training.prepare --tags FILE``): the tags kept (the
  ``max_tags`` most frequent with at least ``min_count`` images; the thesis uses 6,000), in index order — most
  frequent first, ties by name — with their image counts and the number of tagged images (what the focal loss's
  class weights are computed from).

Mistakes are one-line :class:`training.errors.TrainingDataError` messages naming the file and the fix.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from colorize.atomic import atomic_path
from training.errors import TrainingDataError

VOCABULARY_FILE = "vocabulary.json"


def split_tags(value: Any, where: str) -> list[str]:
    """A list of tags, or a string of them (comma-separated if it has a comma, else whitespace-separated) →
    the tags stripped, empties dropped, first occurrence kept."""
    if isinstance(value, str):
        parts = value.split(",") if "," in value else value.split()
    elif isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value):
        parts = list(value)
    else:
        raise TrainingDataError(f"{where}: tags must be a list of strings or one string, got {type(value).__name__}; "
                                "write e.g. \"00001.png\": [\"red_hair\", \"smile\"]")
    return list(dict.fromkeys(t.strip() for t in parts if t.strip()))


def read_tags_file(path: str | Path) -> dict[str, list[str]]:
    """Image name → tags from a JSON or CSV tags file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingDataError(f"tags file {path} does not exist; point data.tags (or --tags) at a JSON or CSV file "
                                "mapping image names to tags")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = [c.strip().lower() for c in reader.fieldnames or []]
            if "name" not in fields or "tags" not in fields:
                raise TrainingDataError(f"tags file {path} needs a header with 'name' and 'tags' columns (it has "
                                        f"{', '.join(fields) or 'none'})")
            out: dict[str, list[str]] = {}
            for line, row in enumerate(reader, start=2):
                row = {k.strip().lower(): v for k, v in row.items() if k is not None}
                name = (row.get("name") or "").strip()
                if not name:
                    raise TrainingDataError(f"tags file {path} line {line}: the name column is empty")
                out[name] = split_tags(row.get("tags") or "", f"tags file {path} line {line}")
            return out
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TrainingDataError(f"tags file {path} is not valid JSON ({e}); fix it or use a CSV with name,tags "
                                "columns") from None
    if not isinstance(data, Mapping):
        raise TrainingDataError(f"tags file {path} must hold an object mapping image name to tags")
    return {str(k): split_tags(v, f"tags file {path}, entry {k!r}") for k, v in data.items()}


@dataclass(frozen=True)
class Vocabulary:
    """Tags by index with the number of images each is on, out of ``images`` tagged images."""

    names: tuple[str, ...]
    counts: tuple[int, ...]
    images: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(self.names)})

    def __len__(self) -> int:
        return len(self.names)

    def index(self, tag: str) -> int | None:
        return self._index.get(tag)  # type: ignore[attr-defined]

    def multi_hot(self, tags: Iterable[str]) -> Tensor:
        """(C,) float 0/1 vector of the tags in the vocabulary (others ignored)."""
        out = torch.zeros(len(self.names))
        for t in tags:
            i = self.index(t)
            if i is not None:
                out[i] = 1.0
        return out

    def frequencies(self) -> Tensor:
        """(C,) fraction of the tagged images that carry each tag."""
        return torch.tensor(self.counts, dtype=torch.float64) / max(self.images, 1)

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images,
                "tags": [{"index": i, "name": n, "count": c} for i, (n, c) in enumerate(zip(self.names, self.counts))]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "vocabulary") -> Vocabulary:
        try:
            tags = sorted(data["tags"], key=lambda t: int(t["index"]))
            if [int(t["index"]) for t in tags] != list(range(len(tags))):
                raise ValueError("indices are not 0..C-1")
            return cls(tuple(str(t["name"]) for t in tags), tuple(int(t["count"]) for t in tags), int(data["images"]))
        except (KeyError, TypeError, ValueError) as e:
            raise TrainingDataError(f"{where} is not a vocabulary file ({type(e).__name__}: {e}); write one with "
                                    "python -m training.prepare --tags FILE --out ROOT") from None


def build_vocabulary(tags: Mapping[str, list[str]], max_tags: int | None = 6000, min_count: int = 1) -> Vocabulary:
    """The ``max_tags`` most frequent tags on at least ``min_count`` images (most frequent first, ties by name)."""
    counts = Counter(t for ts in tags.values() for t in set(ts))
    kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    if max_tags is not None:
        kept = kept[:max_tags]
    if not kept:
        raise TrainingDataError(f"no tag is on at least {min_count} images ({len(tags)} tagged images); lower "
                                "--min-tag-count or add tags")
    return Vocabulary(tuple(kept), tuple(counts[t] for t in kept), sum(1 for ts in tags.values() if ts))


def write_vocabulary(vocab: Vocabulary, path: str | Path) -> Path:
    """Write ``vocab`` as JSON atomically (an existing file is replaced)."""
    path = Path(path)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(vocab.to_json(), indent=1), encoding="utf-8")
    return path


def load_vocabulary(path: str | Path) -> Vocabulary:
    path = Path(path)
    if not path.is_file():
        raise TrainingDataError(f"vocabulary file {path} does not exist; write it with python -m training.prepare "
                                "--tags FILE --out ROOT")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TrainingDataError(f"vocabulary file {path} is not valid JSON ({e}); write it again with "
                                "python -m training.prepare --tags FILE --out ROOT") from None
    return Vocabulary.from_json(data, f"vocabulary file {path}")


def tags_for(tags: Mapping[str, list[str]], name: str) -> list[str] | None:
    """The tags of the record called ``name`` (its relative path, file name or stem), or ``None``."""
    for key in (name, Path(name).name, Path(name).stem):
        if key in tags:
            return tags[key]
    return None


__all__ = ["VOCABULARY_FILE", "Vocabulary", "build_vocabulary", "load_vocabulary", "read_tags_file", "split_tags",
           "tags_for", "write_vocabulary"]
