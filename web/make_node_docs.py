"""Writes the node help pages: ``web/docs/<node id>.md`` for every node of the pack, which the ComfyUI
frontend shows in the node library's documentation panel instead of the generic description.

    python web/make_node_docs.py          # rewrite the pages (and delete pages of nodes that are gone)
    python web/make_node_docs.py --check  # exit 1 if a page is out of date, missing or stale

Each page is made from the node class alone: from its V3 schema the display name, the description (the short
hover text), the inputs (required, then optional) and the outputs, and from the class its ``HELP`` (the longer
Markdown explanation). Pickers of model files show their folder, not the files found on this machine, so the
pages are the same everywhere.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DOCS = HERE / "docs"
sys.path.insert(0, str(HERE.parent))

from nodes import NODE_CLASSES
from nodes.lineart import AUTO_FILE
from nodes.models import (
    CHECKPOINT_FOLDER,
    CLIP_FOLDER,
    GAN_FOLDER,
    ISNET_FOLDER,
    LINEART_FOLDER,
    SAM_FOLDER,
    TAGGER_FOLDER,
)

# Combo inputs whose choices are the files of a model folder (they differ from machine to machine).
FILE_INPUTS = {"ckpt_name": CHECKPOINT_FOLDER, "clip_name": CLIP_FOLDER, "sam_name": SAM_FOLDER,
               "model_file": LINEART_FOLDER, "model_name": ISNET_FOLDER, "tagger_name": TAGGER_FOLDER,
               "gan_name": GAN_FOLDER}
SPECIAL_CHOICES = {AUTO_FILE}  # non-file choices listed before the files (model_file's "auto")
MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")


def cell(text: Any) -> str:
    """Text for a Markdown table cell: one line, no column breaks, no raw HTML."""
    return " ".join(str(text).split()).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")


def code(value: Any) -> str:
    """A default value as the frontend shows it, in backticks."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = f'"{value}"' if value == "" else value
    else:
        text = str(value)
    return f"`{text}`"


def number_range(opts: dict[str, Any]) -> str:
    parts = []
    if "min" in opts and "max" in opts:
        parts.append(f"{opts['min']}–{opts['max']}")
    if "step" in opts:
        parts.append(f"step {opts['step']}")
    return f" ({', '.join(parts)})" if parts else ""


def input_row(node_id: str, inp: Any) -> str:
    """One row of the inputs table: name, type, default, tooltip."""
    name, typ, opts = inp.id, inp.io_type, inp.as_dict()
    label = f"`{name}`" + (" (optional)" if inp.optional else "")
    if typ == "COMBO":
        choices = opts["options"]
        if name in FILE_INPUTS:
            special = [f"`{c}`" for c in choices if c in SPECIAL_CHOICES]
            kind = f"file in `models/{FILE_INPUTS[name]}`"
            kind = f"{' / '.join(special)} or a {kind}" if special else f"a {kind}"
        else:
            files = [c for c in choices if str(c).lower().endswith(MODEL_EXTENSIONS)]
            if files:
                raise SystemExit(f"{node_id}.{name} lists model files ({files[0]}, ...): add its folder to "
                                 "FILE_INPUTS, or the pages would depend on this machine's model folders")
            kind = "one of " + ", ".join(f"`{c}`" for c in choices)
    else:
        kind = str(typ) + (number_range(opts) if typ in ("INT", "FLOAT") else "")
    default = code(opts["default"]) if "default" in opts else "—"
    return f"| {label} | {cell(kind)} | {cell(default)} | {cell(opts.get('tooltip', ''))} |"


def page(node_id: str) -> str:
    """The Markdown help page of one node."""
    cls = NODE_CLASSES[node_id]
    schema = cls.define_schema()
    lines = [f"# {schema.display_name}", "", " ".join(schema.description.split()), "",
             cls.HELP.strip(), "", "## Inputs", ""]
    rows = [input_row(node_id, inp) for inp in sorted(schema.inputs or [], key=lambda i: bool(i.optional))]
    if rows:
        lines += ["| Name | Type | Default | Description |", "| --- | --- | --- | --- |", *rows]
    else:
        lines.append("None.")
    lines += ["", "## Outputs", ""]
    if schema.outputs:
        lines += ["| Name | Type | Description |", "| --- | --- | --- |"]
        lines += [f"| `{o.display_name}` | {cell(o.io_type)} | {cell(o.tooltip or '')} |" for o in schema.outputs]
    else:
        lines.append("None.")
    lines += ["", f"Node id `{node_id}`, category {schema.category}.", ""]
    return "\n".join(lines)


def build() -> dict[str, str]:
    """Path relative to ``web/docs`` → content of every help page."""
    return {f"{node_id}.md": page(node_id) for node_id in NODE_CLASSES}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that the pages are up to date")
    args = ap.parse_args(argv)
    pages = build()
    stale = []
    for rel, content in pages.items():
        path = DOCS / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            stale.append(rel)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content, encoding="utf-8", newline="\n")
    # pages of nodes that no longer exist (or localised pages that would hide the generated one)
    extra = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")) if DOCS.is_dir() else []
    extra = [rel for rel in extra if rel not in pages]
    if not args.check:
        for rel in extra:
            (DOCS / rel).unlink()
    report = stale + [f"{rel} (stale)" for rel in extra]
    print(("out of date: " if args.check else "wrote: ") + (", ".join(report) or "nothing"))
    return 1 if args.check and report else 0


if __name__ == "__main__":
    sys.exit(main())
