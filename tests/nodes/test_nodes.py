"""The ComfyUI nodes run without ComfyUI, on tiny random weights: schema, chain, sizes, Cancel, downloads."""
from __future__ import annotations

from _helpers import ProgressRecorder, combo_choices, comfy_image, require_node_api, tiny_models_folder

require_node_api()  # the nodes import ComfyUI's comfy_api

import asyncio
import importlib.util
import inspect
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import colorize.weights as w
import nodes
from colorize.config import TINY_MULT
from colorize.errors import CheckpointError, InputError, NonFiniteResultError, WeightsMissingError
from colorize.models.clip import ReferenceEncoder
from colorize.pipeline import Colorizer
from colorize.settings import GenerationSettings
from nodes import DISPLAY_NAMES as NAMES
from nodes import NODE_CLASSES as M
from nodes import models as node_models
from nodes import sampler as node_sampler
from nodes.reference import ClipVisionReference
from nodes.schema import ComfyExtension, io

REPO = Path(__file__).resolve().parents[2]
CKPT, CLIP = "mult-eps-ft.safetensors", "open_clip_model.safetensors"


SKETCH = comfy_image(REPO / "workflows" / "colorizediffusion_sketch.png")
REFERENCE = comfy_image(REPO / "workflows" / "colorizediffusion_reference.png")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from tiny_models_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> Any:
    return M["ColorizeDiffusionCheckpointLoader"].execute(CKPT, "fp32").result[0]


@pytest.fixture(scope="module")
def encoder(tiny_dir: Path) -> Any:
    return M["ColorizeDiffusionReferenceEncoderLoader"].execute(CLIP)[0]


def sample(model: Any, reference: Any, hints: Any, **kw: Any) -> dict[str, Any]:
    args = {"seed": 3, "steps": 2, "sampler": "dpm_solver", "scheduler": "leading", "reference_cfg": 4.0,
            "sketch_cfg": 1.0, "reference_strength": 1.0, "encoder_strength": 1.0, "middle_strength": 1.0,
            "low_strength": 1.0, "width": 0, "height": 0, **kw}
    return M["ColorizeDiffusionSampler"].execute(model, reference, hints, **args)[0]


def prepared(size: int = 128, image: torch.Tensor = SKETCH, polarity: str = "auto") -> torch.Tensor:
    return M["ColorizeDiffusionSketchPreprocess"].execute(image, polarity, size, size)[0]


# ------------------------------------------------------------------------------------- schema


def test_runs_without_comfyui() -> None:
    """Only ComfyUI's API module is imported (nodes/schema.py), not ComfyUI itself: no model management."""
    assert "comfy_api" in sys.modules and "comfy.model_management" not in sys.modules


def test_every_node_is_a_described_and_tooltipped_v3_node() -> None:
    # v1 pack (8) + Text Edit, Control Heatmap, Line Extract + 5 v1.5/v2 + 5 advanced (+ the native bridge)
    assert len(M) >= 21 and set(M) == set(NAMES) and len(M) == len(nodes.NODES)
    for node_id, cls in M.items():
        assert issubclass(cls, io.ComfyNode), f"{node_id} is not a V3 node"
        schema = cls.GET_SCHEMA()  # ComfyUI's own checks: unique input and output ids
        assert node_id.startswith("ColorizeDiffusion") and NAMES[node_id]  # short names: tests/nodes/test_node_docs.py
        assert schema.category.startswith("ColorizeDiffusion/") and len(schema.description) > 40
        for inp in schema.inputs:
            assert inp.tooltip, f"{node_id}.{inp.id} has no tooltip"
            if inp.io_type == "COMBO":
                assert inp.default in inp.options, f"{node_id}.{inp.id} default not in its choices"
            elif inp.io_type in ("INT", "FLOAT"):
                assert inp.min <= inp.default <= inp.max, f"{node_id}.{inp.id} default outside its range"
        assert schema.outputs and all(o.tooltip and o.display_name for o in schema.outputs), node_id
        # ComfyUI calls execute(**inputs): its parameters are the inputs, optional ones with a default
        params = inspect.signature(cls.execute).parameters
        assert list(params) == [i.id for i in schema.inputs], f"{node_id}.execute arguments differ from its inputs"
        for inp in schema.inputs:
            has_default = params[inp.id].default is not inspect.Parameter.empty
            assert has_default == bool(inp.optional), f"{node_id}.{inp.id}: optional iff it has a default"
    custom = {o.io_type for cls in M.values() for o in cls.define_schema().outputs if o.io_type.startswith("COLORIZE")}
    assert custom >= {"COLORIZE_MODEL", "COLORIZE_REFERENCE_ENCODER", "COLORIZE_REFERENCE", "COLORIZE_HINTS",
                      "COLORIZE_ENHANCE", "COLORIZE_ADVANCED"}


def test_root_init_loads_like_comfyui_does() -> None:
    """ComfyUI imports the pack folder by path under a made-up module name and, finding no
    ``NODE_CLASS_MAPPINGS``, awaits ``comfy_entrypoint()`` and asks the extension for its nodes."""
    name = "custom_nodes_x_colorizediffusion_test"
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        assert not hasattr(module, "NODE_CLASS_MAPPINGS")  # else ComfyUI would take the classic-API path
        extension = asyncio.run(module.comfy_entrypoint())
        assert isinstance(extension, ComfyExtension)
        listed = asyncio.run(extension.get_node_list())
        assert {cls.define_schema().node_id for cls in listed} == set(M) and len(listed) == len(M)
        # ComfyUI serves the root module's WEB_DIRECTORY; the nodes' help pages are its docs/
        assert module.WEB_DIRECTORY == "./web" and "WEB_DIRECTORY" in module.__all__
        assert (REPO / module.WEB_DIRECTORY / "docs").is_dir()
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def test_file_pickers_list_present_and_downloadable_files(tiny_dir: Path) -> None:
    ckpts = combo_choices(M["ColorizeDiffusionCheckpointLoader"], "ckpt_name")
    assert ckpts[0] == CKPT and "mult-eps-newft.safetensors" in ckpts  # present first, then downloadable files
    assert {"switch-eps.safetensors", "v2-full.safetensors"} <= set(ckpts)  # v1.5 and v2 load too
    clips = combo_choices(M["ColorizeDiffusionReferenceEncoderLoader"], "clip_name")
    assert clips[0] == CLIP and "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in clips


# ------------------------------------------------------------------------------------- the chain


def test_node_chain_equals_the_library_pipeline(tiny_dir: Path, model: Any, encoder: Any) -> None:
    loaded = M["ColorizeDiffusionCheckpointLoader"].execute(CKPT, "auto")
    assert loaded.ui.as_dict()["text"][0] == loaded.result[1]
    assert "v1 (mult)" in loaded.result[1] and "eps-prediction" in loaded.result[1]

    reference = M["ColorizeDiffusionReferenceEmbed"].execute(encoder, REFERENCE)[0]
    assert reference.tokens.shape == (1, 256, TINY_MULT.clip.embed_dim)
    sketch = prepared(128)
    hints = M["ColorizeDiffusionSketchHints"].execute(model, sketch, 0.8)[0]
    latent = sample(model, reference, hints, sketch_cfg=2.0)
    image = M["ColorizeDiffusionDecode"].execute(model, latent)[0]
    assert latent["samples"].shape == (1, 4, 16, 16) and image.shape == (1, 128, 128, 3)

    lib = Colorizer.from_files(tiny_dir / "colorizediffusion" / CKPT, tiny_dir / "clip_vision" / CLIP, "cpu", "fp32")
    settings = GenerationSettings(steps=2, seed=3, sketch_cfg=2.0, sketch_strength=0.8, width=128, height=128)
    cond = lib.conditioning(*_library_inputs(settings), settings)
    ldm_latent = lib.sample(cond, (128, 128), settings)
    # LATENT is ComfyUI's raw VAE space: the diffusion-space latent divided by the SD scale factor
    torch.testing.assert_close(latent["samples"] * 0.18215, ldm_latent, atol=1e-4, rtol=1e-4)
    expected = (lib.decode(ldm_latent) + 1) / 2
    torch.testing.assert_close(image, expected.permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)


def _library_inputs(settings: GenerationSettings) -> tuple[torch.Tensor, torch.Tensor]:
    from colorize.preprocess import prepare_reference, prepare_sketch

    sketch = prepare_sketch(SKETCH.permute(0, 3, 1, 2), (settings.height, settings.width), "auto")
    return sketch, prepare_reference(REFERENCE.permute(0, 3, 1, 2))


def test_sketch_preprocess_polarity_fit_and_pad() -> None:
    dark_on_light = torch.ones(1, 60, 120, 3)
    dark_on_light[:, 28:32] = 0.0  # one black horizontal line on white paper
    for polarity in ("auto", "invert"):
        out = M["ColorizeDiffusionSketchPreprocess"].execute(dark_on_light, polarity, 128, 128)[0]
        assert out.shape == (1, 128, 128, 3)
        assert out[0, 64, 10].min() > 0.9  # the line is white, centred
        assert out[0, 40, 10].max() < 0.1 and out[0, 5, 64].max() < 0.1  # paper and padding are black
    kept = M["ColorizeDiffusionSketchPreprocess"].execute(dark_on_light, "keep", 128, 128)[0]
    assert kept[0, 64, 10].max() < 0.1 and kept[0, 40, 10].min() > 0.9  # not inverted; padding still black
    assert kept[0, 5, 64].max() < 0.1
    auto = M["ColorizeDiffusionSketchPreprocess"].execute(dark_on_light, "auto", 0, 0)[0]
    assert auto.shape[1] % 64 == 0 and auto.shape[2] % 64 == 0 and auto.shape[2] > auto.shape[1]


def test_sketch_hints_fit_sizes_that_are_not_multiples_of_64(model: Any) -> None:
    sketch = torch.zeros(1, 100, 190, 3)
    hints = M["ColorizeDiffusionSketchHints"].execute(model, sketch, 1.0)[0]
    assert hints.size == (128, 192) and hints.hints[0].shape[-2:] == (16, 24)


def test_sampler_size_override_reencodes_the_sketch(model: Any, encoder: Any) -> None:
    reference = M["ColorizeDiffusionReferenceEmbed"].execute(encoder, REFERENCE)[0]
    hints = M["ColorizeDiffusionSketchHints"].execute(model, prepared(64), 1.0)[0]
    latent = sample(model, reference, hints, steps=1, width=192, height=128)
    assert latent["samples"].shape == (1, 4, 16, 24)


def test_decode_node_refuses_a_non_finite_latent(model: Any) -> None:
    samples = torch.zeros(1, 4, 8, 8)
    samples[0, 1, 2, 2] = float("inf")
    with pytest.raises(NonFiniteResultError, match="fp32 or bf16"):
        M["ColorizeDiffusionDecode"].execute(model, {"samples": samples})


def test_reference_and_sketch_batches_pair_up(model: Any, encoder: Any) -> None:
    refs = torch.cat([REFERENCE[:, :256, :256], 1 - REFERENCE[:, :256, :256]])
    reference = M["ColorizeDiffusionReferenceEmbed"].execute(encoder, refs)[0]
    hints = M["ColorizeDiffusionSketchHints"].execute(model, prepared(64), 1.0)[0]
    latent = sample(model, reference, hints, steps=1)
    image = M["ColorizeDiffusionDecode"].execute(model, latent)[0]
    assert latent["samples"].shape[0] == 2 and image.shape == (2, 64, 64, 3)
    assert not torch.equal(image[0], image[1])


def test_sampler_reports_progress_and_stops_on_cancel(model: Any, encoder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = M["ColorizeDiffusionReferenceEmbed"].execute(encoder, REFERENCE)[0]
    hints = M["ColorizeDiffusionSketchHints"].execute(model, prepared(64), 1.0)[0]
    recorder = ProgressRecorder.fresh()
    updates = recorder.updates
    monkeypatch.setattr(node_sampler, "Progress", recorder)
    sample(model, reference, hints, steps=3, sampler="euler", scheduler="karras")
    assert updates == [(1, 3), (2, 3), (3, 3)]

    class Cancelled(Exception):
        pass

    calls = {"n": 0}

    def cancel_after_two_steps() -> None:
        calls["n"] += 1
        if calls["n"] > 2:  # 1 check before sampling, then one per step
            raise Cancelled

    updates.clear()
    monkeypatch.setattr(node_sampler, "check_interrupted", cancel_after_two_steps)
    with pytest.raises(Cancelled):
        sample(model, reference, hints, steps=50)
    assert updates == [(1, 50)]


def test_sampler_rejects_tokens_of_another_width(model: Any, encoder: Any) -> None:
    from nodes.sockets import ReferenceTokens

    hints = M["ColorizeDiffusionSketchHints"].execute(model, prepared(64), 1.0)[0]
    with pytest.raises(InputError, match="1024-dimensional"):
        sample(model, ReferenceTokens(torch.zeros(1, 256, 1024)), hints)


def test_precision_choice_is_applied(tiny_dir: Path, encoder: Any) -> None:
    m = M["ColorizeDiffusionCheckpointLoader"].execute(CKPT, "bf16").result[0]
    unet = m.unet.module
    assert m.dtype == unet.input_blocks[0][0].weight.dtype == next(m.sketch_encoder.module.parameters()).dtype == torch.bfloat16
    assert unet.out[2].weight.dtype == torch.float32  # output head stays fp32, as in the official app
    assert all(p.dtype == torch.float32 for p in m.vae.module.parameters())  # the VAE too
    reference = M["ColorizeDiffusionReferenceEmbed"].execute(encoder, REFERENCE)[0]
    hints = M["ColorizeDiffusionSketchHints"].execute(m, prepared(64), 1.0)[0]
    image = M["ColorizeDiffusionDecode"].execute(m, sample(m, reference, hints, steps=1))[0]
    assert torch.isfinite(image).all()


def test_checkpoint_loader_names_a_clip_file(tiny_dir: Path) -> None:
    wrong = tiny_dir / "colorizediffusion" / "not-a-colorizer.safetensors"
    shutil.copy(tiny_dir / "clip_vision" / CLIP, wrong)
    try:
        with pytest.raises(CheckpointError, match="CLIP"):
            M["ColorizeDiffusionCheckpointLoader"].execute(wrong.name, "auto")
    finally:
        wrong.unlink()


# ------------------------------------------------------------------------------------- CLIP_VISION


class FakeComfyClipVision:
    """Mimics ComfyUI's ClipVisionModel interface (HF-style module names) around open_clip weights:
    ``model(pixel_values=..., intermediate_output=...)`` returns the last hidden state before
    ``post_layernorm``, as ComfyUI's CLIPVisionModelProjection does."""

    def __init__(self, encoder: ReferenceEncoder) -> None:
        visual = encoder.visual
        proj = torch.nn.Linear(visual.proj.shape[0], visual.proj.shape[1], bias=False)
        proj.weight.data = visual.proj.detach().T.clone()

        class VisionModel(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.visual, self.post_layernorm = visual, visual.ln_post

            def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
                v = self.visual
                x = v.conv1(pixel_values).flatten(2).transpose(1, 2)
                x = torch.cat([v.class_embedding.view(1, 1, -1).expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
                x = v.ln_pre(x)
                batch_first = getattr(v.transformer, "batch_first", False)
                x = x if batch_first else x.transpose(0, 1)
                for block in v.transformer.resblocks:
                    x = block(x)
                return x if batch_first else x.transpose(0, 1)

        class Model(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.vision_model, self.visual_projection = VisionModel(), proj

            def forward(self, pixel_values: torch.Tensor, intermediate_output: Any = None) -> tuple:
                hidden = self.vision_model(pixel_values)
                pooled = self.vision_model.post_layernorm(hidden[:, 0])
                return hidden, None, self.visual_projection(pooled), None

        self.model, self.image_size, self.patcher, self.load_device = Model(), 224, None, torch.device("cpu")


def test_reference_from_clip_vision_matches_own_encoder(tiny_dir: Path) -> None:
    from colorize.loader import load_reference_encoder

    own = load_reference_encoder(tiny_dir / "clip_vision" / CLIP)
    cv = FakeComfyClipVision(own)
    adapter = M["ColorizeDiffusionReferenceEncoderFromCLIPVision"].execute(cv)[0]
    assert isinstance(adapter, ClipVisionReference) and adapter.embed_dim == TINY_MULT.clip.embed_dim
    got = M["ColorizeDiffusionReferenceEmbed"].execute(adapter, REFERENCE)[0].tokens
    ref = REFERENCE.permute(0, 3, 1, 2) * 2 - 1
    with torch.no_grad():
        want = own.encode_image(ref, "full")[:, 1:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_clip_vision_without_projection_is_rejected() -> None:
    cv = types.SimpleNamespace(model=torch.nn.Identity(), image_size=224)
    with pytest.raises(InputError, match="ViT-H/14"):
        M["ColorizeDiffusionReferenceEncoderFromCLIPVision"].execute(cv)


# ------------------------------------------------------------------------------------- weights


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


def test_missing_weights_offline_one_screen_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    fake_hub: Any) -> None:
    monkeypatch.setenv(w.MODELS_DIR_ENV, str(tmp_path))
    fake_hub.add("tellurion/ColorizeDiffusion", CKPT, b"half a file", mode="stall", stall_after=5)
    fake_hub.add("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "open_clip_model.safetensors", b"x", mode="missing")
    with pytest.raises(WeightsMissingError) as e:
        M["ColorizeDiffusionCheckpointLoader"].execute(CKPT, "auto")
    msg = str(e.value)
    assert CKPT in msg and str(tmp_path / "colorizediffusion") in msg and "'colorizediffusion'" in msg
    assert "https://huggingface.co/tellurion/ColorizeDiffusion/resolve/main/mult-eps-ft.safetensors" in msg
    assert "no data for 2 s (the server stalled" in msg and len(msg.splitlines()) <= 8
    assert not (tmp_path / "colorizediffusion" / CKPT).exists()  # no half file under the final name
    assert [p.parent.name for p in _files(tmp_path)] == [".colorize-partial"]  # kept in one place, for resuming

    with pytest.raises(WeightsMissingError) as e:
        M["ColorizeDiffusionReferenceEncoderLoader"].execute(CLIP)
    assert CLIP in str(e.value) and str(tmp_path / "clip_vision") in str(e.value)
    assert "laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in str(e.value)


def test_no_download_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(w.MODELS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(node_models.NO_DOWNLOAD_ENV, "1")
    monkeypatch.setattr(w.download, "download_verified", lambda *a: pytest.fail("must not download"))
    with pytest.raises(WeightsMissingError, match="COLORIZE_NO_DOWNLOAD"):
        M["ColorizeDiffusionCheckpointLoader"].execute(CKPT, "auto")


def test_unknown_file_names_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(w.MODELS_DIR_ENV, str(tmp_path))
    with pytest.raises(WeightsMissingError, match="my-model.safetensors not found.*colorizediffusion"):
        M["ColorizeDiffusionCheckpointLoader"].execute("my-model.safetensors", "auto")


def test_file_names_never_lead_out_of_the_model_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    (models / "colorizediffusion" / "sub").mkdir(parents=True)
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"not yours")
    inside = models / "colorizediffusion" / "sub" / "mine.safetensors"
    inside.write_bytes(b"x")
    linked = models / "colorizediffusion" / "linked.safetensors"
    linked.symlink_to(outside)  # a file symlinked into the folder is the user's choice: found
    monkeypatch.setenv(w.MODELS_DIR_ENV, str(models))
    assert node_models.find_file("colorizediffusion", "sub/mine.safetensors") == inside
    assert node_models.find_file("colorizediffusion", "linked.safetensors") == linked
    for name in ("../../outside.safetensors", str(outside), "sub/../../../outside.safetensors", "."):
        assert node_models.find_file("colorizediffusion", name) is None, name


def test_first_use_downloads_into_the_folder_with_progress(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_hub: Any
) -> None:
    monkeypatch.setenv(w.MODELS_DIR_ENV, str(tmp_path))
    content = (tiny_dir / "colorizediffusion" / CKPT).read_bytes()
    fake_hub.add("tellurion/ColorizeDiffusion", CKPT, content)
    seen: list[tuple[int, int | None]] = []

    class Recorder:
        def __init__(self, total: int) -> None:
            self.total = total

        def update(self, value: int, total: int | None = None, preview: Any = None) -> None:
            seen.append((value, total))

    monkeypatch.setattr(node_models, "Progress", Recorder)
    model = M["ColorizeDiffusionCheckpointLoader"].execute(CKPT, "auto").result[0]
    final = tmp_path / "colorizediffusion" / CKPT
    assert _files(tmp_path) == sorted([final, final.with_name("colorize-weights.lock.json")])
    assert fake_hub.gets(CKPT) == [None]
    assert seen and seen[-1][0] == len(content) >> 20 and seen[0][0] <= seen[-1][0]
    assert model.config.tiny


def test_register_folders_keeps_user_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")  # type: ignore[attr-defined]
    fp.supported_pt_extensions = {".safetensors", ".ckpt"}  # type: ignore[attr-defined]
    fp.folder_names_and_paths = {"colorizediffusion": (["/yaml/path"], set())}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    monkeypatch.setitem(sys.modules, "comfy.model_management", types.ModuleType("comfy.model_management"))
    node_models.register_folders()
    paths, exts = fp.folder_names_and_paths["colorizediffusion"]  # type: ignore[attr-defined]
    assert paths == ["/yaml/path", str(tmp_path / "models" / "colorizediffusion")]
    assert exts == {".safetensors", ".ckpt"}
    node_models.register_folders()  # idempotent
    assert fp.folder_names_and_paths["colorizediffusion"][0] == paths  # type: ignore[attr-defined]
    del fp.folder_names_and_paths["colorizediffusion"]  # type: ignore[attr-defined]
    node_models.register_folders()
    assert fp.folder_names_and_paths["colorizediffusion"][0] == [str(tmp_path / "models" / "colorizediffusion")]  # type: ignore[attr-defined]


def test_nodes_package_is_the_pack_layer() -> None:
    assert Path(nodes.__file__).resolve().parent == REPO / "nodes"
