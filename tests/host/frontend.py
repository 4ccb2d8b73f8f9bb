"""The real ComfyUI frontend in headless Chromium (Selenium), over a harness server with this pack and tiny weights.

Used by the browser test (``test_frontend.py``) and by ``workflows/measure_node_sizes.py``. Chromium runs with
the background networking switched off (the machines have no internet) and a fresh profile; the server gets
the setting a returning user has (``Comfy.TutorialCompleted``), so the first page load opens no template browser.

Geometry is LiteGraph's: a node's ``pos`` is the top-left corner of its body and ``size`` the body's size; the
title bar (``LiteGraph.NODE_TITLE_HEIGHT``) sits above ``pos``. The view maps graph coordinates to canvas
pixels as ``(graph + ds.offset) * ds.scale``.

Frontend 1.27 facts the functions rely on (read from its sources): dialogs are PrimeVue ``.p-dialog`` elements
whose ``aria-labelledby`` is the dialog store's key (``global-load-workflow-warning`` for missing nodes,
``global-missing-models-warning`` for missing models, ``global-template-workflows`` for the template browser);
the Run button is the main part of the split button ``[data-testid=queue-button]``; below the zoom
``LGraphCanvas._lowQualityZoomThreshold`` (``LiteGraph.Canvas.MinFontSizeForLOD`` / (``NODE_TEXT_SIZE`` ·
√devicePixelRatio): 8 / 14 = 0.571 at the defaults) the canvas draws nodes without text.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import REPO, comfy_server

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
WINDOW = (1600, 1000)
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--window-size={WINDOW[0]},{WINDOW[1]}")
#: frontend settings of the server's user: a returning user (no template browser on the first visit)
FIRST_RUN_DONE = {"Comfy.TutorialCompleted": True}
WORKFLOWS = REPO / "workflows"


def ui_workflows() -> list[Path]:
    """The shipped UI-format workflows: ``workflows/*.json`` with ``nodes`` and ``links``, sorted by name."""
    return [p for p in sorted(WORKFLOWS.glob("*.json")) if {"nodes", "links"} <= set(json.loads(p.read_text()))]


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        return (f"no {CHROMIUM} / {CHROMEDRIVER} (apt-get install chromium chromium-driver, as .ci/run does; "
                "or set CHROMIUM and CHROMEDRIVER)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def http_get(url: str, timeout: float = 30) -> bytes:
    """The body of a GET request."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def overlaps(rects: dict[str, list[float]]) -> list[tuple[str, str, float, float]]:
    """Pairs of rectangles ``[x, y, w, h]`` that overlap, with the overlap's width and height."""
    out = []
    names = sorted(rects)
    for i, a in enumerate(names):
        ax, ay, aw, ah = rects[a]
        for b in names[i + 1:]:
            bx, by, bw, bh = rects[b]
            dx, dy = min(ax + aw, bx + bw) - max(ax, bx), min(ay + ah, by + bh) - max(ay, by)
            if dx > 0.5 and dy > 0.5:
                out.append((a, b, round(dx), round(dy)))
    return out


# Page scripts. Each runs as a function body; ``app`` is the ComfyApp (``window.app``).

_NODES_JS = """
return app.graph.nodes.map((n) => {
  const rect = new Float32Array(4);
  n.measure(rect, app.canvas.ctx);  // LiteGraph's own rectangle: title bar included, collapsed width
  const widgets = (n.widgets ?? []).filter((w) => w.serialize !== false);
  return {id: n.id, type: n.type, title: n.title ?? n.type, collapsed: !!n.flags?.collapsed,
          pos: [...n.pos], size: [...n.size], rect: [...rect], computed: [...n.computeSize()],
          widgets: widgets.map((w) => w.value), widget_names: widgets.map((w) => w.name),
          widgets_values: n.serialize().widgets_values ?? [], images: (n.imgs ?? []).length};
});
"""

_VIEW_JS = """
const c = app.canvas, r = c.canvas.getBoundingClientRect();
return {scale: c.ds.scale, offset: [c.ds.offset[0], c.ds.offset[1]], left: r.left, top: r.top, width: r.width,
        height: r.height, low_quality_threshold: c._lowQualityZoomThreshold, low_quality: c.low_quality,
        min_font_size_for_lod: c.min_font_size_for_lod, device_pixel_ratio: window.devicePixelRatio};
"""

_MEASURE_TYPE_JS = """
const [kind, settle] = arguments;
const n = LiteGraph.createNode(kind);
if (!n) throw new Error(`the frontend has no node type ${kind}`);
const [ox, oy] = app.canvas.ds.offset;
n.pos = [-ox + 40, -oy + 40];  // in view: drawn, so previews attach
app.graph.add(n);
if (settle) {
  await new Promise((r) => setTimeout(r, 1000));
  for (let i = 0; i < 2; i++) await new Promise((r) => requestAnimationFrame(r));
}
const out = {size: [n.size[0], n.size[1]], computed: [...n.computeSize()]};
app.graph.remove(n);
return out;
"""


_TEMPLATE_CARD_JS = """
const card = arguments[0], name = card.dataset.testid.slice('template-workflow-'.length);
const h = card.querySelector('h3'), p = card.querySelector('p'), img = card.querySelector('img');
const loaded = !!img && img.complete && img.naturalWidth > 0;
let sha256 = '';
if (loaded) {
  const bytes = await (await fetch(img.src)).arrayBuffer();  // the card's image (a blob: URL of the media cache)
  sha256 = [...new Uint8Array(await crypto.subtle.digest('SHA-256', bytes))]
    .map((b) => b.toString(16).padStart(2, '0')).join('');
}
const fetched = performance.getEntriesByType('resource').map((e) => decodeURI(e.name))
  .filter((u) => u.includes('/workflow_templates/') && u.endsWith(`/${name}.jpg`));
return {name, title: h?.innerText ?? '', description: p?.innerText ?? '',
        title_clipped: !!h && (h.scrollWidth > h.clientWidth + 1 || h.scrollHeight > h.clientHeight + 1),
        loaded, natural: img ? [img.naturalWidth, img.naturalHeight] : [0, 0], sha256, fetched: fetched[0] ?? ''};
"""


class Frontend:
    """A loaded ComfyUI page: run JavaScript in it, load and run workflows, read the graph as the frontend lays
    it out, browse the templates."""

    def __init__(self, driver: Any, base: str, pack_dir: str = "colorizediffusion") -> None:
        self.driver, self.base, self.pack_dir = driver, base, pack_dir

    # ---- page

    def js(self, script: str, *args: Any) -> Any:
        """Run a function body in the page and return its value."""
        return self.driver.execute_script(script, *args)

    def js_async(self, script: str, *args: Any) -> Any:
        """Run an async function body in the page; returns its awaited value, raises what it throws."""
        wrapped = ("const done = arguments[arguments.length - 1];\n"
                   f"(async () => {{ {script} }})().then((v) => done({{ok: v ?? null}}), "
                   "(e) => done({error: String(e?.stack ?? e)}));")
        result = self.driver.execute_async_script(wrapped, *args)
        if "error" in result:
            raise RuntimeError(f"page script failed: {result['error']}")
        return result["ok"]

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait until the app has its graph, canvas, node definitions and Run button."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.js("return !!(window.app && app.graph && window.LiteGraph && app.canvas && "
                       "Object.keys(LiteGraph.registered_node_types).length > 100 && "
                       "document.querySelector('[data-testid=queue-button]'))"):
                return
            time.sleep(0.3)
        raise TimeoutError("the ComfyUI frontend did not finish loading")

    def frames(self, n: int = 2) -> None:
        """Wait for ``n`` animation frames (the canvas draws, sizes and dialogs settle)."""
        self.js_async(f"for (let i = 0; i < {n}; i++) await new Promise((r) => requestAnimationFrame(r));")

    def settle(self, seconds: float = 1.0) -> None:
        """Let images load and the canvas redraw: wait, then two frames."""
        time.sleep(seconds)
        self.frames(2)

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the page; returns the path."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path

    def http_json(self, path: str) -> Any:
        """GET ``base + path`` from the server, as JSON."""
        return json.loads(http_get(self.base + path))

    # ---- reads

    def version(self) -> str:
        """The frontend's version."""
        return str(self.js("return window.__COMFYUI_FRONTEND_VERSION__ || ''"))

    def title_height(self) -> int:
        """``LiteGraph.NODE_TITLE_HEIGHT``."""
        return int(self.js("return LiteGraph.NODE_TITLE_HEIGHT"))

    def measure_type(self, node_type: str, settle: bool = False) -> dict[str, list[float]]:
        """A fresh node of this type added to the graph (its default widgets), right away or once settled
        (``settle``: a second, e.g. for LoadImage's default image): ``size`` (``node.size``) and ``computed``
        (``node.computeSize()``), both [width, body height]; the node is removed after."""
        return self.js_async(_MEASURE_TYPE_JS, node_type, settle)

    def nodes(self) -> list[dict[str, Any]]:
        """Each node as laid out: id, type, title, collapsed, pos, size, rect ``[x, y, w, h]`` (LiteGraph's
        ``measure``: title bar included), computed (``computeSize()``), widgets (the values of the serialised
        widgets) with widget_names, widgets_values (``node.serialize()``), images (previews shown)."""
        return self.js(_NODES_JS)

    def view(self) -> dict[str, Any]:
        """The canvas view: ``ds`` scale and offset, the canvas element's rect on the page (left, top, width,
        height) and the low-quality zoom threshold (below it no text is drawn)."""
        return self.js(_VIEW_JS)

    def dialogs(self) -> list[dict[str, str]]:
        """The open dialogs: ``key`` (the dialog store's key) and ``text``."""
        return self.js("return [...document.querySelectorAll('.p-dialog')].filter((d) => d.getClientRects().length)"
                       ".map((d) => ({key: d.getAttribute('aria-labelledby') ?? '', text: d.innerText.slice(0, 2000)}));")

    def close_dialogs(self) -> None:
        """Close every open dialog with its close button."""
        self.js("document.querySelectorAll('.p-dialog .p-dialog-close-button, .p-dialog-header-close')"
                ".forEach((b) => b.click());")
        self.frames(2)

    def toasts(self) -> list[str]:
        """Texts of the toast messages shown now (errors of a run or a load show as toasts too)."""
        return self.js("return [...document.querySelectorAll('.p-toast-message')].map((t) => t.innerText);")

    # ---- actions

    def load(self, workflow: dict[str, Any], name: str = "workflow") -> None:
        """Load a UI-format workflow as opening a file does (``app.loadGraphData``), then let images load."""
        self.js_async("await app.loadGraphData(arguments[0], true, true, arguments[1]);", workflow, name)
        self.settle()

    def set_widget(self, node_id: int, name: str, value: Any) -> None:
        """Set a widget's value as an edit does (the value, then the widget's callback)."""
        self.js("const n = app.graph.getNodeById(arguments[0]); const w = n.widgets.find((w) => w.name === arguments[1]);"
                "if (!w) throw new Error(`node ${arguments[0]} has no widget ${arguments[1]}`);"
                "w.value = arguments[2]; w.callback?.(w.value, app.canvas, n); app.graph.setDirtyCanvas(true, true);",
                node_id, name, value)

    def click_run(self) -> None:
        """Press the Run button of the top menu's action bar (the main part of the queue split button)."""
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.CSS_SELECTOR, "[data-testid=queue-button] .p-splitbutton-button").click()

    def run(self, timeout: float = 120) -> dict[str, Any]:
        """Press Run and wait for the prompt it queues to finish; returns its ``/history`` entry."""
        known = set(self.http_json("/history"))
        self.click_run()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for prompt_id, entry in self.http_json("/history").items():
                status = entry.get("status", {})
                if prompt_id not in known and (status.get("completed") or status.get("status_str") == "error"):
                    return entry
            time.sleep(0.5)
        queue = self.http_json("/queue")
        raise TimeoutError(f"the run did not finish within {timeout} s ({len(queue['queue_running'])} running, "
                           f"{len(queue['queue_pending'])} pending; toasts: {self.toasts()})")

    def fit_view(self) -> None:
        """Fit the whole graph into the canvas (the frontend's Fit View command)."""
        self.js_async("await app.extensionManager.command.execute('Comfy.Canvas.FitView');")
        self.frames(2)

    def set_view(self, scale: float, offset: list[float]) -> None:
        """Set the canvas view (``ds`` scale and offset), e.g. back to a workflow's saved view."""
        self.js("app.canvas.ds.scale = arguments[0]; app.canvas.ds.offset = arguments[1];"
                "app.canvas.setDirty(true, true);", scale, offset)
        self.frames(2)

    # ---- template browser

    def open_templates(self) -> None:
        """Open the template browser (the Browse Templates command of the Workflow menu)."""
        self.js("performance.clearResourceTimings();")  # a full buffer (250 entries) would hide the thumbnails
        self.js_async("await app.extensionManager.command.execute('Comfy.BrowseTemplates');")
        self._wait(lambda: self.js("return !!document.querySelector('[data-testid=template-workflows-content]')"),
                   "the template browser did not open")

    def select_template_category(self, title: str) -> None:
        """Click the template browser's side-nav entry ``title`` and wait for its cards."""
        from selenium.webdriver.common.by import By

        options = self.driver.find_elements(By.CSS_SELECTOR, "[data-testid=template-workflows-content] [role=option]")
        match = [o for o in options if o.text.strip() == title]
        assert match, f"no template category {title!r}; the side nav lists {[o.text.strip() for o in options]}"
        match[0].click()
        self._wait(lambda: self.js("return document.querySelectorAll('[data-testid^=\"template-workflow-\"]').length"),
                   f"no template cards under {title!r}")

    def template_cards(self, timeout: float = 15) -> list[dict[str, Any]]:
        """The cards shown, in order: name (the template id), title (and whether it is clipped), description,
        whether the thumbnail loaded, its natural size and SHA-256, and the thumbnail URL the page fetched.
        Thumbnails load only while in view (and are dropped after), so each card is read scrolled into view."""
        from selenium.webdriver.common.by import By

        cards = []
        for card in self.driver.find_elements(By.CSS_SELECTOR, '[data-testid^="template-workflow-"]'):
            self.js("arguments[0].scrollIntoView({block: 'center'});", card)
            self._wait(lambda: self.js("const i = arguments[0].querySelector('img'); return !!i && i.complete && "
                                       "i.naturalWidth > 0 || !!arguments[0].querySelector('.pi-image');", card),
                       "", timeout, raise_=False)
            cards.append(self.js_async(_TEMPLATE_CARD_JS, card))
        if cards:  # back to the top, thumbnails loaded (for a screenshot)
            first = self.driver.find_element(By.CSS_SELECTOR, '[data-testid^="template-workflow-"]')
            self.js("arguments[0].scrollIntoView({block: 'end'});", first)
            self.settle(1.0)
        return cards

    def _wait(self, condition: Any, message: str, timeout: float = 30, raise_: bool = True) -> bool:
        """Poll ``condition`` until true; on timeout raise TimeoutError(message), or return False."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                if raise_:
                    raise TimeoutError(message)
                return False
            time.sleep(0.2)
        return True


@contextmanager
def open_frontend(models_dir: Path) -> Iterator[Frontend]:
    """A harness server with ``models_dir`` and the frontend open in headless Chromium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    work = Path(tempfile.mkdtemp(prefix="colorize-frontend-"))
    try:
        settings = work / "server" / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True)
        settings.write_text(json.dumps(FIRST_RUN_DONE))  # a returning user: no welcome template dialog
        with comfy_server(work / "server", models_dir) as (base, _log):
            pack_dir = next(p.name for p in (work / "server" / "custom_nodes").iterdir() if p.resolve() == REPO)
            options = webdriver.ChromeOptions()
            options.binary_location = CHROMIUM
            for flag in (*CHROME_FLAGS, f"--user-data-dir={work / 'profile'}"):
                options.add_argument(flag)
            options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
            driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
            driver.set_script_timeout(120)
            try:
                driver.get(base)
                page = Frontend(driver, base, pack_dir)
                page.wait_ready()
                yield page
            finally:
                driver.quit()
    finally:
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["Frontend", "browser_missing", "http_get", "open_frontend", "overlaps", "ui_workflows"]
