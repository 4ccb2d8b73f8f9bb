"""Command line: ``python -m colorize {run,inspect,download,verify,make-tiny-weights,evaluate,bench}``."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from colorize.device import PRECISIONS
from colorize.settings import DEFAULT_REFERENCE_THRESHOLD, DEFAULT_SKETCH_THRESHOLD

if TYPE_CHECKING:
    import torch


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="colorize a sketch with a reference image")
    p.add_argument("--sketch", required=True, type=Path, help="line art (black lines on white, or see --polarity)")
    p.add_argument("--reference", required=True, type=Path, help="colour reference image")
    p.add_argument("--out", required=True, type=Path,
                   help="output image; .png, .jpg/.jpeg or .webp decides the format (not overwritten unless --overwrite)")
    p.add_argument("--checkpoint", default=None, help="checkpoint path or manifest name (default: the v1 checkpoint)")
    p.add_argument("--clip", default=None, help="reference encoder file or manifest name: OpenCLIP ViT-H-14 (open_clip or "
                   "clip_vision format) for v1/v1.5/v2, CLIP ViT-bigG-14 (clip_vision_g.safetensors) for XL")
    p.add_argument("--tagger", default=None, help="XL only: the WD v1.4 SwinV2 tagger file or manifest name "
                   "(default wd-v1-4-swinv2-tagger-v2)")
    p.add_argument("--vae", default=None, help="a VAE file replacing the checkpoint's (original format, e.g. a fixed "
                   "fp16 SDXL VAE)")
    p.add_argument("--vae-precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="VAE precision (default fp32: the released SDXL VAE overflows in fp16)")
    p.add_argument("--parameterization", choices=("eps", "v"), default=None,
                   help="the checkpoint's prediction target, when its file does not say (XL: the official rule is "
                   "'eps' in the file name, else v)")
    p.add_argument("--models-dir", type=Path, default=None, help="models folder (default: $COLORIZE_MODELS_DIR or a user cache)")
    p.add_argument("--no-download", action="store_true", help="never download missing weights")
    p.add_argument("--width", type=int, default=None, help="output width (SD2.1: rounded to 64; XL: a multiple of 32; "
                   "default from the sketch's aspect at the family's area, XL: the official autofit)")
    p.add_argument("--height", type=int, default=None, help="output height (as --width)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default=None, help="dpm_solver (the SD2.1 app's default), dpmpp_3m_sde (the XL app's "
                   "default), euler, euler_ancestral, dpmpp_2m, dpmpp_2m_sde, ddim (default: the loaded family's)")
    p.add_argument("--scheduler", default="auto",
                   help="auto (each sampler's own default, as the official app), leading (the sampler's diffusers timesteps; with dpm_solver = the official default), karras, uniform, exponential")
    p.add_argument("--ref-cfg", type=float, default=4.0, help="reference guidance scale (1 = off)")
    p.add_argument("--sketch-cfg", type=float, default=1.0, help="sketch guidance scale (1 = off)")
    p.add_argument("--strength", type=float, default=1.0,
                   help="reference strength: scales the cross-attention of the encoder/middle/low levels "
                        "(as the official app, the middle block and the highest-resolution decoder blocks keep 1)")
    p.add_argument("--sketch-strength", type=float, default=1.0, help="sketch hint strength")
    p.add_argument("--hint-strengths", type=float, nargs="+", default=None, metavar="S",
                   help="one multiplier per sketch hint on top of --sketch-strength (XL: 4, finest first; SD2.1: 5)")
    p.add_argument("--level-rule", choices=("official", "levels"), default="official",
                   help="XL sdxl: 'official' = only the encoder level strength acts (as the app), 'levels' = all three")
    p.add_argument("--polarity", choices=("auto", "invert", "keep"), default="auto", help="sketch polarity handling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--tag", action="append", default=[], metavar="NAME=VALUE",
                   help="GAN checkpoints (thesis §4.3): set a tag of the reference, e.g. --tag red_hair=2 (repeatable; "
                        "values beyond [0, 1] extrapolate; the run prints the reference's predicted tags)")
    p.add_argument("--low-vram", action="store_true",
                   help="keep CLIP and the U-Net on the CPU except while they run, tile large VAE decodes (8 GB cards)")
    p.add_argument("--vae-tiling", choices=("off", "auto", "on"), default=None,
                   help="tiled VAE decode (auto = above 1024x1024; default off, auto with --low-vram)")
    a = p.add_argument_group("advanced controls (official app)")
    a.add_argument("--guidance-start", type=float, default=0.0,
                   help="guidance window start in tr = 1 - t/999 (0 = first step); before it the reference is off")
    a.add_argument("--guidance-end", type=float, default=1.0, help="guidance window end; after it the reference is off")
    a.add_argument("--no-guidance", type=float, nargs=2, default=(-0.05, -0.05), metavar=("START", "END"),
                   help="interval of tr where the reference is off (default -0.05 -0.05: never)")
    a.add_argument("--ref-pad-scale", type=float, default=1.0,
                   help="reference padding scale (1-2): pad the reference width with white before CLIP")
    a.add_argument("--crop-result", action="store_true", help="crop the result to the un-padded sketch area")
    a.add_argument("--injection", action="store_true",
                   help="attention injection: self-attention also reads the reference's own U-Net features (~2x time)")
    a.add_argument("--injection-fidelity", type=float, default=0.5,
                   help="injection fidelity (reference), 0-1: plain self-attention blended into the reference-free rows")
    a.add_argument("--injection-control", type=float, default=0.0,
                   help="injection fidelity (sketch), 0-3: the reference's own lines in the recording pass")
    a.add_argument("--injection-start", type=float, default=0.0, help="inject from this tr = 1 - t/999 on")
    a.add_argument("--remove-result-bg", action="store_true",
                   help="whiten the result where --sketch-mask is below --reference-mask-threshold")
    g = p.add_argument_group("v1.5 / v2 foreground-background separation (--checkpoint switch-eps or v2-full)")
    g.add_argument("--bg-enhance", action="store_true", help="BG enhance: background from the reference's background "
                   "(or --background), kept out of the character")
    g.add_argument("--fg-enhance", action="store_true",
                   help="FG enhance: reference features only on the sketch's foreground")
    g.add_argument("--style-enhance", action="store_true", help="style enhance (v2): style vectors of the reference")
    g.add_argument("--sketch-mask", type=Path, default=None,
                   help="sketch foreground mask image (white = foreground, the sketch's frame; default: computed "
                        "with --sketch-mask-model)")
    g.add_argument("--reference-mask", type=Path, default=None,
                   help="reference foreground mask image (white = foreground; default: computed with "
                        "--reference-mask-model)")
    g.add_argument("--background", type=Path, default=None, help="separate background image")
    g.add_argument("--background-mask", type=Path, default=None, help="foreground mask of --background")
    g.add_argument("--remove-bg-foreground", action="store_true",
                   help="whiten the foreground of --background (needs --background-mask or --sam)")
    g.add_argument("--sketch-mask-model", choices=SKETCH_MASK_MODELS, default="isnet-sketch",
                   help="how a missing sketch mask is computed: isnet-sketch (as the official apps), isnet, flood "
                        "(weight-free fill from the borders; leaks through open outlines) or sam")
    g.add_argument("--reference-mask-model", choices=REFERENCE_MASK_MODELS, default=None,
                   help="how missing reference/background masks are computed: isnet (the anime segmenter, as the "
                        "official apps; the default, sam when --sam is given), isnet-sketch, flood (plain light "
                        "backgrounds), sam, or none (the whole reference counts as foreground, with a warning)")
    g.add_argument("--mask-canvas", type=int, default=1024, help="canvas side of the ISNet masks (1024 as the apps)")
    g.add_argument("--sam", default=None, help="SAM weights for the 'sam' mask model (manifest name such as "
                   "sam-vit-b, or a path; default sam-vit-b), centre prompt")
    g.add_argument("--fg-strength", type=float, default=1.0, help="foreground strength")
    g.add_argument("--bg-strength", type=float, default=1.0, help="background strength")
    g.add_argument("--merge-scale", type=float, default=0.0, help="merging scale (background blended into foreground)")
    g.add_argument("--bg-factor", type=float, default=1.0, help="background factor (v2)")
    g.add_argument("--sketch-mask-threshold", type=float, default=DEFAULT_SKETCH_THRESHOLD)
    g.add_argument("--reference-mask-threshold", type=float, default=DEFAULT_REFERENCE_THRESHOLD)


def _cmd_run(args: argparse.Namespace) -> int:
    from colorize.errors import WeightsMissingError
    from colorize.families import detect_family
    from colorize.loader import read_header
    from colorize.pipeline import Colorizer
    from colorize.preprocess import load_image
    from colorize.progress import ProgressBar
    from colorize.settings import GenerationSettings
    from colorize.weights import default_checkpoint_name, default_clip_name, resolve

    if args.out.exists() and not args.overwrite and not args.out.is_dir():
        print(f"error: {args.out} exists; pass --overwrite or choose another --out", file=sys.stderr)
        return 2
    image_format = check_output_path(args.out)  # before anything is loaded or computed
    from colorize.device import resolve_device

    resolve_device(args.device)  # a missing GPU is reported before anything is loaded
    sketch, reference = load_image(args.sketch), load_image(args.reference)
    settings = GenerationSettings(
        steps=args.steps, sampler=args.sampler or "dpm_solver", scheduler=args.scheduler,
        reference_cfg=args.ref_cfg, sketch_cfg=args.sketch_cfg, reference_strength=args.strength,
        sketch_strength=args.sketch_strength, seed=args.seed, width=args.width, height=args.height,
        polarity=args.polarity, guidance_start=args.guidance_start, guidance_end=args.guidance_end,
        no_guidance=tuple(args.no_guidance), reference_pad_scale=args.ref_pad_scale, crop_result=args.crop_result,
        injection=args.injection, injection_fidelity=args.injection_fidelity,
        injection_control=args.injection_control, injection_start=args.injection_start, level_rule=args.level_rule,
        hint_strengths=args.hint_strengths,
    )
    settings.validate(sketch_hw=tuple(sketch.shape[-2:]))  # bad settings and sizes, before the models load
    missing = []
    try:
        ckpt = resolve(args.checkpoint or default_checkpoint_name(), args.models_dir, download=not args.no_download)
        family = detect_family(read_header(ckpt), source=ckpt.name)
        if family.standalone:  # the chapter-4 GAN: one file, its own colorizer
            return _run_standalone(args, family, ckpt, sketch, reference, image_format)
        if args.tag:
            from colorize.errors import InputError

            raise InputError(f"--tag edits the tags of a GAN checkpoint; {ckpt.name} is a {family.label} diffusion "
                             "checkpoint (its reference is edited with text: the Text Edit node)")
        if args.sampler is None:
            settings = replace(settings, sampler=family.default_sampling[0])
            if args.scheduler == "auto":
                settings = replace(settings, scheduler=family.default_sampling[1])
        settings.validate(family, tuple(sketch.shape[-2:]))  # the family's own size rules, before the big loads
        names = [args.clip or (family.reference_files[0] if family.reference_files else default_clip_name())]
        if family.reference_files or args.tagger:
            names.append(args.tagger or family.reference_files[1])
    except WeightsMissingError as e:
        missing.append(str(e))
        names = [args.clip or default_clip_name()]
    refs = []
    for name in names:
        try:  # resolve all before failing, so one run names every missing file
            refs.append(resolve(name, args.models_dir, download=not args.no_download))
        except WeightsMissingError as e:
            missing.append(str(e))
    if missing:
        raise WeightsMissingError("\n\n".join(missing))
    clip, tagger = refs[0], (refs[1] if len(refs) > 1 else None)
    separation = _separation(args, sketch, reference)  # mask networks run (and are fetched) before the colorizer loads
    model = Colorizer.from_files(ckpt, clip, device=args.device, precision=args.precision, low_vram=args.low_vram,
                                 tagger=tagger, parameterization=args.parameterization,
                                 vae=resolve(args.vae, args.models_dir) if args.vae else None,
                                 vae_precision=args.vae_precision)
    if args.vae_tiling is not None:
        model.vae_tiling = args.vae_tiling
    result_mask = _result_mask(args)
    bar = ProgressBar(settings.steps, "sampling")
    image = model.colorize(sketch, reference, settings, callback=lambda info: bar.update(), **separation)
    bar.close()
    if result_mask is not None:
        from colorize.masks.inputs import fit_sketch_mask
        from colorize.preprocess import remove_background

        if not settings.crop_result:  # the mask is in the sketch's frame: fit it like the sketch
            result_mask = fit_sketch_mask(result_mask, tuple(sketch.shape[-2:]), tuple(image.shape[-2:]))
        image = remove_background(image, result_mask, args.reference_mask_threshold)
    return _save_result(image, args, image_format)


def _save_result(image: torch.Tensor, args: argparse.Namespace, image_format: str) -> int:
    """Write the first image of ``image`` to ``--out`` atomically."""
    from colorize.atomic import atomic_path
    from colorize.preprocess import tensor_to_pil

    with atomic_path(args.out, overwrite=args.overwrite) as tmp:
        tensor_to_pil(image)[0].save(tmp, format=image_format)
    print(f"wrote {args.out}")
    return 0


#: run options that only the diffusion pipeline reads (a GAN run refuses them rather than ignoring them)
DIFFUSION_ONLY_FLAGS = ("bg_enhance", "fg_enhance", "style_enhance", "injection", "remove_result_bg", "crop_result",
                        "low_vram")


def tag_edits(pairs: list[str]) -> dict[str, float]:
    """``--tag NAME=VALUE`` options as ``{name: value}`` (a later value of a tag wins)."""
    import math

    from colorize.errors import InputError

    out: dict[str, float] = {}
    for pair in pairs:
        name, sep, raw = pair.rpartition("=")
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not sep or not name.strip() or not math.isfinite(value):
            raise InputError(f"--tag {pair!r}: write NAME=VALUE with a number, e.g. --tag red_hair=2")
        out[name.strip()] = value
    return out


def _run_standalone(args: argparse.Namespace, family: Any, ckpt: Path, sketch: torch.Tensor,
                    reference: torch.Tensor, image_format: str) -> int:
    """``run`` with a standalone family's file (the chapter-4 GAN): one forward pass, optional tag edits."""
    from colorize.errors import InputError

    used = [f"--{f.replace('_', '-')}" for f in DIFFUSION_ONLY_FLAGS if getattr(args, f)]
    if used:
        raise InputError(f"{', '.join(used)}: the {family.label} has no such control (diffusion checkpoints only)")
    edits = tag_edits(args.tag)
    model = family.open_colorizer(ckpt, args.device)
    model.check_edits(edits)
    code = model.encode_reference(reference)
    print("reference tags: " + ", ".join(f"{name} {p:.2f}" for name, p in model.predicted_tags(code, top_k=10)))
    image = model.colorize(sketch, model.edit(code, edits), width=args.width, height=args.height,
                           polarity=args.polarity)
    return _save_result(image, args, image_format)


OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def check_output_path(out: Path) -> str:
    """The image format ``out``'s extension asks for, once it is known that a file can be written there;
    otherwise an :class:`InputError` naming the fix (checked before any model is loaded)."""
    import tempfile

    from colorize.errors import InputError

    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give a file name such as {out / 'colorized.png'}")
    image_format = OUTPUT_FORMATS.get(out.suffix.lower())
    if image_format is None:
        raise InputError(f"--out {out}: unknown image type {out.suffix or '(no extension)'!r}; end the name in "
                         f"{', '.join(OUTPUT_FORMATS)}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as e:
        raise InputError(f"--out {out}: cannot write in {out.parent} ({e.strerror or e}); choose another folder")
    return image_format


def _result_mask(args: argparse.Namespace) -> torch.Tensor | None:
    """The mask for ``--remove-result-bg`` (the official "Remove background in result"), checked early."""
    if not args.remove_result_bg:
        return None
    if args.sketch_mask is None:
        from colorize.errors import InputError

        raise InputError("--remove-result-bg needs --sketch-mask (white = the character, in the sketch's frame)")
    return _mask(args.sketch_mask)


def _mask(path: Path | None) -> torch.Tensor | None:
    """A mask image (white = foreground) as (1, H, W) in [0, 1]."""
    from colorize.preprocess import load_image

    return None if path is None else load_image(path).mean(1)


SKETCH_MASK_MODELS = ("isnet-sketch", "isnet", "flood", "sam")
REFERENCE_MASK_MODELS = ("isnet", "isnet-sketch", "flood", "sam", "none")
#: The ISNet mask models by CLI name → manifest name.
ISNET_FILES = {"isnet": "isnet-anime", "isnet-sketch": "isnet-sketch"}
#: --polarity of the sketch → the line polarity the mask models are told
LINE_POLARITY = {"auto": "auto", "invert": "dark_lines", "keep": "light_lines"}


def _separation(args: argparse.Namespace, sketch: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """The v1.5/v2 keyword arguments of ``Colorizer.colorize`` from the command line (empty when unused): masks
    given as images, the missing ones computed with ``--sketch-mask-model`` / ``--reference-mask-model``."""
    from colorize.preprocess import load_image
    from colorize.settings import EnhanceSettings

    enhance = EnhanceSettings(
        background_enhance=args.bg_enhance, foreground_enhance=args.fg_enhance, style_enhance=args.style_enhance,
        fg_scale=args.fg_strength, bg_scale=args.bg_strength, merge_scale=args.merge_scale,
        background_factor=args.bg_factor, sketch_threshold=args.sketch_mask_threshold,
        reference_threshold=args.reference_mask_threshold, remove_background_foreground=args.remove_bg_foreground)
    kw = {"sketch_mask": _mask(args.sketch_mask), "reference_mask": _mask(args.reference_mask),
          "background": load_image(args.background) if args.background is not None else None,
          "background_mask": _mask(args.background_mask)}
    todo = {"sketch_mask": sketch if enhance.active else None,
            "reference_mask": reference if enhance.background_enhance and kw["background"] is None else None,
            "background_mask": kw["background"] if enhance.remove_background_foreground else None}
    for key, image in todo.items():
        if image is not None and kw[key] is None:
            model = (args.sketch_mask_model if key == "sketch_mask"
                     else args.reference_mask_model or ("sam" if args.sam else "isnet"))
            kw[key] = _computed_mask(args, model, image, line_art=key == "sketch_mask")
    if args.remove_result_bg and not enhance.active:  # the sketch mask is then only for the result
        kw["sketch_mask"] = None
    if enhance == EnhanceSettings() and all(v is None for v in kw.values()):
        return {}
    return {"enhance": enhance, **kw}


def _computed_mask(args: argparse.Namespace, model: str, image: torch.Tensor, line_art: bool) -> torch.Tensor | None:
    """A (1, H, W) mask of ``image`` (its own frame) from a mask model; None for ``none`` (the library then treats
    the whole reference as foreground, with a warning) and for ``flood`` on line art (the library's own default)."""
    if model == "none" or (model == "flood" and line_art):
        return None
    if model == "flood":
        from colorize.masks import sketch_foreground_mask

        return sketch_foreground_mask(image, line_threshold=0.1)
    if model == "sam":
        from colorize.masks import load_sam, sam_foreground_mask

        sam = load_sam(args.sam or "sam-vit-b", models_dir=args.models_dir, download=not args.no_download)
        return sam_foreground_mask(sam, image)
    from colorize.masks import anime_mask, line_art_mask, load_isnet
    from colorize.masks.anime_segment import DILATE_SD
    from colorize.weights import resolve

    net = load_isnet(resolve(ISNET_FILES[model], args.models_dir, download=not args.no_download))
    if line_art:
        return line_art_mask(net, image, canvas=args.mask_canvas, polarity=LINE_POLARITY[args.polarity])
    return anime_mask(net, image, canvas=args.mask_canvas, dilate=DILATE_SD)


def _cmd_make_tiny(args: argparse.Namespace) -> int:
    from colorize.tiny import write_tiny_weights

    for name, path in write_tiny_weights(args.directory, seed=args.seed, versions=args.versions, masks=True).items():
        print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m colorize", description="ColorizeDiffusion command line")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    sub.add_parser("inspect", help="describe a checkpoint or layout JSON", add_help=False)
    sub.add_parser("download", help="fetch weights listed in weights_manifest.json", add_help=False)
    sub.add_parser("verify", help="check downloaded weights' sha256", add_help=False)
    sub.add_parser("evaluate", help="FID / PSNR / MS-SSIM / CLIP score on a folder of colour images", add_help=False)
    sub.add_parser("bench", help="time and measure the pipeline at chosen resolutions", add_help=False)
    tiny = sub.add_parser("make-tiny-weights", help="write tiny random weights (ComfyUI models layout)")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    from colorize.families import FAMILIES

    tiny.add_argument("--versions", nargs="+", choices=tuple(FAMILIES), default=list(FAMILIES),
                      help="checkpoints to write, by family (default: all; the CLIP file is always written)")
    if argv and argv[0] == "inspect":
        from colorize.checkpoint.inspection import main as inspect_main

        return inspect_main(argv[1:])
    if argv and argv[0] == "download":
        from colorize.weights import main_download

        return main_download(argv[1:])
    if argv and argv[0] == "verify":
        from colorize.weights import main_verify

        return main_verify(argv[1:])
    if argv and argv[0] == "evaluate":
        from colorize.evaluate.cli import main as evaluate_main

        return evaluate_main(argv[1:])
    if argv and argv[0] == "bench":
        from colorize.benchmark.cli import main as bench_main

        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    from colorize.errors import user_errors

    with user_errors() as status:
        status.code = {"run": _cmd_run, "make-tiny-weights": _cmd_make_tiny}[args.command](args)
    return status.code


if __name__ == "__main__":
    sys.exit(main())
