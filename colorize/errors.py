"""The project's user-facing errors, and turning them into one clear message and an exit code.

Every error here carries a message written for the user: what is wrong and how to fix it. They are raised
before expensive work starts (loading, sampling) wherever the problem can be seen that early.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Iterator


class InputError(ValueError):
    """A user input (image, size, tensor, setting) that cannot be used, with the fix in the message."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message says why and what to do."""


class WeightsMissingError(FileNotFoundError):
    """A weights file is not on disk and could not (or may not) be downloaded."""


class LineExtractorWeightsError(CheckpointError):
    """A file cannot be used as line-extractor weights; the message says why and what to use."""


class SamWeightsError(CheckpointError):
    """A SAM weights file cannot be used; the message says why and what to use instead."""


class NonFiniteResultError(ArithmeticError):
    """A result holds NaN or infinite values (numerical overflow); the message names the usual fixes."""


#: Exceptions whose message is written for the user (no traceback needed).
USER_ERRORS: tuple[type[BaseException], ...] = (InputError, CheckpointError, WeightsMissingError, FileExistsError,
                                                NonFiniteResultError)


@dataclass
class _Status:
    code: int = 0


@contextlib.contextmanager
def user_errors() -> Iterator[_Status]:
    """Print user-facing errors as ``error: <message>`` and set exit code 2 (130 on Ctrl-C)."""
    status = _Status()
    try:
        yield status
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        status.code = 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        status.code = 130


__all__ = [
    "USER_ERRORS",
    "CheckpointError",
    "InputError",
    "LineExtractorWeightsError",
    "NonFiniteResultError",
    "SamWeightsError",
    "WeightsMissingError",
    "user_errors",
]


class SizeLimitError(InputError):
    """An output size or input image above a configured limit; the message names the size, the limit and how to
    raise it (``colorize.preprocess.output_limits``, ``colorize.preprocess.input_pixel_limit``)."""
