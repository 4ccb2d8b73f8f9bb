"""Text edits of reference tokens: the edit record, input parsing and text-direction lookup (thesis §5.8).

An :class:`Edit` is one entry of the official prompt queue (target, anchor, control, target scale,
enhance, four thresholds) plus the strength ratio ``r`` of Eq. 5.11. Text reaches the maths only through
an injected ``encode_text(list[str]) -> (n, 1, d)`` callable (in the pipeline,
``colorize.models.clip.ReferenceEncoder.encode_text``), so everything here stays a pure tensor function.

Deliberate fixes of the official quirks (``backend/functool.py:191-245`` at commit ``c9bd9fb``):

* booleans given as text are parsed (``"False"``, ``"0"``, ``"no"``, ``"off"`` are false); the official
  ``bool("False")`` made every queued entry "enhanced";
* the control word ``"everything"`` (any case) really selects the whole image: each patch token gets the
  uniform weight ``ω = d`` (the global shift, no control map); officially it never fired;
* empty prompts are never encoded as the literal text ``"none"``: an empty (or ``"none"``) anchor means
  "no anchor", an empty control means ``"everything"``, and an empty target is an error.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: ``encode_text(prompts) -> (n, 1, d)`` unit-norm text directions (official ``FrozenOpenCLIPEmbedder``).
TextEncoder = Callable[[list[str]], Tensor]

#: Control word that selects every patch token (no control map).
EVERYTHING = "everything"
#: Default thresholds ts0..ts3 of Eq. 5.11 (thesis §5.8.2; app defaults).
DEFAULT_THRESHOLDS: tuple[float, float, float, float] = (0.5, 0.55, 0.65, 0.95)
#: Default strength ratio ``r`` of Eq. 5.11.
DEFAULT_RATIO = 2.0

_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f", ""}
_NO_ANCHOR = {"", "none"}


def parse_bool(value: Any, name: str = "value") -> bool:
    """``bool``/``0``/``1`` or text (``"true"``/``"False"``/``"yes"``/``"off"``…) → bool; anything else raises.

    Unlike Python's ``bool("False")`` (the official parsing), ``"False"`` is false.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be a boolean (true/false, yes/no, on/off, 1/0); got {value!r}")


def _finite(value: Any, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return x


def check_thresholds(thresholds: Sequence[Any]) -> tuple[float, float, float, float]:
    """Validate ts0..ts3: four finite numbers in [0, 1], non-decreasing (an equal pair is an empty interval)."""
    ts = tuple(thresholds) if not isinstance(thresholds, (str, bytes)) else ()
    if len(ts) != 4:
        raise ValueError(f"thresholds must be four numbers ts0 <= ts1 <= ts2 <= ts3; got {thresholds!r}")
    out = tuple(_finite(t, f"threshold ts{i}") for i, t in enumerate(ts))
    if any(not 0.0 <= t <= 1.0 for t in out):
        raise ValueError(f"thresholds must lie in [0, 1] (they compare with a min-max normalised map); got {out}")
    if any(a > b for a, b in itertools.pairwise(out)):
        raise ValueError(f"thresholds must be non-decreasing (ts0 <= ts1 <= ts2 <= ts3); got {out}")
    return out  # type: ignore[return-value]


def normalize_control(control: str | None) -> str:
    """Control prompt → stripped text; ``None``, ``""`` and ``"everything"`` (any case) → :data:`EVERYTHING`."""
    if control is None:
        return EVERYTHING
    if not isinstance(control, str):
        raise TypeError(f"control must be a prompt string; got {control!r}")
    control = control.strip()
    return EVERYTHING if control.lower() in ("", EVERYTHING) else control


@dataclass(frozen=True)
class Edit:
    """One text edit (thesis Alg. 1/2 entry; official queued prompt).

    target:       target prompt ``e`` (required, non-empty).
    target_scale: desired projection length of the CLS token on ``e`` (any finite value; the app's slider
                  is 0–15, larger or negative values extrapolate).
    anchor:       anchor prompt ``a`` or ``None`` (``""`` and ``"none"`` also mean no anchor).
    control:      control prompt ``c`` that locates the region (local only); ``""`` → ``"everything"``.
    enhance:      enhance flag (β of Eq. 5.13; Eq. 5.6/5.8); text such as ``"False"`` is parsed properly.
    thresholds:   ts0..ts3 of Eq. 5.11 (local only).
    ratio:        strength ratio ``r`` of Eq. 5.11 for the most related region (local only).
    """

    target: str
    target_scale: float
    anchor: str | None = None
    control: str = EVERYTHING
    enhance: bool = False
    thresholds: tuple[float, float, float, float] = DEFAULT_THRESHOLDS
    ratio: float = DEFAULT_RATIO

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)
        if not isinstance(self.target, str) or not self.target.strip():
            raise ValueError(f"an edit needs a non-empty target prompt; got {self.target!r}")
        put("target", self.target.strip())
        if self.anchor is not None and not isinstance(self.anchor, str):
            raise TypeError(f"anchor must be a prompt string or None; got {self.anchor!r}")
        anchor = (self.anchor or "").strip()
        put("anchor", None if anchor.lower() in _NO_ANCHOR else anchor)
        put("control", normalize_control(self.control))
        put("target_scale", _finite(self.target_scale, "target_scale"))
        put("enhance", parse_bool(self.enhance, "enhance"))
        put("thresholds", check_thresholds(self.thresholds))
        put("ratio", _finite(self.ratio, "ratio"))

    @property
    def selects_everything(self) -> bool:
        """True when the control is ``"everything"`` (uniform weight, no control map)."""
        return self.control == EVERYTHING

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> Edit:
        """Build from a mapping with keys ``target``, ``target_scale`` and optionally ``anchor``, ``control``,
        ``enhance``, ``thresholds``, ``ratio`` (unknown keys raise)."""
        known = {"target", "target_scale", "anchor", "control", "enhance", "thresholds", "ratio"}
        extra = set(entry) - known
        if extra:
            raise ValueError(f"unknown edit field(s) {sorted(extra)}; expected some of {sorted(known)}")
        missing = {"target", "target_scale"} - set(entry)
        if missing:
            raise ValueError(f"edit is missing {sorted(missing)}")
        return cls(**dict(entry))


def project(x: Tensor, direction: Tensor) -> Tensor:
    """Projection length ``x · u`` on a unit direction ``u`` (d,): (..., d) → (..., 1)."""
    return x @ direction.unsqueeze(-1)


def encode_prompts(encode_text: TextEncoder, prompts: Iterable[str], like: Tensor) -> dict[str, Tensor]:
    """Encode each distinct prompt once → ``{prompt: (d,) unit vector}`` in float32 on ``like``'s device.

    The vectors are re-normalised (a no-op for CLIP's unit EOT features) so that the projections and
    the anchor removal of Eq. 5.8 stay exact for any injected encoder.
    """
    names = list(dict.fromkeys(prompts))
    if not names:
        return {}
    out = encode_text(names)
    if not isinstance(out, Tensor):
        raise TypeError(f"encode_text must return a tensor (n, 1, d); got {type(out).__name__}")
    if out.ndim == 3 and out.shape[1] == 1:
        out = out[:, 0]
    d = like.shape[-1]
    if out.ndim != 2 or out.shape[0] != len(names) or out.shape[1] != d:
        raise ValueError(
            f"encode_text({len(names)} prompts) returned shape {tuple(out.shape)}; expected ({len(names)}, 1, {d}) "
            f"(the text width must equal the image-token width {d})"
        )
    vecs = F.normalize(out.to(device=like.device, dtype=torch.float32), dim=-1)
    return dict(zip(names, vecs))


__all__ = [
    "DEFAULT_RATIO",
    "DEFAULT_THRESHOLDS",
    "EVERYTHING",
    "Edit",
    "TextEncoder",
    "check_thresholds",
    "encode_prompts",
    "normalize_control",
    "parse_bool",
    "project",
]
