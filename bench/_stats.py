"""Figures every benchmark prints the same way."""

from __future__ import annotations

import math


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile: the smallest sample with at least ``q`` of the samples at or below it (the
    p99 of 100 samples is the 99th, not the largest)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
