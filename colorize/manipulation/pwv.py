"""The position weight vectors of local manipulation: ``m = F(v·c)`` (Eq. 5.10) and ``ω(m, d)`` (Eq. 5.11)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from colorize.manipulation.edits import (
    DEFAULT_RATIO,
    DEFAULT_THRESHOLDS,
    check_thresholds,
)


def minmax_normalize(x: Tensor, dim: int | Sequence[int] = 1) -> Tensor:
    """``(x − min) / (max − min)`` over ``dim`` per sample (the ``F`` of Eq. 5.10).

    A constant map (max = min, where the official code divides by zero) normalises to 1 everywhere,
    i.e. "no localisation": every token is treated like the ``"everything"`` control.
    """
    lo = x.amin(dim=dim, keepdim=True)
    rng = x.amax(dim=dim, keepdim=True) - lo
    safe = torch.where(rng > 0, rng, torch.ones_like(rng))
    return torch.where(rng > 0, (x - lo) / safe, torch.ones_like(x))


def _ramp(m: Tensor, lo: float, hi: float) -> Tensor:
    """``(m − lo)/(hi − lo)``; an empty interval (lo = hi) is never selected, so it returns zeros."""
    return (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)


def pwv_from_normalized(
    m: Tensor, dscale: Tensor | float, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, ratio: float = DEFAULT_RATIO
) -> Tensor:
    """Eq. 5.11 on an already normalised map ``m`` (values in [0, 1]); ``dscale`` broadcasts against ``m``.

    Follows the official ``compute_pwv`` (``refnet/sampling/manipulation.py:7-28``), which differs from the thesis formula in
    the second interval: ``−d + d·(m−ts0)/(ts1−ts0)`` instead of ``−r·d + r·d·(m−ts0)/(ts1−ts0)``. So

    * ``m ≤ ts0``: ``−r·d``;  ``ts0 < m ≤ ts1``: ``−d → 0``;  ``ts1 < m ≤ ts2``: ``0 → d/2``;
      ``ts2 < m ≤ ts3``: ``d/2 → d``;  ``m > ts3``: ``d``.
    * The function is continuous except at ``ts0``, where it jumps from ``−r·d`` to ``−d`` (no jump when r = 1).
      ``r`` only scales the most related region ``m ≤ ts0``.
    """
    t0, t1, t2, t3 = check_thresholds(thresholds)
    d = torch.as_tensor(dscale, dtype=m.dtype, device=m.device)
    return torch.where(
        m <= t0,
        -ratio * d,
        torch.where(
            m <= t1,
            -d + d * _ramp(m, t0, t1),
            torch.where(
                m <= t2,
                0.5 * d * _ramp(m, t1, t2),
                torch.where(m <= t3, 0.5 * d + 0.5 * d * _ramp(m, t2, t3), d),
            ),
        ),
    )


def compute_pwv(
    scores: Tensor,
    dscale: Tensor | float,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    ratio: float = DEFAULT_RATIO,
    dim: int = 1,
) -> Tensor:
    """PWV ``ω`` (Eq. 5.11) from raw correlation scores ``v·c`` (official ``compute_pwv``).

    scores: (b, n, 1) projections of the n patch tokens on the control direction (min-max normalised
            over ``dim`` per sample, Eq. 5.10); dscale: the strength gap ``d`` (Eq. 5.12), a float or a
            tensor broadcasting to ``scores`` (e.g. (b, 1, 1)). Returns ``ω`` with the broadcast shape.
    """
    return pwv_from_normalized(minmax_normalize(scores, dim), dscale, thresholds, ratio)


__all__ = ["compute_pwv", "minmax_normalize", "pwv_from_normalized"]
