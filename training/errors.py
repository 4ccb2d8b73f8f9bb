"""The training errors a user sees: each message is one line that names the problem and the fix.

``python -m training.train`` prints them as ``error: <message>`` and exits with code 2 (no traceback). They
subclass ``ValueError`` so that callers catching the older, plain ``ValueError`` keep working.
"""
from __future__ import annotations


class TrainingError(ValueError):
    """A training run cannot start or go on; the message says why and what to do."""


class TrainingConfigError(TrainingError):
    """A config value (from the file or a ``--set``) has the wrong key, type or range."""


class TrainingDataError(TrainingError):
    """The data folder cannot be used, or too many of its samples cannot be read."""


class TrainingCheckpointError(TrainingError):
    """No checkpoint of the run folder can be resumed from."""


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line (newlines folded to spaces), cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
