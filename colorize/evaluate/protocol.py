"""The two evaluation protocols of Tab. 5.4 on a folder of colour images (the ground truths).

* ``random`` (†): every ground truth's sketch is colorized with a *different*, randomly chosen ground
  truth as reference (a seeded derangement); FID between the results and the ground-truth set.
* ``tps`` (‡): every sketch is colorized with its own ground truth, TPS-deformed, as reference; PSNR,
  MS-SSIM and CLIP similarity between each result and its ground truth.

Sketches are extracted with :func:`colorize.extractors.high_pass` unless a folder of sketches with
the same file stems is given. Ground truths (and given sketches) are centre-cropped to a square and
resized to ``size``² (bicubic, antialiased). Images stream through in batches: only Inception features,
per-image scores and the few contact-sheet rows are kept, so the folder can be large.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colorize.errors import InputError
from colorize.evaluate.metrics import clip_similarity, fid_from_features, mean_finite, ms_ssim, psnr
from colorize.evaluate.tps import DEFAULT_POINTS, DEFAULT_SIGMA, random_tps
from colorize.extractors.classic import DEFAULT_SIGMA as SKETCH_SIGMA
from colorize.extractors.classic import DEFAULT_THRESHOLD, high_pass
from colorize.preprocess import load_image

PROTOCOLS = ("random", "tps")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FeatureFn = Callable[[Tensor], Tensor]
Progress = Callable[[int, int], None]


@dataclass
class EvalSettings:
    """What the evaluation generates and how (sampling defaults: the official app's)."""

    size: int = 512
    steps: int = 20
    sampler: str = "dpm_solver"
    scheduler: str = "leading"
    reference_cfg: float = 4.0
    sketch_cfg: float = 1.0
    seed: int = 0
    batch_size: int = 4
    tps_points: int = DEFAULT_POINTS
    tps_sigma: float = DEFAULT_SIGMA
    protocols: tuple[str, ...] = PROTOCOLS
    sheet_rows: int = 8

    def validate(self) -> None:
        unknown = set(self.protocols) - set(PROTOCOLS)
        if unknown or not self.protocols:
            raise InputError(f"protocols must be a non-empty subset of {PROTOCOLS}, got {self.protocols}")
        if self.size % 64:
            raise InputError(f"size must be a multiple of 64, got {self.size}")
        if self.batch_size < 1 or self.tps_points < 1:
            raise InputError("batch size and TPS points must be at least 1")

    def generation(self, seed: int) -> Any:
        from colorize.settings import GenerationSettings

        return GenerationSettings(
            steps=self.steps, sampler=self.sampler, scheduler=self.scheduler, reference_cfg=self.reference_cfg,
            sketch_cfg=self.sketch_cfg, seed=seed, width=self.size, height=self.size, polarity="invert",
        )


@dataclass
class EvalResult:
    """Summary numbers, one row per image, and the contact-sheet rows (thumbnails in [0, 1])."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    sheet: list[dict[str, Tensor]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ images


def list_images(folder: str | Path, limit: int | None = None) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (first ``limit`` only when given)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return paths[:limit] if limit else paths


def match_sketches(images: Sequence[Path], folder: str | Path) -> list[Path]:
    """The sketch file with the same stem as each image (any image suffix); names every missing one."""
    by_stem = {p.stem: p for p in list_images(folder)}
    missing = [p.stem for p in images if p.stem not in by_stem]
    if missing:
        raise InputError(f"no sketch in {folder} for {len(missing)} image(s): {', '.join(missing[:10])}")
    return [by_stem[p.stem] for p in images]


def load_square(path: str | Path, size: int) -> Tensor:
    """Image file → (1, 3, size, size) in [0, 1]: centre crop to a square, bicubic antialiased resize."""
    x = load_image(path)
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[..., top : top + s, left : left + s]
    if s != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(0, 1)


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) with no fixed point (n ≥ 2): every image gets another's reference."""
    if n < 2:
        raise InputError("the random-reference protocol needs at least 2 images")
    rng = random.Random(seed)
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(i != p for i, p in enumerate(perm)):
            return perm


def thumbnail(x: Tensor, size: int) -> Tensor:
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


# ------------------------------------------------------------------------------------------ protocol


def colorize01(colorizer: Any, sketch01: Tensor, reference01: Tensor, settings: Any) -> Tensor:
    """``Colorizer.colorize`` with both inputs and the result in [0, 1] (result on the CPU, float32)."""
    out = colorizer.colorize(sketch01, reference01, settings)
    return ((out.float() + 1.0) / 2.0).clamp(0, 1).cpu()


@torch.no_grad()
def evaluate(
    colorizer: Any,
    images: Sequence[Path],
    settings: EvalSettings,
    fid_features: FeatureFn | None = None,
    clip_encoder: nn.Module | None = None,
    sketches: Sequence[Path] | None = None,
    on_sample: Callable[[str, str, Tensor], None] | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Run the selected protocols over ``images`` (ground-truth files) with ``colorizer``.

    ``fid_features`` maps images in [0, 1] to (B, D) features (Inception pool_3 in real runs; anything in
    tests); without it no FID is computed. ``clip_encoder`` (default: the colorizer's reference encoder)
    gives the CLIP similarity. ``on_sample(protocol, name, image01)`` sees every generated image.
    """
    settings.validate()
    images = list(images)
    n = len(images)
    if n == 0:
        raise InputError("no images to evaluate")
    if sketches is not None and len(sketches) != n:
        raise InputError("need exactly one sketch per image")
    clip_encoder = clip_encoder if clip_encoder is not None else getattr(colorizer, "reference_encoder", None)
    device = getattr(colorizer, "device", torch.device("cpu"))
    device = device if device.type == "cuda" else torch.device("cpu")  # float64 metrics: CUDA or CPU
    do_random, do_tps = "random" in settings.protocols, "tps" in settings.protocols
    perm = derangement(n, settings.seed) if do_random else list(range(n))
    real_feats: list[Tensor] = []
    fake_feats: list[Tensor] = []
    rows: list[dict[str, Any]] = []
    sheet: list[dict[str, Tensor]] = []
    thumb = min(settings.size, 192)

    for start in range(0, n, settings.batch_size):
        idx = list(range(start, min(n, start + settings.batch_size)))
        gt = torch.cat([load_square(images[i], settings.size) for i in idx])
        sk = (torch.cat([load_square(sketches[i], settings.size) for i in idx]) if sketches is not None
              else high_pass(gt))
        gen = settings.generation(settings.seed + start)
        cols: dict[str, Tensor] = {"ground truth": gt, "sketch": sk}
        batch_rows = [{"name": images[i].name} for i in idx]
        if do_random:
            refs = torch.cat([load_square(images[perm[i]], settings.size) for i in idx])
            out = colorize01(colorizer, sk, refs, gen)
            cols.update({"random reference": refs, "result (random)": out})
            for r, i in zip(batch_rows, idx):
                r["random_reference"] = images[perm[i]].name
            if fid_features is not None:
                real_feats.append(fid_features(gt).double().cpu())
                fake_feats.append(fid_features(out).double().cpu())
            _emit(on_sample, "random", images, idx, out)
        if do_tps:
            refs = tps_references(gt, idx, settings)
            out = colorize01(colorizer, sk, refs, gen)
            cols.update({"TPS reference": refs, "result (TPS)": out})
            out_d, gt_d = out.to(device), gt.to(device)  # metrics on the model's device (fast on a GPU)
            scores = {"psnr": psnr(out_d, gt_d).cpu(), "ms_ssim": ms_ssim(out_d, gt_d).cpu()}
            if clip_encoder is not None:
                scores["clip_similarity"] = clip_similarity(clip_encoder, out, gt).cpu()
            for j, r in enumerate(batch_rows):
                r.update({k: float(v[j]) for k, v in scores.items()})
            _emit(on_sample, "tps", images, idx, out)
        rows.extend(batch_rows)
        for j in range(len(idx)):
            if len(sheet) < settings.sheet_rows:
                sheet.append({k: thumbnail(v[j : j + 1], thumb) for k, v in cols.items()})
        if progress is not None:
            progress(idx[-1] + 1, n)

    return EvalResult(_summary(settings, n, rows, real_feats, fake_feats, sketches is not None), rows, sheet)


def tps_references(gt: Tensor, indices: Sequence[int], settings: EvalSettings) -> Tensor:
    """Each ground truth deformed by its own seeded random TPS (independent of the batch it falls in)."""
    return torch.cat([
        random_tps(gt[j : j + 1], settings.tps_points, settings.tps_sigma,
                   torch.Generator().manual_seed(settings.seed * 1_000_003 + i))
        for j, i in enumerate(indices)
    ])


def _emit(on_sample: Callable[[str, str, Tensor], None] | None, protocol: str, images: Sequence[Path],
          idx: list[int], out: Tensor) -> None:
    if on_sample is not None:
        for j, i in enumerate(idx):
            on_sample(protocol, images[i].stem, out[j : j + 1])


def _summary(settings: EvalSettings, n: int, rows: list[dict[str, Any]], real: list[Tensor], fake: list[Tensor],
             given_sketches: bool) -> dict[str, Any]:
    s: dict[str, Any] = {
        "images": n,
        **{k: v for k, v in dataclasses.asdict(settings).items() if k not in ("sheet_rows", "batch_size")},
        "protocols": list(settings.protocols),
        "batch_size": settings.batch_size,
        "sketches": "given" if given_sketches else f"extracted (high_pass, sigma={SKETCH_SIGMA}, threshold={DEFAULT_THRESHOLD})",
    }
    if "random" in settings.protocols:
        s["fid"] = fid_from_features(torch.cat(fake), torch.cat(real)) if real else None
        if real and n < 2048:
            s["fid_note"] = f"only {n} images (< 2048 feature dimensions): FID is biased upwards; the thesis used 52k"
    if "tps" in settings.protocols:
        for key in ("psnr", "ms_ssim", "clip_similarity"):
            vals = [r[key] for r in rows if key in r]
            s[key] = mean_finite(vals) if vals else None
    return s


__all__ = [
    "EvalResult",
    "EvalSettings",
    "PROTOCOLS",
    "colorize01",
    "derangement",
    "evaluate",
    "list_images",
    "load_square",
    "match_sketches",
    "tps_references",
]
