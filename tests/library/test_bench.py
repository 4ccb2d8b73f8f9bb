"""``python -m colorize bench`` on the CPU with tiny random weights, FLOP counting of the full-size U-Net on
the meta device against the official figures, and the side-by-side report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from colorize.benchmark.measure import bench_size, count_flops
from colorize.benchmark.models import random_colorizer
from colorize.benchmark.report import comparison, find_official, format_table, load_official, same_gpu
from colorize.cli import main
from colorize.config import FULL_MULT, TINY_MULT
from colorize.settings import GenerationSettings

REPO = Path(__file__).resolve().parents[2]


def _official() -> Path:
    path = find_official(REPO.parent / "shared" / "benchmarks")
    if path is None:
        pytest.skip("official benchmark figures not found (../shared/benchmarks/official-v1-h200.json)")
    return path


def test_bench_cli_on_cpu_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "--device", "cpu", "--config", "tiny", "--res", "64", "--steps", "2", "--runs", "1",
            "--warmup", "0", "--unet-iters", "2", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| resolution |" in printed and "| 64x64 |" in printed and f"wrote {out}" in printed
    doc = json.loads(out.read_text())
    assert doc["model"]["config"] == "tiny" and doc["env"]["device"] == "cpu"
    (r,) = doc["results"]
    assert r["res"] == "64x64" and r["cfg_batch"] == 2  # reference CFG 4 → rows (cond, reference-uncond)
    assert r["unet_calls_per_generation"] == 2  # DPM++ 2M: one U-Net call per step
    assert r["total_ms_all"] == [round(r["total_ms"], 3)] and r["total_ms"] >= r["sample_ms"] > 0
    assert r["encode_ms"] == pytest.approx(r["clip_ms"] + r["sketch_ms"], rel=0.2)
    assert r["per_step_ms"] == pytest.approx(r["sample_ms"] / 2)
    assert r["unet_flops"] > 0 and r["unet_tflops"] == pytest.approx(r["unet_flops"] / (r["unet_call_ms"] * 1e-3) / 1e12)
    assert r["generation_flops"] == r["clip_flops"] + r["sketch_flops"] + 2 * r["unet_flops"] + r["decode_flops"]
    assert r["output_finite"] and r["peak_memory_gib"] > 0
    before = out.read_bytes()
    assert main(argv) == 2  # an existing JSON is kept unless --overwrite
    assert out.read_bytes() == before and "exists" in capsys.readouterr().err


def test_bench_size_counts_cfg_rows_and_unet_flops() -> None:
    model, info = random_colorizer(TINY_MULT, "cpu", "fp32")
    # every zero-initialised layer was redrawn: no all-zero weight matrix is left
    for m in (model.unet, model.sketch_encoder, model.vae):
        assert all(p.any() for p in m.parameters() if p.ndim >= 2)
    assert info["zero_init_tensors_redrawn"] > 0
    s = GenerationSettings(steps=2, sampler="euler", scheduler="karras", reference_cfg=3.0, sketch_cfg=2.0)
    r = bench_size(model, (128, 64), s, runs=1, warmup=0, unet_iters=1)
    assert r["res"] == "64x128" and r["height"] == 128 and r["width"] == 64
    assert r["cfg_batch"] == 3 and r["unet_calls_per_generation"] == 2  # cond, reference- and sketch-uncond rows
    assert "| 64x128 |" in format_table([r])
    # the counted call is the sampler's: same FLOPs as a U-Net call on a batch-3 latent of that size
    rows = (torch.zeros(3, 256, 64), [h.repeat(3, 1, 1, 1) for h in model.encode_sketch(torch.zeros(1, 3, 128, 64))[0]])
    flops, _ = count_flops(lambda: model.unet(torch.zeros(3, 4, 16, 8), torch.full((3,), 9.0), *rows, None))
    assert r["unet_flops"] == flops


def test_full_size_unet_flops_match_the_official_figures() -> None:
    """FLOPs of one full-size U-Net call at CFG batch 2, counted on the meta device (no memory, no time)."""
    from colorize.models.sketch_encoder import SketchEncoder
    from colorize.models.unet import DualCondUNet

    official = load_official(_official())["results"]
    with torch.device("meta"):
        unet, sketch = DualCondUNet(FULL_MULT.unet), SketchEncoder(FULL_MULT.sketch)
    for res in (512, 1024):
        with torch.device("meta"):
            x, t = torch.empty(2, 4, res // 8, res // 8), torch.full((2,), 500.0)
            context, hints = torch.empty(2, 256, 1024), sketch(torch.empty(2, 3, res, res))
        flops, by_op = count_flops(lambda: unet(x, t, context, hints, None))
        assert flops == pytest.approx(official[f"{res}x{res}"]["unet_flops_call"], rel=1e-6)
        assert {"convolution", "addmm"} <= set(by_op)


def test_report_prints_official_figures_beside_ours_on_h200(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _official()
    official = load_official(path)
    assert set(official["results"]) == {"512x512", "768x768", "1024x1024"} and "H200" in official["device_name"]
    theirs = official["results"]["512x512"]
    ours = {"res": "512x512", "total_ms": theirs["total_ms_median"] / 2, "sample_ms": 400.0, "per_step_ms": 20.0,
            "unet_call_ms": 20.0, "unet_flops": theirs["unet_flops_call"], "unet_tflops": 80.0, "clip_ms": 10.0,
            "sketch_ms": 2.0, "decode_ms": 20.0, "peak_memory_gib": 5.0, "cfg_batch": 2}
    rows = {r["metric"]: r for r in comparison([ours], official)}
    assert rows["end to end (ms)"]["ratio"] == pytest.approx(0.5)
    assert rows["U-Net GFLOP / call"]["ratio"] == pytest.approx(1.0)
    assert same_gpu("NVIDIA H200", official["device_name"]) and not same_gpu("NVIDIA H100 80GB HBM3", "NVIDIA H200")

    doc = {"env": {"device": "cuda", "device_name": "NVIDIA H200", "torch": torch.__version__},
           "model": {"config": "full"}, "results": [ours],
           "settings": {"precision": "fp16", "steps": 20, "sampler": "dpmpp_2m", "scheduler": "karras", "ref_cfg": 4.0,
                        "sketch_cfg": 1.0, "batch": 1, "runs": 3}}
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps(doc))
    assert main(["bench", "--report", str(saved), "--official", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "ours vs the official implementation (NVIDIA H200" in printed and "| 512x512 | end to end (ms) |" in printed
    doc["env"]["device_name"] = "NVIDIA H100 80GB HBM3"  # another GPU: no comparison
    saved.write_text(json.dumps(doc))
    assert main(["bench", "--report", str(saved), "--official", str(path)]) == 0
    assert "official" not in capsys.readouterr().out


def test_cpu_flop_counts_equal_the_meta_device_counts() -> None:
    """On real CPU tensors nn.MultiheadAttention takes a fused kernel and SDPA a CPU flash kernel, both unknown
    to the counter; the counts must still equal those of the meta device (plain matmuls)."""
    from colorize.models.clip import ReferenceEncoder
    from colorize.models.unet import DualCondUNet

    torch.manual_seed(0)
    enc, unet = ReferenceEncoder(TINY_MULT.clip, with_text=False), DualCondUNet(TINY_MULT.unet)
    with torch.device("meta"):
        meta_enc, meta_unet = ReferenceEncoder(TINY_MULT.clip, with_text=False), DualCondUNet(TINY_MULT.unet)
    for dev, e, u in (("cpu", enc, unet), ("meta", meta_enc, meta_unet)):
        img, x = torch.zeros(1, 3, 224, 224, device=dev), torch.zeros(2, 4, 16, 16, device=dev)
        ctx, t = torch.zeros(2, 256, TINY_MULT.unet.context_dim, device=dev), torch.full((2,), 9.0, device=dev)
        clip = count_flops(lambda: e.encode_image(img, "full", preprocess=False))
        net = count_flops(lambda: u(x, t, ctx, None, None))
        if dev == "cpu":
            cpu = clip[0], net[0]
    assert cpu == (clip[0], net[0]) and min(cpu) > 0
    assert torch.backends.mha.get_fastpath_enabled()  # restored afterwards


def test_bench_times_attention_injection() -> None:
    """``--injection``: each sampling call is a write and a read pass (two U-Net forwards per step)."""
    model, _ = random_colorizer(TINY_MULT, "cpu", "fp32", with_text=False)
    s = GenerationSettings(steps=2, sampler="euler", scheduler="karras", injection=True)
    r = bench_size(model, (128, 128), s, runs=1, warmup=0, unet_iters=1, flops=False)
    assert r["unet_calls_per_generation"] == 4 and r["cfg_batch"] == 2


def test_bench_times_one_isnet_forward(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "isnet.json"
    assert main(["bench", "--isnet", "64", "--runs", "2", "--warmup", "0", "--device", "cpu", "--json", str(out)]) == 0
    assert "ISNet forward, 64x64 canvas, float32" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["isnet"]["canvas"] == 64 and doc["isnet"]["runs"] == 2 and doc["isnet"]["forward_s"] > 0
    assert main(["bench", "--isnet", "16", "--device", "cpu"]) == 2  # a canvas the network cannot use
    assert "--isnet must be a canvas side" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ ColorizeDiffusion XL
XL_PARAMS = {"unet": 2_564_514_564, "sketch_encoder": 25_984_720, "vae": 83_653_863, "proj": 15_478_528,
             "clip": 1_844_907_264, "tagger": 96_203_891, "bg_encoder": 2_012_561_920}


@pytest.mark.parametrize("version", ["sdxl", "xlv2"])
def test_xl_bench_models_have_the_released_parameter_counts(version: str) -> None:
    """The random full-size XL modules the GPU rows build, counted on the meta device (official module sizes)."""
    from colorize.benchmark.models import xl_modules

    with torch.device("meta"):
        config, modules = xl_modules(version)
    count = {k: sum(p.numel() for p in m.parameters()) for k, m in modules.items()}
    enc = modules["reference_encoder"]
    assert sum(p.numel() for p in enc.clip.parameters()) == XL_PARAMS["clip"]
    assert sum(p.numel() for p in enc.tagger.parameters()) == XL_PARAMS["tagger"]
    lora = 2_478_080 + 11_840 if version == "xlv2" else 0  # background LoRA + the unused conv_fg
    assert count["unet"] == XL_PARAMS["unet"] + lora
    for k in ("sketch_encoder", "vae", "proj", *(("bg_encoder",) if version == "xlv2" else ())):
        assert count[k] == XL_PARAMS[k], k
    assert set(modules) == {"unet", "sketch_encoder", "vae", "reference_encoder", "proj",
                            *(("bg_encoder",) if version == "xlv2" else ())}
    assert config.vae.scale_factor == 0.13025 and modules["unet"].num_attention_blocks == 70


def test_bench_cli_xl_tiny_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--family sdxl``: the family's sampler, the adm vector, 70 reference scales; never the v1 official figures."""
    out = tmp_path / "xl.json"
    assert main(["bench", "--family", "sdxl", "--device", "cpu", "--config", "tiny", "--res", "64", "--steps", "1",
                 "--runs", "1", "--warmup", "0", "--unet-iters", "1", "--no-flops", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tiny sdxl model" in printed and "dpmpp_3m_sde/auto" in printed and "official" not in printed
    doc = json.loads(out.read_text())
    assert doc["model"]["family"] == "sdxl" and set(doc["model"]["params_millions"]) >= {"clip", "proj"}
    assert doc["settings"]["sampler"] == "dpmpp_3m_sde" and doc["official"] is None
    (r,) = doc["results"]
    assert r["family"] == "sdxl" and r["cfg_batch"] == 2 and r["output_finite"] and not r["bg_enhance"]


def test_bench_xlv2_background_separation_in_half_precision() -> None:
    """xlv2 with background enhance (ReferenceNet bank, merged-LoRA soft blend) runs in fp16 and is timed."""
    from colorize.benchmark.models import random_xl_colorizer
    from colorize.settings import EnhanceSettings

    model, info = random_xl_colorizer("xlv2", "tiny", "cpu", "fp16")
    assert "bg_encoder" in info["params_millions"]
    s = GenerationSettings(steps=1, sampler="euler", scheduler="karras")
    r = bench_size(model, (64, 64), s, runs=1, warmup=0, unet_iters=1, flops=False,
                   enhance=EnhanceSettings(background_enhance=True))
    assert r["bg_enhance"] and r["separation_ms"] > 0 and r["output_finite"]
    assert r["encode_ms"] == pytest.approx(r["clip_ms"] + r["sketch_ms"] + r["separation_ms"], rel=0.05)
    assert "| separation ms |" in format_table([r])


@pytest.mark.parametrize(("argv", "message"), [
    (["--family", "sdxl", "--with-text"], "--with-text: not for XL"),
    (["--family", "xlv2", "--tolerance"], "--tolerance: not for XL v2"),
    (["--family", "sdxl", "--res", "80"], "multiples of 32"),
    (["--bg-enhance"], "no foreground/background separation"),
])
def test_bench_refuses_what_a_family_cannot_do(argv: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--device", "cpu", "--config", "tiny", "--runs", "1", "--warmup", "0", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0


def test_summary_compares_only_v1_rows_with_the_official_figures(tmp_path: Path) -> None:
    from colorize.benchmark.summary import main as summary

    official = tmp_path / "official.json"
    official.write_text(json.dumps({"results": [
        {"kind": "env", "device_name": "NVIDIA H200"},
        {"kind": "generate_kdiff", "status": "ok", "res": "1024x1024", "total_ms_median": 1000.0}]}))
    row = {"res": "1024x1024", "total_ms": 500.0, "sample_ms": 400.0, "unet_call_ms": 20.0, "decode_ms": 50.0,
           "peak_memory_gib": 10.0, "unet_flops": 1e12}
    runs = tmp_path / "runs"
    runs.mkdir()
    for name, family, extra in (("baseline", "mult", {}), ("xl", "sdxl", {}),
                                ("xlbg", "sdxl", {"bg_enhance": True, "separation_ms": 12.5})):
        (runs / f"{name}.json").write_text(json.dumps({
            "env": {"device_name": "NVIDIA H200"}, "model": {"family": family}, "settings": {"bg_enhance": "bg" in name},
            "options": {}, "results": [{**row, **extra}]}))
    summary(runs, tmp_path, official)
    lines = {ln.split(" | ")[0].strip("| "): ln for ln in (tmp_path / "summary.md").read_text().splitlines()
             if ln.startswith("| ") and "1024x1024" in ln}
    assert "| 0.500 | 480.0 |" in lines["baseline"]
    assert "| n/a | n/a |" in lines["xl"] and "| sdxl |" in lines["xl"]
    assert "sdxl + background separation; separation conditioning 12.5 ms" in lines["xlbg"]
