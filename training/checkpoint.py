"""Resumable training state: model, optimiser, scheduler, grad scaler, EMA, RNG states and data position,
one ``.pt`` file per save, written atomically (``colorize.atomic.atomic_path``) and read back with
``torch.load(weights_only=True)`` (only tensors and plain Python values are stored).

Resuming (``run.resume=auto``) takes the newest checkpoint that reads back: a truncated or garbage newer file
(a crash or a full disk during a save outside the atomic write, a copy cut short) is passed over with a one-line
warning naming it and the file used instead; when none reads back the run stops with a one-line
:class:`training.errors.TrainingCheckpointError` naming the files and the fix. Partial ``.part`` files of a save
that was killed are removed at resume.

The data position is the global step (``training.batches``: every sample is a function of the step), stored
together with the epoch/offset it corresponds to. RNG states are saved too, although the loop draws all its
randomness from keyed generators; they keep anything else that uses the global generators reproducible.
"""
from __future__ import annotations

import random
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from colorize.atomic import atomic_path
from training.errors import TrainingCheckpointError, one_line

FORMAT_VERSION = 1
_NAME = re.compile(r"^step_(\d{8})\.pt$")
_PARTIAL = re.compile(r"^\.step_\d{8}\.pt\..*\.part$")
#: What every training state holds (a file that loads without them is not a usable checkpoint).
REQUIRED_KEYS = ("step", "model", "optimizer", "scheduler", "scaler", "rng", "colorize_config")


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


class UnreadableCheckpoint(Exception):
    """A checkpoint file that does not read back as a training state (internal; the reason is one line)."""


def read_training_state(path: str | Path) -> dict[str, Any]:
    """The training state in ``path`` (``torch.load(weights_only=True)``: tensors and plain values only); raises
    :class:`UnreadableCheckpoint` with a one-line reason when the file is truncated, garbage or incomplete."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes the unpickler raise
        raise UnreadableCheckpoint(one_line(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                                            160)) from None
    if not isinstance(state, dict):
        raise UnreadableCheckpoint(f"it holds a {type(state).__name__}, not a training state")
    if state.get("format") != FORMAT_VERSION:
        raise UnreadableCheckpoint(f"unknown training-state format {state.get('format')!r} "
                                   f"(expected {FORMAT_VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise UnreadableCheckpoint(f"it lacks {', '.join(missing)}")
    return state


def load_training_state(path: str | Path) -> dict[str, Any]:
    """:func:`read_training_state`, failing with a one-line :class:`TrainingCheckpointError` naming the file."""
    try:
        return read_training_state(path)
    except UnreadableCheckpoint as e:
        raise TrainingCheckpointError(f"checkpoint {path} cannot be read ({e}); use another checkpoint "
                                      "(e.g. run.resume=auto picks the newest readable one)") from None


def newest_readable_state(out_dir: str | Path, report: bool = True) -> tuple[Path, dict[str, Any]] | None:
    """``(path, state)`` of the newest checkpoint of ``out_dir`` that reads back (None when there are none);
    newer unreadable ones get a one-line warning (when ``report``) naming them and the file used instead. Raises
    :class:`TrainingCheckpointError` when checkpoints exist and none reads back."""
    unreadable: list[tuple[Path, str]] = []
    for _, path in reversed(list_checkpoints(out_dir)):
        try:
            state = read_training_state(path)
        except UnreadableCheckpoint as e:
            unreadable.append((path, str(e)))
            continue
        for bad, reason in unreadable if report else ():
            print(f"warning: checkpoint {bad} cannot be read ({reason}); resuming from the previous one, {path}",
                  file=sys.stderr, flush=True)
        return path, state
    if not unreadable:
        return None
    names = ", ".join(p.name for p, _ in unreadable)
    raise TrainingCheckpointError(
        f"no checkpoint in {checkpoint_dir(out_dir)} can be read ({names}; newest: {unreadable[0][1]}); delete "
        "them to start over in this folder, or start a new run folder (run.out_dir)")


def remove_partial_saves(out_dir: str | Path) -> list[Path]:
    """Delete the ``.part`` files of saves that were killed before they completed; returns them."""
    folder = checkpoint_dir(out_dir)
    found = [p for p in folder.iterdir() if _PARTIAL.match(p.name)] if folder.is_dir() else []
    for p in found:
        p.unlink(missing_ok=True)
    return found


def prune_checkpoints(out_dir: str | Path, keep: int, upto: int | None = None) -> None:
    """Delete all but the newest ``keep`` checkpoints of steps ``<= upto`` (``keep <= 0`` keeps everything).

    Newer files (left by a run that was resumed from an earlier step, e.g. past an unreadable newest one) are
    neither counted nor deleted; the resumed run overwrites them when it gets there."""
    if keep <= 0:
        return
    found = [(s, p) for s, p in list_checkpoints(out_dir) if upto is None or s <= upto]
    for _, p in found[:-keep]:
        p.unlink(missing_ok=True)
