"""The native bridge for ColorizeDiffusion XL inside a real headless ComfyUI, with tiny random weights.

The XL U-Net becomes a core SDXL-shaped MODEL whose adm vector the bridge supplies (sinusoids of √(H·W) and of
7.0, not SDXL's text/size vector). For sdxl and xlv2 (its plain path) the pack's own Colorize Sampler and the
native path (Native Loader → Native Sketch → Native Conditioning → Native Reference Strength → Native Guider /
core CFGGuider, the guidance of KSampler → core SamplerCustomAdvanced) save their latents with core SaveLatent;
they must agree within float32 noise. Needs the harness environment (``harness.py``): skipped without it, failed under ``CI=true``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_comfyui_native import STEPS, node, out, run_latents, save

from colorize.tiny import write_tiny_weights

FILES = {"sdxl": "sdxl.safetensors", "xlv2": "xlv2.safetensors"}
SEED, SIZE = 11, 128
STRENGTHS = {"reference_strength": 0.9, "encoder_strength": 1.1, "middle_strength": 0.8, "low_strength": 1.2}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("native_xl_models")
    write_tiny_weights(d, versions=tuple(FILES))
    return d


def xl_graph() -> dict[str, Any]:
    g: dict[str, Any] = {}
    sketch_image = node(g, "LoadImage", image="colorizediffusion_sketch.png")
    ref_image = node(g, "LoadImage", image="colorizediffusion_reference.png")
    sketch = node(g, "ColorizeDiffusionSketchPreprocess", image=sketch_image, polarity="auto", width=SIZE, height=SIZE)
    for version, file in FILES.items():
        ckpt = node(g, "ColorizeDiffusionCheckpointLoader", ckpt_name=file, precision="auto", parameterization="auto")
        encoder = node(g, "ColorizeDiffusionXLReferenceEncoderLoader", model=ckpt,
                       clip_name="clip_vision_g.safetensors", tagger_name="wd-v1-4-swinv2-tagger-v2.safetensors")
        reference = node(g, "ColorizeDiffusionReferenceEmbed", encoder=encoder, image=ref_image)
        hints = node(g, "ColorizeDiffusionSketchHints", model=ckpt, sketch=sketch, strength=1.0)
        for cfg in (2.0, 1.0):
            save(g, node(g, "ColorizeDiffusionSampler", model=ckpt, reference=reference, hints=hints, seed=SEED,
                         steps=STEPS, sampler="euler", scheduler="leading", reference_cfg=4.0, sketch_cfg=cfg,
                         width=0, height=0, **STRENGTHS), f"{version}_pack_{cfg:g}")

        loader = node(g, "ColorizeDiffusionNativeLoader", ckpt_name=file, precision="auto")
        parts = out(loader, 2)
        patched = node(g, "ColorizeDiffusionNativeSketch", model=loader, colorizer=parts, sketch=sketch, strength=1.0)
        latent = out(patched, 1)
        cond = node(g, "ColorizeDiffusionNativeConditioning", reference=reference)
        model = node(g, "ColorizeDiffusionNativeReferenceStrength", model=patched, colorizer=parts, **STRENGTHS)
        sigmas = node(g, "ColorizeDiffusionNativeSigmas", model=model, scheduler="leading", steps=STEPS)
        guiders = {2.0: node(g, "ColorizeDiffusionNativeGuider", model=model, positive=cond, negative=out(cond, 1),
                             reference_cfg=4.0, sketch_cfg=2.0),
                   1.0: node(g, "CFGGuider", model=model, positive=cond, negative=out(cond, 1), cfg=4.0)}
        for cfg, guider in guiders.items():
            save(g, node(g, "SamplerCustomAdvanced", noise=node(g, "RandomNoise", noise_seed=SEED), guider=guider,
                         sampler=node(g, "KSamplerSelect", sampler_name="euler"), sigmas=sigmas, latent_image=latent),
                 f"{version}_native_{cfg:g}")
    return g


def test_native_xl_model_equals_the_pack_sampler(models_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    latents, log = run_latents(xl_graph(), models_dir, tmp_path)
    for version in FILES:
        for cfg in ("2", "1"):  # dual CFG (Native Guider), reference CFG (core CFGGuider: KSampler's guidance)
            pack, native = latents[f"{version}_pack_{cfg}"], latents[f"{version}_native_{cfg}"]
            diff, scale = float((pack - native).abs().max()), float(pack.abs().max())
            print(f"native XL vs pack sampler, {version}, sketch CFG {cfg}: max |diff| {diff:.3e} (max {scale:.2f})")
            assert pack.shape == native.shape == (1, 4, SIZE // 8, SIZE // 8)
            assert torch.isfinite(native).all() and diff <= 1e-5 * max(1.0, scale)
    assert "unet unexpected" not in log and "unet missing" not in log
