"""``pefs report``'s tables in the papers' form (VTAB-1k, K-shot, episodic) from store rows written by the real
record and store writers: the numbers in the cells, group and overall means, incomplete marking, quoted rows."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
from scipy.stats import t as student_t  # an independent t quantile

from pefs.cli.main import main
from pefs.errors import PefsError
from pefs.results import store
from pefs.results.benchmark_tasks import GROUPS, TASKS
from pefs.results.records import Accuracy, DatasetInfo, Machine, ProtocolRun, RunRecord, TaskResult
from pefs.results.report.markdown import build_report
from pefs.results.report.published import PUBLISHED, quoted_rows
from pefs.results.stats import mean_ci

SEEDS = (0, 1, 2)


def record(strategy: str, shots: int, accs: list[float], data: str, ways: int | None = None,
           benchmark: dict | None = None, episodes: int | None = None, support: int = 10) -> dict:
    """A tune record as :class:`RunRecord` writes it: one task per accuracy (seeds, or episodes)."""
    config = {"model": "vit_test", "strategy": strategy, "shots": shots, "data": data, "ways": ways,
              "queries": 15 if ways else None, "episodes": episodes, "train": {"epochs": 5}}
    runs = [TaskResult(seed=i, accuracy=a, support=support, query=50) for i, a in enumerate(accs)]
    rec = RunRecord(config=config, resolved=config, config_hash=f"{strategy}-{data}-{shots}", schema=1,
                    protocol="episodic" if ways else "kshot", model="vit_test", strategy=strategy, head="linear",
                    shots=shots, ways=ways, dataset=DatasetInfo((benchmark or {}).get("name", "toy"), 10),
                    backbone={"params": 1000, "pretrained": "offline"}, accuracy=Accuracy.of(mean_ci(accs), accs),
                    run=ProtocolRun(runs=runs, wall_s=1.0), params={"trainable": 10, "backbone_params": 1000,
                                                                    "percent_of_backbone": 1.0},
                    cached=False, frozen_level=None, peak_memory_mb=1.0,
                    machine=Machine("3.11", "2.0", False, 2, "fp32"), fingerprints={"data": f"{data}:abc"},
                    key="k", finished_at="now", extra={"benchmark": benchmark} if benchmark else {})
    return rec.to_dict()


def append(path, strategy, shots, seed, accs, data, **kw) -> None:
    rec = record(strategy, shots, accs, data, **kw)
    cell = {"model": "vit_test", "strategy": strategy, "options": {}, "shots": shots, "seed": seed,
            "ways": kw.get("ways"), "data": data, "config": rec["config"]}
    store.append(path, store.make_row(f"{strategy}-{data}-{shots}-{seed}-{kw.get('ways')}", cell, "ok", rec))


def vtab_acc(strategy: str, i: int, seed: int) -> float:
    """A made-up accuracy per strategy, task index and seed (seeds spread it, so cells have an interval)."""
    return 0.40 + 0.02 * i + 0.05 * (strategy == "lora") + [0.0, 0.012, 0.031][seed]


def vtab_store(tmp_path, skip: frozenset[str] = frozenset(), extra: tuple[str, ...] = ()):
    path = tmp_path / "vtab.jsonl"
    for strategy in ("linear", "lora"):
        for i, task in enumerate([*TASKS, *extra]):
            if task in skip:
                continue
            bench = {"benchmark": "vtab1k", "name": task, "roles": {"train": "train800val200", "test": "test"},
                     "splits": {"train800val200": {"images": 1000, "classes": 10}}}
            for seed in SEEDS:
                append(path, strategy, 100, seed, [vtab_acc(strategy, i, seed)], f"vtab1k:/v/{task}",
                       benchmark=bench, support=1000)
    return path


def t_cell(values: list[float]) -> str:
    """mean ± t 95% half-width in percent, one decimal: computed here with scipy, not pefs."""
    v = [100 * x for x in values]
    half = student_t.ppf(0.975, len(v) - 1) * statistics.stdev(v) / len(v) ** 0.5
    return f"{statistics.fmean(v):.1f} ± {half:.1f}"


def table_rows(md: str) -> dict[str, list[str]]:
    """strategy label -> its cells (after the model column) of every table row of a Markdown page."""
    out = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| strategy"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells[2:]
    return out


def test_vtab_table_has_a_column_per_task_group_means_and_the_19_task_mean(tmp_path):
    """Promise: a vtab1k store gets paper.md with one column per task in VTAB-1k's order (cells mean ± t CI over
    seeds), each group's mean of its task means, and the mean over the 19 tasks; paper.csv holds the same numbers."""
    files, _ = build_report(vtab_store(tmp_path), tmp_path / "rep", ("md", "csv"))
    assert {f.name for f in files} >= {"paper.md", "paper.csv"}
    md = (tmp_path / "rep" / "paper.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| strategy"))
    assert header.split(" | ")[2:2 + 19] == list(TASKS)
    assert "trained on all of train800val200, scored on test" in md and "mean of the 19 task accuracies" in md
    rows = table_rows(md)
    for strategy in ("linear", "lora"):
        per_task = [statistics.fmean(100 * vtab_acc(strategy, i, s) for s in SEEDS) for i in range(19)]
        assert rows[strategy][:19] == [t_cell([vtab_acc(strategy, i, s) for s in SEEDS]) for i in range(19)]
        starts = [0, 7, 11, 19]
        groups = [statistics.fmean(per_task[a:b]) for a, b in zip(starts, starts[1:])]
        assert [len(g) for g in GROUPS.values()] == [7, 4, 8]
        assert rows[strategy][19:23] == [f"{m:.1f}" for m in [*groups, statistics.fmean(per_task)]]
    with open(tmp_path / "rep" / "paper.csv") as f:
        cells = {(r["strategy"], r["column"]): r for r in csv.DictReader(f)}
    lora_mean = statistics.fmean(100 * vtab_acc("lora", i, s) for i in range(19) for s in SEEDS)
    assert float(cells[("lora", "Mean (19 tasks)")]["mean_pct"]) == pytest.approx(lora_mean)
    assert cells[("lora", "dtd")]["n"] == "3"


def test_a_missing_task_is_a_dash_and_its_means_say_incomplete(tmp_path):
    """Promise: a task the store lacks shows "—", and its group mean and the overall mean say "incomplete (k/n)"
    with no number (markdown and CSV), while the complete groups keep their means."""
    build_report(vtab_store(tmp_path, skip=frozenset({"kitti"})), tmp_path / "rep", ("md", "csv"))
    rows = table_rows((tmp_path / "rep" / "paper.md").read_text())
    cells = dict(zip([*TASKS, "natural", "specialized", "structured", "mean"], rows["linear"]))
    assert cells["kitti"] == "—"
    assert cells["structured"] == "incomplete (7/8)" and cells["mean"] == "incomplete (18/19)"
    per_task = [statistics.fmean(100 * vtab_acc("linear", i, s) for s in SEEDS) for i in range(7)]
    assert cells["natural"] == f"{statistics.fmean(per_task):.1f}"
    with open(tmp_path / "rep" / "paper.csv") as f:
        means = {r["column"]: r["mean_pct"] for r in csv.DictReader(f) if r["strategy"] == "linear"}
    assert means["structured mean"] == "" and means["Mean (19 tasks)"] == "" and means["natural mean"] != ""


def test_a_custom_task_is_shown_apart_and_in_no_mean(tmp_path):
    """Promise: a folder outside VTAB-1k's 19 gets its own column after the means and changes no mean."""
    build_report(vtab_store(tmp_path, extra=("fashion_mnist",)), tmp_path / "rep", ("md",))
    md = (tmp_path / "rep" / "paper.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| strategy"))
    assert header.rstrip(" |").endswith("Mean (19 tasks) | fashion_mnist")
    row = table_rows(md)["linear"]
    assert row[-1] == t_cell([vtab_acc("linear", 19, s) for s in SEEDS])
    assert row[-2] == f"{statistics.fmean(100 * vtab_acc('linear', i, s) for i in range(19) for s in SEEDS):.1f}"
    assert "not one of VTAB-1k's 19 tasks" in md


def test_published_rows_are_labelled_quoted_with_their_source(tmp_path):
    """Promise: --published adds every quoted row labelled "quoted, <source>", its 19-task mean equal to the
    source table's own Mean column (so the copied cells are the source's), and names the source's address."""
    main(["report", "--store", str(vtab_store(tmp_path)), "--out", str(tmp_path / "rep"), "--format", "md",
          "--published"])
    md = (tmp_path / "rep" / "paper.md").read_text()
    rows = table_rows(md)
    data = json.loads(PUBLISHED.read_text())
    assert {r["method"] for r in data["vtab1k"]} >= {"VPT-Deep", "LoRA", "Adapter", "NOAH", "SSF"}
    for q in quoted_rows():
        cells = rows[f"{q.method} (quoted, {q.label})"]
        assert cells[:19] == [f"{dict(q.tasks)[task]:.1f}" for task in TASKS]
        assert float(cells[22]) == pytest.approx(q.stated_mean, abs=0.051)
        assert statistics.fmean(v for _, v in q.tasks) == pytest.approx(q.stated_mean, abs=0.005)
    assert data["sources"]["V-PETL Bench"]["url"] in md and "not run by pefs" in md


def test_shots_table_has_shots_as_columns(tmp_path):
    """Promise: K-shot rows from a benchmark source become one row per strategy with 1/2/4/8/16-shot columns,
    each mean ± t CI over the seeds; a K a strategy lacks is "—"."""
    path = tmp_path / "s.jsonl"
    bench = {"benchmark": "fewshot", "name": "cub"}
    for k in (1, 2, 4, 8, 16):
        for seed in SEEDS:
            append(path, "linear", k, seed, [0.3 + 0.02 * k + 0.01 * seed], "fewshot:/d/cub", benchmark=bench)
            if k < 16:
                append(path, "bias", k, seed, [0.35 + 0.02 * k + 0.02 * seed], "fewshot:/d/cub", benchmark=bench)
    build_report(path, tmp_path / "rep", ("md",))
    md = (tmp_path / "rep" / "paper.md").read_text()
    assert "| strategy | model | 1-shot | 2-shot | 4-shot | 8-shot | 16-shot |" in md
    rows = table_rows(md)
    assert rows["linear"] == [t_cell([0.3 + 0.02 * k + 0.01 * s for s in SEEDS]) for k in (1, 2, 4, 8, 16)]
    assert rows["bias"][-1] == "—"


def test_episodic_table_shows_mean_ci_over_episodes_and_their_count(tmp_path):
    """Promise: episodic rows become N-way K-shot columns, each mean ± t CI over every episode (2 decimals) with
    the episode count, even when strategies ran different numbers of episodes."""
    path = tmp_path / "e.jsonl"
    bench = {"benchmark": "fewshot", "name": "cub"}
    episodes = {"linear": [0.5, 0.62, 0.58, 0.71, 0.55, 0.6], "bias": [0.6, 0.66, 0.7, 0.64]}
    for strategy, accs in episodes.items():
        for k in (1, 5):
            shifted = [a + 0.1 * (k == 5) for a in accs]
            append(path, strategy, k, 0, shifted, "fewshot:/d/cub", ways=5, benchmark=bench, episodes=len(accs))
    build_report(path, tmp_path / "rep", ("md",))
    md = (tmp_path / "rep" / "paper.md").read_text()
    assert "| strategy | model | 5-way 1-shot | 5-way 5-shot |" in md and "novel classes only" in md
    v = [100 * a for a in episodes["linear"]]
    half = student_t.ppf(0.975, len(v) - 1) * statistics.stdev(v) / len(v) ** 0.5
    assert table_rows(md)["linear"][0] == f"{statistics.fmean(v):.2f} ± {half:.2f} (6 episodes)"
    assert table_rows(md)["bias"][1].endswith("(4 episodes)")


def test_other_stores_get_no_paper_tables_unless_asked(tmp_path):
    """Promise: a store of plain folder data gets no paper.md by default; --layout shots writes one for it."""
    path = tmp_path / "p.jsonl"
    for seed in SEEDS:
        append(path, "linear", 5, seed, [0.5 + 0.01 * seed], "/data/imgs")
    files, _ = build_report(path, tmp_path / "a", ("md", "csv"))
    assert "paper.md" not in {f.name for f in files}
    files, _ = build_report(path, tmp_path / "b", ("md",), layout="shots")
    row = "| linear | vit_test | " + t_cell([0.5 + 0.01 * s for s in SEEDS])
    assert row in (tmp_path / "b" / "paper.md").read_text()


@pytest.mark.parametrize(("kw", "fragments"), [
    ({"layout": "vtab"}, ("--layout vtab", "no row of the store fits it", "valid layouts: auto, vtab")),
    ({"published": True}, ("--published quotes VTAB-1k numbers", "drop --published")),
    ({"layout": "grid"}, ("unknown report layout 'grid'", "valid layouts: auto, vtab, shots, episodic")),
])
def test_a_layout_or_published_that_fits_nothing_is_refused_before_writing(tmp_path, kw, fragments):
    """Promise: a layout no row fits, an unknown one, or --published without a VTAB-1k table is one clear error
    naming the valid choices, and no report file is written."""
    path = tmp_path / "p.jsonl"
    append(path, "linear", 5, 0, [0.5], "/data/imgs")
    with pytest.raises(PefsError) as e:
        build_report(path, tmp_path / "rep", ("md", "csv"), **kw)
    assert all(f in str(e.value) for f in fragments), str(e.value)
    assert not (tmp_path / "rep").exists() or not any((tmp_path / "rep").iterdir())


def test_a_vtab_layout_folder_outside_the_19_loads_as_a_custom_task(tmp_path):
    """Promise: vtab1k: reads a folder of any name that holds the four split files (a custom task), while a
    misspelt task folder without them is still refused naming the 19 tasks."""
    from pefs.data import load_dataset
    from tests.test_benchmark_sources import make_vtab

    folder = make_vtab(tmp_path, task="fashion_mnist")
    ds = load_dataset(f"vtab1k:{folder}")
    assert ds.provenance()["name"] == "fashion_mnist" and len(ds.train) == 9 and len(ds.test) == 6
    with pytest.raises(PefsError, match="names no VTAB-1k task: .*caltech101"):
        load_dataset(f"vtab1k:{tmp_path / 'caltech'}")
