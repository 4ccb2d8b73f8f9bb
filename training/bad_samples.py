"""Unreadable samples: skipped with a warning, replaced deterministically, counted, and fatal past a limit.

A sample whose colour image, sketch or mask cannot be read or decoded (a truncated PNG/JPEG, random bytes, a bad
zip member) is *skipped*: :class:`training.batches.TripletDataset` loads the next readable record in dataset
order instead (index ``i`` → ``i+1``, ``i+2``, … wrapping around, known-bad ones passed over without reading).
The augmentation and noise still come from the item's (step, slot) keys, so a replaced sample is the same
whether its bad file was found in this run or was already known from the checkpoint of an earlier one.

Each item reports the bad records it passed over with the sample (:data:`REPORT_KEY`), so a discovery inside a
data-loader worker reaches the main process with its batch. The trainer keeps the known ones in a
:class:`BadSampleLedger`: it prints one ``warning:`` line per new file, logs a ``{"event": "skipped_sample"}``
line, puts ``skipped_samples`` (how many are known) on every step line of ``log.jsonl``, saves the list in the
training checkpoint (``bad_samples``) and stops the run with a :class:`TrainingDataError` once more than
:func:`allowance` of them are known.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from training.errors import TrainingDataError, one_line

#: The sample / batch key under which items report the unreadable records they passed over.
REPORT_KEY = "unreadable"
#: Set (to True) on an item / batch that found more unreadable records than allowed and holds no sample.
FAILED_KEY = "unreadable_over_limit"


@dataclass(frozen=True)
class BadSample:
    """One unreadable record: its :attr:`training.data.Record.key`, the file that failed and why."""

    key: str
    file: str
    reason: str

    def warning(self) -> str:
        return f"skipping unreadable sample {self.file} ({self.reason}); the next readable sample takes its place"


def read_failure(exc: BaseException) -> str:
    """The reason a read failed, on one line (memory addresses of in-memory buffers left out)."""
    text = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "<zip member>", str(exc))
    return one_line(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, 200)


def allowance(num_items: int, max_fraction: float, min_allowance: int) -> int:
    """How many unreadable records a run tolerates: ``max(min_allowance, ⌊max_fraction·N⌋)``, at most ``N-1``."""
    return max(0, min(num_items - 1, max(min_allowance, math.floor(max_fraction * num_items))))


class BadSampleLedger:
    """The unreadable records known to the run, in the order they were found (checkpointed)."""

    def __init__(self, num_items: int, max_fraction: float, min_allowance: int) -> None:
        self.num_items, self.max_fraction, self.min_allowance = num_items, max_fraction, min_allowance
        self.limit = allowance(num_items, max_fraction, min_allowance)
        self.known: dict[str, BadSample] = {}

    def __len__(self) -> int:
        return len(self.known)

    def add(self, reports: Iterable[BadSample]) -> list[BadSample]:
        """Remember ``reports``; returns the ones that were not known yet."""
        new = []
        for bad in reports:
            if bad.key not in self.known:
                self.known[bad.key] = bad
                new.append(bad)
        return new

    def unknown(self, reports: Iterable[BadSample]) -> list[BadSample]:
        """``reports`` not known yet (each key once)."""
        seen: dict[str, BadSample] = {}
        for bad in reports:
            if bad.key not in self.known:
                seen.setdefault(bad.key, bad)
        return list(seen.values())

    def check(self, force: bool = False) -> None:
        """Raise once more records are unreadable than allowed (``force``: a data loader gave up)."""
        if len(self.known) <= self.limit and not force:
            return
        first = "; ".join(f"{b.file} ({b.reason})" for b in list(self.known.values())[:3])
        raise TrainingDataError(
            f"{len(self.known)} of {self.num_items} samples cannot be read, more than the {self.limit} allowed "
            f"(data.max_bad_fraction={self.max_fraction}, data.min_bad_allowance={self.min_allowance}); first: "
            f"{first}; replace or remove these files, or raise data.max_bad_fraction")

    def state_dict(self) -> list[dict[str, str]]:
        return [asdict(b) for b in self.known.values()]

    def load_state_dict(self, state: Iterable[dict[str, Any]], keys: set[str]) -> None:
        """Restore the list of a checkpoint, keeping the records still in the dataset (``keys``)."""
        self.known = {}
        self.add(BadSample(str(s["key"]), str(s["file"]), str(s["reason"])) for s in state if s["key"] in keys)


def split_reports(batch: dict[str, Any]) -> tuple[dict[str, Any], list[BadSample], bool]:
    """``(batch without the report keys, the unreadable records it reports, whether it gave up)``."""
    clean = {k: v for k, v in batch.items() if k not in (REPORT_KEY, FAILED_KEY)}
    return clean, list(batch.get(REPORT_KEY, ())), bool(batch.get(FAILED_KEY, False))
