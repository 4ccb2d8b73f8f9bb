"""Writing an evaluation: summary JSON/CSV, per-image CSV and a contact sheet, each file atomically."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, ImageDraw

from colorize.atomic import atomic_path
from colorize.evaluate.protocol import EvalResult

SUMMARY_COLUMNS = ("images", "size", "steps", "sampler", "scheduler", "reference_cfg", "sketch_cfg", "seed",
                   "fid", "psnr", "ms_ssim", "clip_similarity")
OUTPUT_FILES = ("summary.json", "summary.csv", "per_image.csv", "contact_sheet.png")


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str], overwrite: bool) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})


def contact_sheet(sheet: Sequence[dict[str, torch.Tensor]], pad: int = 4, header: int = 16) -> Image.Image:
    """One row per image, one column per stage (ground truth, sketch, references, results), labelled."""
    if not sheet:
        return Image.new("RGB", (1, 1), "white")
    names = list(sheet[0].keys())
    t = sheet[0][names[0]].shape[-1]
    width, height = pad + len(names) * (t + pad), header + pad + len(sheet) * (t + pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(names):
        draw.text((pad + c * (t + pad), 2), name, fill="black")
    for r, row in enumerate(sheet):
        for c, name in enumerate(names):
            arr = (row[name][0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            canvas.paste(Image.fromarray(arr), (pad + c * (t + pad), header + pad + r * (t + pad)))
    return canvas


def write_report(result: EvalResult, out_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Write ``summary.json``, ``summary.csv``, ``per_image.csv`` and ``contact_sheet.png`` into ``out_dir``."""
    out = Path(out_dir)
    paths = {name: out / name for name in OUTPUT_FILES}
    if not overwrite:
        existing = [str(p) for p in paths.values() if p.exists()]
        if existing:
            raise FileExistsError(f"{', '.join(existing)} exist(s); pass --overwrite or choose another --out")
    with atomic_path(paths["summary.json"], overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(_jsonable({"summary": result.summary, "per_image": result.rows}), indent=1) + "\n")
    _write_csv(paths["summary.csv"], [result.summary], SUMMARY_COLUMNS, overwrite)
    columns = ["name", "random_reference", "psnr", "ms_ssim", "clip_similarity"]
    present = [c for c in columns if any(c in r for r in result.rows)]
    _write_csv(paths["per_image.csv"], result.rows, present, overwrite)
    with atomic_path(paths["contact_sheet.png"], overwrite=overwrite) as tmp:
        contact_sheet(result.sheet).save(tmp, format="PNG")
    return paths


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable table of the headline numbers."""
    lines = [f"images: {summary['images']} at {summary['size']}², {summary['steps']} steps {summary['sampler']}/"
             f"{summary['scheduler']}, reference CFG {summary['reference_cfg']}, sketch CFG {summary['sketch_cfg']}"]
    for key, label in (("fid", "FID (random references) ↓"), ("psnr", "PSNR dB (TPS references) ↑"),
                       ("ms_ssim", "MS-SSIM (TPS references) ↑"), ("clip_similarity", "CLIP similarity (TPS references) ↑")):
        if key in summary:
            v = summary[key]
            lines.append(f"  {label:<36} {'n/a' if v is None else f'{v:.4f}'}")
    if "fid_note" in summary:
        lines.append(f"  note: {summary['fid_note']}")
    return "\n".join(lines)


__all__ = ["OUTPUT_FILES", "contact_sheet", "format_summary", "write_report"]
