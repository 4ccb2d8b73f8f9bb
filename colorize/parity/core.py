"""Loading fixtures, comparing outputs with their tolerances, and the kind registry."""
from __future__ import annotations

import importlib
import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file
from torch.nn.attention import SDPBackend, sdpa_kernel

KindFn = Callable[["Fixture"], dict[str, torch.Tensor]]
_KINDS: dict[str, KindFn] = {}
_KIND_MODULES = (
    "unet_mult",
    "sketch_encoder",
    "vae",
    "clip_embedder",
    "sampler",
    "switch_split_attention",
    "switch_conditioning",
    "v2_encoders",
    "v2_unet",
    "manipulation",
    "isnet",
    "xl_unet",
    "xl_split_attention",
    "xl_sketch_encoder",
    "xl_conditioning",
    "xl_sampler",
    "xlv2_reference_net",
)


def register(kind: str) -> Callable[[KindFn], KindFn]:
    """Decorator: register ``fn(fixture) -> {output name: tensor}`` for a fixture kind."""

    def deco(fn: KindFn) -> KindFn:
        _KINDS[kind] = fn
        return fn

    return deco


#: kind module → why it could not be imported (a kind whose module is broken fails alone, not the whole run)
_BROKEN: dict[str, str] = {}


def kinds() -> dict[str, KindFn]:
    """All implemented kinds (imports the kind modules on first use). A module that is not written yet is
    skipped; one that fails to import is recorded in :func:`broken_kinds` and its fixtures fail with the reason,
    while every other kind still runs."""
    for mod in _KIND_MODULES:
        try:
            importlib.import_module(f"colorize.parity.kinds.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"colorize.parity.kinds.{mod}":
                _BROKEN[mod] = f"{type(e).__name__}: {e}"
        except Exception as e:
            _BROKEN[mod] = f"{type(e).__name__}: {e}"
    return dict(_KINDS)


def broken_kinds() -> dict[str, str]:
    """Kind modules that failed to import, with the reason (after :func:`kinds`)."""
    kinds()
    return dict(_BROKEN)


@dataclass
class Fixture:
    """One golden fixture: JSON metadata plus weights, inputs and expected outputs."""

    name: str
    kind: str
    meta: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]

    @property
    def scalars(self) -> dict[str, Any]:
        return self.meta.get("scalar_args", {})

    @property
    def config(self) -> dict[str, Any]:
        return self.meta.get("constructor_config", {})

    def weights(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """State-dict entries under ``prefix`` with the prefix stripped."""
        n = len(prefix)
        return {k[n:]: v for k, v in self.state_dict.items() if k.startswith(prefix)}

    def tolerance(self, output: str) -> float:
        tol = self.meta.get("tolerance", {})
        per = tol.get("per_output", {}).get(output)
        if per is not None:
            return float(per["max_abs"])
        groups = tol.get("per_group_max_abs", {})
        return float(groups.get("all", max(groups.values()) if groups else 1e-5))


def load_fixture(json_path: Path) -> Fixture:
    meta = json.loads(Path(json_path).read_text())
    tensors = load_file(str(Path(json_path).with_suffix(".safetensors")))
    sd = {k: v for k, v in tensors.items() if not k.startswith(("input:", "output:"))}
    ins = {k[len("input:"):]: v for k, v in tensors.items() if k.startswith("input:")}
    outs = {k[len("output:"):]: v for k, v in tensors.items() if k.startswith("output:")}
    return Fixture(Path(json_path).stem, meta.get("fixture", Path(json_path).stem), meta, sd, ins, outs)


@dataclass
class FixtureResult:
    name: str
    kind: str
    passed: bool
    worst_output: str = ""
    max_abs_diff: float = float("nan")
    tolerance: float = float("nan")
    error: str = ""
    per_output: dict[str, tuple[float, float, bool]] = field(default_factory=dict)

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        if self.error:
            return f"{self.name:<24} {'-':>10} {'-':>8}  {status}  ({self.error})"
        return (
            f"{self.name:<24} {self.max_abs_diff:>10.3e} {self.tolerance:>8.0e}  {status}"
            f"  (worst: {self.worst_output})"
        )


def compare(fixture: Fixture, produced: dict[str, torch.Tensor]) -> FixtureResult:
    """Compare every stored output with what was produced; a missing output fails."""
    res = FixtureResult(fixture.name, fixture.kind, True)
    worst_ratio = -1.0
    for name, expected in fixture.outputs.items():
        tol = fixture.tolerance(name)
        got = produced.get(name)
        if got is None:
            res.per_output[name] = (float("inf"), tol, False)
            res.passed = False
            res.error = f"output {name!r} not produced"
            continue
        got = got.detach().to("cpu", torch.float64)
        if got.shape != expected.shape:
            res.per_output[name] = (float("inf"), tol, False)
            res.passed = False
            res.error = f"output {name!r} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
            continue
        diff = (got - expected.to(torch.float64)).abs().max().item() if expected.numel() else 0.0
        ok = diff <= tol
        res.per_output[name] = (diff, tol, ok)
        res.passed &= ok
        ratio = diff / tol if tol > 0 else (0.0 if diff == 0 else float("inf"))
        if ratio > worst_ratio:
            worst_ratio, res.worst_output, res.max_abs_diff, res.tolerance = ratio, name, diff, tol
    return res


def produce(fn: KindFn, fixture: Fixture) -> dict[str, torch.Tensor]:
    """A kind's outputs for a fixture, without gradients and on the math attention kernel: the fixtures' attention
    is the exact float32 ``softmax(q kᵀ/√d + bias) v``, not a blocked kernel whose rounding differs per CPU."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        return fn(fixture)


def run_fixture(fixture: Fixture) -> FixtureResult:
    fn = kinds().get(fixture.kind)
    if fn is None:
        why = _BROKEN.get(fixture.kind)
        error = f"kind {fixture.kind!r} failed to import ({why})" if why else f"kind {fixture.kind!r} not implemented"
        return FixtureResult(fixture.name, fixture.kind, False, error=error)
    try:
        produced = produce(fn, fixture)
    except Exception as e:  # reported, not raised: the runner prints one line per fixture
        tb = traceback.format_exc(limit=-2).strip().splitlines()[-1]
        return FixtureResult(fixture.name, fixture.kind, False, error=f"{type(e).__name__}: {e} [{tb}]")
    return compare(fixture, produced)


def run_directory(directory: Path, only: list[str] | None = None) -> list[FixtureResult]:
    """Run every fixture in ``directory`` (optionally only the given kinds or names).

    A JSON file without a sibling ``.safetensors`` (a key layout, say) is a side file, not a fixture."""
    results = []
    for path in sorted(Path(directory).glob("*.json")):
        if not path.with_suffix(".safetensors").is_file():
            continue
        meta_kind = json.loads(path.read_text()).get("fixture", path.stem)
        if only and meta_kind not in only and path.stem not in only:
            continue
        results.append(run_fixture(load_fixture(path)))
    return results
