"""The Pareto front of (size, accuracy) points, shared by ``sstorch report`` and the sweep's
plots."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated ``(params, acc)`` points, by increasing ``params``.

    Point ``q`` dominates ``p`` when ``q.params ≤ p.params`` and ``q.acc ≥ p.acc`` with one
    inequality strict (fewer parameters for at least the accuracy). Points whose accuracy is
    NaN or missing are never on the front; equal points are both kept.
    """
    ok = [i for i, (n, a) in enumerate(points)
          if n is not None and a is not None and not math.isnan(a) and not math.isnan(n)]

    def dominated(i: int) -> bool:
        (n, a) = points[i]
        return any(points[j][0] <= n and points[j][1] >= a and points[j] != points[i]
                   for j in ok)

    return sorted((i for i in ok if not dominated(i)), key=lambda i: (points[i][0], -points[i][1]))




