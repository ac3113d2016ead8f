"""The one statistics module: every interval pefs and its benchmarks print is computed here (stdlib only, so
reports need no torch).

Intervals are Student-t 95% intervals of a mean, ``t(n−1) · sd / √n`` with the sample standard deviation
(ddof=1): results come from 3-10 seeds, where the normal quantile would give intervals up to 2.2x too narrow
(n=3). The t quantiles and p-values are computed from the regularized incomplete beta function, so any number of
degrees of freedom is exact (``tests/test_stats.py`` checks them against scipy). Many comparisons on one page are
corrected with Holm's step-down method (:func:`holm`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

#: the confidence level of every interval
LEVEL = 0.95
#: what records store as ``ci_method``
METHOD = "t"


@dataclass(frozen=True)
class Summary:
    """``n`` values summarised: their mean, sample standard deviation (ddof=1) and the half-width of the t 95%
    interval of the mean. ``sd`` and ``half_width`` are None below two values (one value has no interval: 0
    would claim certainty); ``mean`` is nan for none."""

    n: int
    mean: float
    sd: float | None
    half_width: float | None
    method: str = METHOD

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    @property
    def p_value(self) -> float | None:
        """Two-sided p-value of the one-sample t test of mean 0 (None below two values). Zero spread gives 1.0
        for a zero mean and 0.0 otherwise."""
        if self.sd is None:
            return None
        if self.sd == 0:
            return 1.0 if self.mean == 0 else 0.0
        t = abs(self.mean) / (self.sd / math.sqrt(self.n))
        return t_two_sided_p(t, self.n - 1)

    def direction(self) -> str:
        """"above 0" / "below 0" when the whole interval lies on that side of 0, "covers 0" otherwise, "one value"
        (no interval) below two values."""
        if self.half_width is None:
            return "one value"
        if self.mean - self.half_width > 0:
            return "above 0"
        if self.mean + self.half_width < 0:
            return "below 0"
        return "covers 0"

    def scaled(self, factor: float) -> Summary:
        """The same summary of every value times ``factor`` (accuracies as fractions -> percent)."""
        f = abs(factor)
        return Summary(self.n, self.mean * factor, None if self.sd is None else self.sd * f,
                       None if self.half_width is None else self.half_width * f, self.method)


def mean_ci(values: Sequence[float]) -> Summary:
    """The mean of ``values`` and its Student-t 95% interval (:class:`Summary`)."""
    v = [float(x) for x in values]
    if not v:
        return Summary(0, float("nan"), None, None)
    if len(v) == 1:
        return Summary(1, v[0], None, None)
    sd = statistics.stdev(v)
    return Summary(len(v), statistics.fmean(v), sd, t_quantile(0.5 + LEVEL / 2, len(v) - 1) * sd / math.sqrt(len(v)))


def paired_diff(a: Sequence[float], b: Sequence[float]) -> Summary:
    """``a − b`` paired element by element (the same seed on both sides), summarised by :func:`mean_ci`."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    return mean_ci([float(x) - float(y) for x, y in zip(a, b)])


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the input order (None stays None and does not count): the i-th
    smallest of m p-values is multiplied by m − i (i from 0), made non-decreasing, capped at 1. A comparison is
    significant at family-wise level α when its adjusted p-value is at most α."""
    known = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m, out, running = len(known), list(p_values), 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def holm_directions(summaries: Sequence[Summary], alpha: float = 1 - LEVEL) -> list[str]:
    """Each summary's :meth:`Summary.direction` after Holm's correction over all of them: "above 0" / "below 0"
    when its Holm-adjusted p-value is at most ``alpha`` (family-wise error ``alpha`` over the comparisons), else
    "covers 0"; "one value" where there is no interval (it does not count as a comparison)."""
    adjusted = holm([s.p_value for s in summaries])
    return [s.direction() if p is None else ("above 0" if s.mean > 0 else "below 0") if p <= alpha else "covers 0"
            for s, p in zip(summaries, adjusted)]


# ----------------------------------------------------------------------------------- the t distribution


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    return _betainc(df / 2, 0.5, df / (df + t * t))


def t_cdf(t: float, df: int) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom."""
    tail = t_two_sided_p(t, df) / 2
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`, to 1e-12)."""
    if not 0 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df >= 1, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2 * hi
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, Numerical Recipes §6.4)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h
