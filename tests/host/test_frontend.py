"""The shipped UI workflows in the real ComfyUI frontend (headless Chromium, Selenium), as a user opens them.

One server (this pack, tiny weights of every version) and one browser serve the whole module (``frontend.py``).
For every ``workflows/*.json`` UI workflow:

- loading it opens no dialog (no missing nodes, no missing models) and keeps every widget value;
- no two nodes overlap as the frontend lays them out (title bars included), before and after a run (image
  previews grow nodes), and the "Read me" note lies inside the saved view at a zoom where text is drawn;
- the frontend draws no node bigger than the layout reserves for it (``workflows/measured/node_sizes.json``
  plus ``layout.node_size``'s room for previews);
- Run (the top menu's button; 2 steps, a 256×256 sketch) ends in success; screenshots of the whole graph and
  of the saved view are saved to ``$COLORIZE_SCREENSHOTS`` (default: pytest's temporary folder).

The template browser lists every UI workflow under the pack's folder name, each with its own thumbnail.
Skipped without the harness, Chromium or Selenium; failed instead under ``CI=true``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _helpers import skip_or_fail
from frontend import WORKFLOWS, Frontend, browser_missing, http_get, open_frontend, overlaps, ui_workflows

pytestmark = [pytest.mark.integration, pytest.mark.browser]

UI_FILES = ui_workflows()
SIZES_FILE = WORKFLOWS / "measured" / "node_sizes.json"
sys.path.insert(0, str(WORKFLOWS))
import layout  # noqa: E402  (workflows/layout.py: the sizes the layout reserves)

NOTE_TYPES = ("MarkdownNote", "Note")
DIALOG_KEYS = {"global-load-workflow-warning": "missing nodes", "global-missing-models-warning": "missing models"}
# what the run shortens, as the API smoke test does: steps, and the sketch (or GAN output) size
STEP_NODES = ("ColorizeDiffusionSampler", "KSampler", "ColorizeDiffusionNativeSigmas")
SIZE_NODES = ("ColorizeDiffusionSketchPreprocess", "ColorizeDiffusionGANColorize")
SMOKE_STEPS, SMOKE_SIZE = 2, 256
TOLERANCE = 1  # px


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frontend]:
    reason = browser_missing()
    if reason:
        skip_or_fail(reason)
    from colorize.tiny import write_tiny_weights

    models = tmp_path_factory.mktemp("frontend_models")
    # every workflow's model
    write_tiny_weights(models, versions=("mult", "switch", "v2", "sdxl", "xlv2", "gan"), masks=True)
    with open_frontend(models) as frontend:
        yield frontend


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("COLORIZE_SCREENSHOTS")
    path = Path(env) if env else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def load(page: Frontend, path: Path) -> dict[str, Any]:
    """Load a workflow in the page; returns the file's JSON."""
    workflow = json.loads(path.read_text(encoding="utf-8"))
    page.close_dialogs()
    page.load(workflow, path.stem)
    return workflow


def label(node: dict[str, Any]) -> str:
    return f"#{node['id']} {node['title']!r} ({node['type']})"


def overlap_report(nodes: list[dict[str, Any]]) -> list[str]:
    """One line per pair of overlapping (not collapsed) nodes, with the overlap."""
    shown = {label(n): n["rect"] for n in nodes if not n["collapsed"]}
    return [f"{a} and {b} overlap by {dx}×{dy} px" for a, b, dx, dy in overlaps(shown)]


def rect_text(rect: list[float]) -> str:
    return "[" + ", ".join(f"{v:.0f}" for v in rect) + "]"


# ------------------------------------------------------------------------------------------ per workflow


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_loads_without_dialogs_and_keeps_widget_values(page: Frontend, path: Path) -> None:
    workflow = load(page, path)
    dialogs = page.dialogs()
    for d in dialogs:
        print(f"{path.stem}: dialog {d['key']} ({DIALOG_KEYS.get(d['key'], 'other')}):\n{d['text']}")
    assert not dialogs, f"{path.name}: dialogs open after loading: " + "; ".join(
        f"{DIALOG_KEYS.get(d['key'], d['key'])}: {d['text'][:300]!r}" for d in dialogs)
    shown = {n["id"]: n for n in page.nodes()}
    problems = []
    for node in workflow["nodes"]:
        got = shown.get(node["id"])
        if got is None:
            problems.append(f"#{node['id']} ({node['type']}) missing from the graph")
            continue
        want, have = node.get("widgets_values", []), got["widgets"]
        if want != have:
            diffs = [f"{got['widget_names'][i] if i < len(got['widget_names']) else f'[{i}]'}: "
                     f"file {want[i] if i < len(want) else '<none>'!r} -> frontend {have[i] if i < len(have) else '<none>'!r}"
                     for i in range(max(len(want), len(have)))
                     if (want[i] if i < len(want) else None) != (have[i] if i < len(have) else None)]
            problems.append(f"{label(got)}: " + ", ".join(diffs))
    assert not problems, f"{path.name}: widget values changed by the frontend:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_layout_has_no_overlaps_and_the_note_is_in_view(page: Frontend, path: Path) -> None:
    load(page, path)
    nodes, view = page.nodes(), page.view()
    problems = [f"after loading: {line}" for line in overlap_report(nodes)]
    notes = [n for n in nodes if n["type"] in NOTE_TYPES]
    scale, (ox, oy) = view["scale"], view["offset"]
    visible = [-ox, -oy, view["width"] / scale, view["height"] / scale]  # graph coordinates shown
    threshold = view["low_quality_threshold"]
    print(f"{path.stem}: view scale {scale:.3f} offset ({ox:.0f}, {oy:.0f}), canvas {view['width']:.0f}×"
          f"{view['height']:.0f} px, shows {rect_text(visible)}; low-quality threshold {threshold:.3f}")
    if not notes:
        problems.append("no note (MarkdownNote or Note)")
    for note in notes:
        x, y, w, h = note["rect"]
        out = {"left": visible[0] - x, "top": visible[1] - y, "right": x + w - visible[0] - visible[2],
               "bottom": y + h - visible[1] - visible[3]}
        cut = {side: round(v) for side, v in out.items() if v > TOLERANCE}
        if cut:
            problems.append(f"{label(note)} {rect_text(note['rect'])} is not inside the initial view "
                            f"{rect_text(visible)}: outside by {cut} graph px")
    if scale < threshold:
        problems.append(f"the initial view's scale {scale:.3f} is below the frontend's low-quality threshold "
                        f"{threshold:.3f}: no text is drawn")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_no_node_is_drawn_bigger_than_the_size_table(page: Frontend, path: Path) -> None:
    if not SIZES_FILE.is_file():
        pytest.skip(f"no {SIZES_FILE.relative_to(WORKFLOWS.parent)} (run workflows/measure_node_sizes.py)")
    table = json.loads(SIZES_FILE.read_text(encoding="utf-8"))
    sizes = {k: tuple(v) for k, v in table["sizes"].items()}
    load(page, path)
    problems = []
    for node in page.nodes():
        if node["type"] in ("MarkdownNote", "Note"):
            continue  # sized by the layout from its text
        if node["type"] not in sizes:
            problems.append(f"{label(node)}: not in the table")
            continue
        # what the layout reserves: the measured size plus room for the node's image or text preview
        (w, h), (tw, th) = node["computed"], layout.node_size(node["type"], sizes)
        if w > tw + TOLERANCE or h > th + TOLERANCE:
            problems.append(f"{label(node)}: the frontend computes {w:.0f}×{h:.0f}, the layout reserves {tw}×{th} "
                            f"(+{max(0, w - tw):.0f}×{max(0, h - th):.0f})")
    assert not problems, (f"{path.name}: nodes bigger than {SIZES_FILE.name} (frontend {table.get('frontend')}):\n"
                          + "\n".join(problems))


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_run_from_the_ui_succeeds_and_nodes_still_do_not_overlap(page: Frontend, path: Path, screenshots: Path) -> None:
    load(page, path)
    for node in page.nodes():
        if node["type"] in STEP_NODES and "steps" in node["widget_names"]:
            page.set_widget(node["id"], "steps", min(SMOKE_STEPS, node["widgets"][node["widget_names"].index("steps")]))
        if node["type"] in SIZE_NODES:
            page.set_widget(node["id"], "width", SMOKE_SIZE)
            page.set_widget(node["id"], "height", SMOKE_SIZE)
    entry = page.run(timeout=120)
    status = entry["status"]
    errors = [data for event, data in status["messages"] if event == "execution_error"]
    assert status["status_str"] == "success", (
        f"{path.name}: the run ended {status['status_str']!r}: "
        + "; ".join(f"{e.get('node_type')} (#{e.get('node_id')}): {e.get('exception_message')}" for e in errors)
        + f"; toasts: {page.toasts()}")
    saved = page.view()
    page.fit_view()  # draws every node: previews attach their images when drawn
    page.settle(1.5)
    shot = page.screenshot(screenshots / f"{path.stem}.png")
    report = overlap_report(page.nodes())
    page.set_view(saved["scale"], saved["offset"])
    page.settle(0.5)
    view_shot = page.screenshot(screenshots / f"{path.stem} - saved view.png")
    print(f"{path.stem}: run ok; screenshots {shot} (whole graph), {view_shot} (the saved view)")
    assert not report, f"{path.name}: after the run (previews shown):\n" + "\n".join(report)


# ------------------------------------------------------------------------------------------ templates


def test_template_browser_lists_every_workflow_with_its_own_thumbnail(page: Frontend, screenshots: Path) -> None:
    listed = page.http_json("/api/workflow_templates")
    stems = sorted(p.stem for p in UI_FILES)
    assert sorted(listed.get(page.pack_dir, [])) == stems, (
        f"/api/workflow_templates lists {listed.get(page.pack_dir)} for {page.pack_dir!r}, the UI workflows are {stems}")
    page.close_dialogs()
    page.open_templates()
    page.select_template_category(page.pack_dir)
    cards = page.template_cards()
    shot = page.screenshot(screenshots / "template_browser.png")
    print(f"template browser: {shot}")
    for c in cards:
        print(f"  card {c['name']!r}: title {c['title']!r} (clipped: {c['title_clipped']}), description "
              f"{c['description']!r}, thumbnail {c['fetched']} {c['natural'][0]}×{c['natural'][1]}")
    page.close_dialogs()
    assert sorted(c["name"] for c in cards) == stems, f"cards {[c['name'] for c in cards]}, expected {stems}"
    problems = []
    digests: dict[str, str] = {}
    for c in cards:
        url = f"{page.base}/api/workflow_templates/{page.pack_dir}/{c['name']}.jpg"
        served = hashlib.sha256(http_get(url.replace(" ", "%20"))).hexdigest()
        digests[c["name"]] = served
        if not c["loaded"]:
            problems.append(f"{c['name']!r}: the thumbnail did not load")
        elif c["sha256"] != served:
            problems.append(f"{c['name']!r}: the card shows other bytes than {url}")
        if not c["title"].strip() or c["title_clipped"]:
            problems.append(f"{c['name']!r}: title {c['title']!r} is empty or clipped")
    same = [n for n in digests if list(digests.values()).count(digests[n]) > 1]
    if same:
        problems.append(f"the same thumbnail bytes for {same}")
    assert not problems, "template browser:\n" + "\n".join(problems)
