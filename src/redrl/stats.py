"""Small statistics the run logs and the suites share (pure Python, no tensors)."""

from __future__ import annotations

import math
import statistics

__all__ = ["spearman"]


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation of ``x`` and ``y`` (ties take their mean rank); ``None`` for fewer
    than two points or a constant series."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for position in order[i : j + 1]:
                out[position] = (i + j) / 2
            i = j + 1
        return out

    if len(x) < 2 or len(x) != len(y):
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    if sx == 0 or sy == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(rx, ry)) / (sx * sy)
