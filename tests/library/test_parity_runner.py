"""The parity runner itself: tolerance lookup, comparison, and failure on unknown kinds."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from colorize.parity.core import compare, load_fixture, run_directory


def _write(tmp: Path, kind: str, outputs: dict[str, torch.Tensor], tol: float) -> Path:
    meta = {"fixture": kind, "tolerance": {"per_group_max_abs": {"all": tol}, "per_output": {}}}
    (tmp / f"{kind}.json").write_text(json.dumps(meta))
    save_file({f"output:{k}": v for k, v in outputs.items()}, str(tmp / f"{kind}.safetensors"))
    return tmp / f"{kind}.json"


def test_compare_respects_tolerance(tmp_path: Path) -> None:
    fx = load_fixture(_write(tmp_path, "demo", {"y": torch.zeros(3)}, 1e-3))
    assert compare(fx, {"y": torch.full((3,), 5e-4)}).passed
    bad = compare(fx, {"y": torch.full((3,), 2e-3)})
    assert not bad.passed and abs(bad.max_abs_diff - 2e-3) < 1e-9


def test_missing_output_and_shape_mismatch_fail(tmp_path: Path) -> None:
    fx = load_fixture(_write(tmp_path, "demo", {"y": torch.zeros(3)}, 1e-3))
    assert not compare(fx, {}).passed
    assert not compare(fx, {"y": torch.zeros(4)}).passed


def test_unknown_kind_counts_as_failure(tmp_path: Path) -> None:
    _write(tmp_path, "no_such_kind", {"y": torch.zeros(1)}, 1e-3)
    (res,) = run_directory(tmp_path)
    assert not res.passed and "not implemented" in res.error


def test_parity_command_passes_on_v1_fixtures(fixture_dir: Path, capsys) -> None:
    """``python -m colorize.parity DIR --only <v1 kinds>``: every line PASS, exit 0."""
    from colorize.parity.__main__ import main

    v1 = ["unet_mult", "sketch_encoder", "vae", "clip_embedder", "sampler"]
    code = main([str(fixture_dir), "--only", *v1])
    out = capsys.readouterr().out
    assert code == 0, out
    assert sum(line.split()[0] in v1 and "PASS" in line for line in out.splitlines()) == len(v1)


def test_a_kind_module_that_fails_to_import_fails_alone(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A half-written kind module must not stop the fixtures of every other kind."""
    from colorize.parity import core

    def fail_import(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "colorize.parity.kinds.broken_for_test":
            raise ImportError("cannot import name 'missing' from 'colorize.families.xl'")
        return real_import(name, *args, **kwargs)

    real_import = core.importlib.import_module
    monkeypatch.setattr(core, "_KIND_MODULES", (*core._KIND_MODULES, "broken_for_test"))
    monkeypatch.setattr(core.importlib, "import_module", fail_import)
    monkeypatch.setattr(core, "_BROKEN", {})
    assert "vae" in core.kinds()  # the others still load
    assert "cannot import name 'missing'" in core.broken_kinds()["broken_for_test"]
    fixture = core.Fixture("f", "broken_for_test", {}, {}, {}, {})
    assert "failed to import" in str(core.run_fixture(fixture).error)
