"""``python -m colorize evaluate --images DIR --out DIR``: the Tab. 5.4 protocols on your own images."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from colorize.device import PRECISIONS
from colorize.evaluate.protocol import PROTOCOLS, EvalSettings
from colorize.evaluate.tps import DEFAULT_POINTS, DEFAULT_SIGMA


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m colorize evaluate",
        description="Colorize a folder of colour images from their (extracted) sketches and score the results: "
        "random references → FID against the folder; TPS-deformed ground truths as references → PSNR, MS-SSIM, "
        "CLIP similarity (thesis Tab. 5.4). Writes summary.json/csv, per_image.csv and contact_sheet.png.",
    )
    p.add_argument("--images", required=True, type=Path, help="folder of colour images (the ground truths)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--sketches", type=Path, default=None, help="folder of sketches with the same file stems (default: extract)")
    p.add_argument("--checkpoint", default=None, help="checkpoint path or manifest name (default: the v1 checkpoint)")
    p.add_argument("--clip", default=None, help="OpenCLIP ViT-H-14 file or manifest name (reference encoder and CLIP score)")
    p.add_argument("--inception", default="fid-inception", help="FID Inception weights: path or manifest name")
    p.add_argument("--no-fid", action="store_true", help="skip FID (no Inception weights needed)")
    p.add_argument("--models-dir", type=Path, default=None, help="models folder (default: $COLORIZE_MODELS_DIR or a user cache)")
    p.add_argument("--no-download", action="store_true", help="never download missing weights")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images (sorted by name)")
    p.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    p.add_argument("--size", type=int, default=512, help="square evaluation size, a multiple of 64 (thesis: 512 or 768)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="dpm_solver")
    p.add_argument("--scheduler", default="leading")
    p.add_argument("--ref-cfg", type=float, default=4.0)
    p.add_argument("--sketch-cfg", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tps-points", type=int, default=DEFAULT_POINTS, help="TPS control points per reference")
    p.add_argument("--tps-sigma", type=float, default=DEFAULT_SIGMA,
                   help="TPS displacement std as a fraction of the image side (default 10/224, the official warp)")
    p.add_argument("--sheet-rows", type=int, default=8, help="images shown in contact_sheet.png")
    p.add_argument("--save-images", action="store_true", help="also write every result to OUT/samples/<protocol>/")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p


def load_models(args: argparse.Namespace) -> tuple[Any, Any]:
    """(colorizer, FID feature extractor or None); every missing weights file is named in one error."""
    from colorize.errors import InputError, WeightsMissingError
    from colorize.evaluate.inception import load_inception, resolve_inception
    from colorize.pipeline import Colorizer
    from colorize.weights import default_checkpoint_name, default_clip_name, resolve

    paths, missing = [], []
    for name in (args.checkpoint or default_checkpoint_name(), args.clip or default_clip_name()):
        try:
            paths.append(resolve(name, args.models_dir, download=not args.no_download))
        except WeightsMissingError as e:
            missing.append(str(e))
    inception = None
    if not args.no_fid and "random" in args.protocols:
        try:
            inception = resolve_inception(args.inception, args.models_dir, download=not args.no_download)
        except WeightsMissingError as e:
            missing.append(str(e))
    if missing:
        raise WeightsMissingError("\n\n".join(missing))
    model = Colorizer.from_files(*paths, device=args.device, precision=args.precision)
    try:
        features = load_inception(inception, model.device) if inception is not None else None
    except ValueError as e:
        raise InputError(f"cannot use {inception} as FID Inception weights: {e}") from None
    return model, features


def _saver(out: Path, overwrite: bool) -> Any:
    from colorize.atomic import atomic_path
    from colorize.preprocess import tensor_to_pil

    def save(protocol: str, stem: str, image01: Any) -> None:
        with atomic_path(out / "samples" / protocol / f"{stem}.png", overwrite=overwrite) as tmp:
            tensor_to_pil(image01 * 2 - 1)[0].save(tmp, format="PNG")

    return save


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from colorize.errors import user_errors

    with user_errors() as status:
        status.code = _evaluate(args)
    return status.code


def _evaluate(args: argparse.Namespace) -> int:
    from colorize.errors import InputError
    from colorize.evaluate.protocol import evaluate, list_images, match_sketches
    from colorize.evaluate.report import OUTPUT_FILES, format_summary, write_report
    from colorize.progress import ProgressBar

    settings = EvalSettings(
        size=args.size, steps=args.steps, sampler=args.sampler, scheduler=args.scheduler, reference_cfg=args.ref_cfg,
        sketch_cfg=args.sketch_cfg, seed=args.seed, batch_size=args.batch_size, tps_points=args.tps_points,
        tps_sigma=args.tps_sigma, protocols=tuple(args.protocols), sheet_rows=args.sheet_rows,
    )
    settings.validate()
    settings.generation(args.seed).validate()
    images = list_images(args.images, args.limit)
    if len(images) < 2:
        raise InputError(f"{args.images} holds {len(images)} image(s); the evaluation needs at least 2")
    sketches = match_sketches(images, args.sketches) if args.sketches is not None else None
    existing = [str(args.out / f) for f in OUTPUT_FILES if (args.out / f).exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{', '.join(existing)} exist(s); pass --overwrite or choose another --out")
    model, features = load_models(args)
    bar = ProgressBar(len(images), "evaluating")
    result = evaluate(
        model, images, settings, fid_features=features, sketches=sketches,
        on_sample=_saver(args.out, args.overwrite) if args.save_images else None,
        progress=lambda done, total: bar.update(done - bar.n),
    )
    bar.close()
    result.summary.update({"checkpoint": str(args.checkpoint or "default"), "device": str(model.device),
                           "precision": str(model.dtype).removeprefix("torch."),
                           "fid_extractor": None if features is None else str(args.inception)})
    paths = write_report(result, args.out, overwrite=args.overwrite)
    print(format_summary(result.summary))
    for p in paths.values():
        print(f"wrote {p}")
    return 0


__all__ = ["build_parser", "load_models", "main"]
