"""``pefs.results.stats``, the one statistics module: Student-t intervals and p-values checked against scipy (an
independent computation), Holm's correction against a hand-computed example, and no normal (z) interval anywhere
else in pefs/ or benchmarks/."""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from pefs.results.report.sections import holm_line
from pefs.results.stats import Summary, holm, holm_directions, mean_ci, paired_diff, t_quantile

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 29, 30, 31, 99, 1000])
def test_t_quantile_matches_scipy(df):
    for p in (0.975, 0.995, 0.6, 0.025):
        assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9)


@pytest.mark.parametrize("values", [[0.5, 0.7, 0.6], [1.0, 2.0, 4.0, 8.0, 3.0], [0.51, 0.52], list(range(100))])
def test_mean_ci_is_the_t_interval(values):
    s = mean_ci(values)
    sd = statistics.stdev(values)
    n = len(values)
    assert (s.n, s.method) == (n, "t") and s.mean == pytest.approx(statistics.mean(values))
    assert s.sd == pytest.approx(sd)
    assert s.half_width == pytest.approx(scipy_stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n), rel=1e-9)
    assert s.p_value == pytest.approx(scipy_stats.ttest_1samp(values, 0).pvalue, rel=1e-7)


def test_few_seeds_give_wide_intervals_and_one_seed_none():
    three = mean_ci([50.0, 52.0, 54.0])
    assert three.half_width == pytest.approx(4.302653 * 2 / math.sqrt(3), rel=1e-6)  # t(2), not the normal 1.96·
    one, none = mean_ci([0.4]), mean_ci([])
    assert (one.n, one.mean, one.sd, one.half_width, one.p_value, one.direction()) == (1, 0.4, None, None, None,
                                                                                       "one value")
    assert none.n == 0 and math.isnan(none.mean) and none.half_width is None


def test_paired_diff_and_directions():
    d = paired_diff([5.0, 5.1, 5.2], [0.0, 0.0, 0.0])
    assert d.mean == pytest.approx(5.1) and d.direction() == "above 0"
    assert paired_diff([1.0, -1.0, 0.5], [0.0, 0.0, 0.0]).direction() == "covers 0"
    assert paired_diff([0.0, 0.0], [1.0, 1.1]).direction() == "below 0"
    with pytest.raises(ValueError, match="equal lengths"):
        paired_diff([1.0], [1.0, 2.0])
    same = paired_diff([1.0, 2.0], [1.0, 2.0])  # no spread, mean 0: no evidence of a difference
    assert (same.sd, same.half_width, same.p_value, same.direction()) == (0.0, 0.0, 1.0, "covers 0")
    scaled = mean_ci([0.5, 0.7, 0.6]).scaled(100)
    assert scaled.mean == pytest.approx(60) and scaled.half_width == pytest.approx(100 * mean_ci([0.5, 0.7, 0.6])
                                                                                   .half_width)


def test_holm_on_a_hand_computed_example():
    # sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> non-decreasing: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # step-down at 5%: 0.005 <= 0.05/4 and 0.01 <= 0.05/3 rejected; 0.03 > 0.05/2 stops there
    assert [p <= 0.05 for p in holm([0.01, 0.04, 0.03, 0.005])] == [True, False, False, True]
    assert holm([None, 0.01, 0.2]) == [None, pytest.approx(0.02), pytest.approx(0.2)]  # None does not count
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def test_holm_directions_and_the_generated_line():
    strong = Summary(10, 5.0, 1.0, 0.7)  # t = 5 / (1/√10) ≈ 15.8: p ≈ 7e-8, survives any correction
    weak = mean_ci([0.5, 1.5, 0.9, 1.2])  # excludes 0 alone (p ≈ 0.013), not after Holm over 20 comparisons
    flat = [mean_ci([1.0, -1.0, 0.2]) for _ in range(18)]
    assert weak.direction() == "above 0" and weak.p_value * 19 > 0.05
    directions = holm_directions([strong, weak, *flat])
    assert directions[:2] == ["above 0", "covers 0"] and set(directions[2:]) == {"covers 0"}
    line = holm_line([("a", strong), ("b", weak), *((f"c{i}", s) for i, s in enumerate(flat)),
                      ("one seed", mean_ci([1.0]))])
    assert line.startswith("Multiple comparisons: 20 paired comparisons at 95% here, so about 1.0 would exclude 0")
    assert "2 exclude 0 unadjusted" in line and "1 still exclude 0 — above 0: a." in line
    assert "none excludes 0" in holm_line([("x", s) for s in flat])


def test_no_normal_interval_outside_the_statistics_module():
    """Every interval comes from pefs.results.stats: no 1.96 (or another normal quantile) in the code or pages
    of pefs/ and benchmarks/."""
    z = re.compile(r"(?<![\d.])1\.96(?!\d)|NormalDist|norm\.ppf")
    found = [f"{p.relative_to(ROOT)}:{i}" for folder in ("pefs", "benchmarks")
             for p in sorted((ROOT / folder).rglob("*")) if p.suffix in (".py", ".md", ".sh", ".yaml")
             and p != ROOT / "pefs" / "results" / "stats.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if z.search(line)]
    assert found == [], found


def test_summary_ends_are_the_interval_and_summaries_are_immutable():
    """A Summary's ``low`` / ``high`` are mean -/+ half-width (None without an interval), and a Summary cannot be
    changed after it is made (records and pages share one)."""
    import dataclasses

    s = mean_ci([50.0, 52.0, 54.0])
    assert (s.low, s.high) == (pytest.approx(52.0 - s.half_width), pytest.approx(52.0 + s.half_width))
    assert s.low < s.mean < s.high
    assert (mean_ci([1.0]).low, mean_ci([1.0]).high) == (None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.mean = 0.0  # type: ignore[misc]


@pytest.mark.parametrize("p, df", [(0.0, 3), (1.0, 3), (1.5, 3), (0.975, 0)])
def test_t_quantile_refuses_a_probability_outside_0_1_or_no_degrees_of_freedom(p, df):
    """t_quantile refuses p outside (0, 1) or df < 1, naming both, instead of looping or returning a number."""
    with pytest.raises(ValueError, match=rf"0 < p < 1 and df >= 1, got p={p}, df={df}"):
        t_quantile(p, df)
