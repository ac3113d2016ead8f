"""Report tables in the form papers print them, so a user can paste pefs' rows next to published ones.

* ``vtab``: one row per strategy (× model), one column per VTAB-1k task in the order of
  :data:`pefs.results.benchmark_tasks.GROUPS`, the three group means and the mean of the 19 tasks; a task the
  store lacks is "—" and every mean that needs it says "incomplete (k/n)" instead of a number. Folders outside the
  19 (a custom task in the same layout) get columns of their own after the means and count in no mean.
* ``shots``: one row per strategy (× model), K = 1/2/4/8/16... as columns, mean ± 95% CI over seeds.
* ``episodic``: one row per strategy (× model), N-way K-shot columns, mean ± 95% CI over the episodes, and the
  episode count of each cell.

Cells are :class:`pefs.results.aggregate.Group` s (every interval is :func:`pefs.results.stats.mean_ci`'s). The
rows are partitioned by task (VTAB) or dataset and N (episodes) before they are aggregated, so a setting tuned
per task, as the VTAB-1k protocol does, stays one row of the table.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pefs.errors import PefsError
from pefs.results.aggregate import Group, aggregate, data_of, dataset_name, fmt_cell, printable, short_data
from pefs.results.benchmark_tasks import GROUPS, TASKS, VTAB_SPECS
from pefs.results.report.published import quoted_rows, source_note

#: the ``--data NAME:PATH`` names of pefs.data.benchmarks (a failed row has no record to name its benchmark)
BENCHMARK_SPECS = (*VTAB_SPECS, "fewshot", "miniimagenet", "coop", "metadataset")
#: ``--layout`` values: ``auto`` picks the layouts that fit the store's benchmark rows
LAYOUTS = ("auto", "vtab", "shots", "episodic")
#: how the VTAB-1k overall mean is taken (printed under every VTAB table)
MEAN_RULE = ("Mean = the mean of the 19 task accuracies (the convention of the NOAH / SSF / V-PETL Bench tables; "
             "not the mean of the three group means); a group mean is the mean of its tasks.")


@dataclass
class Cell:
    """One table cell: what it shows, and its numbers for the CSV (percent)."""

    text: str
    mean: float | None = None
    ci95: float | None = None
    n: int | None = None


@dataclass
class Row:
    strategy: str
    model: str
    cells: list[Cell]
    source: str = ""  #: for a quoted row: where its numbers come from


@dataclass
class Table:
    layout: str
    title: str
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ the rows


def benchmark_of(row: dict[str, Any]) -> tuple[str, str] | None:
    """(benchmark spec, task or dataset folder name) a store row read, or None for other data: from its record's
    ``benchmark`` provenance, else (a failed cell) from its ``data`` spec."""
    bench = (row.get("record") or {}).get("benchmark")
    if isinstance(bench, dict) and bench.get("benchmark"):
        return str(bench["benchmark"]), str(bench.get("name") or "")
    spec = row["cell"].get("data") or (row["cell"].get("config") or {}).get("data")
    if isinstance(spec, str) and ":" in spec and (spec.split(":", 1)[0] in BENCHMARK_SPECS
                                                  or spec.startswith("bscd-")):
        name, rest = spec.split(":", 1)
        return name, Path(rest.rstrip("/")).name
    return None


def _episodic(row: dict[str, Any]) -> bool:
    return bool(row["cell"].get("ways"))


def _vtab(row: dict[str, Any]) -> bool:
    b = benchmark_of(row)
    return b is not None and b[0] in VTAB_SPECS


def fits(layout: str, row: dict[str, Any], auto: bool) -> bool:
    """Whether a store row belongs in a ``layout`` table (``auto``: only rows read from a benchmark source)."""
    if auto and benchmark_of(row) is None:
        return False
    if layout == "vtab":
        return _vtab(row)
    if layout == "episodic":
        return _episodic(row)
    return not _episodic(row) and not (auto and _vtab(row))


def _key(g: Group, taken: dict) -> tuple[str, str]:
    """A group's table row: (strategy, model), told apart by data identity when another group took it."""
    key = (g.strategy, g.model)
    return (f"{g.strategy} [data {short_data(g.data)}]", g.model) if key in taken else key


def _n_expected(groups: list[Group]) -> int:
    return max((g.n - len(g.failed) for g in groups), default=0)


# ------------------------------------------------------------------------------------------------ VTAB-1k


def _full_train(rows: list[dict[str, Any]]) -> bool:
    """Whether every finished row trained on its whole training split (the VTAB-1k protocol) rather than K shots."""
    seen = False
    for r in rows:
        rec = r.get("record") or {}
        bench, runs = rec.get("benchmark") or {}, rec.get("runs") or []
        split = (bench.get("splits") or {}).get((bench.get("roles") or {}).get("train", ""), {})
        if r["status"] != "ok" or not runs or not split:
            continue
        seen = True
        if any(run.get("support") != split.get("images") for run in runs):
            return False
    return seen


def _mean_cell(tasks: list[str], by_task: dict[str, Group | float]) -> Cell:
    """The mean over ``tasks`` of each task's mean, or "incomplete (k/n)" when one lacks a number."""
    means = [m for t in tasks if (m := _task_mean(by_task.get(t))) is not None]
    if len(means) < len(tasks):
        return Cell(f"incomplete ({len(means)}/{len(tasks)})")
    return Cell(f"{sum(means) / len(means):.1f}", sum(means) / len(means), None, len(means))


def _task_mean(cell: Group | float | None) -> float | None:
    return cell.mean_ci()[0] if isinstance(cell, Group) else cell


def _vtab_row(strategy: str, model: str, by_task: dict[str, Group | float], canonical: bool, custom: list[str],
              n_expected: int, source: str = "") -> Row:
    def one(task: str) -> Cell:
        v = by_task.get(task)
        if isinstance(v, Group):
            mean, ci = v.mean_ci()
            return Cell(fmt_cell(v, n_expected), mean, ci, len(v.accuracies))
        return Cell("—") if v is None else Cell(f"{v:.1f}", v)

    cells = []
    if canonical:
        cells += [one(t) for t in TASKS]
        cells += [_mean_cell(list(tasks), by_task) for tasks in GROUPS.values()]
        cells.append(_mean_cell(list(TASKS), by_task))
    return Row(strategy, model, cells + [one(t) for t in custom], source)


def vtab_tables(rows: list[dict[str, Any]], published: bool = False) -> list[Table]:
    """One VTAB-1k table per (spec, shots): ``vtab1k`` (trained on train800val200, scored on test) and
    ``vtab1k-val`` (train800 / val200) apart; ``published`` adds the quoted rows to the ``vtab1k`` tables."""
    parts: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if _vtab(r):
            parts[benchmark_of(r)].append(r)
    cells: dict[tuple[str, int], dict[tuple[str, str], dict[str, Group]]] = defaultdict(dict)
    table_rows: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for (spec, task), rs in sorted(parts.items()):
        for g in aggregate(rs):
            by = cells[(spec, g.shots)]
            by.setdefault(_key(g, {k: v for k, v in by.items() if task in v}), {})[task] = g
        for r in rs:
            table_rows[(spec, int(r["cell"]["shots"]))].append(r)
    tables = []
    for (spec, shots), by in sorted(cells.items()):
        tasks = {t for v in by.values() for t in v}
        canonical, custom = bool(tasks & set(TASKS)), sorted(tasks - set(TASKS))
        columns = ([*TASKS, *(f"{g} mean" for g in GROUPS), "Mean (19 tasks)"] if canonical else []) + custom
        n_expected = _n_expected([g for v in by.values() for g in v.values()])
        train, test = ("train800", "val200") if spec == "vtab1k-val" else ("train800val200", "test")
        how = (f"trained on all of {train}" if _full_train(table_rows[(spec, shots)])
               else f"{shots} shots per class from {train}")
        t = Table("vtab", f"VTAB-1k ({spec}): {how}, scored on {test}", columns)
        t.rows = [_vtab_row(s, m, v, canonical, custom, n_expected) for (s, m), v in sorted(by.items())]
        if published and spec == "vtab1k" and canonical:
            t.rows += [_vtab_row(q.method, q.model, dict(q.tasks), canonical, custom, 0, q.label)
                       for q in quoted_rows()]
        t.notes = [f"Accuracy in %, mean ± 95% CI over {n_expected} seed(s) per task (Student t); — = task not in "
                   "the store; a mean over a missing task is marked incomplete, never taken over fewer tasks."]
        if canonical:
            t.notes.append(MEAN_RULE)
        if custom:
            t.notes.append(f"{', '.join(custom)}: not one of VTAB-1k's 19 tasks (a custom task in the vtab1k "
                           "layout); shown apart, in no mean.")
        tables.append(t)
    return tables


# ------------------------------------------------------------------------------------------------ K-shot and episodes


def _by_dataset(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    parts: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        parts[(dataset_name(r), data_of(r))].append(r)
    return parts


def _dataset_title(name: str, data: str, parts: dict) -> str:
    clash = sum(n == name for n, _ in parts) > 1
    return printable(name) + (f" (data {short_data(data)})" if clash else "")


def shots_tables(rows: list[dict[str, Any]]) -> list[Table]:
    """One table per dataset: strategies as rows, shots per class as columns, mean ± 95% CI over seeds."""
    parts = _by_dataset(rows)
    tables = []
    for (name, data), rs in sorted(parts.items()):
        groups = aggregate(rs)
        shots = sorted({g.shots for g in groups})
        by: dict[tuple[str, str], dict[int, Group]] = {}
        for g in groups:
            by.setdefault(_key(g, {k: v for k, v in by.items() if g.shots in v}), {})[g.shots] = g
        n_expected = _n_expected(groups)
        t = Table("shots", f"{_dataset_title(name, data, parts)}: K-shot accuracy", [f"{k}-shot" for k in shots])
        for (s, m), v in sorted(by.items()):
            t.rows.append(Row(s, m, [_group_cell(v.get(k), n_expected) for k in shots]))
        t.notes = [f"Accuracy in %, mean ± 95% CI over {n_expected} seed(s) per cell (Student t); K = training images "
                   "per class; `n=` marks cells with fewer seeds."]
        tables.append(t)
    return tables


def _group_cell(g: Group | None, n_expected: int) -> Cell:
    if g is None:
        return Cell("—")
    mean, ci = g.mean_ci()
    return Cell(fmt_cell(g, n_expected), mean, ci, len(g.accuracies))


def _episode_cell(g: Group | None) -> Cell:
    """mean ± CI over the cell's episodes (2 decimals, as episodic papers print them) and the episode count."""
    if g is None:
        return Cell("—")
    mean, ci = g.mean_ci()
    if mean is None:
        return Cell(f"failed ({len(g.failed)})")
    n = len(g.accuracies)
    body = f"{mean:.2f}" + (" (one episode, no CI)" if ci is None else f" ± {ci:.2f}")
    return Cell(f"{body} ({n} episodes{f', {len(g.failed)} failed' if g.failed else ''})", mean, ci, n)


def episodic_tables(rows: list[dict[str, Any]]) -> list[Table]:
    """One table per dataset: strategies as rows, N-way K-shot columns, mean ± 95% CI over the episodes."""
    parts = _by_dataset(rows)
    tables = []
    for (name, data), rs in sorted(parts.items()):
        by: dict[tuple[str, str], dict[tuple[int, int], Group]] = {}
        queries = sorted({str((r["cell"].get("config") or {}).get("queries", "?")) for r in rs})
        for ways in sorted({int(r["cell"]["ways"]) for r in rs}):
            for g in aggregate([r for r in rs if int(r["cell"]["ways"]) == ways]):
                col = (ways, g.shots)
                by.setdefault(_key(g, {k: v for k, v in by.items() if col in v}), {})[col] = g
        cols = sorted({c for v in by.values() for c in v})
        t = Table("episodic", f"{_dataset_title(name, data, parts)}: episodes", [f"{n}-way {k}-shot" for n, k in cols])
        t.rows = [Row(s, m, [_episode_cell(v.get(c)) for c in cols]) for (s, m), v in sorted(by.items())]
        novel = all(benchmark_of(r) is not None for r in rs)
        t.notes = [f"Accuracy in %, mean ± 95% CI over the episodes of each cell (Student t; the count is in the "
                   f"cell), {'/'.join(queries)} query images per class"
                   + ("; episodes drawn from the benchmark's novel classes only." if novel else ".")]
        tables.append(t)
    return tables


# ------------------------------------------------------------------------------------------------ choosing and writing


def paper_tables(rows: list[dict[str, Any]], layout: str = "auto", published: bool = False) -> list[Table]:
    """The tables of ``layout`` (``auto``: every layout the store's benchmark rows fit; none for a store of other
    data). An explicit layout no row fits, or ``published`` without a ``vtab1k`` table, is a PefsError."""
    if layout not in LAYOUTS:
        raise PefsError(f"unknown report layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    auto = layout == "auto"
    tables: list[Table] = []
    for name, build in (("vtab", lambda rs: vtab_tables(rs, published)), ("shots", shots_tables),
                        ("episodic", episodic_tables)):
        if auto or layout == name:
            fit = [r for r in rows if fits(name, r, auto)]
            if not fit and not auto:
                raise PefsError(f"--layout {layout}: no row of the store fits it ({_describe(name)}); valid "
                                f"layouts: {', '.join(LAYOUTS)}")
            tables += build(fit) if fit else []
    if published and not any(t.layout == "vtab" and any(r.source for r in t.rows) for t in tables):
        raise PefsError("--published quotes VTAB-1k numbers beside a vtab1k: table of VTAB-1k's tasks, and this "
                        "report has none "
                        f"(its layouts: {', '.join(sorted({t.layout for t in tables})) or 'none'}); drop "
                        "--published or report a store of vtab1k: runs")
    return tables


def _describe(layout: str) -> str:
    return {"vtab": "rows from a vtab1k: or vtab1k-val: source", "shots": "K-shot rows (no --ways)",
            "episodic": "episodic rows (--ways)"}[layout]


def table_markdown(t: Table, heading: str = "##") -> list[str]:
    """One table as Markdown lines: its title, the table, its notes and, for quoted rows, their sources."""
    lines = [f"{heading} {t.title}", "", "| strategy | model | " + " | ".join(t.columns) + " |",
             "|---|---|" + "---:|" * len(t.columns)]
    for r in t.rows:
        label = f"{r.strategy} (quoted, {r.source})" if r.source else r.strategy
        lines.append(f"| {printable(label)} | {printable(r.model)} | " + " | ".join(c.text for c in r.cells) + " |")
    lines.append("")
    for note in [*t.notes, *(source_note(s) for s in sorted({r.source for r in t.rows if r.source}))]:
        lines += [note, ""]
    return lines


def markdown(tables: list[Table]) -> str:
    """Every table as Markdown (:func:`table_markdown`) under one title."""
    return "\n".join(["# pefs report: tables in the papers' form", ""] + [x for t in tables for x in table_markdown(t)])


CSV_COLUMNS = ("layout", "table", "strategy", "model", "column", "shown", "mean_pct", "ci95_pct", "n", "quoted_from")


def write_csv(tables: list[Table], path: Path, opener: Any) -> Path:
    """Every cell in long format, one line each, numbers unrounded; ``opener`` is the report's atomic writer."""
    with opener(path, "report file", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for t in tables:
            for r in t.rows:
                for col, c in zip(t.columns, r.cells):
                    w.writerow([t.layout, t.title, r.strategy, r.model, col, c.text, c.mean, c.ci95, c.n, r.source])
    return path
