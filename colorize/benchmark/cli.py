"""``python -m colorize bench``: speed, memory and FLOPs of the pipeline at chosen resolutions."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from colorize.benchmark import options
from colorize.benchmark.models import BENCH_FAMILIES
from colorize.device import PRECISIONS


def _size(text: str) -> tuple[int, int]:
    """``512`` → (512, 512); ``768x512`` (width x height) → (512, 768)."""
    try:
        if "x" in text.lower():
            w, h = text.lower().split("x")
            return int(h), int(w)
        return int(text), int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must be N or WxH, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m colorize bench",
        description="Time reference+sketch encoding, the sampling loop, one U-Net call at the CFG batch size and "
        "VAE decode; peak memory, U-Net FLOPs and achieved TFLOP/s. Median of --runs after --warmup. Without "
        "--checkpoint the modules get random weights, built on the device (full size on CUDA, tiny elsewhere) for "
        "--family mult (v1, SD2.1), sdxl or xlv2 (ColorizeDiffusion XL).",
    )
    p.add_argument("--res", nargs="+", type=_size, default=None,
                   help="resolutions, N or WxH, multiples of 64 (XL: of 32) (default: 512 768 1024 full size, XL 1024; "
                        "64 128 tiny)")
    p.add_argument("--family", choices=BENCH_FAMILIES, default="mult",
                   help="random-weight model without --checkpoint: mult (v1, SD2.1; the rows compared with the "
                        "official figures), sdxl or xlv2 (XL, CLIP-bigG + WD tagger; xlv2 adds the ReferenceNet)")
    p.add_argument("--bg-enhance", action="store_true",
                   help="background separation on (XL, v1.5, v2 checkpoints), synthetic central-box sketch and "
                        "reference masks; its conditioning is timed as separation ms")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default=None,
                   help="default: dpmpp_2m (the official figures' sampler) for mult, the family's own otherwise "
                        "(XL: dpmpp_3m_sde)")
    p.add_argument("--scheduler", default=None, help="default: karras with dpmpp_2m, else auto (the sampler's own)")
    p.add_argument("--ref-cfg", type=float, default=4.0)
    p.add_argument("--sketch-cfg", type=float, default=1.0)
    p.add_argument("--injection", action="store_true",
                   help="attention injection on (official default fidelity 0.5): times the write + read passes")
    p.add_argument("--batch", type=int, default=1, help="images per generation")
    p.add_argument("--runs", type=int, default=3, help="measured generations per resolution (median)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured generations first")
    p.add_argument("--unet-iters", type=int, default=10, help="timed single U-Net calls (median)")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    p.add_argument("--config", choices=("auto", "full", "tiny"), default="auto",
                   help="random-weight model size without --checkpoint (auto: full on CUDA, tiny elsewhere)")
    p.add_argument("--checkpoint", default=None, help="benchmark a real checkpoint (path or manifest name)")
    p.add_argument("--clip", default=None, help="CLIP file or manifest name for --checkpoint")
    p.add_argument("--tagger", default=None, help="XL --checkpoint: the WD tagger file or manifest name")
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--official", type=Path, default=None,
                   help="the official figures (default: $COLORIZE_BENCHMARKS or shared/benchmarks/official-v1-h200.json)")
    p.add_argument("--report", type=Path, default=None, metavar="BENCH_JSON",
                   help="run nothing: print the table of an earlier --json, beside the official figures when the GPU matches")
    p.add_argument("--isnet", type=int, default=None, metavar="CANVAS",
                   help="run only one forward of the full-size ISNet mask network on a CANVAS² image (1024 in the "
                        "official apps; random weights): the time and memory a mask adds")
    p.add_argument("--gan", type=int, default=None, metavar="RES",
                   help="run only one forward of the chapter-4 GAN (tag encoder + generator, random weights; full "
                        "size, --config tiny for a small one) on a RES² sketch: compare with thesis Tab. 5.5's 57 ms "
                        "at 1024")
    options.add_arguments(p)
    return p


def _family(args: argparse.Namespace) -> Any:
    """The family benchmarked: the checkpoint's (detected from its keys) or ``--family``."""
    from colorize.families import detect_family, get_family

    if args.checkpoint is None:
        return get_family(args.family)
    from colorize.checkpoint import read_header
    from colorize.weights import resolve

    ckpt = resolve(args.checkpoint, args.models_dir)
    return detect_family(read_header(ckpt), source=ckpt.name)


def _model(args: argparse.Namespace, family: Any) -> tuple[Any, dict[str, Any]]:
    from colorize.benchmark.models import loaded_colorizer, random_colorizer, random_xl_colorizer
    from colorize.config import PRESETS
    from colorize.device import resolve_device
    from colorize.weights import default_clip_name, resolve

    if args.checkpoint is not None:
        ckpt = resolve(args.checkpoint, args.models_dir)
        refs = family.reference_files
        clip = resolve(args.clip or (refs[0] if refs else default_clip_name()), args.models_dir)
        tagger = resolve(args.tagger or refs[1], args.models_dir) if refs or args.tagger else None
        model, info = loaded_colorizer(ckpt, clip, args.device, args.precision, tagger=tagger)
        return model, {**info, "config": "checkpoint", "family": family.name}
    device = resolve_device(args.device)
    name = _config_name(args, device)
    if family.name != "mult":
        model, info = random_xl_colorizer(family.name, name, device, args.precision, args.seed,
                                          low_vram=args.low_vram)
        return model, {**info, "config": name, "clip_text_tower": False}
    model, info = random_colorizer(PRESETS[name], device, args.precision, args.seed, with_text=args.with_text,
                                   low_vram=args.low_vram)
    return model, {**info, "config": name, "family": "mult", "clip_text_tower": args.with_text}


def _config_name(args: argparse.Namespace, device: Any) -> str:
    return args.config if args.config != "auto" else ("full" if device.type == "cuda" else "tiny")


def _official_block(results: Sequence[dict[str, Any]], device_name: str | None, path: Path | None,
                    family: str = "mult") -> dict[str, Any] | None:
    from colorize.benchmark.report import comparison, find_official, load_official, same_gpu

    if family != "mult":  # the official figures are v1's
        return None
    found = find_official(path)
    if found is None:
        return None
    official = load_official(found)
    if not same_gpu(device_name, official["device_name"]):
        return None
    return {"path": str(found), "device_name": official["device_name"], "rows": comparison(results, official)}


def _print_all(doc: dict[str, Any], official_path: Path | None) -> dict[str, Any] | None:
    from colorize.benchmark.report import format_comparison, format_table

    env = doc["env"]
    family = doc["model"].get("family", "mult")
    print(f"{env.get('device_name')} ({env['device']}), torch {env['torch']}, {doc['model']['config']} {family} model, "
          f"{doc['settings']['precision']}, {doc['settings']['steps']} steps {doc['settings']['sampler']}/"
          f"{doc['settings']['scheduler']}, reference CFG {doc['settings']['ref_cfg']}, sketch CFG "
          f"{doc['settings']['sketch_cfg']}, batch {doc['settings']['batch']}, median of {doc['settings']['runs']}")
    if doc.get("options"):
        print("options: " + json.dumps({k: v for k, v in doc["options"].items() if v not in (None, False, [])}))
    ok = [r for r in doc["results"] if "error" not in r]
    print(format_table(ok))
    for r in doc["results"]:
        if "error" in r:
            print(f"{r['res']}: {r['error']}")
    if doc.get("tolerance"):
        print("precision vs fp32 (decoded image): " + json.dumps(
            {p: v.get("image", v) for p, v in doc["tolerance"].items() if isinstance(v, dict)}))
    block = _official_block(ok, env.get("device_name"), official_path, family)
    if block is not None and block["rows"]:
        print()
        print(format_comparison(block["rows"], block["device_name"]))
    return block


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from colorize.errors import user_errors

    with user_errors() as status:
        status.code = (_report(args) if args.report is not None else _bench_isnet(args) if args.isnet is not None
                       else _bench_gan(args) if args.gan is not None else _bench(args))
    return status.code


def _bench_isnet(args: argparse.Namespace) -> int:
    from colorize.benchmark.isnet import bench_isnet, format_isnet
    from colorize.benchmark.report import environment
    from colorize.device import resolve_device
    from colorize.errors import InputError

    if not 64 <= args.isnet <= 4096:
        raise InputError(f"--isnet must be a canvas side from 64 to 4096, got {args.isnet}")
    _check_json_target(args)
    device = resolve_device(args.device)
    result = bench_isnet(device, args.isnet, max(1, args.runs), max(0, args.warmup), args.seed)
    env = environment(device)
    print(format_isnet(result, str(env.get("device_name") or device)))
    _write_json(args, {"env": env, "isnet": result})
    return 0


def _bench_gan(args: argparse.Namespace) -> int:
    from colorize.benchmark.gan import bench_gan, format_gan
    from colorize.benchmark.report import environment
    from colorize.device import resolve_device, resolve_dtype
    from colorize.errors import InputError

    if args.gan < 32 or args.gan % 32 or args.gan > 4096:
        raise InputError(f"--gan must be a multiple of 32 from 32 to 4096 (the generator's stride), got {args.gan}")
    _check_json_target(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype("fp32" if args.precision == "auto" else args.precision, device)
    result = bench_gan(device, args.gan, max(1, args.runs), max(0, args.warmup), args.seed, dtype,
                       "tiny" if args.config == "tiny" else "full")
    env = environment(device)
    print(format_gan(result, str(env.get("device_name") or device)))
    _write_json(args, {"env": env, "gan": result})
    return 0


def _check_json_target(args: argparse.Namespace) -> None:
    if args.json is not None and args.json.exists() and not args.overwrite:
        raise FileExistsError(f"{args.json} exists; pass --overwrite or choose another --json")


def _write_json(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    from colorize.atomic import atomic_path

    if args.json is not None:
        with atomic_path(args.json, overwrite=args.overwrite) as tmp:
            tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def _report(args: argparse.Namespace) -> int:
    from colorize.errors import InputError

    if not args.report.is_file():
        raise InputError(f"benchmark JSON not found: {args.report}")
    _print_all(json.loads(args.report.read_text(encoding="utf-8")), args.official)
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    from colorize.atomic import atomic_path
    from colorize.benchmark.measure import bench_size
    from colorize.benchmark.report import environment
    from colorize.errors import InputError
    from colorize.settings import GenerationSettings

    if args.json is not None and args.json.exists() and not args.overwrite:
        raise FileExistsError(f"{args.json} exists; pass --overwrite or choose another --json")
    if min(args.runs, args.unet_iters, args.batch) < 1 or args.warmup < 0:
        raise InputError("--runs, --unet-iters and --batch must be at least 1, --warmup at least 0")
    from colorize.device import resolve_device
    from colorize.settings import EnhanceSettings

    options.check(args, resolve_device(args.device))  # before a checkpoint is looked for
    family = _family(args)
    sampler = args.sampler or ("dpmpp_2m" if family.name == "mult" else family.default_sampling[0])
    scheduler = args.scheduler or ("karras" if sampler == "dpmpp_2m" else "auto")
    args.sampler, args.scheduler = sampler, scheduler  # recorded in the JSON as run
    settings = GenerationSettings(steps=args.steps, sampler=sampler, scheduler=scheduler,
                                  reference_cfg=args.ref_cfg, sketch_cfg=args.sketch_cfg, seed=args.seed,
                                  injection=args.injection)
    settings.validate(family)
    enhance = EnhanceSettings(background_enhance=True) if args.bg_enhance else None
    if enhance is not None:
        family.check_enhance(enhance)
    xl = bool(family.reference_files)
    if xl and (args.with_text or args.tolerance):
        raise InputError(f"{' and '.join(f for f, on in (('--with-text', args.with_text), ('--tolerance', args.tolerance)) if on)}"
                         f": not for {family.label} (no CLIP text tower; the precision check builds SD2.1 models)")
    start = time.perf_counter()
    config_name = "checkpoint" if args.checkpoint is not None else _config_name(args, resolve_device(args.device))
    default_sizes = ([(1024, 1024)] if xl else [(512, 512), (768, 768), (1024, 1024)]) if config_name != "tiny" \
        else [(64, 64), (128, 128)]
    sizes = args.res or default_sizes
    if xl:
        for h, w in sizes:
            family.check_size(w, h)
    else:
        bad = [f"{w}x{h}" for h, w in sizes if h % 64 or w % 64]
        if bad:
            raise InputError(f"resolutions must be multiples of 64: {', '.join(bad)}")
    model, info = _model(args, family)
    applied = options.apply(model, args)
    device, dtype = model.device, model.dtype
    results = []
    with torch.inference_mode():
        for size in sizes:
            try:
                results.append(bench_size(model, size, settings, args.runs, args.warmup, args.unet_iters, args.batch,
                                          flops=not args.no_flops, enhance=enhance))
            except torch.OutOfMemoryError as exc:  # e.g. under --memory-cap-gib: recorded, the other sizes still run
                results.append({"res": f"{size[1]}x{size[0]}", "height": size[0], "width": size[1],
                                "error": f"out of memory: {str(exc).splitlines()[0][:300]}"})
                _free(device)
    env = environment(device)
    del model  # the precision check builds its own models
    _free(device)
    tolerance = None
    if args.tolerance:
        from colorize.benchmark.tolerance import precision_tolerance
        from colorize.config import PRESETS

        res = args.tolerance_res
        tol_size = (res, res) if res else min(sizes, key=lambda hw: hw[0] * hw[1])
        tolerance = precision_tolerance(PRESETS[info["config"]], device, tol_size, settings, args.seed)
    extras = ("; XL ClusterConcat float32" + (f", ReferenceNet {str(dtype).removeprefix('torch.')}"
                                             if family.name == "xlv2" else "")) if xl else ""
    doc: dict[str, Any] = {
        "env": env,
        "model": info,
        "settings": {"steps": args.steps, "sampler": args.sampler, "scheduler": args.scheduler, "ref_cfg": args.ref_cfg,
                     "sketch_cfg": args.sketch_cfg, "injection": args.injection, "bg_enhance": args.bg_enhance,
                     "batch": args.batch,
                     "runs": args.runs, "warmup": args.warmup,
                     "unet_iters": args.unet_iters, "seed": args.seed,
                     "precision": f"U-Net blocks and sketch encoder {str(dtype).removeprefix('torch.')}; "
                                  f"U-Net time embedding/out, VAE and CLIP float32{extras}"},
        "options": options.finish(applied),
        "results": results,
        "tolerance": tolerance,
        "elapsed_s": None,
    }
    doc["official"] = _print_all(doc, args.official)
    doc["elapsed_s"] = round(time.perf_counter() - start, 2)
    if args.json is not None:
        with atomic_path(args.json, overwrite=args.overwrite) as tmp:
            tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def _free(device: Any) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


__all__ = ["build_parser", "main"]
