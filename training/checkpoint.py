"""Resumable training state: model, optimiser, scheduler, grad scaler, EMA, RNG states and data position,
one ``.pt`` file per save, written atomically (``colorize.atomic.atomic_path``) and read back with
``torch.load(weights_only=True)`` (only tensors and plain Python values are stored).

The data position is the global step (``training.batches``: every sample is a function of the step), stored
together with the epoch/offset it corresponds to. RNG states are saved too, although the loop draws all its
randomness from keyed generators; they keep anything else that uses the global generators reproducible.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from colorize.atomic import atomic_path

FORMAT_VERSION = 1
_NAME = re.compile(r"^step_(\d{8})\.pt$")


def rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU and CUDA, numpy, Python) as tensors and plain values."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(out_dir) / f"step_{step:08d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of complete checkpoint files, oldest first (partial ``.part`` files never match)."""
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def save_training_state(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (plus the format version) atomically to ``path`` (replacing an older file)."""
    with atomic_path(path, overwrite=True) as tmp:
        torch.save({"format": FORMAT_VERSION, **state}, tmp)
    return Path(path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: unknown training-state format {state.get('format')!r} (expected {FORMAT_VERSION})")
    return state


def prune_checkpoints(out_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0`` keeps everything)."""
    if keep <= 0:
        return
    for _, p in list_checkpoints(out_dir)[:-keep]:
        p.unlink(missing_ok=True)
