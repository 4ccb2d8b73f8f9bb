"""Turning the project's user-facing errors into one clear message and an exit code."""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Iterator


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is written for the user (no traceback needed)."""
    from colorize.checkpoint import CheckpointError
    from colorize.preprocess import InputError
    from colorize.weights import WeightsMissingError

    return (InputError, CheckpointError, WeightsMissingError, FileExistsError)


@dataclass
class _Status:
    code: int = 0


@contextlib.contextmanager
def user_errors() -> Iterator[_Status]:
    """Print user-facing errors as ``error: <message>`` and set exit code 2."""
    status = _Status()
    try:
        yield status
    except user_error_types() as e:
        print(f"error: {e}", file=sys.stderr)
        status.code = 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        status.code = 130
