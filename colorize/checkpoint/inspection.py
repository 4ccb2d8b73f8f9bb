"""``python -m colorize inspect PATH``: what a checkpoint (or a layout JSON) is, from its keys.

Reports version, parameterisation, size and derived config, dtypes per component, and how the
keys match the released full-size layout of the detected version. Reads headers only, so a
7 GB file is inspected in well under a second (safetensors).
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from colorize.checkpoint.claims import check_weight_dtypes
from colorize.checkpoint.common import TensorInfo
from colorize.checkpoint.files import read_header, read_metadata
from colorize.checkpoint.infer import CONFIG_METADATA_KEY, training_info
from colorize.checkpoint.keys import OPTIONAL_COMPONENTS
from colorize.checkpoint.layout import compare_keys, result_line
from colorize.config import FULL_MULT, ColorizerConfig
from colorize.errors import CheckpointError
from colorize.families import component_prefixes, detect_family, get_family, split_checkpoint
from colorize.loader import checkpoint_config

_OPTIONAL_WHY = {
    "clip_visual": "loaded from the separate CLIP file",
    "clip_text": "loaded from the separate CLIP file",
    "schedule": "recomputed from the schedule config",
}


@dataclass
class ComponentReport:
    """Key match of one component against the expected layout."""

    name: str
    expected: int
    present: int
    missing: int
    unexpected: int
    mismatched: int
    optional: bool
    strict: bool = True  # False when the file is not full size: key sets depend on the widths
    dtypes: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # a few offending keys

    @property
    def ok(self) -> bool:
        if self.optional and self.present == 0 and self.unexpected == 0:
            return True
        if not self.strict:
            return self.present > 0
        return self.missing == 0 and self.unexpected == 0 and self.mismatched == 0


@dataclass
class InspectReport:
    """Everything ``inspect`` prints, as data (``version`` = the family's registry name)."""

    path: str
    source: str  # "safetensors", "torch" or "layout-json"
    n_tensors: int
    n_params: int
    version: str | None = None
    parameterization: str | None = None
    size: str | None = None  # "full", "tiny" or "custom"
    config: ColorizerConfig | None = None
    config_source: str | None = None  # "metadata" or "shapes"
    shapes_compared: bool = False
    components: list[ComponentReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(c.ok for c in self.components)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def _size_label(cfg: ColorizerConfig) -> str:
    if (cfg.unet, cfg.sketch) == (FULL_MULT.unet, FULL_MULT.sketch):
        return "full"
    return "tiny" if cfg.tiny else "custom"


#: Most bytes a layout JSON may hold once decompressed (the released layouts are under 0.5 MB).
MAX_LAYOUT_BYTES = 64 * 1024 * 1024


def _read_layout_bytes(p: Path) -> bytes:
    """The file's bytes, gunzipped for ``.gz``, reading at most :data:`MAX_LAYOUT_BYTES` (a small gzip bomb
    that inflates to gigabytes is refused after that much)."""
    try:
        with (gzip.open(p, "rb") if p.name.endswith(".gz") else open(p, "rb")) as f:
            raw = f.read(MAX_LAYOUT_BYTES + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise CheckpointError(f"{p.name}: cannot read this layout file ({type(e).__name__}: {e}).") from None
    if len(raw) > MAX_LAYOUT_BYTES:
        raise CheckpointError(f"{p.name}: holds more than {MAX_LAYOUT_BYTES // 2**20} MiB of JSON; a key layout is "
                              "well under 1 MiB, so this is not a layout file.")
    return raw


def load_layout_json(path: str | Path) -> dict[str, TensorInfo]:
    """A key -> shape-list JSON (``keys_*.json`` or ``.json.gz``) as header-like infos (dtype unknown)."""
    p = Path(path)
    not_layout = CheckpointError(f"{p.name}: not a layout JSON (expected an object mapping key names to shape lists).")
    raw = _read_layout_bytes(p)
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise not_layout
        return {k: TensorInfo(tuple(int(s) for s in v), None) for k, v in data.items()}
    except (ValueError, TypeError, RecursionError):
        raise not_layout from None


def _component_reports(header: Mapping[str, TensorInfo], version: str, full_size: bool) -> list[ComponentReport]:
    got_parts = split_checkpoint(header)
    exp_parts = split_checkpoint(get_family(version).layout())
    reports = []
    for name in (*component_prefixes(), "schedule", "unexpected"):
        exp, got = exp_parts[name], got_parts[name]
        if not exp and not got:
            continue
        m = compare_keys(exp, got, optional=(), check_shapes=full_size)
        optional = name in OPTIONAL_COMPONENTS
        dtypes = Counter(info.dtype for info in got.values() if info.dtype)
        bad = m.unexpected[:3] + [k for k, _, _ in m.mismatched[:3]]
        if not (optional and not got):
            bad = m.missing[:3] + bad
        reports.append(
            ComponentReport(
                name, len(exp), len(m.present), len(m.missing), len(m.unexpected), len(m.mismatched),
                optional, full_size or name == "unexpected", dict(sorted(dtypes.items())), bad,
            )
        )
    return reports


def inspect_header(
    header: Mapping[str, TensorInfo], metadata: Mapping[str, str] | None = None, path: str = "", source: str = ""
) -> InspectReport:
    """Build the report from a key -> :class:`TensorInfo` map (no file access)."""
    rep = InspectReport(path, source, len(header), sum(i.numel for i in header.values()))
    try:
        family = detect_family(header, source=Path(path).name or None)
    except CheckpointError as e:
        rep.error = str(e)
        return rep
    rep.version, rep.parameterization = family.name, family.parameterization
    try:
        check_weight_dtypes(header, Path(path).name or "checkpoint")
        rep.config, rep.config_source = checkpoint_config(family, header, metadata, what=Path(path).name or "file")
        rep.size = _size_label(rep.config)
    except CheckpointError as e:
        rep.error = str(e)
        return rep
    rep.shapes_compared = rep.size == "full"
    if rep.config is not None and rep.config_source == "shapes" and rep.config.unet.model_channels % 64:
        rep.notes.append(
            f"num_head_channels is not stored in the weights; assumed {rep.config.unet.num_head_channels}"
        )
    if not rep.shapes_compared:
        rep.notes.append(
            "not full size: shapes are not compared, and key names can differ from the released layout where "
            "widths differ (e.g. skip_connection); only absent components count as a mismatch"
        )
    rep.components = _component_reports(header, rep.version, rep.shapes_compared)
    return rep


def inspect_path(path: str | Path) -> InspectReport:
    """Inspect a checkpoint (.safetensors/.ckpt/.pt/.pth/.bin) or a layout JSON."""
    p = Path(path)
    if p.name.endswith((".json", ".json.gz")):
        if not p.is_file():
            raise CheckpointError(f"layout file not found: {p}")
        return inspect_header(load_layout_json(p), None, str(p), "layout-json")
    header = read_header(p)
    metadata = read_metadata(p)
    return inspect_header(header, metadata, str(p), "safetensors" if p.suffix.lower() == ".safetensors" else "torch")


def isnet_report(header: Mapping[str, TensorInfo], path: str) -> tuple[dict[str, Any], bool]:
    """What ``inspect`` says of an ISNet mask network (``(report, ok)``): the layout is the same for the anime
    segmenter and ISNet-sketch (only their weights differ), so the role is the manifest's for this file name."""
    from colorize.masks.isnet import ROLES, ISNetConfig, infer_isnet_config, isnet_layout, strip_isnet_prefix
    from colorize.weights import load_manifest

    shapes = {k: v.shape for k, v in strip_isnet_prefix(header).items()}  # type: ignore[arg-type]
    config = infer_isnet_config(shapes, Path(path).name)
    counters = "num_batches_tracked"  # BatchNorm counters a file may leave out
    expected = {k: v for k, v in isnet_layout(config).items() if not k.endswith(counters)}
    match = compare_keys(expected, {k: v for k, v in shapes.items() if not k.endswith(counters)})
    check_weight_dtypes(header, Path(path).name)
    roles = {e["filename"]: e for e in load_manifest() if e["kind"] == "mask_segmenter"}
    entry = roles.get(Path(path).name)
    report = {
        "path": path, "kind": "isnet", "size": "full" if config == ISNetConfig() else "custom",
        "n_tensors": len(header), "n_params": sum(i.numel for i in header.values()),
        "role": ROLES.get(entry["name"], entry["purpose"]) if entry else "an ISNet segmenter (anime or sketch: the "
                                                                         "weights decide; the file name is not a known one)",
        "manifest_name": entry["name"] if entry else None, "missing": match.missing, "unexpected": match.unexpected,
        "wrong_shape": [k for k, _, _ in match.mismatched], "ok": match.ok,
    }
    return report, match.ok


def format_isnet_report(rep: Mapping[str, Any]) -> str:
    lines = [
        f"file:             {rep['path']} ({rep['n_tensors']} tensors, {_fmt_params(rep['n_params'])} values)",
        "kind:             ISNet mask network (ISNetDIS, SkyTNT's anime segmentation architecture)",
        f"role:             {rep['role']}" + (f" (manifest {rep['manifest_name']})" if rep["manifest_name"] else ""),
        f"size:             {rep['size']}",
    ]
    lines.append(result_line(rep, "matches the ISNetDIS layout of its widths"))
    return "\n".join(lines)


#: Components of a ColorizeDiffusion XL file by key prefix; the CLIP tower, the tagger and the DDPM buffers come
#: from elsewhere (their own files, the schedule) and are optional.
XL_COMPONENTS: dict[str, str] = {
    "unet": "model.diffusion_model.", "sketch_encoder": "control_encoder.", "proj": "proj.",
    "bg_encoder": "bg_encoder.", "vae": "first_stage_model.", "clip": "cond_stage_model.model.",
    "tagger": "img_embedder.model.",
}
_XL_OPTIONAL = ("clip", "tagger", "schedule")


def _xl_head_widths(metadata: Mapping[str, str] | None) -> dict[str, int]:
    """The head widths shapes cannot show, from our ``colorize_config`` metadata (tiny and exported files); empty
    for other files (the released widths apply)."""
    raw = (metadata or {}).get(CONFIG_METADATA_KEY)
    if not raw:
        return {}
    try:
        cfg = json.loads(raw)
        extras = cfg.get("extras") or {}
        out = {k: int(extras[k]) for k in ("sketch_dim_head", "proj_dim_head") if k in extras}
        if (cfg.get("unet") or {}).get("num_head_channels"):
            out["num_head_channels"] = int(cfg["unet"]["num_head_channels"])
        return out
    except (ValueError, TypeError, AttributeError):
        return {}


def xl_report(header: Mapping[str, TensorInfo], metadata: Mapping[str, str] | None, path: str
              ) -> tuple[dict[str, Any], bool]:
    """What ``inspect`` says of a ColorizeDiffusion XL file (``(report, ok)``): model type and parameterisation
    (with the rule that decided), the configs from the shapes and each component's keys against the released
    layout of its type (shapes compared at full size only). This report does not load anything."""
    from colorize.checkpoint.keys import split_by_prefix
    from colorize.families.xl.conditioning import ClusterConcatConfig
    from colorize.families.xl.detect import xl_config_from_shapes, xl_parameterization
    from colorize.families.xl.layout import xl_layout
    from colorize.families.xl.sketch_encoder import FULL_XL_SKETCH_ENCODER
    from colorize.families.xl.unet import XL_UNET

    name = Path(path).name
    heads = _xl_head_widths(metadata)
    cfg = xl_config_from_shapes(header, heads.get("num_head_channels"), what=name or "checkpoint",
                                sketch_dim_head=heads.get("sketch_dim_head", 128),
                                proj_dim_head=heads.get("proj_dim_head", 128))
    check_weight_dtypes(header, name or "checkpoint")
    param, rule = xl_parameterization(metadata, name)
    full = (cfg.unet, cfg.sketch, cfg.proj) == (XL_UNET, FULL_XL_SKETCH_ENCODER, ClusterConcatConfig())
    got_parts = split_by_prefix(header, XL_COMPONENTS)
    exp_parts = split_by_prefix(xl_layout(cfg.model_type), XL_COMPONENTS)
    components, ok = {}, True
    for comp in (*XL_COMPONENTS, "schedule", "unexpected"):
        exp, got = exp_parts[comp], got_parts[comp]
        if not exp and not got:
            continue
        m = compare_keys(exp, got, optional=(), check_shapes=full)
        absent_ok = comp in _XL_OPTIONAL and not got
        comp_ok = (absent_ok or (m.ok if full or comp == "unexpected" else bool(m.present)))
        ok = ok and comp_ok
        components[comp] = {"expected": len(exp), "present": len(m.present),
                            "missing": 0 if absent_ok else len(m.missing), "unexpected": len(m.unexpected),
                            "wrong_shape": len(m.mismatched), "ok": comp_ok,
                            "examples": ([] if absent_ok else m.missing[:3]) + m.unexpected[:3]
                            + [k for k, _, _ in m.mismatched[:3]]}
    u = cfg.unet
    report = {
        "path": path, "kind": "colorizediffusion-xl", "model_type": cfg.model_type,
        "parameterization": param, "parameterization_rule": rule, "size": "full" if full else "custom",
        "n_tensors": len(header), "n_params": sum(i.numel for i in header.values()),
        "config": (f"U-Net {u.model_channels} ch x {tuple(u.channel_mult)}, depth {u.transformer_depth} "
                   f"(middle {u.transformer_depth_middle}), context {u.context_dim}, adm {u.adm_in_channels}; "
                   f"sketch encoder {cfg.sketch.model_channels} ch x {tuple(cfg.sketch.ch_mults)}, attention "
                   f"{cfg.sketch.attention_width}; ClusterConcat {cfg.proj.input_dim}+{cfg.proj.c_dim} -> "
                   f"{cfg.proj.output_dim}" + ("; ReferenceNet (bg_encoder)" if cfg.has_bg_encoder else "")
                   + (f"; background LoRA rank {cfg.background_lora_rank}" if cfg.background_lora_rank else "")),
        "components": components, "ok": ok, "trained": training_info(metadata),
    }
    return report, ok


def format_xl_report(rep: Mapping[str, Any]) -> str:
    rule = {"file name": "official rule: 'eps' in the file name, else v", "metadata": "from the stored config",
            "override": "as given"}[rep["parameterization_rule"]]
    lines = [
        f"file:             {rep['path']} ({rep['n_tensors']} tensors, {_fmt_params(rep['n_params'])} values)",
        f"version:          ColorizeDiffusion XL, model type {rep['model_type']} (family {rep['model_type']!r})",
        f"parameterization: {rep['parameterization']} ({rule})",
        f"size:             {rep['size']} (config from shapes)",
        f"config:           {rep['config']}",
        *([f"trained:          stage {rep['trained'].get('stage')}, step {rep['trained'].get('step')}"
           f"{' (EMA weights)' if rep['trained'].get('ema') else ''}"] if rep.get("trained") else []),
        "",
        f"{'component':<16} {'expected':>8} {'present':>8} {'missing':>8} {'unexpect':>8} {'shape!=':>8}",
    ]
    for name, c in rep["components"].items():
        lines.append(f"{name:<16} {c['expected']:>8} {c['present']:>8} {c['missing']:>8} {c['unexpected']:>8} "
                     f"{c['wrong_shape'] if rep['size'] == 'full' else '-':>8}")
    lines.append("")
    bad = [n for n, c in rep["components"].items() if not c["ok"]]
    if not bad:
        lines.append(f"result:           OK - matches the released XL {rep['model_type']} key layout")
    else:
        lines.append(f"result:           MISMATCH in {', '.join(bad)}")
        lines += [f"  {n}: e.g. {', '.join(rep['components'][n]['examples'])}" for n in bad]
    return "\n".join(lines)


def _fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,}"


def _config_summary(cfg: ColorizerConfig, present: set[str]) -> str:
    u, s, v = cfg.unet, cfg.sketch, cfg.vae
    sketch = f"sketch encoder {s.model_channels} ch x {tuple(s.ch_mults)}" if "sketch_encoder" in present else "no sketch encoder"
    vae = f"VAE {v.ch} ch x {tuple(v.ch_mult)}, {v.num_res_blocks} res blocks" if "vae" in present else "no VAE in the file"
    return (
        f"U-Net {u.model_channels} ch x {tuple(u.channel_mult)}, {u.num_res_blocks} res blocks, "
        f"attn at {tuple(u.attention_resolutions)}, heads of {u.num_head_channels}, context {u.context_dim}; "
        f"{sketch}; {vae}"
    )


def format_report(rep: InspectReport) -> str:
    """Human-readable text of a report."""
    lines = [f"file:             {rep.path} ({rep.source}, {rep.n_tensors} tensors, {_fmt_params(rep.n_params)} values)"]
    if rep.error:
        lines.append(f"result:           NOT RECOGNISED - {rep.error}")
        return "\n".join(lines)
    lines += [
        f"version:          {rep.version} - {get_family(rep.version).title}",
        f"parameterization: {rep.parameterization} ({'v-prediction' if rep.parameterization == 'v' else 'epsilon-prediction'}; from the keys, not the file name)",
    ]
    if rep.config is not None:
        lines.append(f"size:             {rep.size} (config from {rep.config_source})")
        present = {c.name for c in rep.components if c.present}
        lines.append(f"config:           {_config_summary(rep.config, present)}")
    lines.append("")
    lines.append(f"{'component':<16} {'expected':>8} {'present':>8} {'missing':>8} {'unexpect':>8} {'shape!=':>8}  dtypes")
    for c in rep.components:
        dt = ", ".join(f"{k} x{n}" for k, n in c.dtypes.items()) or "-"
        if c.optional and c.present == 0 and c.unexpected == 0:
            dt = f"absent (optional: {_OPTIONAL_WHY[c.name]})"
        shp = str(c.mismatched) if rep.shapes_compared else "-"
        lines.append(f"{c.name:<16} {c.expected:>8} {c.present:>8} {c.missing:>8} {c.unexpected:>8} {shp:>8}  {dt}")
    for n in rep.notes:
        lines.append(f"note: {n}")
    bad = [c for c in rep.components if not c.ok]
    lines.append("")
    if not bad:
        lines.append(f"result:           OK - matches the released {rep.version} key layout")
    else:
        lines.append(f"result:           MISMATCH in {', '.join(c.name for c in bad)}")
        for c in bad:
            lines.append(f"  {c.name}: e.g. {', '.join(c.examples)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m colorize inspect PATH [--json]``: 0 = recognised and complete, 1 = key mismatch,
    2 = unreadable or not a ColorizeDiffusion file."""
    parser = argparse.ArgumentParser(
        prog="python -m colorize inspect",
        description="Describe a ColorizeDiffusion checkpoint or a key-layout JSON (reads headers only).",
    )
    parser.add_argument("path", type=Path, help="checkpoint (.safetensors/.ckpt/.pt/.pth/.bin) or layout .json")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        from colorize.families.xl.detect import xl_model_type
        from colorize.masks.isnet import is_isnet_state_dict

        is_layout = args.path.name.endswith((".json", ".json.gz"))
        if is_layout and not args.path.is_file():
            raise CheckpointError(f"layout file not found: {args.path}")
        header = load_layout_json(args.path) if is_layout else read_header(args.path)
        if not is_layout and is_isnet_state_dict(header):
            isnet, ok = isnet_report(header, str(args.path))
            print(json.dumps(isnet, indent=1) if args.json else format_isnet_report(isnet))
            return 0 if ok else 1
        from colorize.families.gan.checkpoint import is_gan_state_dict

        if is_gan_state_dict(header):  # the chapter-4 GAN: no diffusion components at all
            from colorize.families.gan.report import format_gan_report, gan_report

            gan, ok = gan_report(header, None if is_layout else read_metadata(args.path), str(args.path))
            print(json.dumps(gan, indent=1) if args.json else format_gan_report(gan))
            return 0 if ok else 1
        if xl_model_type(header) is not None:  # asked first: the SD2.1 families' markers also match XL files
            xl, ok = xl_report(header, None if is_layout else read_metadata(args.path), str(args.path))
            print(json.dumps(xl, indent=1) if args.json else format_xl_report(xl))
            return 0 if ok else 1
        rep = inspect_header(header, None, str(args.path), "layout-json") if is_layout else inspect_path(args.path)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rep.to_dict(), indent=1, default=str))
    else:
        print(format_report(rep))
    if rep.error:
        print(f"error: {rep.error}", file=sys.stderr)
        return 2
    return 0 if rep.ok else 1


__all__ = [
    "ComponentReport",
    "InspectReport",
    "XL_COMPONENTS",
    "format_report",
    "format_xl_report",
    "inspect_header",
    "inspect_path",
    "isnet_report",
    "load_layout_json",
    "main",
    "xl_report",
]
