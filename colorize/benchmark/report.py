"""Benchmark tables, environment facts, and the official implementation's reference figures side by side."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

OFFICIAL_FILE = "official-v1-h200.json"
BENCHMARKS_ENV = "COLORIZE_BENCHMARKS"
_REPO = Path(__file__).resolve().parents[2]

# (label, our key, the official JSON's key, scale to display)
COMPARED = (
    ("end to end (ms)", "total_ms", "total_ms_median", 1.0),
    ("sampling loop (ms)", "sample_ms", "sample_ms_median", 1.0),
    ("per step (ms)", "per_step_ms", "per_step_ms_median", 1.0),
    ("one U-Net call (ms)", "unet_call_ms", "unet_call_ms_median", 1.0),
    ("U-Net GFLOP / call", "unet_flops", "unet_flops_call", 1e-9),
    ("U-Net TFLOP/s", "unet_tflops", "unet_achieved_tflops_single_call", 1.0),
    ("CLIP (ms)", "clip_ms", "clip_encode_ms_median", 1.0),
    ("sketch encoder (ms)", "sketch_ms", "sketch_encode_ms_median", 1.0),
    ("VAE decode (ms)", "decode_ms", "decode_ms_median", 1.0),
    ("peak GPU memory (GiB)", "peak_memory_gib", "peak_allocated_gib", 1.0),
)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, device and numerics flags that change timings."""
    env: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "device": str(device), "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({
            "device_name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "sm_count": props.multi_processor_count,
            "gpu_mem_total_gib": round(props.total_memory / (1 << 30), 1),
            "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark,
        })
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown table, one row per resolution (XL's "CLIP" = CLIP-bigG and the WD tagger)."""
    separation = any(r.get("bg_enhance") for r in results)  # background separation: its conditioning's column
    head = ("resolution", "end to end ms", "CLIP ms", "sketch ms", *(("separation ms",) if separation else ()),
            "sampling ms", "per step ms", "U-Net call ms (batch)", "U-Net GFLOP", "U-Net TFLOP/s", "VAE decode ms",
            "peak mem GiB")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = (r["res"], _f(r["total_ms"]), _f(r["clip_ms"]), _f(r["sketch_ms"]),
                 *((_f(r.get("separation_ms")),) if separation else ()), _f(r["sample_ms"]),
                 _f(r["per_step_ms"]), f"{_f(r['unet_call_ms'])} ({r['cfg_batch']})",
                 _g(r.get("unet_flops"), 1e-9), _g(r.get("unet_tflops")), _f(r["decode_ms"]),
                 _f(r.get("peak_memory_gib"), digits=2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _f(v: Any, scale: float = 1.0, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v * scale:.{digits}f}"


def _g(v: Any, scale: float = 1.0) -> str:
    """Four significant digits (FLOP figures span 1e-4 on a CPU tiny model to 1e4 on a GPU)."""
    return "n/a" if v is None else f"{v * scale:.4g}"


# ------------------------------------------------------------------------------------------ official figures


def find_official(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The official reference JSON: ``path``, ``$COLORIZE_BENCHMARKS`` (file or folder), or
    ``shared/benchmarks`` inside or beside the checkout."""
    candidates = [Path(path)] if path else []
    env = os.environ.get(BENCHMARKS_ENV)
    if env:
        candidates.append(Path(env))
    candidates += [_REPO / "shared" / "benchmarks", _REPO.parent / "shared" / "benchmarks"]
    for c in candidates:
        f = c / OFFICIAL_FILE if c.is_dir() else c
        if f.is_file():
            return f
    return None


def load_official(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"device_name": ..., "results": {"512x512": {...}, ...}}`` from the official benchmark JSON
    (its k-diffusion DPM++ 2M runs, the comparable ones)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    entries = data.get("results", [])
    env = next((e for e in entries if e.get("kind") == "env"), {})
    runs = {e["res"]: e for e in entries if e.get("kind") == "generate_kdiff" and e.get("status") == "ok"}
    return {"path": str(path), "device_name": env.get("device_name"), "results": runs}


def same_gpu(ours: str | None, theirs: str | None) -> bool:
    """Whether two device names are the same GPU model (e.g. both contain "H200")."""
    if not ours or not theirs:
        return False
    norm = lambda s: s.upper().replace("NVIDIA", "").strip()  # noqa: E731
    return norm(ours) == norm(theirs) or ("H200" in ours.upper() and "H200" in theirs.upper())


def comparison(results: Sequence[dict[str, Any]], official: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (resolution, metric) present in both: ours, official, ours / official."""
    rows = []
    for r in results:
        theirs = official["results"].get(r["res"])
        if theirs is None:
            continue
        for label, ours_key, their_key, scale in COMPARED:
            a, b = r.get(ours_key), theirs.get(their_key)
            if a is None or b is None:
                continue
            a, b = a * scale, b * scale
            rows.append({"res": r["res"], "metric": label, "ours": a, "official": b, "ratio": a / b if b else None})
    return rows


def format_comparison(rows: Sequence[dict[str, Any]], device_name: str | None) -> str:
    lines = [f"ours vs the official implementation ({device_name}; ratio < 1 = ours faster / smaller, "
             "> 1 for TFLOP/s = ours more efficient)",
             "| resolution | metric | ours | official | ours / official |", "|---|---|---|---|---|"]
    for r in rows:
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.3f}"
        lines.append(f"| {r['res']} | {r['metric']} | {r['ours']:.2f} | {r['official']:.2f} | {ratio} |")
    return "\n".join(lines)


def print_out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


__all__ = ["comparison", "environment", "find_official", "format_comparison", "format_table", "load_official", "same_gpu"]
