"""Means and spreads over seeds, shared by the sweep's tables, claims and plots."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def fmean(values: Iterable[float]) -> float:
    """``Σ v / n`` with an exactly rounded sum (``math.fsum``)."""
    v = list(values)
    return math.fsum(v) / len(v)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation ``sqrt(Σ (v - mean)² / (n - 1))`` (0 for one value;
    NaN propagates)."""
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))
