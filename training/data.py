"""Training triplet sources: plain folders and the official zip-shard layout (official ``data/dataloader.py:92-140``; thesis §3.1).

A triplet is (colour image, sketch, optional mask); the colour image is also the reference (ground truth as
reference, thesis §3.1). Layouts:

* folders: ``root/color/<rel>.<ext>`` and ``root/sketch/<rel>.<any image ext>`` (optional ``root/mask/``);
  files are matched by relative path without extension; a record's name is the colour file's relative path.
* zip: ``root/{color,sketch,mask}/NNNN.zip`` with identical member names in matching shards.

Folder mistakes (no such folder, a file, no ``color/`` or ``sketch/``, no images, no colour image with a
sketch of the same name) are one-line :class:`training.errors.TrainingDataError` messages, raised before any
model is built; colour images without a sketch are left out with a one-line warning.

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
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from training.config import DataConfig
from training.errors import TrainingDataError, one_line

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

#: What reading or decoding one image can raise when its file is corrupt, truncated or not an image (PIL raises
#: OSError / SyntaxError / ValueError, zlib and zip reading their own errors, a missing zip member KeyError).
READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, zipfile.BadZipFile, KeyError,
    Image.DecompressionBombError,
)


@dataclass(frozen=True)
class Record:
    """One triplet: a name (used by filters) and where its parts are (file paths or (zip, member) pairs)."""

    name: str
    shard: str
    color: Any
    sketch: Any
    mask: Any = None
    score: float | None = None  # the image list's aesthetic score (the XL adm conditioning), if it has one

    @property
    def key(self) -> str:
        """A name unique in the dataset and stable across runs: the colour file's relative path, or
        ``<shard>.zip:<member>`` for zip shards (kept in checkpoints, e.g. the known unreadable samples)."""
        return f"{self.shard}.zip:{self.name}" if isinstance(self.color, tuple) else self.name


def describe_ref(ref: Any) -> str:
    """Where a part of a record is, for messages: the file path, or ``<zip path> member <name>``."""
    if isinstance(ref, tuple):
        return f"{ref[0]} member {ref[1]}"
    return str(ref)


def warn(message: str) -> None:
    """A one-line ``warning: ...`` on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


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
        color = _require_folder(self.root, "color")
        colors = _index_images(color)
        if not colors:
            raise TrainingDataError(f"{color} holds no images ({', '.join(IMAGE_EXTS)}); put the colour images "
                                    "there and their sketches in sketch/ under the same names")
        sketch = _require_folder(self.root, "sketch")
        sketches = _index_images(sketch)
        masks = _index_images(self.root / "mask") if (self.root / "mask").is_dir() else {}
        matched = [rel for rel in sorted(colors) if rel in sketches]
        unmatched = [colors[rel].relative_to(self.root).as_posix() for rel in sorted(colors) if rel not in sketches]
        if not matched:
            raise TrainingDataError(f"none of the {len(colors)} colour images in {color} has a sketch of the same "
                                    f"name in {sketch} (e.g. {unmatched[0]} has no sketch/{Path(unmatched[0]).stem}.*)"
                                    "; name each sketch like its colour image, or write them with "
                                    "`python -m training.prepare`")
        if unmatched:
            warn(f"{len(unmatched)} of {len(colors)} colour images in {color} have no sketch of the same name in "
                 f"{sketch} and are left out (e.g. {unmatched[0]})")
        self.records = [
            Record(colors[rel].relative_to(color).as_posix(), str(Path(rel).parent), colors[rel], sketches[rel],
                   masks.get(rel))
            for rel in matched
        ]

    def open(self, ref: Any) -> Image.Image:
        return _read_pil(Path(ref))


def _require_folder(root: Path, name: str) -> Path:
    """``root/name``, which must be a folder (a one-line error naming the layout otherwise)."""
    folder = root / name
    if not folder.is_dir():
        raise TrainingDataError(f"{root} has no {name}/ folder; a dataset folder holds color/ and sketch/ (images "
                                "with matching names, or zip shards with matching member names); write one with "
                                f"`python -m training.prepare --images IMAGES --out {root}`")
    return folder


def _index_images(folder: Path) -> dict[str, Path]:
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
        color_zips = sorted(_require_folder(self.root, "color").glob("*.zip"))
        if not color_zips:
            raise TrainingDataError(f"{self.root / 'color'} holds no .zip shards; use data.layout=folders for "
                                    "plain image folders, or write shards with `python -m training.prepare --layout zip`")
        sketch_dir = _require_folder(self.root, "sketch")
        paired = [z for z in color_zips if (sketch_dir / z.name).is_file()]
        if not paired:
            raise TrainingDataError(f"none of the {len(color_zips)} shards in {self.root / 'color'} has a shard of the "
                                    f"same name in {sketch_dir} (e.g. {color_zips[0].name}); name each sketch shard "
                                    "like its colour shard")
        for color_zip in paired:
            self.records.extend(_shard_records(color_zip, sketch_dir / color_zip.name,
                                               self.root / "mask" / color_zip.name))
        if not self.records:
            raise TrainingDataError(f"no member of the colour shards in {self.root / 'color'} has a member of the same "
                                    f"name in the sketch shards of {sketch_dir}; name each sketch like its colour image")

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


def _zip_names(path: Path) -> list[str]:
    """The member names of a zip shard (a one-line error naming the shard when it is not a readable zip)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise TrainingDataError(f"{path} is not a readable zip file ({one_line(e)}); replace it or move it "
                                "out of the data folder") from None


def _shard_records(color_zip: Path, sketch_zip: Path, mask_zip: Path) -> list[Record]:
    """The records of one shard: colour members with a sketch member of the same name (masks when present)."""
    in_sketch = set(_zip_names(sketch_zip))
    in_mask = set(_zip_names(mask_zip)) if mask_zip.is_file() else set()
    members = sorted(m for m in _zip_names(color_zip) if m.lower().endswith(IMAGE_EXTS) and m in in_sketch)
    return [Record(m, color_zip.stem, (color_zip, m), (sketch_zip, m), (mask_zip, m) if m in in_mask else None)
            for m in members]


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
            if res is None:
                try:
                    res = _short_edge(source, rec)
                except READ_ERRORS as e:
                    warn(f"leaving out unreadable sample {describe_ref(rec.color)} ({one_line(e)})")
                    continue
            if _resolution_value(res) < cfg.min_resolution:
                continue
        kept.append(rec)
    return kept


def with_score(rec: Record, meta: dict[str, Any] | None) -> Record:
    """``rec`` with the image list's ``aesthetic_score`` (unchanged when the list has none for it)."""
    score = (meta or {}).get("aesthetic_score")
    return rec if score is None else replace(rec, score=float(score))


def _image_size(source: TripletSource, rec: Record) -> tuple[int, int]:
    """(width, height) of a record's colour image from its header."""
    ref = rec.color
    if isinstance(ref, tuple):
        with zipfile.ZipFile(ref[0]) as zf, Image.open(io.BytesIO(zf.read(ref[1]))) as im:
            return im.size
    with Image.open(ref) as im:
        return im.size


def record_aspects(source: TripletSource, info: dict[str, dict[str, Any]] | None = None) -> list[float]:
    """width / height of every record's colour image: from the image list (``width`` and ``height``, as the
    official XL lists hold, or a ``[w, h]`` ``resolution``), else from the image header (1.0 for an unreadable
    file: it is skipped later like any unreadable sample)."""
    out = []
    for rec in source.records:
        meta = _lookup(info or {}, rec) or {}
        w, h = meta.get("width"), meta.get("height")
        res = meta.get("resolution")
        if (w is None or h is None) and isinstance(res, (list, tuple)) and len(res) == 2:
            w, h = res
        if w is None or h is None:
            try:
                w, h = _image_size(source, rec)
            except READ_ERRORS:
                w = h = 1
        out.append(float(w) / float(h))
    return out


def _resolution_value(res: Any) -> int:
    """A number, or a ``[w, h]`` pair (its short edge)."""
    if isinstance(res, (list, tuple)):
        return int(min(res))
    return int(res)


def check_data_root(root: str) -> Path:
    """``root`` as a path, if it is an existing folder (a one-line error naming the fix otherwise)."""
    if not root:
        raise TrainingDataError("data.root is empty: point it at a dataset folder, e.g. --set data.root=data/train "
                                "(write one with `python -m training.prepare`)")
    path = Path(root)
    if path.is_file():
        raise TrainingDataError(f"data.root {path} is a file, not a folder; point data.root at the folder that holds "
                                "color/ and sketch/")
    if not path.is_dir():
        raise TrainingDataError(f"data.root {path} does not exist; point data.root at a dataset folder (color/ and "
                                "sketch/), or write one with `python -m training.prepare`")
    return path


def open_source(cfg: DataConfig) -> TripletSource:
    """The configured source with its filters applied (``source.records`` is the training set)."""
    root = check_data_root(cfg.root)
    layout = detect_layout(root) if cfg.layout == "auto" else cfg.layout
    source: TripletSource = ZipShardTriplets(root) if layout == "zip" else FolderTriplets(root)
    info = load_image_list(root, cfg.image_list)
    source.info = info  # type: ignore[attr-defined]
    if cfg.score_threshold is not None or cfg.min_resolution is not None:
        source.records = filter_records(source, cfg, info)
    if info:
        source.records = [with_score(rec, _lookup(info, rec)) for rec in source.records]
    if not source.records:
        raise TrainingDataError(f"no (color, sketch) pairs found under {root} ({layout} layout, after filters); "
                                "lower data.score_threshold / data.min_resolution or add data")
    return source


def check_masks(records: list[Record]) -> None:
    """Every record has a foreground mask (the v1.5/v2 stages need them)."""
    missing = [r.name for r in records if r.mask is None]
    if missing:
        raise TrainingDataError(f"{len(missing)} record(s) have no mask (e.g. {missing[0]!r}); this stage needs "
                                "foreground masks in mask/ (write them with `python -m training.prepare --masks`)")
