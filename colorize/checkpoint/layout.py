"""Comparing a file's keys and shapes with an expected layout, and validation with clear errors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from colorize.checkpoint.common import shape_of
from colorize.checkpoint.keys import DEFAULT_OPTIONAL
from colorize.errors import CheckpointError


def _is_optional(key: str, optional: Iterable[str]) -> bool:
    return any(key == o or (o.endswith(".") and key.startswith(o)) for o in optional)


@dataclass
class KeyMatch:
    """Result of comparing an expected key->shape map with what a file holds."""

    present: list[str]
    missing: list[str]
    optional_missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def compare_keys(
    expected: Mapping[str, Any],
    got: Mapping[str, Any],
    optional: Iterable[str] = DEFAULT_OPTIONAL,
    check_shapes: bool = True,
) -> KeyMatch:
    """Present / missing / unexpected keys and shape mismatches (dtype is not compared)."""
    optional = tuple(optional)
    present, missing, opt_missing, mismatched = [], [], [], []
    for k, shp in expected.items():
        if k in got:
            present.append(k)
            if check_shapes and shape_of(got[k]) != shape_of(shp):
                mismatched.append((k, shape_of(shp), shape_of(got[k])))
        elif _is_optional(k, optional):
            opt_missing.append(k)
        else:
            missing.append(k)
    unexpected = [k for k in got if k not in expected]
    return KeyMatch(present, missing, opt_missing, unexpected, mismatched)


def _listing(title: str, items: list[str], limit: int = 10) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}): " + ", ".join(items[:limit]) + more


def validate_keys(
    expected: Mapping[str, Any],
    got: Mapping[str, Any],
    optional: Iterable[str] = DEFAULT_OPTIONAL,
    what: str = "checkpoint",
) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and wrongly shaped keys.

    ``optional`` holds exact names or prefixes ending in ``"."``; by default the CLIP towers
    and the 12 schedule buffers. fp16 and fp32 tensors are equally accepted.
    """
    m = compare_keys(expected, got, optional)
    if m.ok:
        return
    msg = (
        f"{what} does not match the expected key layout: {len(m.missing)} missing, "
        f"{len(m.unexpected)} unexpected, {len(m.mismatched)} with the wrong shape."
    )
    if m.missing:
        msg += _listing("missing", m.missing)
    if m.unexpected:
        msg += _listing("unexpected", m.unexpected)
    if m.mismatched:
        msg += _listing("wrong shape", [f"{k} expected {list(e)} got {list(g)}" for k, e, g in m.mismatched])
    raise CheckpointError(msg)


__all__ = ["KeyMatch", "compare_keys", "result_line", "validate_keys"]


def result_line(rep: Mapping[str, Any], ok_text: str, examples: int = 5) -> str:
    """The ``result:`` line of a report with ``ok``, ``missing``, ``unexpected`` and ``wrong_shape`` keys."""
    if rep["ok"]:
        return f"result:           OK - {ok_text}"
    bad = rep["missing"][:examples] + rep["unexpected"][:examples] + rep["wrong_shape"][:examples]
    return (f"result:           MISMATCH ({len(rep['missing'])} missing, {len(rep['unexpected'])} unexpected, "
            f"{len(rep['wrong_shape'])} with the wrong shape), e.g. {', '.join(bad)}")
