"""The lock file: what each downloaded weights file was verified to be, so a later run notices a changed file.

Each folder that receives a download gets ``colorize-weights.lock.json`` beside the files, mapping a file name to
its verified size and sha256, where that digest came from and when. Every time a manifest file is used its size
is compared with the lock (cheap); ``python -m colorize verify`` recomputes the sha256. A file that fails is
moved aside (``<name>.rejected``), never used and never deleted. A file placed by hand has no lock entry: it is
used, with a one-line notice that ``verify`` can check it (:func:`colorize.weights.usable_existing`).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from colorize.atomic import atomic_path

LOCK_NAME = "colorize-weights.lock.json"
LOCK_VERSION = 1
_NOTICED: set[str] = set()


@dataclass(frozen=True)
class LockEntry:
    size: int
    sha256: str
    source: str  # "the manifest", "the Hub's metadata", "first download" ...
    verified_at: str  # ISO 8601, UTC
    origin: str = ""  # the URL the bytes came from


def lock_path(folder: str | os.PathLike[str]) -> Path:
    return Path(folder) / LOCK_NAME


def read_lock(folder: str | os.PathLike[str]) -> dict[str, LockEntry]:
    """The folder's lock entries by file name ({} when there is none; an unreadable lock counts as none, with a
    notice, so that the files are re-verified rather than trusted)."""
    path = lock_path(folder)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {name: LockEntry(**fields) for name, fields in data["files"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        notice(f"{path} is unreadable ({type(e).__name__}); its files count as unverified until "
               "`python -m colorize verify` checks them again")
        return {}


def recorded(path: str | os.PathLike[str]) -> LockEntry | None:
    p = Path(path)
    return read_lock(p.parent).get(p.name)


def record(path: str | os.PathLike[str], size: int, sha256: str, source: str, origin: str = "") -> LockEntry:
    """Store that ``path`` was verified (atomic rewrite of its folder's lock file)."""
    p = Path(path)
    entries = read_lock(p.parent)
    entries[p.name] = LockEntry(size, sha256, source, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), origin)
    _write(p.parent, entries)
    return entries[p.name]


def forget(path: str | os.PathLike[str]) -> None:
    p = Path(path)
    entries = read_lock(p.parent)
    if entries.pop(p.name, None) is not None:
        _write(p.parent, entries)


def _write(folder: Path, entries: dict[str, LockEntry]) -> None:
    text = json.dumps({"version": LOCK_VERSION, "files": {k: asdict(v) for k, v in sorted(entries.items())}},
                      indent=1)
    with atomic_path(lock_path(folder), overwrite=True) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def move_aside(path: str | os.PathLike[str]) -> Path:
    """Rename a file that failed a check to ``<name>.rejected`` (``.rejected.2`` … if taken) and drop its lock
    entry; the new path."""
    p = Path(path)
    target, n = p.with_name(p.name + ".rejected"), 1
    while target.exists():
        n += 1
        target = p.with_name(f"{p.name}.rejected.{n}")
    os.replace(p, target)
    forget(p)
    return target


def notice(text: str) -> None:
    """One line on stderr, once per process per text."""
    if text not in _NOTICED:
        _NOTICED.add(text)
        print(f"note: {text}", file=sys.stderr)


__all__ = [
    "LOCK_NAME",
    "LockEntry",
    "forget",
    "lock_path",
    "move_aside",
    "notice",
    "read_lock",
    "record",
    "recorded",
]
