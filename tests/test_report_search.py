"""`pefs report` on selection and baselines: each searched cell's whole search table (Markdown and search.csv),
`--baseline` (a strategy of the store, or a clear error naming those present), cells left unpaired and why, and
the 3-D plot's artists carrying the store's numbers (non-UTF-8 names escaped)."""

from __future__ import annotations

import csv
import re

import pytest

from pefs.cli.main import main
from pefs.errors import PefsError
from pefs.results import store
from pefs.results.aggregate import aggregate
from pefs.results.report.markdown import build_report, markdown
from pefs.results.report.plots import figure_3d

RATES = (1e-3, 1e-2, 1e-1)


def _row(strategy: str, shots: int, seed: int, acc: float, model: str = "m", val: tuple | None = None,
         epochs: int = 10) -> dict:
    """One stored cell; ``val`` = validation accuracy per rate in RATES (None: that setting was skipped)."""
    run: dict = {"seed": seed, "accuracy": acc}
    if val is not None:
        table = [{"setting": {"lr": lr}, "val_accuracy": v, "seconds": 0.5 if v is not None else 0.0,
                  "status": "ok" if v is not None else "skipped (budget)"} for lr, v in zip(RATES, val)]
        best = max((e for e in table if e["status"] == "ok"), key=lambda e: e["val_accuracy"])
        run.update(chosen=best["setting"], search=table, search_s=1.5, val_images=50)
    config = {"search": {"lr": "1e-3,1e-2,1e-1"} if val else {}, "train": {"epochs": epochs}}
    cell = {"model": model, "strategy": strategy, "options": {}, "shots": shots, "seed": seed, "ways": None,
            "config": config}
    record = {"accuracies": [acc], "runs": [run], "wall_s": 1.0, "config": config,
              "params": {"trainable": 10 if strategy == "linear" else 500, "percent_of_backbone": 1.0,
                         "backbone_params": 1000}}
    return store.make_row(f"{model}-{strategy}-{shots}-{seed}-{epochs}", cell, "ok", record, None)


def _store(path, rows):
    for r in rows:
        store.append(path, r)
    return path


@pytest.fixture
def searched(tmp_path):
    """linear (no search) at 1 and 5 shots, seeds 0-2; lora searched lr at both; lora at 5 shots lost seed 2."""
    rows = [_row("linear", k, s, 0.5 + 0.01 * s + 0.1 * (k == 5)) for k in (1, 5) for s in range(3)]
    rows += [_row("lora", 1, s, 0.55 + 0.01 * s, val=(0.40 + 0.1 * s, 0.60, None)) for s in range(3)]
    rows += [_row("lora", 5, s, 0.70, val=(0.5, 0.6, 0.7)) for s in range(2)]
    return _store(tmp_path / "results.jsonl", rows)


def test_each_searched_cell_gets_its_whole_search_table(searched, tmp_path):
    files, problems = build_report(searched, tmp_path / "rep", ("md", "csv"))
    md = (tmp_path / "rep" / "report.md").read_text()
    section = md.split("#### Search: lora · m · 1-shot\n")[1].split("####")[0]
    # lr=0.001: validation 40, 50, 60 % -> mean 50.0, chosen by seed 2 only; lr=0.1 was skipped on every seed
    assert "| lr=0.001 | 50.0 | 3/3 | 1 | 0.50 |" in section
    assert "| lr=0.01 | 60.0 | 3/3 | 2 | 0.50 |" in section
    assert "| lr=0.1 | – | 0/3 (skipped (budget) ×3) | 0 | – |" in section
    assert "| lr=0.1 | 70.0 | 2/2 | 2 | 0.50 |" in md.split("#### Search: lora · m · 5-shot\n")[1]
    assert "#### Search: linear" not in md  # cells that did not search get no search table
    with open(tmp_path / "rep" / "search.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert tmp_path / "rep" / "search.csv" in files and len(table) == 6  # 2 cells x 3 settings
    one = next(r for r in table if r["shots"] == "1" and r["searched"] == "lr=0.001")
    assert float(one["val_accuracy_mean_pct"]) == pytest.approx(50.0) and one["chosen"] == "1"
    skipped = next(r for r in table if r["shots"] == "1" and r["searched"] == "lr=0.1")
    assert skipped["val_accuracy_mean_pct"] == "" and skipped["tasks_ran"] == "0" and skipped["tasks"] == "3"


def test_store_without_search_has_no_search_parts(tmp_path):
    path = _store(tmp_path / "results.jsonl", [_row("linear", 1, s, 0.5) for s in range(2)])
    files, _ = build_report(path, tmp_path / "rep", ("md", "csv"))
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Search:" not in md and "Chosen on validation" not in md
    assert [f.name for f in files] == ["report.md", "results.csv"]


def test_cells_with_other_seeds_are_listed_unpaired(searched, tmp_path):
    build_report(searched, tmp_path / "rep", ("md",))
    md = (tmp_path / "rep" / "report.md").read_text()
    paired = md.split("### Paired differences against linear")[1]
    assert "| lora | m | 1 | +5.0 ± 0.0 | 3 | better |" in paired
    assert "| lora | m | 5 |" not in paired.split("Not paired")[0]  # seeds 0,1 against 0,1,2: not paired
    assert "| lora | m | 5 | finished seeds 0-1; the baseline's 0-2 |" in paired.split("Not paired")[1]


def test_baseline_flag_pairs_against_another_strategy(searched, tmp_path, capsys):
    build_report(searched, tmp_path / "rep", ("md",), baseline="lora")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "### Paired differences against lora" in md and "### Paired differences against linear" not in md
    assert "| linear | m | 1 | -5.0 ± 0.0 | 3 | worse |" in md
    assert main(["report", "--store", str(searched), "--out", str(tmp_path / "cli"), "--format", "md",
                 "--baseline", "lora"]) == 0
    assert "against lora" in (tmp_path / "cli" / "report.md").read_text()


def test_a_baseline_not_in_the_store_is_refused_naming_those_present(searched, tmp_path, capsys):
    with pytest.raises(PefsError, match=r"baseline 'ful' is not in the store; strategies present: linear; lora"):
        build_report(searched, tmp_path / "rep", ("md",), baseline="ful")
    assert not (tmp_path / "rep").exists()  # refused before anything was written
    assert main(["report", "--store", str(searched), "--format", "md", "--baseline", "ful"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "strategies present: linear; lora" in err and "Traceback" not in err
    with pytest.raises(PefsError, match="--baseline is empty"):
        build_report(searched, tmp_path / "rep", ("md",), baseline=" ")


def test_several_variants_of_the_baseline_need_one_named(tmp_path):
    rows = [_row("linear", 1, s, 0.5, epochs=e) for s in range(2) for e in (10, 30)]
    rows += [_row("lora", 1, s, 0.6) for s in range(2)]
    path = _store(tmp_path / "results.jsonl", rows)
    _, problems = build_report(path, tmp_path / "rep", ("md",))  # default: warned, no paired table
    assert any("2 variants of linear" in p and "--baseline" in p for p in problems)
    assert "Paired differences" not in (tmp_path / "rep" / "report.md").read_text()
    with pytest.raises(PefsError, match=r"matches 2 strategies of the store: linear \(epochs=10\); linear "
                                        r"\(epochs=30\)"):
        build_report(path, tmp_path / "rep", ("md",), baseline="linear")
    build_report(path, tmp_path / "rep", ("md",), baseline="linear (epochs=30)")
    assert "| lora | m | 1 | +10.0 ± 0.0 | 2 | better |" in (tmp_path / "rep" / "report.md").read_text()


def test_3d_plot_artists_carry_the_store_numbers_and_escaped_names(tmp_path):
    name = "caf\udce9"  # a folder name that is not UTF-8, read by Python as a lone surrogate
    rows = [_row("linear", k, s, 0.40 + 0.1 * k + 0.01 * s, model=name) for k in (1, 2) for s in range(2)]
    rows += [_row("lora", k, s, 0.50 + 0.1 * k, model=name) for k in (1, 2) for s in range(2)]
    path = _store(tmp_path / "results.jsonl", rows)
    groups = aggregate(list(store.load(path).rows.values()))
    fig = figure_3d(groups, "setting")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]
    points = {c.get_gid() for c in ax.collections if c.get_gid()}
    assert points == {"linear · caf\\udce9 (10) · 1-shot: 50.50% ± 6.35",
                      "linear · caf\\udce9 (10) · 2-shot: 60.50% ± 6.35",
                      "lora · caf\\udce9 (500) · 1-shot: 60.00% ± 0.00",
                      "lora · caf\\udce9 (500) · 2-shot: 70.00% ± 0.00"}
    low, high = ax.get_zlim()
    assert low <= 50.5 - 6.35 and high >= 70.0  # every point and its interval inside the z axis
    files, _ = build_report(path, tmp_path / "rep")
    png = tmp_path / "rep" / "shots_params_accuracy_3d.png"
    assert png in files and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < png.stat().st_size < 2e6
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "[shots_params_accuracy_3d.png](shots_params_accuracy_3d.png)" in md


def test_one_shot_count_gets_no_3d_plot_and_no_link(tmp_path):
    path = _store(tmp_path / "results.jsonl", [_row(s, 1, 0, 0.5) for s in ("linear", "lora")])
    files, _ = build_report(path, tmp_path / "rep")
    assert not (tmp_path / "rep" / "shots_params_accuracy_3d.png").exists()
    md = markdown(aggregate(list(store.load(path).rows.values())), "s", {"ok": 2, "failed": 0})
    links = re.findall(r"\]\(([^)]+\.png)\)", md)
    assert links and sorted(links) == sorted(f.name for f in files if f.suffix == ".png")
