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


#: Student's t 97.5% quantiles for 1..30 degrees of freedom (beyond 30 the normal 1.96 is within 4%)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_ci95_t(values: list[float]) -> tuple[float, float | None]:
    """Mean and t-based 95% half-width t(n-1)·std/√n (for few seeds, where 1.96 is too narrow); None for one
    value."""
    v = [float(x) for x in values]
    if len(v) < 2:
        return (v[0] if v else float("nan")), None
    t = _T975[len(v) - 2] if len(v) - 1 <= len(_T975) else 1.96
    return statistics.fmean(v), t * statistics.stdev(v) / math.sqrt(len(v))
