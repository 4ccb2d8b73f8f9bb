"""Training triplet sources: plain folders and the official zip-shard layout (official ``data/dataloader.py:92-140``; thesis §3.1).

A triplet is (colour image, sketch, optional mask); the colour image is also the reference (ground truth as
reference, thesis §3.1). Layouts:

* folders: ``root/color/<rel>.<ext>`` and ``root/sketch/<rel>.<any image ext>`` (optional ``root/mask/``);
  files are matched by relative path without extension; a record's name is the colour file's relative path.
* zip: ``root/{color,sketch,mask}/NNNN.zip`` with identical member names in matching shards.

Filters (optional) read ``image_list*.json`` files (official format: name → ``{aesthetic_score, resolution,
exist_sketch}``): keep ``score >= score_threshold`` and ``resolution >= min_resolution``; shards matching an
``always_include`` glob skip the filters (the official loader keeps every member of ``sketch/ai*.zip``). Without
an image list the resolution filter reads each colour image's header (short edge).
"""
from __future__ import annotations

import fnmatch
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from training.config import DataConfig

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Record:
    """One triplet: a name (used by filters) and where its parts are (file paths or (zip, member) pairs)."""

    name: str
    shard: str
    color: Any
    sketch: Any
    mask: Any = None


class TripletSource(Protocol):
    records: list[Record]

    def open(self, ref: Any) -> Image.Image: ...


def _read_pil(data: bytes | Path) -> Image.Image:
    im = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    im.load()
    return im


class FolderTriplets:
    """``root/color``, ``root/sketch`` (and ``root/mask``) folders with matching relative names."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        sketches = _index_images(self.root / "sketch")
        masks = _index_images(self.root / "mask") if (self.root / "mask").is_dir() else {}
        color = self.root / "color"
        self.records = [
            Record(path.relative_to(color).as_posix(), str(Path(rel).parent), path, sketches[rel], masks.get(rel))
            for rel, path in sorted(_index_images(color).items())
            if rel in sketches
        ]

    def open(self, ref: Any) -> Image.Image:
        return _read_pil(Path(ref))


def _index_images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; a folders dataset needs color/ and sketch/")
    return {
        p.relative_to(folder).with_suffix("").as_posix(): p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTS and p.is_file()
    }


class ZipShardTriplets:
    """Official shards: ``root/color/X.zip`` ↔ ``root/sketch/X.zip`` (↔ ``root/mask/X.zip``), same member names.

    Zip handles are opened lazily per process (data-loader workers each get their own).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.records = []
        self._handles: dict[Path, zipfile.ZipFile] = {}
        self._pid = os.getpid()
        for color_zip in sorted((self.root / "color").glob("*.zip")):
            sketch_zip = self.root / "sketch" / color_zip.name
            if not sketch_zip.is_file():
                continue
            mask_zip = self.root / "mask" / color_zip.name
            with zipfile.ZipFile(sketch_zip) as zs:
                in_sketch = set(zs.namelist())
            in_mask: set[str] = set()
            if mask_zip.is_file():
                with zipfile.ZipFile(mask_zip) as zm:
                    in_mask = set(zm.namelist())
            with zipfile.ZipFile(color_zip) as zc:
                members = [m for m in zc.namelist() if m.lower().endswith(IMAGE_EXTS)]
            for m in sorted(members):
                if m in in_sketch:
                    mask = (mask_zip, m) if m in in_mask else None
                    self.records.append(Record(m, color_zip.stem, (color_zip, m), (sketch_zip, m), mask))

    def open(self, ref: Any) -> Image.Image:
        path, member = ref
        if self._pid != os.getpid():  # a forked data-loader worker must not share the parent's file offsets
            self._handles, self._pid = {}, os.getpid()
        zf = self._handles.get(path)
        if zf is None:
            zf = self._handles[path] = zipfile.ZipFile(path)
        return _read_pil(zf.read(member))

    def __getstate__(self) -> dict[str, Any]:  # zip handles never cross process boundaries
        return {**self.__dict__, "_handles": {}}


def detect_layout(root: str | Path) -> str:
    """"zip" when ``root/color`` holds zip files, else "folders"."""
    return "zip" if any((Path(root) / "color").glob("*.zip")) else "folders"


def load_image_list(root: str | Path, pattern: str | None) -> dict[str, dict[str, Any]]:
    """Merged ``image_list*.json`` entries (``pattern`` is a file or glob relative to ``root``; default
    ``image_list*.json``); {} when none exist."""
    root = Path(root)
    paths = sorted(root.glob(pattern or "image_list*.json")) if not (pattern and Path(pattern).is_file()) else [Path(pattern)]
    merged: dict[str, dict[str, Any]] = {}
    for p in paths:
        merged.update(json.loads(Path(p).read_text()))
    return merged


def _short_edge(source: TripletSource, rec: Record) -> int:
    ref = rec.color
    if isinstance(ref, tuple):
        with zipfile.ZipFile(ref[0]) as zf, Image.open(io.BytesIO(zf.read(ref[1]))) as im:
            return min(im.size)
    with Image.open(ref) as im:
        return min(im.size)


def _lookup(info: dict[str, dict[str, Any]], rec: Record) -> dict[str, Any] | None:
    return info.get(rec.name) or info.get(Path(rec.name).name) or info.get(Path(rec.name).stem)


def filter_records(source: TripletSource, cfg: DataConfig, info: dict[str, dict[str, Any]]) -> list[Record]:
    """Records passing the score / resolution filters (``always_include`` shards pass unconditionally)."""
    kept = []
    for rec in source.records:
        if any(fnmatch.fnmatch(rec.shard, g) for g in cfg.always_include):
            kept.append(rec)
            continue
        meta = _lookup(info, rec) or {}
        if meta.get("exist_sketch") is False:
            continue
        if cfg.score_threshold is not None:
            score = meta.get("aesthetic_score")
            if score is None or float(score) < cfg.score_threshold:
                continue
        if cfg.min_resolution is not None:
            res = meta.get("resolution")
            res = _short_edge(source, rec) if res is None else _resolution_value(res)
            if res < cfg.min_resolution:
                continue
        kept.append(rec)
    return kept


def _resolution_value(res: Any) -> int:
    """A number, or a ``[w, h]`` pair (its short edge)."""
    if isinstance(res, (list, tuple)):
        return int(min(res))
    return int(res)


def open_source(cfg: DataConfig) -> TripletSource:
    """The configured source with its filters applied (``source.records`` is the training set)."""
    if not cfg.root:
        raise ValueError("data.root is empty: point it at a dataset folder (see `python -m training.prepare`)")
    layout = detect_layout(cfg.root) if cfg.layout == "auto" else cfg.layout
    source: TripletSource = ZipShardTriplets(cfg.root) if layout == "zip" else FolderTriplets(cfg.root)
    if cfg.score_threshold is not None or cfg.min_resolution is not None:
        source.records = filter_records(source, cfg, load_image_list(cfg.root, cfg.image_list))
    if not source.records:
        raise ValueError(f"no (color, sketch) pairs found under {cfg.root} ({layout} layout, after filters)")
    return source
