"""`pefs report` on stores with selection: the chosen values per cell, paired differences against the linear
probe (t-based CIs), the CSV's extra columns, and the shots × trainable parameters × accuracy 3-D plot."""

from __future__ import annotations

import csv

import pytest

from pefs.results.aggregate import aggregate, paired
from pefs.results.report.markdown import markdown, write_csv
from pefs.results.report.plots import figure_3d, points_3d_data, shots_params_accuracy_3d
from pefs.results.stats import mean_ci


def _row(strategy: str, shots: int, seed: int, acc: float, trainable: int, chosen: dict | None = None) -> dict:
    search = {"lr": "1e-3,1e-2"} if chosen else {}
    run = {"seed": seed, "accuracy": acc, **({"chosen": chosen, "search_s": 2.0} if chosen else {})}
    return {"hash": f"{strategy}-{shots}-{seed}", "status": "ok",
            "cell": {"model": "m", "strategy": strategy, "shots": shots, "seed": seed,
                     "config": {"search": search, "train": {}}},
            "record": {"accuracies": [acc], "runs": [run], "wall_s": 1.0,
                       "params": {"trainable": trainable, "percent_of_backbone": 1.0, "backbone_params": 1000}}}


@pytest.fixture
def rows():
    base = {1: [0.50, 0.52, 0.48], 5: [0.70, 0.71, 0.69]}
    out = [_row("linear", k, s, a, 10) for k, accs in base.items() for s, a in enumerate(accs)]
    # lora: +5 points on every seed at 5 shots (differs), +/-2 at 1 shot (does not)
    out += [_row("lora", 1, s, a + d, 500, {"lr": lr}) for s, (a, d, lr) in
            enumerate(zip(base[1], (0.02, -0.02, 0.0), (1e-3, 1e-2, 1e-3)))]
    out += [_row("lora", 5, s, a + 0.05 + 0.001 * s, 500, {"lr": 1e-2}) for s, a in enumerate(base[5])]
    return out


def test_paired_differences_pair_seeds_and_use_t_intervals(rows):
    pairs = {(g.strategy, g.shots): d for g, _, d in paired(aggregate(rows), "linear")}
    assert set(pairs) == {("lora", 1), ("lora", 5)}
    assert pairs["lora", 5] == pytest.approx([5.0, 5.1, 5.2])
    s = mean_ci(pairs["lora", 5])
    assert s.mean == pytest.approx(5.1) and s.half_width == pytest.approx(4.303 * 0.1 / 3 ** 0.5, rel=1e-3)
    assert mean_ci([1.0]).half_width is None


def test_report_shows_chosen_values_and_which_strategies_differ(rows):
    text = markdown(aggregate(rows), "store.jsonl", {"ok": len(rows), "failed": 0})
    assert "| m | 1 | lr=0.001 (2/3); lr=0.01 (1/3) | 2.0 |" in text
    assert "| m | 5 | lr=0.01 (3/3) | 2.0 |" in text
    assert "| lora | m | 5 | +5.1 ± 0.2 | 3 | better |" in text
    assert "| lora | m | 1 | +0.0 ± 5.0 | 3 | no (CI covers 0) |" in text


def test_csv_gets_chosen_columns_only_when_a_cell_searched(rows, tmp_path):
    with open(write_csv(aggregate(rows), tmp_path / "a.csv")) as f:
        table = list(csv.DictReader(f))
    lora5 = next(r for r in table if r["strategy"] == "lora" and r["shots"] == "5")
    assert lora5["chosen"] == "lr=0.01 (3/3)" and float(lora5["mean_search_s"]) == 2.0
    plain = [r for r in rows if r["cell"]["strategy"] == "linear"]
    with open(write_csv(aggregate(plain), tmp_path / "b.csv")) as f:
        assert "chosen" not in next(csv.reader(f))


def test_3d_plot_draws_every_cell(rows, tmp_path):
    """The 3-D plot has one point per finished cell at its shots, trainable count and mean, with its interval."""
    groups = aggregate(rows)
    points, unknown = points_3d_data(groups)
    assert unknown == 0
    assert [(p.label, p.shots, p.trainable) for p in points] == [
        ("linear · m (10)", 1, 10), ("linear · m (10)", 5, 10), ("lora · m (500)", 1, 500), ("lora · m (500)", 5, 500)]
    assert [p.mean for p in points] == [pytest.approx(50.0), pytest.approx(70.0), pytest.approx(50.0),
                                        pytest.approx(75.1)]
    path = shots_params_accuracy_3d(groups, tmp_path / "p.png", "setting")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_3d_plot_puts_trainable_parameters_on_a_numeric_log_axis(rows):
    """Trainable parameters are a numeric log10 axis (decade ticks, points at log10 of their count), not one
    category per row: 10 and 500 parameters sit 1.70 decades apart."""
    fig = figure_3d(aggregate(rows), "setting")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["10", "100", "1k"]
    assert list(ax.get_yticks()) == [1.0, 2.0, 3.0]
    ys = {c.get_gid().split(" · ")[0]: c._offsets3d[1][0] for c in ax.collections if c.get_gid()}
    assert ys["linear"] == pytest.approx(1.0) and ys["lora"] == pytest.approx(2.69897, abs=1e-5)
