"""The chapter-4 GAN workflow (thesis §4) inside a real headless ComfyUI (the project's harness), with the tiny GAN
file that ``python -m colorize make-tiny-weights DIR --versions gan`` writes: the shipped API workflow runs as it
is (auto output size), lists the predicted tags, and writes the edited and the unedited colorization.

Needs the harness environment (``harness.py``): skipped without it, failed under ``CI=true``.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import REPO, run_harness

from colorize.families.gan import TINY_GAN_FILE, TINY_TAGS
from colorize.preprocess import target_size

GAN_API = REPO / "workflows" / "api" / "GAN - Colorize and edit tags.json"


@pytest.fixture(scope="module")
def gan_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models folder as the command line writes it for the GAN family."""
    d = tmp_path_factory.mktemp("gan_models")
    proc = subprocess.run([sys.executable, "-m", "colorize", "make-tiny-weights", str(d), "--versions", "gan"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (d / "colorizediffusion_gan" / TINY_GAN_FILE).is_file(), sorted(p.name for p in d.rglob("*"))
    return d


def _node(graph: dict[str, Any], class_type: str, title: str | None = None) -> str:
    return next(nid for nid, n in graph.items()
                if n["class_type"] == class_type and (title is None or n["_meta"]["title"] == title))


def test_the_gan_workflow_runs_in_comfyui(gan_models: Path, tmp_path: Path) -> None:
    graph = json.loads(GAN_API.read_text())
    inputs = sorted({n["inputs"]["image"] for n in graph.values() if n["class_type"] == "LoadImage"})
    outdir = tmp_path / "out"
    rc, summary, out = run_harness("--workflow", str(GAN_API), "--models-dir", str(gan_models), "--outdir",
                                   str(outdir), "--fail-on-import-error", "--cleanup",
                                   *[a for name in inputs for a in ("--input", str(REPO / "workflows" / name))],
                                   timeout=400)
    assert rc == 0 and summary["status"] == "ok" and summary["status_str"] == "success", out[-4000:]

    texts: dict[str, list[str]] = {}
    for o in summary["outputs"]:
        if o.get("kind") == "text":
            texts.setdefault(o["node"], []).append(str(o["value"]))
    reference, tags_preview = _node(graph, "ColorizeDiffusionGANReference"), _node(graph, "PreviewAny", "Predicted tags")
    tags = texts[reference][0]  # GAN Reference shows its tags on the node too
    assert re.fullmatch(r"\w+ \d\.\d\d(, \w+ \d\.\d\d)*", tags), tags
    assert {name for name, _ in (pair.rsplit(" ", 1) for pair in tags.split(", "))} == set(TINY_TAGS)  # top_k 20
    assert any(tags in t for t in texts[tags_preview])  # and through the STRING output into core PreviewAny
    loader = _node(graph, "ColorizeDiffusionGANLoader")
    assert "stage gan_stage2" in texts[loader][0] and "tag edits" in texts[loader][0]

    from PIL import Image, ImageStat

    images = {o["node"]: outdir / Path(o["path"]).name for o in summary["outputs"] if o.get("kind") == "images"}
    saved, preview = _node(graph, "SaveImage"), _node(graph, "PreviewImage")
    assert set(images) == {saved, preview} and all(p.is_file() for p in images.values())
    with Image.open(REPO / "workflows" / graph[graph[_node(graph, "ColorizeDiffusionGANColorize")]["inputs"]
                                                    ["sketch"][0]]["inputs"]["image"]) as sketch:
        h, w = target_size((sketch.height, sketch.width))  # width and height 0: the sketch's aspect at about 512²
    for node, path in images.items():
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == (w, h), f"node {node}: {im.mode} {im.size}"
            stat = ImageStat.Stat(im)
            print(f"node {node} {path.name}: mean {[round(m, 1) for m in stat.mean]}, extrema {im.getextrema()}")
            assert all(0 < m < 255 for m in stat.mean)  # neither blank nor saturated
