"""What ``pefs report`` shows about selection and baselines: the settings validation chose per cell, each searched
cell's whole search table, and paired differences against a baseline strategy with t-based 95% CIs.

Plain data from :class:`pefs.results.aggregate.Group` (no torch);
:mod:`pefs.results.report.markdown` places these sections.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path
from typing import Any

from pefs.errors import PefsError
from pefs.results.aggregate import Group, fmt_chosen, fmt_setting, paired, printable, unpaired
from pefs.results.stats import Summary, holm_directions, mean_ci

#: the strategy paired against when ``--baseline`` is not given (skipped quietly when the store has none)
DEFAULT_BASELINE = "linear"


def resolve_baseline(groups: list[Group], baseline: str | None) -> tuple[str | None, str | None]:
    """The strategy label to pair against, and a warning. ``baseline`` is a strategy label of the store, or a
    strategy name with exactly one variant there; ``None`` means ``linear`` if the store has it. A given baseline
    that names no strategy, or several, is a :class:`PefsError` listing the strategies present."""
    labels = sorted({g.strategy for g in groups})
    if baseline is not None and not baseline.strip():
        raise PefsError(f"--baseline is empty; strategies present: {'; '.join(labels)}")
    wanted = baseline.strip() if baseline is not None else DEFAULT_BASELINE
    if wanted in labels:
        return wanted, None
    variants = [label for label in labels if label.split(" (")[0] == wanted]
    if len(variants) == 1:
        return variants[0], None
    if baseline is None:
        return None, (f"paired differences left out: the store holds {len(variants)} variants of {wanted} "
                      f"({'; '.join(variants)}); choose one with --baseline" if variants else None)
    if variants:
        raise PefsError(f"baseline {baseline!r} matches {len(variants)} strategies of the store: "
                        f"{'; '.join(variants)}; give one of them whole")
    raise PefsError(f"baseline {baseline!r} is not in the store; strategies present: {'; '.join(labels)}")


def chosen_table(gs: list[Group]) -> list[str]:
    """What validation chose per model and shots (cells run with ``--search`` or ``--strategy auto``)."""
    if not gs:
        return []
    lines = ["Chosen on validation (per task; the test split took no part):", "",
             "| model | shots | chosen | search s per task |", "|---|---:|---|---:|"]
    for g in sorted(gs, key=lambda g: (g.model, g.shots)):
        lines.append(f"| {g.model} | {g.shots} | {fmt_chosen(g)} | {sum(g.search_s) / len(g.search_s):.1f} |")
    return [*lines, ""]


def search_rows(g: Group) -> list[dict[str, Any]]:
    """A searched cell's whole search table over its tasks, one row per setting in search order: mean
    validation accuracy (%) over the tasks that ran it, how many ran it of how many, how many chose it, mean
    seconds, and why the others did not run it (e.g. ``skipped (budget)``)."""
    rows: dict[str, dict[str, Any]] = {}
    for table in g.searches:
        for entry in table:
            key = fmt_setting(entry.get("setting") or {})
            r = rows.setdefault(key, {"val": [], "seconds": [], "tasks": 0, "not_run": Counter()})
            r["tasks"] += 1
            acc = entry.get("val_accuracy")
            if entry.get("status") == "ok" and acc is not None and math.isfinite(acc):
                r["val"].append(100 * float(acc))
                r["seconds"].append(float(entry.get("seconds") or 0.0))
            else:
                r["not_run"][str(entry.get("status") or "not run")] += 1
    chosen = Counter(fmt_setting(c) for c in g.chosen)
    return [{"setting": printable(key) or "defaults",
             "mean_val_pct": sum(r["val"]) / len(r["val"]) if r["val"] else None,
             "ran": len(r["val"]), "tasks": r["tasks"], "chosen": chosen[key],
             "mean_s": sum(r["seconds"]) / len(r["seconds"]) if r["seconds"] else None,
             "not_run": dict(r["not_run"])} for key, r in rows.items()]


def search_sections(gs: list[Group]) -> list[str]:
    """One Markdown section per searched cell: every setting the search tried and its mean validation accuracy."""
    lines: list[str] = []
    for g in sorted((g for g in gs if g.searches), key=lambda g: (g.model, g.shots)):
        lines += [f"#### Search: {g.strategy} · {g.model} · {g.shots}-shot", "",
                  f"Every setting tried, mean validation accuracy over the {len(g.searches)} task(s) that searched "
                  "(the chosen one was then trained on the K shots and scored once on test).", "",
                  "| setting | validation accuracy % | tasks | chosen | mean s |", "|---|---:|---:|---:|---:|"]
        for r in search_rows(g):
            why = ", ".join(f"{status} ×{n}" for status, n in sorted(r["not_run"].items()))
            acc = "–" if r["mean_val_pct"] is None else f"{r['mean_val_pct']:.1f}"
            secs = "–" if r["mean_s"] is None else f"{r['mean_s']:.2f}"
            lines.append(f"| {r['setting']} | {acc} | {r['ran']}/{r['tasks']}{f' ({why})' if why else ''} | "
                         f"{r['chosen']} | {secs} |")
        lines.append("")
    return lines


def paired_table(gs: list[Group], baseline: str | None) -> list[str]:
    """Each strategy minus ``baseline`` on the same seeds, mean ± t-based 95% CI, and whether it differs; the
    multiple-comparison line (:func:`holm_line`); then the cells left unpaired and why."""
    if baseline is None:
        return []
    pairs, alone = paired(gs, baseline), unpaired(gs, baseline)
    if not pairs and not alone:
        return []
    lines = [f"### Paired differences against {baseline}", "",
             f"Accuracy of the strategy minus `{baseline}`'s on the same seed (same K shots), in points; 95% CI "
             "t(n−1)·sd/√n over the paired seeds (Student's t: with few seeds a normal interval would be too "
             "narrow).", "",
             "| strategy | model | shots | Δ points | seeds | differs? |", "|---|---|---:|---:|---:|---|"]
    named = []
    for g, _, diffs in sorted(pairs, key=lambda p: (p[0].strategy, p[0].model, p[0].shots)):
        s = mean_ci(diffs)
        named.append((f"{g.strategy} ({g.model}, {g.shots} shot{'s' if g.shots > 1 else ''})", s))
        if s.half_width is None:
            cell, verdict = f"{s.mean:+.1f}", "one seed, no CI"
        else:
            cell = f"{s.mean:+.1f} ± {s.half_width:.1f}"
            verdict = {"above 0": "better", "below 0": "worse"}.get(s.direction(), "no (CI covers 0)")
        lines.append(f"| {g.strategy} | {g.model} | {g.shots} | {cell} | {len(diffs)} | {verdict} |")
    if len(named) > 1:
        lines += ["", holm_line(named)]
    if alone:
        lines += ["", f"Not paired (only cells with the same finished seeds as `{baseline}` are):", "",
                  "| strategy | model | shots | why |", "|---|---|---:|---|"]
        lines += [f"| {g.strategy} | {g.model} | {g.shots} | {why} |"
                  for g, why in sorted(alone, key=lambda p: (p[0].strategy, p[0].model, p[0].shots))]
    return [*lines, ""]


def holm_line(named: list[tuple[str, Summary]], what: str = "paired comparisons") -> str:
    """One sentence on many comparisons at 95%: how many there are, how many would exclude 0 by chance alone,
    how many do unadjusted, and which still do after Holm's correction over all of them (family-wise 5%)."""
    counted = [(name, s) for name, s in named if s.half_width is not None]
    raw = sum(s.direction() in ("above 0", "below 0") for _, s in counted)
    after = holm_directions([s for _, s in counted])
    above = [name for (name, _), d in zip(counted, after) if d == "above 0"]
    below = [name for (name, _), d in zip(counted, after) if d == "below 0"]
    kept = "".join(f" — {side}: {'; '.join(names)}" for side, names in (("above 0", above), ("below 0", below))
                   if names)
    after_text = (f"{len(above) + len(below)} still exclude 0{kept}" if kept else "none excludes 0")
    return (f"Multiple comparisons: {len(counted)} {what} at 95% here, so about {0.05 * len(counted):.1f} would "
            f"exclude 0 by chance alone if nothing differed; {raw} exclude 0 unadjusted. After Holm's correction "
            f"over all {len(counted)} (family-wise error 5%): {after_text}.")


SEARCH_CSV_COLUMNS = ("setting", "model", "strategy", "shots", "searched", "val_accuracy_mean_pct", "tasks_ran",
                      "tasks", "chosen", "mean_s")


def write_search_csv(groups: list[Group], path: Path, opener: Any) -> Path:
    """Every searched cell's search table in long format (one row per cell and setting), unrounded;
    ``opener(path, newline=...)`` is the report's atomic writer."""
    with opener(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(SEARCH_CSV_COLUMNS)
        for g in groups:
            for r in search_rows(g):
                w.writerow([g.setting, g.model, g.strategy, g.shots, r["setting"], r["mean_val_pct"], r["ran"],
                            r["tasks"], r["chosen"], r["mean_s"]])
    return path
