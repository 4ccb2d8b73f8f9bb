"""What saved workflows depend on stays put: node ids, input names, order, types, defaults and ranges, combo
choices and outputs of every pack node, as the real host's ``/object_info`` reports them, against a stored copy
(``object_info_contract.json``, written from the classic-API nodes before they moved to the V3 schema).

Display names, descriptions and tooltips are free to change and are not compared. After a deliberate change
of the contract, rewrite the copy with ``python tests/host/test_object_info_contract.py write`` and say why in
the commit message: saved workflows of users break when it changes.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import REPO, run_harness

CONTRACT = Path(__file__).with_name("object_info_contract.json")
KEPT_OPTIONS = ("default", "min", "max", "step", "round", "control_after_generate", "multiline", "forceInput")


def input_contract(spec: list[Any]) -> dict[str, Any]:
    """One input's type, choices and widget options (no tooltip)."""
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    entry: dict[str, Any] = {"type": kind}
    if isinstance(kind, list):
        entry = {"type": "COMBO", "options": kind}
    elif kind == "COMBO":  # the V3 spelling of a combo: its choices in the options
        entry["options"] = opts.get("options", [])
    entry.update({k: opts[k] for k in KEPT_OPTIONS if k in opts})
    return entry


def node_contract(info: dict[str, Any]) -> dict[str, Any]:
    """The parts of one ``/object_info`` entry a saved workflow relies on."""
    inputs = {section: [[name, input_contract(info["input"][section][name])]
                        for name in info.get("input_order", {}).get(section, info["input"].get(section, {}))]
              for section in ("required", "optional") if info["input"].get(section)}
    return {"category": info["category"], "inputs": inputs, "output_node": bool(info.get("output_node")),
            "outputs": [list(t) for t in zip(info["output"], info["output_name"],
                                             info.get("output_is_list") or [False] * len(info["output"]))]}


def host_contract(models_dir: Path, work: Path) -> dict[str, Any]:
    """The contract of every pack node in the real host, with the tiny weights (fixed file choices)."""
    info_path = work / "object_info.json"
    rc, summary, out = run_harness("--import-only", "--fail-on-import-error", "--models-dir", str(models_dir),
                                   "--dump-object-info", str(info_path), "--cleanup", timeout=240)
    assert rc == 0 and summary["import_failures"] == {}, out[-3000:]
    return {node_id: node_contract(entry) for node_id, entry in sorted(json.loads(info_path.read_text()).items())}


def _tiny_models(directory: Path) -> Path:
    from colorize.tiny import write_tiny_weights

    write_tiny_weights(directory, versions=("mult", "switch", "v2"), masks=True)
    return directory


def test_object_info_keeps_the_stored_contract(tmp_path: Path) -> None:
    want = json.loads(CONTRACT.read_text())
    got = host_contract(_tiny_models(tmp_path / "models"), tmp_path)
    assert sorted(got) == sorted(want), f"node ids changed: +{sorted(set(got) - set(want))} -{sorted(set(want) - set(got))}"
    changed = {node_id: {"stored": want[node_id], "host": got[node_id]}
               for node_id in want if got[node_id] != want[node_id]}
    assert not changed, json.dumps(changed, indent=1)[:6000]


if __name__ == "__main__" and sys.argv[1:] == ["write"]:
    sys.path[:0] = [str(REPO)]
    with tempfile.TemporaryDirectory() as d:
        contract = host_contract(_tiny_models(Path(d) / "models"), Path(d))
    CONTRACT.write_text(json.dumps(contract, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {CONTRACT} ({len(contract)} nodes)")
