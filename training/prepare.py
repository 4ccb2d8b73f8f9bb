"""Prepare a training set from a folder of colour images: extract sketches (and optionally masks) with no weights.

``python -m training.prepare --images DIR --out ROOT [--layout folders|zip] [--shard-size 1000] [--masks]``
``python -m training.prepare --tags TAGS.json|csv --out ROOT [--max-tags 6000] [--min-tag-count 1]`` (also with
``--images``): the tag vocabulary ``ROOT/vocabulary.json`` of the stages that read tags (:mod:`training.tags`)

* sketches: ``colorize.extractors.high_pass`` (high-pass line extractor, no network; thesis §3.2 uses
  SketchKeras / Anime2Sketch ensembles — extract with those elsewhere and drop the files into ``sketch/`` for
  better data);
* masks (``--masks``): the no-weight silhouette of the extracted sketch (``colorize.masks.sketch_foreground_mask``),
  only needed by the v1.5/v2 stages;
* ``image_list.json``: name → ``{resolution (short edge), exist_sketch}`` for the resolution filter.

Layouts: ``folders`` writes ``ROOT/color/<rel>`` (a copy of the original file), ``ROOT/sketch/<rel stem>.png``,
``ROOT/mask/<rel stem>.png``; ``zip`` writes official-style shards ``ROOT/{color,sketch,mask}/NNNN.zip`` whose
members all carry the colour file's relative name (sketch and mask members hold PNG data whatever the name
says; readers decode by content). Existing folder outputs are skipped, so an interrupted run can be restarted.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import torch
from PIL import Image

from colorize.atomic import atomic_path
from colorize.extractors.classic import DEFAULT_SIGMA, DEFAULT_THRESHOLD, high_pass
from colorize.preprocess import load_image
from training.data import IMAGE_EXTS


def find_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _gray_png(x01: torch.Tensor) -> bytes:
    """(H, W) in [0, 1] → 8-bit grayscale PNG bytes."""
    arr = (x01.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def process(path: Path, sigma: float, threshold: float, masks: bool) -> tuple[bytes, bytes | None, int]:
    """One colour image → (sketch PNG, mask PNG or None, short edge)."""
    image = load_image(path)
    sketch = high_pass(image, sigma=sigma, threshold=threshold)
    mask_png = None
    if masks:
        from colorize.masks import sketch_foreground_mask

        mask_png = _gray_png(sketch_foreground_mask(sketch)[0])
    return _gray_png(sketch[0, 0]), mask_png, int(min(image.shape[-2:]))


def _write(path: Path, data: bytes) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_bytes(data)


def _chunks(items: list[Path], size: int) -> Iterator[tuple[int, list[Path]]]:
    for i in range(0, len(items), size):
        yield i // size, items[i:i + size]


def prepare(
    images: str | Path,
    out: str | Path,
    layout: str = "folders",
    shard_size: int = 1000,
    masks: bool = False,
    sigma: float = DEFAULT_SIGMA,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, dict[str, object]]:
    """Build the dataset; returns the image list written to ``out/image_list.json``."""
    images, out = Path(images), Path(out)
    files = find_images(images)
    if not files:
        raise SystemExit(f"no images ({', '.join(IMAGE_EXTS)}) under {images}")
    info: dict[str, dict[str, object]] = {}
    if layout == "folders":
        for f in files:
            rel = f.relative_to(images)
            stem = rel.with_suffix(".png").as_posix()
            sketch_path = out / "sketch" / stem
            if sketch_path.exists() and (out / "color" / rel).exists() and (not masks or (out / "mask" / stem).exists()):
                with Image.open(f) as im:
                    info[rel.as_posix()] = {"resolution": min(im.size), "exist_sketch": True}
                continue
            sk, mk, res = process(f, sigma, threshold, masks)
            (out / "color" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, out / "color" / rel)
            _write(sketch_path, sk)
            if mk is not None:
                _write(out / "mask" / stem, mk)
            info[rel.as_posix()] = {"resolution": res, "exist_sketch": True}
    elif layout == "zip":
        subs = ("color", "sketch", "mask") if masks else ("color", "sketch")
        for index, chunk in _chunks(files, shard_size):
            with ExitStack() as stack:
                zips = {}
                for sub in subs:
                    tmp = stack.enter_context(atomic_path(out / sub / f"{index:04d}.zip", overwrite=True))
                    zips[sub] = zipfile.ZipFile(tmp, "w")
                    stack.callback(zips[sub].close)  # runs before the atomic rename (LIFO)
                for f in chunk:
                    member = f.relative_to(images).as_posix()
                    sk, mk, res = process(f, sigma, threshold, masks)
                    zips["color"].write(f, member)
                    zips["sketch"].writestr(member, sk)
                    if mk is not None:
                        zips["mask"].writestr(member, mk)
                    info[member] = {"resolution": res, "exist_sketch": True}
    else:
        raise ValueError(f"unknown layout {layout!r}; use folders or zip")
    _write(out / "image_list.json", json.dumps(info, indent=1, sort_keys=True).encode())
    return info


def prepare_vocabulary(tags_file: str | Path, out: str | Path, max_tags: int | None = 6000,
                       min_count: int = 1) -> Path:
    """Build ``out/vocabulary.json`` from a tags file (:mod:`training.tags`); returns its path."""
    from training.tags import VOCABULARY_FILE, build_vocabulary, read_tags_file, write_vocabulary

    vocab = build_vocabulary(read_tags_file(tags_file), max_tags, min_count)
    return write_vocabulary(vocab, Path(out) / VOCABULARY_FILE)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", help="folder of colour images (searched recursively)")
    ap.add_argument("--out", required=True, help="dataset root to write")
    ap.add_argument("--layout", choices=("folders", "zip"), default="folders")
    ap.add_argument("--shard-size", type=int, default=1000, help="images per zip shard (zip layout)")
    ap.add_argument("--masks", action="store_true", help="also write no-weight foreground masks (v1.5/v2 stages)")
    ap.add_argument("--sigma", type=float, default=DEFAULT_SIGMA, help="extractor blur sigma (px)")
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="extractor response cut-off")
    ap.add_argument("--tags", help="tags file (JSON name → tags, or CSV with name,tags columns): write the tag "
                    "vocabulary OUT/vocabulary.json")
    ap.add_argument("--max-tags", type=int, default=6000, help="vocabulary size: the most frequent tags (thesis 6,000)")
    ap.add_argument("--min-tag-count", type=int, default=1, help="leave out tags on fewer images")
    a = ap.parse_args(argv)
    if not a.images and not a.tags:
        ap.error("give --images (sketches from colour images) and/or --tags (the tag vocabulary)")
    if a.images:
        info = prepare(a.images, a.out, a.layout, a.shard_size, a.masks, a.sigma, a.threshold)
        print(f"prepared {len(info)} images under {a.out} ({a.layout})")
    if a.tags:
        from training.errors import TrainingError

        try:
            path = prepare_vocabulary(a.tags, a.out, a.max_tags, a.min_tag_count)
        except TrainingError as e:
            raise SystemExit(f"error: {e}") from None
        print(f"wrote the tag vocabulary {path}")


if __name__ == "__main__":
    main()
