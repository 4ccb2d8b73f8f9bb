"""What users read about the nodes: short hover texts, a help page per node, short and distinct display names.

The frontend clips long hover text and wraps long names in the node library, so ``DESCRIPTION`` stays short and
the long explanation lives in ``HELP``, rendered with the inputs and outputs into ``web/docs/<node id>.md``
(``WEB_DIRECTORY``'s node documentation) by ``web/make_node_docs.py``.
"""
from __future__ import annotations

from _helpers import COMFY_DIR, require_node_api

require_node_api()  # the nodes import ComfyUI's comfy_api

import ast
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from colorize.weights import MODELS_DIR_ENV
from nodes import DISPLAY_NAMES as NAMES
from nodes import NODE_CLASSES as M

REPO = Path(__file__).resolve().parents[2]
GENERATOR = REPO / "web" / "make_node_docs.py"
DOCS = REPO / "web" / "docs"
MAX_DESCRIPTION = 300


def normalised(name: str) -> str:
    """A display name as a reader tells names apart: case, spaces and punctuation ignored."""
    return re.sub(r"[^0-9a-z]", "", name.casefold())


def core_display_names(comfy_dir: Path) -> set[str]:
    """The core nodes' display names (and ids: a node without a display name shows its id), read from a ComfyUI
    source tree: the ``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS`` literals of ``nodes.py`` and
    ``comfy_extras``, the ``node_id=`` / ``display_name=`` arguments of their schema nodes and the ``NodeId`` /
    ``NodeName`` class attributes of the hook nodes."""
    names: set[str] = set()
    for path in [comfy_dir / "nodes.py", *sorted((comfy_dir / "comfy_extras").glob("*.py"))]:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and any(
                    isinstance(t, ast.Name) and t.id in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS")
                    for t in node.targets):
                strings = [*node.value.keys, *node.value.values]
            elif isinstance(node, ast.keyword) and node.arg in ("node_id", "display_name"):
                strings = [node.value]
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in ("NodeId", "NodeName")
                                                      for t in node.targets):  # nodes_hooks.py's classes
                strings = [node.value]
            else:
                continue
            names |= {n.value for n in strings if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return names


def run_generator(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GENERATOR), *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=REPO)


def test_descriptions_are_short_and_every_node_has_help() -> None:
    for node_id, cls in M.items():
        assert isinstance(cls.DESCRIPTION, str) and cls.DESCRIPTION.strip(), f"{node_id} has no DESCRIPTION"
        assert len(cls.DESCRIPTION) <= MAX_DESCRIPTION, f"{node_id}: DESCRIPTION is {len(cls.DESCRIPTION)} characters"
        assert "\n" not in cls.DESCRIPTION, f"{node_id}: DESCRIPTION is one paragraph"
        help_text = getattr(cls, "HELP", None)
        assert isinstance(help_text, str) and help_text.strip(), f"{node_id} has no HELP"
        assert help_text == inspect.cleandoc(help_text), f"{node_id}: HELP is indented (Markdown code block)"


def test_display_names_are_short_names_and_distinct() -> None:
    assert set(NAMES) == set(M)
    for node_id, name in NAMES.items():
        assert name.strip() == name and name, node_id
        assert not name.casefold().startswith("colorizediffusion"), f"{node_id}: {name!r} repeats the category"
    seen: dict[str, str] = {}
    for node_id, name in NAMES.items():
        assert normalised(name) not in seen, f"{node_id} and {seen.get(normalised(name))} are both {name!r}"
        seen[normalised(name)] = node_id


def test_display_names_differ_from_core_nodes() -> None:
    if not (COMFY_DIR / "nodes.py").is_file() or not (COMFY_DIR / "comfy_extras").is_dir():
        pytest.skip(f"no ComfyUI source tree at {COMFY_DIR} (set COMFY_HOME): only uniqueness is checked")
    core = core_display_names(COMFY_DIR)
    assert {"Load Checkpoint", "KSampler", "VAE Decode", "MaskPreview"} <= core  # the tree was read
    core_normalised = {normalised(n): n for n in core}
    clashes = {node_id: core_normalised[normalised(name)] for node_id, name in NAMES.items()
               if normalised(name) in core_normalised}
    assert not clashes, f"display names equal to core nodes' names: {clashes}"


def test_help_pages_are_up_to_date() -> None:
    result = run_generator("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_help_pages_do_not_depend_on_the_model_folders(tmp_path: Path) -> None:
    """Files present on this machine (file pickers) never reach the pages."""
    for folder, name in (("colorizediffusion", "my-own.safetensors"), ("clip_vision", "other-clip.safetensors"),
                         ("sams", "my-sam.pth"), ("lineart", "my-lines.pth")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"")
    result = run_generator("--check", env={**os.environ, MODELS_DIR_ENV: str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_page_names_its_node_and_inputs() -> None:
    assert {p.name for p in DOCS.glob("*.md")} == {f"{node_id}.md" for node_id in M}
    for node_id, cls in M.items():
        text = (DOCS / f"{node_id}.md").read_text(encoding="utf-8")
        assert text.startswith(f"# {NAMES[node_id]}\n"), node_id
        assert " ".join(cls.DESCRIPTION.split()) in text and cls.HELP in text, node_id
        assert "## Inputs" in text and "## Outputs" in text, node_id
        schema = cls.define_schema()
        for inp in schema.inputs:
            assert f"| `{inp.id}`" in text, f"{node_id}.md lacks input {inp.id}"
        for out in schema.outputs:
            assert f"| `{out.display_name}` |" in text, f"{node_id}.md lacks output {out.display_name}"
