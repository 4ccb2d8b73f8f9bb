"""Combine the bench JSONs of the GPU speed/memory script (one per configuration) into one JSON and a markdown
summary.

usage: python -m colorize.benchmark.summary RUN_DIR OUT_DIR OFFICIAL_JSON
Writes OUT_DIR/runs.json ({name: bench JSON or {"error": ...}}) and OUT_DIR/summary.md.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

BF16_PEAK_TFLOPS = 989.0  # H100/H200 SXM dense bf16 spec (about 790 is reached in practice)
TARGET = {"512x512": 291.0, "768x768": 344.0, "1024x1024": 480.0}


def main(run_dir: Path, out_dir: Path, official_path: Path) -> None:
    from colorize.benchmark.report import load_official

    official = load_official(official_path)["results"] if official_path.is_file() else {}
    runs = {}
    for f in sorted(run_dir.glob("*.json")):
        try:
            runs[f.stem] = json.loads(f.read_text())
        except ValueError as exc:
            runs[f.stem] = {"error": f"unreadable: {exc}"}
    for log in sorted(run_dir.glob("*.log")):
        if log.stem not in runs:
            runs[log.stem] = {"error": "no JSON (crashed or timed out): " + log.read_text()[-1500:]}
    (out_dir / "runs.json").write_text(json.dumps(runs, indent=1) + "\n")

    base_flops = {("mult", r["res"]): r["unet_flops"] for r in runs.get("baseline", {}).get("results", [])
                  if r.get("unet_flops")}
    for doc in runs.values():  # the XL rows with FLOPs give theirs to the XL rows without
        for r in doc.get("results", []) if doc.get("model", {}).get("family", "mult") != "mult" else []:
            if r.get("unet_flops") and not r.get("bg_enhance"):
                base_flops.setdefault((doc["model"]["family"], r["res"]), r["unet_flops"])
    lines = ["# GPU speed and memory bench summary", ""]
    env = next((r["env"] for r in runs.values() if "env" in r), {})
    lines.append(f"device: {env.get('device_name')}, torch {env.get('torch')}, CUDA {env.get('cuda')}")
    head = ("| run | res | end to end ms | / official | target | sampling ms | U-Net call ms | TFLOP/s (% bf16 peak) "
            "| decode ms | peak GiB | notes |")
    lines += ["", head, "|" + "---|" * 11]
    for name, doc in runs.items():
        if "error" in doc:
            lines.append(f"| {name} | - | error | | | | | | | | {doc['error'][:200]!r} |")
            continue
        if "isnet" in doc:  # one mask-network forward, not a generation
            r = doc["isnet"]
            lines.append(f"| {name} | {r['canvas']}x{r['canvas']} | {r['forward_s'] * 1000:.1f} | | | | | | | "
                         f"{r.get('peak_memory_gib') or 0:.2f} | ISNet mask network forward, float32 |")
            continue
        if "gan" in doc:  # one chapter-4 GAN colorization (thesis Tab. 5.5: 57 ms at 1024²)
            r = doc["gan"]
            ratio = f"{r['total_s'] * 1000 / 57:.3f}" if r["res"] == 1024 and r["config"] == "full" else "n/a"
            lines.append(f"| {name} | {r['res']}x{r['res']} | {r['total_s'] * 1000:.1f} | {ratio} (thesis 57 ms) | | "
                         f"| | | | {r.get('peak_memory_gib') or 0:.2f} | chapter-4 GAN forward ({r['config']}, "
                         f"{r['dtype']}): tag encoder {r['encoder_s'] * 1000:.1f} ms + generator "
                         f"{r['generator_s'] * 1000:.1f} ms |")
            continue
        opts = doc.get("options") or {}
        family = (doc.get("model") or {}).get("family", "mult")
        notes = [] if family == "mult" else [f"{family}" + (" + background separation" if
                                                              (doc.get("settings") or {}).get("bg_enhance") else "")]
        notes += [f"{s['kind']}: {'on' if s['active'] else 'fell back: ' + str(s['fallback'])[:80]}"
                 for s in opts.get("unet_speedups", [])]
        if opts.get("memory_cap_gib"):
            notes.append(f"cap {opts['memory_cap_gib']} GiB")
        if opts.get("low_vram"):
            notes.append("low-VRAM")
        for r in doc.get("results", []):
            if "error" in r:
                lines.append(f"| {name} | {r['res']} | {r['error'][:80]} | | | | | | | | |")
                continue
            theirs = official.get(r["res"], {}).get("total_ms_median") if family == "mult" else None  # v1 figures
            ratio = f"{r['total_ms'] / theirs:.3f}" if theirs else "n/a"
            target = TARGET.get(r["res"], "n/a") if family == "mult" else "n/a"
            tf = r.get("unet_tflops")
            if tf is None and (family, r["res"]) in base_flops and not r.get("bg_enhance"):  # --no-flops: same call
                tf = base_flops[(family, r["res"])] / (r["unet_call_ms"] * 1e-3) / 1e12
            tf_s = f"{tf:.0f} ({100 * tf / BF16_PEAK_TFLOPS:.0f} %)" if tf else "n/a"
            extra = list(notes)
            if r.get("vae_tiled") and r.get("tiling_max_abs_vs_untiled") is not None:
                extra.append(f"tiled: max|Δ| {r['tiling_max_abs_vs_untiled']:.3g}, mean {r['tiling_mean_abs_vs_untiled']:.3g}")
            elif r.get("vae_tiled"):
                extra.append("tiled (untiled decode out of memory)")
            if r.get("bg_enhance") and r.get("separation_ms") is not None:
                extra.append(f"separation conditioning {r['separation_ms']:.1f} ms")
            if "offload_gb_moved_per_generation" in r:
                extra.append(f"{r['offload_gb_moved_per_generation']:.2f} GB moved/gen")
            lines.append(f"| {name} | {r['res']} | {r['total_ms']:.1f} | {ratio} | {target} | "
                         f"{r['sample_ms']:.1f} | {r['unet_call_ms']:.2f} | {tf_s} | {r['decode_ms']:.1f} | "
                         f"{r.get('peak_memory_gib', 0):.2f} | {'; '.join(extra)} |")
        if doc.get("tolerance"):
            tol = doc["tolerance"]
            for p in ("fp16", "bf16"):
                v = tol.get(p, {})
                img = v.get("image")
                lines.append(f"\nprecision {p} vs fp32 at {tol['res']} ({name}): "
                             + (f"image max|Δ| {img['max_abs']:.4g}, mean|Δ| {img['mean_abs']:.4g}, PSNR "
                                f"{img['psnr_db']:.1f} dB, finite {v['finite']}" if img else str(v)))
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
