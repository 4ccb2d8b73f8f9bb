"""The released full-size key layouts of ColorizeDiffusion XL's two model types, and how they are packed.

``keys_sdxl.json.gz`` and ``keys_xlv2.json.gz`` in this folder map every state-dict key of the official model to
its shape (key → list of ints, in the official ``state_dict()`` order): the meta-device build of the official
``configs/inference/sdxl.yaml`` and ``xlv2.yaml`` of tellurion-kanata/ColorizeDiffusionXL at commit ``ec78784``,
including the CLIP tower (``cond_stage_model.model.*``), the tagger (``img_embedder.model.*``) and the DDPM buffers,
which a released file does not carry (``ckpt_util.py:79-96``). They are our own derived data, stored like the
SD2.1 families' ``keys.json.gz``: compact JSON (``separators=(",", ":")``), gzip level 9 with mtime 0, so that
packing the same layout twice gives the same bytes. :func:`pack_layout` writes one;
``python -m colorize.families.xl.layout LAYOUT_DIR`` rewrites both from ``LAYOUT_DIR/keys_xl_{sdxl,xlv2}.json``.
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Literal, Sequence

from colorize.families.base import _layout

ModelType = Literal["sdxl", "xlv2"]
#: The official model types, in the order the app tries them on a file name (``backend/appfunc.py:36-40``).
MODEL_TYPES: tuple[ModelType, ...] = ("sdxl", "xlv2")
FOLDER = Path(__file__).resolve().parent
#: Packed layout file of each model type (in this folder).
LAYOUT_FILES: dict[str, str] = {t: f"keys_{t}.json.gz" for t in MODEL_TYPES}


def layout_path(model_type: str) -> Path:
    """The packed layout file of ``model_type`` (``sdxl`` or ``xlv2``)."""
    if model_type not in LAYOUT_FILES:
        raise ValueError(f"unknown XL model type {model_type!r}; known: {', '.join(MODEL_TYPES)}")
    return FOLDER / LAYOUT_FILES[model_type]


def xl_layout(model_type: str) -> dict[str, tuple[int, ...]]:
    """Key → shape of the released full-size ``model_type`` model (incl. CLIP, tagger and schedule buffers)."""
    return dict(_layout(layout_path(model_type)))


def pack_layout(source: str | Path, target: str | Path) -> bytes:
    """Write the key → shape JSON ``source`` as a packed layout ``target`` (returns the bytes written)."""
    data = json.loads(Path(source).read_text())
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{source}: not a key -> shape-list JSON object")
    text = json.dumps({k: [int(s) for s in v] for k, v in data.items()}, separators=(",", ":"))
    packed = gzip.compress(text.encode(), compresslevel=9, mtime=0)
    Path(target).write_bytes(packed)
    return packed


def main(argv: Sequence[str] | None = None) -> int:
    """Repack both layouts from a folder holding ``keys_xl_sdxl.json`` and ``keys_xl_xlv2.json``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m colorize.families.xl.layout LAYOUT_DIR", file=sys.stderr)
        return 2
    for t in MODEL_TYPES:
        pack_layout(Path(args[0]) / f"keys_xl_{t}.json", layout_path(t))
        print(f"wrote {layout_path(t)}")
    return 0


__all__ = ["LAYOUT_FILES", "MODEL_TYPES", "ModelType", "layout_path", "main", "pack_layout", "xl_layout"]

if __name__ == "__main__":
    raise SystemExit(main())
