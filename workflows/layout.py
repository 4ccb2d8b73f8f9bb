"""Canvas layout of the shipped workflows: measured node sizes, stage groups, columns by graph depth, a saved view.

Every node gets the size the frontend draws it at (``measured/node_sizes.json``, measured in the real frontend by
``measure_node_sizes.py`` and checked by the browser test), plus room for what grows after a run (image
previews, text previews). Nodes are grouped by stage; the stages sit in bands left to right (inputs | sketch
above reference | sampling | output), and inside a group the nodes stand in columns by their depth in the
group's part of the graph. The "Read me" note sits at the top-left, and the saved view shows it at a zoom where
the frontend still draws text.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Graph = dict[str, dict[str, Any]]
HERE = Path(__file__).resolve().parent
SIZES_FILE = HERE / "measured" / "node_sizes.json"

# Stages, in reading order: (id, group title, band). Sketch and reference share a band (parallel branches).
STAGES = (("inputs", "Inputs", 0), ("sketch", "Sketch", 1), ("reference", "Reference", 1),
          ("sampling", "Sampling", 2), ("output", "Output", 3))
STAGE_OF_TYPE = {
    "LoadImage": "inputs", "ColorizeDiffusionCheckpointLoader": "inputs", "ColorizeDiffusionNativeLoader": "inputs",
    "ColorizeDiffusionReferenceEncoderLoader": "inputs", "ColorizeDiffusionReferenceEncoderFromCLIPVision": "inputs",
    "ColorizeDiffusionXLReferenceEncoderLoader": "inputs", "ColorizeDiffusionXLLevelRule": "sampling",
    "ColorizeDiffusionSketchPreprocess": "sketch", "ColorizeDiffusionSketchHints": "sketch",
    "ColorizeDiffusionLineExtract": "sketch", "ColorizeDiffusionNativeSketch": "sketch",
    "ColorizeDiffusionReferenceEmbed": "reference", "ColorizeDiffusionReferencePad": "reference",
    "ColorizeDiffusionTextEdit": "reference", "ColorizeDiffusionControlHeatmap": "reference",
    "ColorizeDiffusionBackgroundEncode": "reference", "ColorizeDiffusionStyleEncode": "reference",
    "ColorizeDiffusionSAMMask": "reference", "ColorizeDiffusionNativeConditioning": "reference",
    "ColorizeDiffusionAnimeMask": "reference", "ColorizeDiffusionSketchMaskISNet": "sketch",
    "ColorizeDiffusionSampler": "sampling", "ColorizeDiffusionGuidanceWindow": "sampling",
    "ColorizeDiffusionAttentionInjection": "sampling", "ColorizeDiffusionNativeReferenceStrength": "sampling",
    "ColorizeDiffusionNativeEnhance": "sampling", "ColorizeDiffusionNativeGuider": "sampling",
    "ColorizeDiffusionNativeSigmas": "sampling", "KSampler": "sampling", "SamplerCustomAdvanced": "sampling",
    "KSamplerSelect": "sampling", "RandomNoise": "sampling",
    "ColorizeDiffusionDecode": "output", "VAEDecode": "output", "SaveImage": "output",
    "ColorizeDiffusionCropToSketch": "output", "ColorizeDiffusionRemoveBackground": "output",
    "ColorizeDiffusionGANLoader": "inputs", "ColorizeDiffusionGANReference": "reference",
    "ColorizeDiffusionGANTagEdit": "reference", "ColorizeDiffusionGANColorize": "sampling",
}
# Nodes that belong with what they show or serve: the stage of their deepest source.
FOLLOWS_SOURCE = ("PreviewImage", "PreviewAny", "ColorizeDiffusionMaskPreview")
# Room for what loading and running add: image previews (LoadImage shows its picture once loaded) (the frontend fits the image into the node and grows it) and text.
GROWN_SIZE = {"PreviewImage": (340, 380), "SaveImage": (340, 420), "PreviewAny": (340, 260), "LoadImage": (300, 380)}
SHOWS_IMAGES = ("ColorizeDiffusionMaskPreview",)  # pack nodes with an image preview of their own
COLUMN_GAP, ROW_GAP, GROUP_PAD, GROUP_TITLE, BAND_GAP = 50, 40, 20, 50, 60
NOTE_WIDTH, NOTE_LINE, NOTE_MARGIN = 820, 19, 40
VIEW_SCALE, VIEW_MARGIN = 0.75, 24  # 0.75 > the frontend's 0.6 low-quality threshold: text is drawn


@dataclass(frozen=True)
class Box:
    x: float
    y: float  # top of the title bar
    w: float
    h: float  # title bar included

    def overlaps(self, other: Box) -> bool:
        return (self.x < other.x + other.w and other.x < self.x + self.w
                and self.y < other.y + other.h and other.y < self.y + self.h)


@dataclass(frozen=True)
class Layout:
    pos: dict[str, tuple[int, int]]  # LiteGraph pos: the body's top-left (below the title bar)
    size: dict[str, tuple[int, int]]  # LiteGraph size: the body (title bar excluded)
    groups: list[dict[str, Any]]
    note_pos: tuple[int, int]
    note_size: tuple[int, int]
    view: dict[str, Any]


def load_sizes(path: Path = SIZES_FILE) -> tuple[dict[str, tuple[int, int]], int]:
    """``({node type: (width, body height)}, title height)`` as the frontend measured them."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: (round(v[0]), round(v[1])) for k, v in data["sizes"].items()}, round(data["title_height"])


def sources(graph: Graph, nid: str) -> list[str]:
    return [v[0] for v in graph[nid]["inputs"].values() if isinstance(v, list)]


def depths(graph: Graph) -> dict[str, int]:
    """Longest path from a node without inputs."""
    memo: dict[str, int] = {}

    def depth(nid: str) -> int:
        if nid not in memo:
            memo[nid] = 1 + max((depth(s) for s in sources(graph, nid)), default=-1)
        return memo[nid]

    for nid in graph:
        depth(nid)
    return memo


def stages(graph: Graph, depth: dict[str, int] | None = None) -> dict[str, str]:
    """Each node's stage: by type; a Sketch Mask feeding a reference mask is reference work; previews follow
    their deepest source."""
    depth = depth or depths(graph)
    out: dict[str, str] = {}

    def stage(nid: str) -> str:
        if nid in out:
            return out[nid]
        kind = graph[nid]["class_type"]
        if kind in FOLLOWS_SOURCE:
            result = stage(max(sources(graph, nid), key=lambda s: (depth[s], int(s))))
        elif kind == "ColorizeDiffusionSketchMask":
            feeds_reference = any(v == [nid, 0] for n in graph.values() for k, v in n["inputs"].items()
                                  if k == "reference_mask")
            result = "reference" if feeds_reference else "sketch"
        else:
            result = STAGE_OF_TYPE[kind]
        out[nid] = result
        return result

    for nid in graph:
        stage(nid)
    return out


def node_size(kind: str, sizes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """The drawn size of a node, with room for what a run adds to it."""
    if kind not in sizes:
        raise KeyError(f"no measured size for {kind}: run workflows/measure_node_sizes.py")
    w, h = sizes[kind]
    grown = GROWN_SIZE.get(kind) or ((max(w, 340), h + 300) if kind in SHOWS_IMAGES else None)
    return (max(w, grown[0]), max(h, grown[1])) if grown else (w, h)


def note_height(note: str) -> int:
    """Body height for the note's Markdown (wrapped at the note's width, about 105 characters a line)."""
    lines = sum(max(1, -(-len(line) // 105)) for line in note.strip().splitlines())
    return 40 + NOTE_LINE * lines


def layout(graph: Graph, note: str, sizes: dict[str, tuple[int, int]], title_height: int) -> Layout:
    """Positions, sizes, stage groups, the note's place and the saved view of one workflow."""
    depth = depths(graph)
    stage_of = stages(graph, depth)
    size = {nid: node_size(graph[nid]["class_type"], sizes) for nid in graph}
    note_h = note_height(note)
    top = note_h + title_height + NOTE_MARGIN  # groups start below the note
    pos: dict[str, tuple[int, int]] = {}
    groups: list[dict[str, Any]] = []
    band_x = 0
    for band in sorted({b for _, _, b in STAGES}):
        band_w, y = 0, top
        for stage_id, title, _ in (s for s in STAGES if s[2] == band):
            members = sorted((n for n in graph if stage_of[n] == stage_id), key=lambda n: (depth[n], int(n)))
            if not members:
                continue
            columns: dict[int, list[str]] = {}
            for nid in members:  # depth inside the group: the group's own columns start at 0
                local = depth[nid] - min(depth[m] for m in members)
                columns.setdefault(local, []).append(nid)
            x = band_x + GROUP_PAD
            group_h = 0
            for col in sorted(columns):
                cy = y + GROUP_TITLE
                col_w = max(size[n][0] for n in columns[col])
                for nid in columns[col]:
                    pos[nid] = (x, cy + title_height)
                    cy += title_height + size[nid][1] + ROW_GAP
                group_h = max(group_h, cy - y - ROW_GAP + GROUP_PAD)
                x += col_w + COLUMN_GAP
            group_w = x - COLUMN_GAP + GROUP_PAD - band_x
            groups.append({"title": title, "bounding": [band_x, y, group_w, group_h], "color": "#3f3f4f",
                           "font_size": 24, "flags": {}})
            band_w = max(band_w, group_w)
            y += group_h + BAND_GAP
        band_x += band_w + BAND_GAP
    note_pos = (0, title_height)
    view = {"scale": VIEW_SCALE, "offset": [VIEW_MARGIN / VIEW_SCALE - note_pos[0],
                                            VIEW_MARGIN / VIEW_SCALE - (note_pos[1] - title_height)]}
    return Layout(pos, size, groups, note_pos, (NOTE_WIDTH, note_h), view)


def boxes(lay: Layout, title_height: int) -> dict[str, Box]:
    """Each node's drawn rectangle (title bar included)."""
    return {nid: Box(x, y - title_height, lay.size[nid][0], lay.size[nid][1] + title_height)
            for nid, (x, y) in lay.pos.items()}


__all__ = ["Box", "Graph", "Layout", "STAGES", "boxes", "depths", "layout", "load_sizes", "stages"]
