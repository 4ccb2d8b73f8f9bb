"""The shipped workflows: only existing node types, inputs that match INPUT_TYPES, UI and API twins equal."""
from __future__ import annotations

from _helpers import require_node_api

require_node_api()  # the nodes import ComfyUI's comfy_api

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from colorize.weights import hub_url, load_manifest
from nodes import NODE_CLASSES

REPO = Path(__file__).resolve().parents[2]
WF = REPO / "workflows"
sys.path.insert(0, str(WF))
import make_workflows

# Core ComfyUI nodes the workflows may use: name -> (inputs {name: type}, output types). Checked against a
# real server's /object_info by tests/host/test_comfyui_integration.py.
CORE = {
    "LoadImage": ({"image": "COMBO", "upload": "IMAGEUPLOAD"}, ["IMAGE", "MASK"]),
    "SaveImage": ({"images": "IMAGE", "filename_prefix": "STRING"}, []),
    "PreviewImage": ({"images": "IMAGE"}, []),
    "PreviewAny": ({"source": "*"}, []),
    "KSampler": ({"model": "MODEL", "seed": "INT", "steps": "INT", "cfg": "FLOAT", "sampler_name": "COMBO",
                  "scheduler": "COMBO", "positive": "CONDITIONING", "negative": "CONDITIONING", "latent_image": "LATENT",
                  "denoise": "FLOAT"}, ["LATENT"]),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, ["IMAGE"]),
    "SamplerCustomAdvanced": ({"noise": "NOISE", "guider": "GUIDER", "sampler": "SAMPLER", "sigmas": "SIGMAS",
                               "latent_image": "LATENT"}, ["LATENT", "LATENT"]),
    "KSamplerSelect": ({"sampler_name": "COMBO"}, ["SAMPLER"]),
    "RandomNoise": ({"noise_seed": "INT"}, ["NOISE"]),
}
# Ranges of the core nodes' number widgets (ComfyUI 0.3.64 INPUT_TYPES).
CORE_RANGES = {("KSampler", "seed"): (0, 2**64 - 1), ("KSampler", "steps"): (1, 10000), ("KSampler", "cfg"): (0.0, 100.0),
               ("KSampler", "denoise"): (0.0, 1.0), ("RandomNoise", "noise_seed"): (0, 2**64 - 1)}
LOADERS = {"ColorizeDiffusionCheckpointLoader": ("ckpt_name", "colorizediffusion"),
           "ColorizeDiffusionNativeLoader": ("ckpt_name", "colorizediffusion"),
           "ColorizeDiffusionReferenceEncoderLoader": ("clip_name", "clip_vision"),
           "ColorizeDiffusionAnimeMask": ("model_name", "isnet"),
           "ColorizeDiffusionSketchMaskISNet": ("model_name", "isnet")}
#: Loaders of a second file (or of one file only): the XL reference encoder reads CLIP-bigG and the WD tagger.
FILE_WIDGETS = {**{k: [v] for k, v in LOADERS.items()},
                "ColorizeDiffusionXLReferenceEncoderLoader": [("clip_name", "clip_vision"),
                                                              ("tagger_name", "wd_tagger")]}
#: Files whose download URL ends in another name (the tagger's model.safetensors): no frontend download link,
#: the loader downloads them on first run.
NO_LINK = {("wd_tagger", "wd-v1-4-swinv2-tagger-v2.safetensors")}
#: Loaders of files that were never released (the chapter-4 GAN): no manifest entry, so no download link; the
#: workflow names the tiny test file of make-tiny-weights.
UNRELEASED = {"ColorizeDiffusionGANLoader": [("gan_name", "colorizediffusion_gan")]}
TINY_VERSIONS = ("mult", "switch", "v2", "sdxl", "xlv2", "gan")  # every workflow's checkpoint
UI_FILES = sorted(WF.glob("*.json"))
API_FILES = sorted((WF / "api").glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def pack_inputs(class_type: str, section: str | None = None) -> dict[str, tuple[Any, dict[str, Any]]]:
    """{input name: (type, options)} of a pack node as ``/object_info`` lists it (required, then optional), a
    combo's type being its list of choices; only one section when named."""
    s = NODE_CLASSES[class_type].INPUT_TYPES()
    inputs = {**s["required"], **s.get("optional", {})} if section is None else s.get(section, {})
    return {name: ((opts["options"], opts) if typ == "COMBO" else (typ, opts)) for name, (typ, opts) in inputs.items()}


def spec_of(class_type: str) -> tuple[dict[str, Any], list[str]]:
    """{input name: (type, options)} and output types of a pack or core node."""
    if class_type in NODE_CLASSES:
        return pack_inputs(class_type), list(NODE_CLASSES[class_type].RETURN_TYPES)
    inputs, outputs = CORE[class_type]
    ranges = {k: {"min": lo, "max": hi} for (ct, k), (lo, hi) in CORE_RANGES.items() if ct == class_type}
    return {k: (t, ranges.get(k, {})) for k, t in inputs.items() if t != "IMAGEUPLOAD"}, outputs


def test_every_ui_workflow_has_an_api_twin_and_thumbnail() -> None:
    assert UI_FILES, "no workflows shipped"
    assert {p.name for p in UI_FILES} == {p.name for p in API_FILES}
    for p in UI_FILES:
        assert (WF / f"{p.stem}.jpg").is_file(), f"{p.stem}.jpg thumbnail missing"
    digests = {hashlib.sha256((WF / f"{p.stem}.jpg").read_bytes()).hexdigest() for p in UI_FILES}
    assert len(digests) == len(UI_FILES), "two workflows share a thumbnail"


def test_generated_files_are_up_to_date() -> None:
    for rel, content in make_workflows.build().items():
        assert load(WF / rel) == content, f"workflows/{rel} is stale: run python workflows/make_workflows.py"


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_workflow_matches_input_types(path: Path) -> None:
    graph = load(path)
    for nid, node in graph.items():
        ct = node["class_type"]
        assert ct in NODE_CLASSES or ct in CORE, f"node {nid}: unknown type {ct}"
        spec, _ = spec_of(ct)
        required = pack_inputs(ct, "required") if ct in NODE_CLASSES else spec
        assert set(required) <= set(node["inputs"]), f"node {nid} ({ct}) lacks {set(required) - set(node['inputs'])}"
        assert set(node["inputs"]) <= set(spec), f"node {nid} ({ct}) has unknown inputs"
        for name, value in node["inputs"].items():
            typ, opts = spec[name]
            if isinstance(value, list):  # a link [source id, output index]
                src = graph[value[0]]
                out_types = spec_of(src["class_type"])[1]
                assert value[1] < len(out_types), f"node {nid}.{name}: output {value[1]} does not exist"
                assert typ in ("*", out_types[value[1]]), f"node {nid}.{name}: {out_types[value[1]]} into {typ}"
            elif isinstance(typ, list):
                assert value in typ, f"node {nid}.{name}: {value!r} not a choice"
            elif typ in ("INT", "FLOAT"):
                assert opts["min"] <= value <= opts["max"] and isinstance(value, (int, float))
                if typ == "INT":
                    assert isinstance(value, int)
            elif typ == "BOOLEAN":
                assert isinstance(value, bool), f"node {nid}.{name}: {value!r} is not a boolean"
            elif ct == "LoadImage":
                assert (WF / value).is_file(), f"{value} must be shipped beside the workflow"
            else:
                assert isinstance(value, str)


def widget_names(class_type: str) -> list[str]:
    """The frontend's widget order: every non-socket input in INPUT_TYPES order, an INT seed followed by its
    'control after generate' widget; LoadImage's upload button follows its file picker."""
    if class_type not in NODE_CLASSES:
        names = []
        for n, t in CORE[class_type][0].items():
            if t in ("COMBO", "IMAGEUPLOAD", "STRING", "INT", "FLOAT"):
                names += [n, "control_after_generate"] if n in ("seed", "noise_seed") else [n]
        return names
    names = []
    for name, (typ, opts) in pack_inputs(class_type).items():
        if isinstance(typ, list) or typ in ("INT", "FLOAT", "STRING", "BOOLEAN"):
            names.append(name)
            if typ == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
                names.append("control_after_generate")
    return names


def ui_to_api(ui: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The frontend's 'Export (API)': widget values by INPUT_TYPES order, links by input slot."""
    links = {link[0]: link for link in ui["links"]}
    out: dict[str, dict[str, Any]] = {}
    for node in ui["nodes"]:
        if node["type"] in ("MarkdownNote", "Note"):  # frontend-only notes
            continue
        widgets = widget_names(node["type"])
        assert len(widgets) == len(node.get("widgets_values", [])), f"{node['type']}: widget count"
        inputs: dict[str, Any] = {}
        for name, value in zip(widgets, node.get("widgets_values", [])):
            if name == "control_after_generate":
                assert value in ("fixed", "increment", "decrement", "randomize")
            elif name != "upload":
                inputs[name] = value
        for slot, inp in enumerate(node["inputs"]):
            link = links[inp["link"]]
            assert link[3] == node["id"] and link[4] == slot
            inputs[inp["name"]] = [str(link[1]), link[2]]
        out[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return out


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_equals_its_api_twin(path: Path) -> None:
    ui = load(path)
    api = load(WF / "api" / path.name)
    assert ui_to_api(ui) == {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
    assert ui["last_node_id"] == max(n["id"] for n in ui["nodes"]) and ui["last_link_id"] == len(ui["links"])
    for node in ui["nodes"]:  # output link lists agree with the link table
        for slot, out in enumerate(node["outputs"]):
            assert sorted(out["links"]) == sorted(l[0] for l in ui["links"] if l[1] == node["id"] and l[2] == slot)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_loaders_carry_model_download_links(path: Path) -> None:
    by_file = {(e["models_subdir"], e["filename"]): e for e in load_manifest()}
    found = 0
    for node in load(path)["nodes"]:
        if node["type"] in FILE_WIDGETS:
            expected = []
            for widget, folder in FILE_WIDGETS[node["type"]]:
                name = node["widgets_values"][widget_names(node["type"]).index(widget)]
                entry = by_file[(folder, name)]
                if (folder, name) not in NO_LINK:
                    expected.append({"name": name, "url": hub_url(entry), "directory": folder})
            assert node["properties"]["models"] == expected
            # the frontend's download saves the file under its URL's name: the workflow must ask for that name
            assert all(link["url"].rsplit("/", 1)[1] == link["name"] for link in expected)
            found += 1
        elif node["type"] in UNRELEASED:
            assert "models" not in node["properties"], f"{node['type']}: a download link for an unreleased file"
    types = {n["type"] for n in load(path)["nodes"]}
    separation = "ColorizeDiffusionBackgroundEncode" in types
    # checkpoint, CLIP (and the two ISNet files of the mask nodes); the GAN workflow reads one unreleased file
    assert found == (0 if types & set(UNRELEASED) else 4 if separation else 2)


def test_a_clip_file_under_its_former_name_still_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Users of earlier releases saved the CLIP file as ``open_clip-ViT-H-14-laion2b_s32b_b79k.safetensors``: the
    library and the loader node find it when asked for the download name, and the other way round."""
    from colorize.weights import manifest_entry, resolve
    from nodes import models as node_models

    entry = manifest_entry("clip-vit-h-14")
    former = entry["former_filenames"][0]
    (tmp_path / "clip_vision").mkdir()
    (tmp_path / "clip_vision" / former).write_bytes(b"weights")
    assert resolve("clip-vit-h-14", tmp_path, accept_alternatives=False) == tmp_path / "clip_vision" / former
    monkeypatch.setattr(node_models, "folder_dirs", lambda folder: [tmp_path / folder])
    assert node_models.resolve_file("clip_vision", entry["filename"]) == tmp_path / "clip_vision" / former
    (tmp_path / "clip_vision" / former).rename(tmp_path / "clip_vision" / entry["filename"])
    assert node_models.resolve_file("clip_vision", former) == tmp_path / "clip_vision" / entry["filename"]


def test_tiny_weights_use_the_workflow_file_names(tmp_path: Path) -> None:
    """``make-tiny-weights DIR`` fills DIR in ComfyUI's layout so every workflow runs unchanged against it."""
    from colorize.tiny import write_tiny_weights

    written = {p.relative_to(tmp_path).as_posix()
               for p in write_tiny_weights(tmp_path, versions=TINY_VERSIONS, masks=True).values()}
    for path in API_FILES:
        for node in load(path).values():
            for widget, folder in [*FILE_WIDGETS.get(node["class_type"], []), *UNRELEASED.get(node["class_type"], [])]:
                assert f"{folder}/{node['inputs'][widget]}" in written, f"{path.name}: {node['inputs'][widget]}"


def test_registry_metadata_lists_the_workflow_models() -> None:
    tomllib = pytest.importorskip("tomllib")
    comfy = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["requires-comfyui"].startswith(">=")
    by_file = {(e["models_subdir"], e["filename"]): hub_url(e) for e in load_manifest()}
    models = {m["location"]: m["model_url"] for m in comfy["Models"]}
    for (folder, name), url in by_file.items():
        if f"/{folder}/{name}" in models:
            assert models[f"/{folder}/{name}"] == url
    used = {f"/{l['directory']}/{l['name']}" for p in UI_FILES for n in load(p)["nodes"]
            for l in n["properties"].get("models", [])}
    assert used <= set(models)
    reqs = (REPO / "requirements.txt").read_text().split()
    assert not any(r.split(">")[0].split("=")[0].lower() in ("torch", "torchvision", "torchaudio") for r in reqs)


# ------------------------------------------------------------------------------------- layout

import layout  # noqa: E402  (workflows/ is on sys.path above)


@pytest.mark.parametrize("name", sorted(make_workflows.WORKFLOWS))
def test_layout_has_no_overlaps_and_shows_the_note_first(name: str) -> None:
    """With the frontend's measured sizes (+ room for previews), no two node rectangles or stage groups overlap,
    every node sits inside its stage's group, and the saved view starts at the note, at a zoom that draws text."""
    make, note = make_workflows.WORKFLOWS[name]
    graph = make()
    sizes, title = layout.load_sizes()
    lay = layout.layout(graph, note, sizes, title)
    rects = layout.boxes(lay, title)
    note_box = layout.Box(lay.note_pos[0], lay.note_pos[1] - title, lay.note_size[0], lay.note_size[1] + title)
    rects["note"] = note_box
    clashes = [(a, b) for a in rects for b in rects if a < b and rects[a].overlaps(rects[b])]
    assert not clashes, clashes
    groups = [layout.Box(*g["bounding"]) for g in lay.groups]
    assert not [(a, b) for i, a in enumerate(groups) for b in groups[i + 1:] if a.overlaps(b)]
    stage_title = {sid: t for sid, t, _ in layout.STAGES}
    by_title = {g["title"]: layout.Box(*g["bounding"]) for g in lay.groups}
    for nid, stage in layout.stages(graph).items():
        box, group = rects[nid], by_title[stage_title[stage]]
        assert group.x <= box.x and box.x + box.w <= group.x + group.w and group.y <= box.y and box.y + box.h <= group.y + group.h
    assert note_box.x <= min(r.x for r in rects.values()) and note_box.y <= min(r.y for r in rects.values())
    scale, (ox, oy) = lay.view["scale"], lay.view["offset"]
    assert scale >= 0.6  # the frontend draws no text below its low-quality zoom threshold
    assert (note_box.x + ox) * scale >= 0 and (note_box.y + oy) * scale >= 0
    assert (note_box.x + note_box.w + ox) * scale <= 1280  # a laptop-sized canvas shows the whole note


def test_every_node_type_has_a_measured_size() -> None:
    sizes, _ = layout.load_sizes()
    used = {n["class_type"] for make, _ in make_workflows.WORKFLOWS.values() for n in make().values()}
    assert used <= set(sizes), sorted(used - set(sizes))
