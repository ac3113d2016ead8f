"""Summary statistics of per-seed / per-episode accuracies (stdlib only, so reports need no torch)."""

from __future__ import annotations

import math
import statistics


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and 95% confidence half-width 1.96·std/√n (std with ddof=1; 0 for a single value)."""
    v = [float(x) for x in values]
    if not v:
        return float("nan"), float("nan")
    if len(v) == 1:
        return v[0], 0.0
    return statistics.fmean(v), 1.96 * statistics.stdev(v) / math.sqrt(len(v))
