"""ColorizeDiffusion XL through the nodes, without ComfyUI, on tiny weights: the loader's prediction-type choice,
the XL reference encoder, XL sizes, the sampler equal to the library (with and without background separation),
the level rule and the named errors."""
from __future__ import annotations

from _helpers import combo_choices, require_node_api

require_node_api()  # the nodes import ComfyUI's comfy_api

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _helpers import tiny_colorizer

import colorize.weights as w
from colorize.errors import CheckpointError, InputError
from colorize.preprocess import prepare_reference, prepare_sketch
from colorize.settings import EnhanceSettings, GenerationSettings
from colorize.tiny import write_tiny_weights
from nodes import NODE_CLASSES as M
from nodes import models as node_models
from nodes.sockets import bchw_to_image

XL = ("sdxl", "xlv2")
CLIP_G, TAGGER = "clip_vision_g.safetensors", "wd-v1-4-swinv2-tagger-v2.safetensors"
H, W = 96, 64


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("xl-models")
    write_tiny_weights(d, versions=("mult", *XL), masks=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(w.MODELS_DIR_ENV, str(d))
        yield d


@pytest.fixture(scope="module")
def models(tiny_dir: Path) -> dict[str, Any]:
    return {v: M["ColorizeDiffusionCheckpointLoader"].execute(f"{v}.safetensors", "fp32").result[0] for v in XL}


@pytest.fixture(scope="module")
def encoders(models: dict[str, Any]) -> dict[str, Any]:
    return {v: M["ColorizeDiffusionXLReferenceEncoderLoader"].execute(m, CLIP_G, TAGGER)[0] for v, m in models.items()}


def sketch_image() -> torch.Tensor:
    """A prepared sketch (white lines on black) of H × W as a ComfyUI IMAGE."""
    s = torch.ones(1, 3, H, W)
    s[..., 20:76, 16] = s[..., 20:76, 47] = s[..., 20, 16:48] = s[..., 75, 16:48] = 0
    return bchw_to_image((prepare_sketch(s, (H, W)) + 1) / 2)


def reference_image() -> torch.Tensor:
    return torch.rand(1, 80, 60, 3, generator=torch.Generator().manual_seed(7))


def sample(model: Any, reference: Any, hints: Any, enhance: Any = None, advanced: Any = None, **kw: Any) -> Any:
    args = {"seed": 3, "steps": 2, "sampler": "dpmpp_3m_sde", "scheduler": "auto", "reference_cfg": 4.0,
            "sketch_cfg": 2.0, "reference_strength": 1.0, "encoder_strength": 1.0, "middle_strength": 1.0,
            "low_strength": 1.0, "width": 0, "height": 0, **kw}
    return M["ColorizeDiffusionSampler"].execute(model, reference, hints, enhance=enhance, advanced=advanced,
                                                 **args)[0]["samples"]


def background(encoder: Any, **kw: Any) -> Any:
    args = {"background_enhance": True, "foreground_enhance": False, "fg_strength": 1.0, "bg_strength": 1.0,
            "merge_scale": 0.0, "background_factor": 1.0, "sketch_threshold": 0.05, "reference_threshold": 0.5,
            "remove_background_foreground": False, **kw}
    mask = torch.zeros(1, 80, 60)
    mask[:, 20:60, 15:45] = 1
    return M["ColorizeDiffusionBackgroundEncode"].execute(encoder, reference_image(), reference_mask=mask, **args)[0]


def test_pickers_list_the_xl_files(tiny_dir: Path) -> None:
    assert {"sdxl.safetensors", "xlv2.safetensors"} <= set(combo_choices(M["ColorizeDiffusionCheckpointLoader"],
                                                                          "ckpt_name"))
    node = M["ColorizeDiffusionXLReferenceEncoderLoader"]
    assert CLIP_G in combo_choices(node, "clip_name") and combo_choices(node, "tagger_name") == [TAGGER]
    assert node_models.TAGGER_FOLDER in node_models.PACK_FOLDERS


def test_loader_reports_the_prediction_rule_and_takes_an_override(tiny_dir: Path, models: dict[str, Any]) -> None:
    assert models["sdxl"].config.parameterization == "v"
    loaded = M["ColorizeDiffusionCheckpointLoader"].execute("sdxl.safetensors", "fp32", "eps").result
    assert loaded[0].config.parameterization == "eps" and "eps-prediction (set on the loader)" in loaded[1]
    assert "ColorizeDiffusion XL (sdxl)" in loaded[1]
    with pytest.raises(InputError, match="parameterization"):
        M["ColorizeDiffusionCheckpointLoader"].execute("sdxl.safetensors", "fp32", "x0")


def test_xl_reference_tokens_are_the_clusterconcat_context(tiny_dir: Path, models: dict[str, Any],
                                                           encoders: dict[str, Any]) -> None:
    lib = tiny_colorizer(tiny_dir, "sdxl")
    reference = M["ColorizeDiffusionReferenceEmbed"].execute(encoders["sdxl"], reference_image())[0]
    expected = lib.encode_reference(prepare_reference(reference_image().movedim(-1, 1)))
    assert reference.tokens.shape == (1, 196, models["sdxl"].config.unet.context_dim)
    torch.testing.assert_close(reference.tokens, expected.float(), atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="XL has no text edits"):  # no CLS token, no text tower
        M["ColorizeDiffusionTextEdit"].execute(reference, True, "hair", "hair", "red hair", 1.0, False,
                                               0.5, 0.5, 0.5, 0.5, 1.0)


@pytest.mark.parametrize("version", XL)
@pytest.mark.parametrize("separation", [False, True])
def test_sampler_equals_the_library(tiny_dir: Path, models: dict[str, Any], encoders: dict[str, Any],
                                    version: str, separation: bool) -> None:
    model, encoder = models[version], encoders[version]
    reference = M["ColorizeDiffusionReferenceEmbed"].execute(encoder, reference_image())[0]
    hints = M["ColorizeDiffusionSketchHints"].execute(model, sketch_image(), 1.0)[0]
    assert hints.size == (H, W)  # XL keeps a multiple-of-32 sketch as it is
    enhance = background(encoder) if separation else None
    latent = sample(model, reference, hints, enhance)

    lib = tiny_colorizer(tiny_dir, version)
    settings = GenerationSettings(steps=2, seed=3, sampler="dpmpp_3m_sde", sketch_cfg=2.0, width=W, height=H)
    sketch = hints.sketch
    ref = prepare_reference(reference_image().movedim(-1, 1))
    kw: dict[str, Any] = {}
    if separation:
        kw = {"enhance": EnhanceSettings(background_enhance=True), "reference_mask": enhance.reference_mask}
    cond = lib.conditioning(sketch, ref, settings, sketch_hw=(H, W), **kw)
    assert "y" in cond.unet_kwargs
    expected = lib.sample(cond, (H, W), settings)
    torch.testing.assert_close(latent * model.config.vae.scale_factor, expected, atol=1e-4, rtol=1e-4)


def test_xl_sizes_follow_the_xl_rules(models: dict[str, Any], encoders: dict[str, Any]) -> None:
    model = models["sdxl"]
    sketch = torch.zeros(1, 300, 200, 3)
    auto = M["ColorizeDiffusionSketchPreprocess"].execute(sketch, "keep", 0, 0, model)[0]
    assert auto.shape[1:3] == (1248, 832)  # the XL app's autofit: the sketch's aspect at about 1024²
    assert M["ColorizeDiffusionSketchPreprocess"].execute(sketch, "keep", 0, 0)[0].shape[1] % 64 == 0
    with pytest.raises(InputError) as e:
        M["ColorizeDiffusionSketchPreprocess"].execute(sketch, "keep", 100, 96, model)
    assert "32" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="the sketch is 70×96"):
        M["ColorizeDiffusionSketchHints"].execute(model, torch.zeros(1, 96, 70, 3), 1.0)
    reference = M["ColorizeDiffusionReferenceEmbed"].execute(encoders["sdxl"], reference_image())[0]
    hints = M["ColorizeDiffusionSketchHints"].execute(model, sketch_image(), 1.0)[0]
    assert sample(model, reference, hints, steps=1, width=96, height=64).shape == (1, 4, 8, 12)
    with pytest.raises(InputError, match="32"):
        sample(model, reference, hints, width=80)


def test_level_rule_node_lets_the_low_slider_act(models: dict[str, Any], encoders: dict[str, Any]) -> None:
    model = models["sdxl"]
    reference = M["ColorizeDiffusionReferenceEmbed"].execute(encoders["sdxl"], reference_image())[0]
    hints = M["ColorizeDiffusionSketchHints"].execute(model, sketch_image(), 1.0)[0]
    base = sample(model, reference, hints)
    assert torch.equal(sample(model, reference, hints, low_strength=0.0), base)  # official: only encoder acts
    levels = M["ColorizeDiffusionXLLevelRule"].execute("levels")[0]
    assert (sample(model, reference, hints, advanced=levels, low_strength=0.0) - base).abs().max() > 1e-4


def test_named_errors_for_xl_misuse(tiny_dir: Path, models: dict[str, Any], encoders: dict[str, Any]) -> None:
    v1 = M["ColorizeDiffusionCheckpointLoader"].execute("mult-eps-ft.safetensors", "fp32").result[0]
    with pytest.raises(InputError, match="not ColorizeDiffusion XL"):
        M["ColorizeDiffusionXLReferenceEncoderLoader"].execute(v1, CLIP_G, TAGGER)
    with pytest.raises(CheckpointError):  # the SD2.1 OpenCLIP file is not CLIP-bigG
        M["ColorizeDiffusionXLReferenceEncoderLoader"].execute(models["sdxl"], "open_clip_model.safetensors", TAGGER)
    v1_encoder = M["ColorizeDiffusionReferenceEncoderLoader"].execute("open_clip_model.safetensors")[0]
    v1_reference = M["ColorizeDiffusionReferenceEmbed"].execute(v1_encoder, reference_image())[0]
    hints = M["ColorizeDiffusionSketchHints"].execute(models["sdxl"], sketch_image(), 1.0)[0]
    assert v1_reference.dim != models["sdxl"].config.unet.context_dim
    with pytest.raises(InputError, match="XL Reference Encoder Loader"):
        sample(models["sdxl"], v1_reference, hints)
    reference = M["ColorizeDiffusionReferenceEmbed"].execute(encoders["sdxl"], reference_image())[0]
    for bad in ({"foreground_enhance": True}, {"background_factor": 0.5}):
        with pytest.raises(InputError) as e:
            sample(models["sdxl"], reference, hints, background(encoders["sdxl"], **bad))
        assert "\n" not in str(e.value) and "XL" in str(e.value)


class FakeComfyBigG:
    """ComfyUI's ClipVisionModel interface around the library's CLIP-bigG tower: ``model(pixel_values=...,
    intermediate_output=...)[0]`` is the last hidden state before ``post_layernorm``, as the core's is."""

    def __init__(self, tower: Any) -> None:
        class Model(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.vision_model, self.visual_projection = tower.vision_model, tower.visual_projection

            def forward(self, pixel_values: torch.Tensor, intermediate_output: Any = None) -> tuple[torch.Tensor]:
                return (self.vision_model.last_hidden_state(pixel_values),)

        self.model, self.patcher, self.load_device = Model(), None, None
        self.image_size = tower.cfg.image_size


def test_xl_encoder_from_clip_vision_equals_the_file_loader(tiny_dir: Path, models: dict[str, Any],
                                                            encoders: dict[str, Any]) -> None:
    from colorize.families.xl.encoders import load_xl_reference_encoder

    own = load_xl_reference_encoder(tiny_dir / "clip_vision" / CLIP_G, tiny_dir / "wd_tagger" / TAGGER)
    node = M["ColorizeDiffusionXLReferenceEncoderFromCLIPVision"]
    bridged = node.execute(models["xlv2"], FakeComfyBigG(own.clip), TAGGER)[0]
    got = M["ColorizeDiffusionReferenceEmbed"].execute(bridged, reference_image())[0].tokens
    want = M["ColorizeDiffusionReferenceEmbed"].execute(encoders["xlv2"], reference_image())[0].tokens
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    v1 = M["ColorizeDiffusionCheckpointLoader"].execute("mult-eps-ft.safetensors", "fp32").result[0]
    with pytest.raises(InputError, match="not ColorizeDiffusion XL"):
        node.execute(v1, FakeComfyBigG(own.clip), TAGGER)
    with pytest.raises(InputError, match="ViT-bigG"):
        node.execute(models["sdxl"], object(), TAGGER)


@pytest.mark.parametrize("stage,version", [("xl_base", "sdxl"), ("xl_adapter_stage2", "xlv2")])
def test_trained_xl_exports_load_in_the_nodes(tiny_dir: Path, tmp_path: Path, stage: str, version: str) -> None:
    """An export of an XL training stage (one step on synthetic data) is listed by the loader, loads as its model
    type with the prediction type from its metadata, and samples (xlv2 with background separation)."""
    from _helpers import make_trainer

    from training.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", 4, (72, 88), "folders", seed=1, masks=True)
    cfg = {"stage": stage,
           "model": {"init": str(tiny_dir / "colorizediffusion" / f"{version}.safetensors"),
                     "clip": str(tiny_dir / "clip_vision" / CLIP_G), "tagger": str(tiny_dir / "wd_tagger" / TAGGER)},
           "data": {"root": str(data)}, "augment": {"buckets": [[64, 64]], "reference_size": 64},
           "run": {"out_dir": str(tmp_path / "run"), "max_steps": 1, "batch_size": 2, "precision": "fp32",
                   "device": "cpu", "log_every": 0, "save_every": 0, "resume": "none"}}
    export = make_trainer(cfg).train().export
    assert export is not None
    name = f"{version}-trained-{stage}.safetensors"
    (tiny_dir / "colorizediffusion" / name).write_bytes(export.read_bytes())
    assert name in combo_choices(M["ColorizeDiffusionCheckpointLoader"], "ckpt_name")
    model = M["ColorizeDiffusionCheckpointLoader"].execute(name, "fp32").result[0]
    assert model.config.version == version and model.config.parameterization == "v"
    encoder = M["ColorizeDiffusionXLReferenceEncoderLoader"].execute(model, CLIP_G, TAGGER)[0]
    reference = M["ColorizeDiffusionReferenceEmbed"].execute(encoder, reference_image())[0]
    hints = M["ColorizeDiffusionSketchHints"].execute(model, sketch_image(), 1.0)[0]
    latent = sample(model, reference, hints, background(encoder) if version == "xlv2" else None, steps=1)
    assert latent.shape == (1, 4, H // 8, W // 8) and torch.isfinite(latent).all()
