"""The native bridge inside a real headless ComfyUI (the project's harness), with tiny random weights.

One API graph, one server run: for v1, v1.5 (sketch and reference masks, BG + FG enhance) and v2 (masks, BG +
style enhance) the pack's own ColorizeDiffusion Sampler and the native path (Native Loader → Native Sketch →
[Native Enhance] → Native Reference Strength → Native Guider / Native Sigmas → core SamplerCustomAdvanced) save
their latents with core SaveLatent; they must agree within float32 noise (same seed, sampler euler, 4
"leading" steps, reference CFG 4, sketch CFG 2, level strengths ≠ 1). The same graph applies a LoRA file
generated here (kohya keys on the official U-Net names) with core LoraLoaderModelOnly and merges with core
ModelMergeSimple, and checks that both change the result without "lora key not loaded" warnings. The shipped
native workflows themselves run in ``test_comfyui_integration.py`` (every ``workflows/api`` graph).
Needs the harness environment (``harness.py``): skipped without it, failed under ``CI=true``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from harness import REPO, run_harness
from safetensors.torch import load_file, save_file

from colorize.checkpoint import read_header
from colorize.tiny import write_tiny_weights

FILES = {"mult": "mult-eps-ft.safetensors", "switch": "switch-eps.safetensors", "v2": "v2-full.safetensors"}
SEED, STEPS, SIZE, LORA = 7, 4, 128, "colorize_tiny_lora.safetensors"
STRENGTHS = {"reference_strength": 0.9, "encoder_strength": 1.1, "middle_strength": 0.8, "low_strength": 1.2}


def write_lora(models: Path, checkpoint: Path) -> Path:
    """A kohya-format LoRA (rank 2) on every attn2 to_k / to_v of the checkpoint's U-Net."""
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    for key, info in read_header(checkpoint).items():
        if key.startswith("model.diffusion_model.") and key.endswith(("attn2.to_k.weight", "attn2.to_v.weight")):
            out_f, in_f = info.shape
            name = "lora_unet_" + key[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
            sd[f"{name}.lora_down.weight"] = torch.randn(2, in_f, generator=g) * 0.5
            sd[f"{name}.lora_up.weight"] = torch.randn(out_f, 2, generator=g) * 0.5
            sd[f"{name}.alpha"] = torch.tensor(2.0)
    path = models / "loras" / LORA
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("native_models")
    paths = write_tiny_weights(d, versions=tuple(FILES))
    write_lora(d, paths["mult-eps-ft"])
    return d


def node(graph: dict[str, Any], class_type: str, **inputs: Any) -> list[Any]:
    """Add a node; returns the link to its first output (``[id, 0]``)."""
    nid = str(len(graph) + 1)
    graph[nid] = {"class_type": class_type, "inputs": inputs}
    return [nid, 0]


def out(link: list[Any], index: int) -> list[Any]:
    return [link[0], index]


def save(graph: dict[str, Any], latent: list[Any], name: str) -> None:
    node(graph, "SaveLatent", samples=latent, filename_prefix=f"native_eq/{name}")


def native_sample(graph: dict[str, Any], model: list[Any], positive: list[Any], negative: list[Any],
                  latent: list[Any], sketch_cfg: float = 2.0, **advanced: Any) -> list[Any]:
    guider = node(graph, "ColorizeDiffusionNativeGuider", model=model, positive=positive, negative=negative,
                  reference_cfg=4.0, sketch_cfg=sketch_cfg, **advanced)
    sigmas = node(graph, "ColorizeDiffusionNativeSigmas", model=model, scheduler="leading", steps=STEPS)
    return node(graph, "SamplerCustomAdvanced", noise=node(graph, "RandomNoise", noise_seed=SEED), guider=guider,
                sampler=node(graph, "KSamplerSelect", sampler_name="euler"), sigmas=sigmas, latent_image=latent)


def equality_graph() -> dict[str, Any]:
    g: dict[str, Any] = {}
    sketch_image = node(g, "LoadImage", image="colorizediffusion_sketch.png")
    ref_image = node(g, "LoadImage", image="colorizediffusion_reference.png")
    encoder = node(g, "ColorizeDiffusionReferenceEncoderLoader", clip_name="open_clip_model.safetensors")
    reference = node(g, "ColorizeDiffusionReferenceEmbed", encoder=encoder, image=ref_image)
    sketch = node(g, "ColorizeDiffusionSketchPreprocess", image=sketch_image, polarity="auto", width=SIZE, height=SIZE)
    sketch_mask = node(g, "ColorizeDiffusionSketchMask", image=sketch_image, threshold=0.5, gap=4, dilation=0,
                       polarity="auto")
    ref_mask = node(g, "ColorizeDiffusionSketchMask", image=ref_image, threshold=0.1, gap=4, dilation=2,
                    polarity="dark_lines")
    for version, file in FILES.items():
        enhance = None
        if version != "mult":
            enhance = node(g, "ColorizeDiffusionBackgroundEncode", encoder=encoder, reference=ref_image,
                           background_enhance=True, foreground_enhance=True, fg_strength=1.0, bg_strength=0.9,
                           merge_scale=0.1, background_factor=0.8 if version == "v2" else 1.0, sketch_threshold=0.05,
                           reference_threshold=0.5, remove_background_foreground=False, sketch_mask=sketch_mask,
                           reference_mask=ref_mask)
            if version == "v2":
                enhance = node(g, "ColorizeDiffusionStyleEncode", encoder=encoder, reference=ref_image, enhance=enhance)
        # the pack's own sampler
        ckpt = node(g, "ColorizeDiffusionCheckpointLoader", ckpt_name=file, precision="auto")
        hints = node(g, "ColorizeDiffusionSketchHints", model=ckpt, sketch=sketch, strength=1.0)
        extra = {"enhance": enhance} if enhance else {}
        save(g, node(g, "ColorizeDiffusionSampler", model=ckpt, reference=reference, hints=hints, seed=SEED,
                     steps=STEPS, sampler="euler", scheduler="leading", reference_cfg=4.0, sketch_cfg=2.0,
                     width=0, height=0, **STRENGTHS, **extra), f"{version}_pack")
        # the native path
        loader = node(g, "ColorizeDiffusionNativeLoader", ckpt_name=file, precision="auto")
        parts = out(loader, 2)
        patched = node(g, "ColorizeDiffusionNativeSketch", model=loader, colorizer=parts, sketch=sketch, strength=1.0)
        latent = out(patched, 1)
        cond = node(g, "ColorizeDiffusionNativeConditioning", reference=reference)
        positive, negative = cond, out(cond, 1)
        sketched = patched
        if enhance:
            patched = node(g, "ColorizeDiffusionNativeEnhance", model=patched, colorizer=parts, reference=reference,
                           sketch=sketch, enhance=enhance, seed=SEED)
            positive, negative = out(patched, 1), out(patched, 2)
        model = node(g, "ColorizeDiffusionNativeReferenceStrength", model=patched, colorizer=parts, **STRENGTHS)
        save(g, native_sample(g, model, positive, negative, latent), f"{version}_native")
        if version == "v2":  # the same without Native Enhance: the separation must matter
            plain = node(g, "ColorizeDiffusionNativeReferenceStrength", model=sketched, colorizer=parts, **STRENGTHS)
            save(g, native_sample(g, plain, cond, out(cond, 1), latent), "v2_without_enhance")
        if version == "mult":  # reference-only CFG with core's CFGGuider (KSampler's guidance) equals the Sampler's
            save(g, node(g, "ColorizeDiffusionSampler", model=ckpt, reference=reference, hints=hints, seed=SEED,
                         steps=STEPS, sampler="euler", scheduler="leading", reference_cfg=4.0, sketch_cfg=1.0,
                         width=0, height=0, **STRENGTHS), "mult_pack_refonly")
            core = node(g, "CFGGuider", model=model, positive=positive, negative=negative, cfg=4.0)
            sigmas = node(g, "ColorizeDiffusionNativeSigmas", model=model, scheduler="leading", steps=STEPS)
            save(g, node(g, "SamplerCustomAdvanced", noise=node(g, "RandomNoise", noise_seed=SEED), guider=core,
                         sampler=node(g, "KSamplerSelect", sampler_name="euler"), sigmas=sigmas, latent_image=latent),
                 "mult_native_refonly")
        if version == "mult":  # a guidance window on both paths (steps with tr in [0.3, 0.8] keep the reference)
            window = node(g, "ColorizeDiffusionGuidanceWindow", start=0.3, end=0.8, no_guidance_start=-0.05,
                          no_guidance_end=-0.05)
            save(g, node(g, "ColorizeDiffusionSampler", model=ckpt, reference=reference, hints=hints, seed=SEED,
                         steps=STEPS, sampler="euler", scheduler="leading", reference_cfg=4.0, sketch_cfg=2.0,
                         width=0, height=0, **STRENGTHS, advanced=window), "mult_pack_window")
            save(g, native_sample(g, model, positive, negative, latent, advanced=window), "mult_native_window")
        if version == "mult":  # host LoRA and merge nodes on the bridged MODEL
            lora = node(g, "LoraLoaderModelOnly", model=loader, lora_name=LORA, strength_model=1.0)
            merged = node(g, "ModelMergeSimple", model1=loader, model2=lora, ratio=0.5)
            for name, base in (("lora", lora), ("merge", merged)):
                m = node(g, "ColorizeDiffusionNativeSketch", model=base, colorizer=parts, sketch=sketch, strength=1.0)
                m = node(g, "ColorizeDiffusionNativeReferenceStrength", model=m, colorizer=parts, **STRENGTHS)
                save(g, native_sample(g, m, positive, negative, latent), f"mult_{name}")
    return g


def run_latents(graph: dict[str, Any], models_dir: Path, tmp_path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Run an API graph with the example images in the real ComfyUI; ``(saved latents by name, server log)``."""
    wf = tmp_path / "native_graph.json"
    wf.write_text(json.dumps(graph))
    outdir = tmp_path / "out"
    rc, summary, text = run_harness(
        "--workflow", str(wf), "--models-dir", str(models_dir), "--outdir", str(outdir), "--fail-on-import-error",
        "--input", str(REPO / "workflows" / "colorizediffusion_sketch.png"),
        "--input", str(REPO / "workflows" / "colorizediffusion_reference.png"), timeout=500)
    run_dir = Path(summary["run_dir"])
    log = Path(summary["log"]).read_text(errors="replace") if Path(summary["log"]).is_file() else text
    shutil.rmtree(run_dir, ignore_errors=True)  # the run folder the harness made for this test
    assert rc == 0 and summary["status_str"] == "success", text[-4000:]
    return {p.name.split("_0000")[0]: load_file(str(p))["latent_tensor"] for p in outdir.glob("*.latent")}, log


def test_native_path_equals_the_pack_sampler_and_takes_lora_and_merge(models_dir: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: one thread is fastest, and spares a busy machine
    latents, log = run_latents(equality_graph(), models_dir, tmp_path)
    pairs = {**{v: (f"{v}_pack", f"{v}_native") for v in FILES},
             "mult, reference CFG only, core CFGGuider": ("mult_pack_refonly", "mult_native_refonly"),
             "mult, guidance window [0.3, 0.8]": ("mult_pack_window", "mult_native_window")}
    for what, (pack_name, native_name) in pairs.items():
        pack, native = latents[pack_name], latents[native_name]
        diff, scale = float((pack - native).abs().max()), float(pack.abs().max())
        print(f"native vs pack sampler, {what}: max |diff| {diff:.3e} (latent max {scale:.2f})")
        assert pack.shape == native.shape == (1, 4, SIZE // 8, SIZE // 8)
        assert torch.isfinite(native).all() and diff <= 1e-5 * max(1.0, scale)
    assert float((latents["mult_native_window"] - latents["mult_native"]).abs().max()) > 1e-3  # the window acts
    separation = float((latents["v2_native"] - latents["v2_without_enhance"]).abs().max())
    assert separation > 1e-2 * float(latents["v2_native"].abs().max())
    for name in ("mult_lora", "mult_merge"):
        change = float((latents[name] - latents["mult_native"]).abs().max())
        print(f"{name}: max |change| vs the plain bridged MODEL {change:.3e}")
        assert torch.isfinite(latents[name]).all() and change > 1e-3
    assert float((latents["mult_lora"] - latents["mult_merge"]).abs().max()) > 1e-3
    assert "lora key not loaded" not in log and "unet unexpected" not in log and "unet missing" not in log
