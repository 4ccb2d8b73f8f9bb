"""Measures, in the real ComfyUI frontend, the size of every node type the shipped workflows use (and of every
node of this pack), and writes ``measured/node_sizes.json`` (the table ``layout.py`` lays the workflows out with).

    python workflows/measure_node_sizes.py           # needs the ComfyUI harness and Chromium (see tests/host)
    python workflows/measure_node_sizes.py --check   # exit 1 if the stored table differs from the frontend

Each type is added once to an empty graph with its default widgets; its size is the larger of LiteGraph's
``node.size`` and ``node.computeSize()``, taken right after creation and again once the node has settled (a
LoadImage shows its default image), rounded up. Sizes are ``[width, body height]``: the title bar
(``title_height``) is not included, as LiteGraph stores ``node.size``. The browser test checks the stored
table against the frontend.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests" / "host"), str(HERE.parent / "tests"), str(HERE.parent), str(HERE)]

from layout import SIZES_FILE  # noqa: E402

TOLERANCE = 1  # px


def workflow_types() -> set[str]:
    """Node types of the UI workflow files and of the graphs ``make_workflows.py`` builds."""
    import make_workflows
    from frontend import ui_workflows

    types = {n["type"] for p in ui_workflows() for n in json.loads(p.read_text(encoding="utf-8"))["nodes"]}
    return types | {n["class_type"] for make, _ in make_workflows.WORKFLOWS.values() for n in make().values()}


def pack_types(page: Any) -> set[str]:
    """The node ids of this pack in the server's ``/object_info``."""
    info = page.http_json("/object_info")
    return {k for k, v in info.items() if v.get("python_module") == f"custom_nodes.{page.pack_dir}"}


def measure() -> dict[str, Any]:
    """``{"frontend": version, "title_height": px, "sizes": {type: [w, h]}}`` from a fresh server and browser."""
    from frontend import open_frontend

    from colorize.tiny import write_tiny_weights

    with tempfile.TemporaryDirectory() as d:
        write_tiny_weights(Path(d), versions=("mult", "switch", "v2", "sdxl", "xlv2", "gan"), masks=True)
        with open_frontend(Path(d)) as page:
            sizes = {}
            for kind in sorted(workflow_types() | pack_types(page)):
                fresh = page.measure_type(kind, settle=False)
                settled = page.measure_type(kind, settle=True)
                sizes[kind] = [math.ceil(max(m[key][i] for m in (fresh, settled) for key in ("size", "computed")) - 1e-6)
                               for i in (0, 1)]
            return {"frontend": page.version(), "title_height": page.title_height(), "sizes": sizes}


def differences(stored: dict[str, Any], measured: dict[str, Any]) -> list[str]:
    """What differs by more than the tolerance between two tables."""
    out = []
    if stored.get("title_height") != measured["title_height"]:
        out.append(f"title_height: stored {stored.get('title_height')}, measured {measured['title_height']}")
    old, new = stored.get("sizes", {}), measured["sizes"]
    for kind in sorted(set(old) | set(new)):
        if kind not in old or kind not in new:
            out.append(f"{kind}: {'only measured' if kind in new else 'only stored'}")
        elif any(abs(a - b) > TOLERANCE for a, b in zip(old[kind], new[kind])):
            out.append(f"{kind}: stored {old[kind]}, measured {new[kind]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare the stored table with the frontend")
    ap.add_argument("--out", type=Path, default=SIZES_FILE, help=f"the table (default {SIZES_FILE})")
    args = ap.parse_args(argv)
    table = measure()
    if args.check:
        stored = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
        diff = differences(stored, table)
        print(f"{args.out}: " + ("matches" if not diff else "differs from") + f" frontend {table['frontend']}")
        print("\n".join(diff))
        return 1 if diff else 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({len(table['sizes'])} node types, frontend {table['frontend']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
