"""Synthetic triplets for smoke tests and benchmarks: coloured shapes and their black outlines.

``python -m training.synthetic OUT --count 16 --size 96 [--layout zip]`` writes a dataset in either layout.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw


def draw_pair(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    """A colour image of 2–4 filled shapes on a flat background and its line drawing (black on white)."""
    color, sketch, _ = draw_triplet(rng, size)
    return color, sketch


#: Named colours of the tagged synthetic data: its tags are ``<colour>_shape`` and ``<colour>_background``.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
    "purple": (150, 60, 190), "white": (245, 245, 245),
}


def draw_triplet(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, Image.Image, Image.Image]:
    """:func:`draw_pair` plus the foreground mask (the shapes, 255; the flat background 0); same draws."""
    color, sketch, mask, _ = _draw(rng, size, None)
    return color, sketch, mask


def draw_tagged_triplet(rng: random.Random, size: tuple[int, int]
                        ) -> tuple[Image.Image, Image.Image, Image.Image, list[str]]:
    """:func:`draw_triplet` with colours from :data:`PALETTE` (background and shapes distinct) and the tags that
    name them (``red_shape``, ``blue_background``, ...)."""
    return _draw(rng, size, PALETTE)


def _draw(rng: random.Random, size: tuple[int, int], palette: dict[str, tuple[int, int, int]] | None
          ) -> tuple[Image.Image, Image.Image, Image.Image, list[str]]:
    w, h = size
    names = sorted(palette) if palette else []
    tags: list[str] = []
    if palette:
        bg_name = rng.choice(names)
        bg: tuple[int, ...] = palette[bg_name]
        tags.append(f"{bg_name}_background")
        names = [n for n in names if n != bg_name]
    else:
        bg = tuple(rng.randrange(256) for _ in range(3))
    color = Image.new("RGB", size, bg)
    sketch = Image.new("L", size, 255)
    mask = Image.new("L", size, 0)
    dc, ds, dm = ImageDraw.Draw(color), ImageDraw.Draw(sketch), ImageDraw.Draw(mask)
    for _ in range(rng.randint(2, 4)):
        x0, y0 = rng.randrange(0, w * 2 // 3), rng.randrange(0, h * 2 // 3)
        x1, y1 = x0 + rng.randrange(w // 6, w // 2), y0 + rng.randrange(h // 6, h // 2)
        if palette:
            fill_name = rng.choice(names)
            fill: tuple[int, ...] = palette[fill_name]
            tags.append(f"{fill_name}_shape")
        else:
            fill = tuple(rng.randrange(256) for _ in range(3))
        box = (x0, y0, min(x1, w - 1), min(y1, h - 1))
        if rng.random() < 0.5:
            dc.ellipse(box, fill=fill, outline=(0, 0, 0), width=2)
            ds.ellipse(box, outline=0, width=2)
            dm.ellipse(box, fill=255)
        else:
            dc.rectangle(box, fill=fill, outline=(0, 0, 0), width=2)
            ds.rectangle(box, outline=0, width=2)
            dm.rectangle(box, fill=255)
    return color, sketch, mask, list(dict.fromkeys(tags))


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def make_synthetic_dataset(
    root: str | Path,
    count: int = 8,
    size: tuple[int, int] = (96, 96),
    layout: str = "folders",
    seed: int = 0,
    shard_size: int = 4,
    image_list: bool = True,
    masks: bool = False,
    tags: bool = False,
) -> Path:
    """Write ``count`` triplets under ``root`` (folders or zip shards) and an ``image_list.json`` with made-up
    aesthetic scores (item i scores ``i % 10``) and the true resolutions (short edge); ``masks`` also writes the
    shapes' foreground masks (``mask/``, for the v1.5/v2 stages); ``tags`` draws the colours from
    :data:`PALETTE` and writes ``tags.json`` (image name → the colours' tags) and its ``vocabulary.json``."""
    root = Path(root)
    rng = random.Random(seed)
    drawn = [draw_tagged_triplet(rng, size) if tags else (*draw_triplet(rng, size), []) for _ in range(count)]
    triplets = [d[:3] for d in drawn]
    names = [f"{i:05d}.png" for i in range(count)]
    subs = ("color", "sketch", "mask") if masks else ("color", "sketch")
    if layout == "folders":
        for sub in subs:
            (root / sub).mkdir(parents=True, exist_ok=True)
        for name, parts in zip(names, triplets):
            for sub, im in zip(subs, parts):
                im.save(root / sub / name)
    elif layout == "zip":
        for sub in subs:
            (root / sub).mkdir(parents=True, exist_ok=True)
        for start in range(0, count, shard_size):
            shard = f"{start // shard_size:04d}.zip"
            zips = [zipfile.ZipFile(root / sub / shard, "w") for sub in subs]
            try:
                for name, parts in list(zip(names, triplets))[start:start + shard_size]:
                    for zf, im in zip(zips, parts):
                        zf.writestr(name, _png(im))
            finally:
                for zf in zips:
                    zf.close()
    else:
        raise ValueError(f"unknown layout {layout!r}")
    if image_list:
        info = {n: {"aesthetic_score": float(i % 10), "resolution": min(size), "exist_sketch": True}
                for i, n in enumerate(names)}
        (root / "image_list.json").write_text(json.dumps(info, indent=1))
    if tags:
        from training.tags import VOCABULARY_FILE, build_vocabulary, write_vocabulary

        by_name = {n: d[3] for n, d in zip(names, drawn)}
        (root / "tags.json").write_text(json.dumps(by_name, indent=1))
        write_vocabulary(build_vocabulary(by_name, None), root / VOCABULARY_FILE)
    return root


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--layout", choices=("folders", "zip"), default="folders")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--masks", action="store_true", help="also write the foreground masks (mask/), which the "
                    "v1.5, v2 and XL stages need")
    ap.add_argument("--tags", action="store_true", help="named colours, tags.json and vocabulary.json (the stages "
                    "that read tags)")
    a = ap.parse_args(argv)
    print(make_synthetic_dataset(a.out, a.count, (a.size, a.size), a.layout, a.seed, masks=a.masks, tags=a.tags))


if __name__ == "__main__":
    main()
