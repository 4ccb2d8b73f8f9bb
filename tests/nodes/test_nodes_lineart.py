"""The Line Extract node without ComfyUI: drawn images, polarity, sizes, options, model files in models/lineart."""
from __future__ import annotations

from _helpers import closed_port, combo_choices, require_node_api

require_node_api()  # the nodes import ComfyUI's comfy_api

import json
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _helpers import ProgressRecorder
from torch import nn

import colorize.weights as w
from colorize.errors import InputError, LineExtractorWeightsError, WeightsMissingError
from colorize.extractors import MODEL_SPECS, NO_WEIGHT_METHODS, extract_lines, load_line_extractor
from colorize.weights import hub_url, manifest_entry
from nodes import NODE_CLASSES as M
from nodes import lineart as node_lineart
from nodes import models as node_models
from nodes.host import ManagedModule

REPO = Path(__file__).resolve().parents[2]
H, W = 97, 131  # odd on purpose: no network stride or 64-multiple
NODE = M["ColorizeDiffusionLineExtract"]


def drawing(h: int = H, w: int = W) -> tuple[torch.Tensor, torch.Tensor]:
    """A ComfyUI IMAGE (1, h, w, 3): white paper with a black rectangle outline and a 1-px line; and the mask."""
    lines = torch.zeros(h, w, dtype=torch.bool)
    lines[20:22, 15 : w - 15] = True
    lines[h - 22 : h - 20, 15 : w - 15] = True
    lines[20 : h - 20, 15:17] = True
    lines[20 : h - 20, w - 17 : w - 15] = True
    lines[h // 2, 30 : w - 30] = True
    image = torch.ones(1, h, w, 3)
    image[0, lines] = 0.0
    return image, lines


def far_from(mask: torch.Tensor, distance: int) -> torch.Tensor:
    grown = torch.nn.functional.max_pool2d(mask[None, None].float(), 2 * distance + 1, 1, distance)[0, 0]
    return grown == 0


def run(image: torch.Tensor, method: str = "high_pass", model_file: str = "auto", input_polarity: str = "auto",
        resolution: int = 0, sigma: float = 0.0, threshold: float = 0.1) -> torch.Tensor:
    return NODE.execute(image, method, model_file, input_polarity, resolution, sigma, threshold)[0]


# ------------------------------------------------------------------------------------- schema


def test_node_lists_every_method_and_the_lineart_files() -> None:
    schema = NODE.define_schema()
    spec = {i.id: i for i in schema.inputs}
    assert list(spec) == ["image", "method", "model_file", "input_polarity", "resolution", "sigma", "threshold"]
    assert set(spec["method"].options) == set(NO_WEIGHT_METHODS) | set(MODEL_SPECS)
    assert spec["method"].default in NO_WEIGHT_METHODS  # a fresh node runs without a download
    files = spec["model_file"].options
    assert files[0] == "auto"
    for s in MODEL_SPECS.values():  # the published files are offered (downloaded on first use)
        assert manifest_entry(s.manifest_name)["filename"] in files
    assert spec["input_polarity"].options == ["auto", "dark_on_light", "light_on_dark"]
    assert spec["resolution"].default == 0
    assert schema.category == "ColorizeDiffusion/sketch" and [o.io_type for o in schema.outputs] == ["IMAGE"]


# ------------------------------------------------------------------------------------- no-weight methods


@pytest.mark.parametrize("method", NO_WEIGHT_METHODS)
def test_no_weight_method_finds_drawn_lines_at_input_size(method: str) -> None:
    image, lines = drawing()
    out = run(image, method)
    assert out.shape == (1, H, W, 3) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    o = out[0, :, :, 0]
    assert float(o[lines].max()) < 0.75, "every drawn pixel is a dark line"
    assert torch.all(o[far_from(lines, 1)] == 1.0), "paper stays white"
    # sigma 0 = the library's default for the method
    torch.testing.assert_close(out, extract_lines(image.movedim(-1, 1), method).movedim(1, -1))


def test_options_reach_the_filters() -> None:
    image, _ = drawing()
    x = image.movedim(-1, 1)
    got = run(image, "high_pass", sigma=1.5, threshold=0.4)
    torch.testing.assert_close(got, extract_lines(x, "high_pass", sigma=1.5, threshold=0.4).movedim(1, -1))
    assert not torch.equal(got, run(image, "high_pass"))
    wide = run(image, "lineart_standard", sigma=2.0)
    torch.testing.assert_close(wide, extract_lines(x, "lineart_standard", sigma=2.0).movedim(1, -1))
    assert not torch.equal(wide, run(image, "lineart_standard"))
    # high_pass: a higher threshold keeps fewer line pixels
    assert int((run(image, threshold=0.9) < 1).sum()) < int((run(image, threshold=0.0) < 1).sum())


@pytest.mark.parametrize("method", NO_WEIGHT_METHODS)
def test_inverted_line_art_is_detected(method: str) -> None:
    image, lines = drawing()
    inverted = 1.0 - image  # white lines on black
    normal = run(image, method)
    torch.testing.assert_close(run(inverted, method), normal)
    torch.testing.assert_close(run(inverted, method, input_polarity="light_on_dark"), normal)
    kept = run(inverted, method, input_polarity="dark_on_light")[0, :, :, 0]
    assert float(kept[lines].min()) == 1.0, "taken as dark-on-light, the bright strokes are no lines"
    assert torch.equal(run(image, method, input_polarity="dark_on_light"), normal)


def test_working_resolution_keeps_the_input_size() -> None:
    image, lines = drawing(120, 180)
    out = run(image, "lineart_standard", resolution=64)
    assert out.shape == (1, 120, 180, 3)
    o = out[0, :, :, 0]
    assert float(o[lines].mean()) < 0.7 and float(o[far_from(lines, 6)].min()) > 0.95
    with pytest.raises(InputError, match="resolution"):
        run(image, resolution=8)


def test_output_feeds_sketch_preprocess() -> None:
    image, lines = drawing(128, 128)
    lines_img = run(image, "lineart_standard")
    prepared = M["ColorizeDiffusionSketchPreprocess"].execute(lines_img, "auto", 128, 128)[0][0, :, :, 0]
    assert float(prepared[lines].min()) > 0.4, "lines become bright for the sketch encoder (lineart_standard: ~0.5)"
    assert float(prepared[far_from(lines, 1)].max()) < 0.01, "paper becomes black"


def test_batch_progress_and_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    image, _ = drawing()
    batch = torch.cat([image, 1 - image])
    recorder = ProgressRecorder.fresh()
    updates = recorder.updates
    monkeypatch.setattr(node_lineart, "Progress", recorder)
    out = run(batch)
    assert out.shape == (2, H, W, 3) and torch.equal(out[0], out[1])  # the inverted copy is detected per image
    assert updates == [(1, 2), (2, 2)]

    class Cancelled(Exception):
        pass

    calls = {"n": 0}

    def cancel_second() -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise Cancelled

    monkeypatch.setattr(node_lineart, "check_interrupted", cancel_second)
    with pytest.raises(Cancelled):
        run(batch)


# ------------------------------------------------------------------------------------- model extractors


def random_state_dict(kind: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = MODEL_SPECS[kind].build()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def sketch_keras_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "sketchkeras.pth"
    torch.save(random_state_dict("sketch_keras"), path)
    return path


@pytest.fixture()
def lineart_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty models/lineart outside ComfyUI ($COLORIZE_MODELS_DIR/lineart), and an empty extractor cache."""
    monkeypatch.setenv(w.MODELS_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(node_lineart, "_LOADED", {})
    d = tmp_path / "lineart"
    d.mkdir()
    yield d


def test_model_extractor_runs_from_the_lineart_folder_and_loads_once(
    lineart_dir: Path, sketch_keras_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = lineart_dir / manifest_entry("lineart-sketchkeras")["filename"]
    target.write_bytes(sketch_keras_file.read_bytes())
    reads: list[Path] = []

    def counting_load(path: Any, *args: Any, **kw: Any) -> Any:
        reads.append(Path(path))
        return load_line_extractor(path, *args, **kw)

    monkeypatch.setattr(node_lineart, "load_line_extractor", counting_load)
    image, _ = drawing(45, 70)
    out = run(image, "sketch_keras")  # model_file auto = the manifest's file name
    assert out.shape == (1, 45, 70, 3) and torch.isfinite(out).all()
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    want = load_line_extractor(sketch_keras_file)(image.movedim(-1, 1)).movedim(1, -1)  # the library's own path
    torch.testing.assert_close(out, want)

    assert torch.equal(run(image, "sketch_keras"), out)
    assert torch.equal(run(image, "sketch_keras", model_file=target.name), out)
    assert reads == [target], "one read per file, kept between runs"
    loaded = node_lineart._LOADED[str(target.resolve())]
    assert isinstance(loaded.module, ManagedModule)  # placed by ComfyUI's model management
    assert loaded.kind == "sketch_keras" and not loaded.module.module.training

    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file was replaced: read it again
    run(image, "sketch_keras")
    assert len(reads) == 2


def test_picked_file_must_match_the_method(lineart_dir: Path, sketch_keras_file: Path) -> None:
    custom = lineart_dir / "my-sketchkeras.pth"
    custom.write_bytes(sketch_keras_file.read_bytes())
    assert "my-sketchkeras.pth" in combo_choices(NODE, "model_file")
    image, _ = drawing(40, 40)
    assert run(image, "sketch_keras", model_file=custom.name).shape == (1, 40, 40, 3)
    with pytest.raises(LineExtractorWeightsError, match="SketchKeras.*'anime2sketch'.*'sketch_keras'"):
        run(image, "anime2sketch", model_file=custom.name)


def test_missing_model_file_offline_names_file_folder_and_source(
    lineart_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in w.OFFLINE_ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    image, _ = drawing(40, 40)
    for kind, spec in MODEL_SPECS.items():
        entry = manifest_entry(spec.manifest_name)
        with pytest.raises(WeightsMissingError) as e:
            run(image, kind)
        msg = str(e.value)
        assert entry["filename"] in msg and "'lineart'" in msg and str(lineart_dir) in msg
        assert hub_url(entry) in msg and "no network: cannot reach 127.0.0.1" in msg and len(msg.splitlines()) <= 8
    assert not [p for p in lineart_dir.parent.rglob("*") if p.is_file()], "no half file remains"

    monkeypatch.setenv(node_models.NO_DOWNLOAD_ENV, "1")
    monkeypatch.setattr(w.download, "download_verified", lambda *a: pytest.fail("must not download"))
    with pytest.raises(WeightsMissingError, match="(?s)sketchkeras.pth.*COLORIZE_NO_DOWNLOAD"):
        run(image, "sketch_keras")
    with pytest.raises(WeightsMissingError, match="(?s)mine.pth not found.*'lineart'"):
        run(image, "manga_line", model_file="mine.pth")


def test_filters_never_touch_the_lineart_folder(lineart_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_lineart, "resolve_file", lambda *a: pytest.fail("no weights for a filter"))
    image, _ = drawing(40, 40)
    assert run(image, "high_pass", model_file="netG.pth").shape == (1, 40, 40, 3)


# ------------------------------------------------------------------------------------- ComfyUI folder and workflow


def test_lineart_folder_is_registered_keeping_user_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")  # type: ignore[attr-defined]
    fp.supported_pt_extensions = {".safetensors", ".pth"}  # type: ignore[attr-defined]
    fp.folder_names_and_paths = {"lineart": (["/yaml/lineart"], set())}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    monkeypatch.setitem(sys.modules, "comfy.model_management", types.ModuleType("comfy.model_management"))
    node_models.register_folders()
    node_models.register_folders()  # idempotent
    paths, exts = fp.folder_names_and_paths["lineart"]  # type: ignore[attr-defined]
    assert paths == ["/yaml/lineart", str(tmp_path / "models" / "lineart")] and exts == {".safetensors", ".pth"}
    checkpoints = fp.folder_names_and_paths["colorizediffusion"][0]  # type: ignore[attr-defined]
    assert checkpoints == [str(tmp_path / "models" / "colorizediffusion")]


def test_lineart_workflow_extracts_without_weights() -> None:
    graph = json.loads((REPO / "workflows" / "api" / "v1 - From an illustration.json").read_text())
    extract = [nid for nid, n in graph.items() if n["class_type"] == "ColorizeDiffusionLineExtract"]
    assert len(extract) == 1 and graph[extract[0]]["inputs"]["method"] in NO_WEIGHT_METHODS
    source = graph[graph[extract[0]]["inputs"]["image"][0]]
    assert source["class_type"] == "LoadImage" and source["inputs"]["image"] == "colorizediffusion_reference.png"
    consumers = [n["class_type"] for n in graph.values() if n["inputs"].get("image") == [extract[0], 0]]
    assert consumers == ["ColorizeDiffusionSketchPreprocess"]
