"""Small statistics helpers (no numpy on purpose: the suite needs only the project's deps)."""
from __future__ import annotations

import math
import statistics
from typing import Sequence


def median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def percentile(xs: Sequence[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of ``xs``; None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
