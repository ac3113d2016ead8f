"""Seeds aggregated into table cells: one :class:`Group` per (setting, strategy variant, model, shots).

Plain data from a results store's rows (no torch):
:mod:`pefs.results.report.markdown` writes tables from these groups and
:mod:`pefs.results.report.plots` draws them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from pefs.config import RUN_KEYS
from pefs.results.stats import Summary, mean_ci


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
    #: seed -> accuracy, for rows of one task each (K-shot seeds): what paired differences pair on
    by_seed: dict[int, float] = field(default_factory=dict)
    #: settings chosen on validation (``--search`` / ``--strategy auto``), one per task, and the search seconds
    chosen: list[dict[str, Any]] = field(default_factory=list)
    search_s: list[float] = field(default_factory=list)
    #: each searching task's whole search table (setting, validation accuracy, seconds, status)
    searches: list[list[dict[str, Any]]] = field(default_factory=list)
    #: the identity of the data every seed of the group read (:func:`data_of`); groups never pool across data
    data: str = ""

    @property
    def n(self) -> int:
        return len(self.seeds)

    def summary(self) -> Summary:
        """The accuracies in percent: mean, sd and t 95% interval (:func:`pefs.results.stats.mean_ci`)."""
        return mean_ci(self.accuracies).scaled(100)

    def mean_ci(self) -> tuple[float | None, float | None]:
        """Mean and t 95% CI half-width in percent (both None when every seed failed; the half-width None for
        one seed: it has no interval)."""
        if not self.accuracies:
            return None, None
        s = self.summary()
        return s.mean, s.half_width


def _config(row: dict[str, Any]) -> dict[str, Any]:
    return row["cell"].get("config") or (row.get("record") or {}).get("config") or {}


def _ran_config(row: dict[str, Any]) -> dict[str, Any]:
    """The config a row ran: its record's resolved one (defaults filled in, such as the strategy's learning
    rate) when it has one, else the one it was asked for."""
    return (row.get("record") or {}).get("resolved") or _config(row)


def data_of(row: dict[str, Any]) -> str:
    """The identity of the data a row read (its content fingerprint, :mod:`pefs.data.fingerprint`); "" for rows
    stored without one."""
    prints = row["cell"].get("fingerprints") or (row.get("record") or {}).get("fingerprints") or {}
    return str(prints.get("data") or "")


def short_data(identity: str) -> str:
    """A data identity shortened for a heading: its kind and content hash (``folder:…1a2b3c4d``)."""
    kind, _, rest = identity.partition(":")
    return f"{kind}:{rest.rsplit(':', 1)[-1][:12]}" if rest else identity


def dataset_name(row: dict[str, Any]) -> str:
    """The name of the dataset a row ran on (its record's, else the cell's ``data``)."""
    rec = row.get("record") or {}
    return (rec.get("dataset") or {}).get("name") or row["cell"].get("data") or "fashion-mnist-small"


def setting_of(row: dict[str, Any], ambiguous: frozenset[str] = frozenset()) -> str:
    """The protocol a row belongs to, as a heading: dataset and K-shot transfer or N-way episodes; a dataset name
    in ``ambiguous`` (several data identities under one name) also names the row's data identity."""
    cell = row["cell"]
    dataset = dataset_name(row)
    if dataset in ambiguous:
        dataset = f"{dataset} (data {short_data(data_of(row))})"
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
        cfg = _ran_config(r)
        settings = {**{k: v for k, v in (cfg.get("train") or {}).items() if k != "progress"},
                    **{k: cfg.get(k) for k in RUN_KEYS if k not in ("data", "ways")}}
        for k in set(cfg.get("search") or {}) & set(settings):
            del settings[k]  # a searched setting: the value the config holds never ran (``search`` says it)
        variants[base[r["hash"]]][r["hash"]] = settings
    labels = {}
    for name, by_hash in variants.items():
        keys = sorted({k for s in by_hash.values() for k in s})
        varying = [k for k in keys if len({json.dumps(s[k], default=str) for s in by_hash.values() if k in s}) > 1]
        for h, s in by_hash.items():
            extra = ", ".join(f"{k}={s[k]}" for k in varying if k in s)
            labels[h] = f"{name} ({extra})" if extra else name
    return labels


def printable(text: str) -> str:
    """``text`` with characters that cannot be written as UTF-8 (a file name in another encoding, read by
    Python as lone surrogates) shown as backslash escapes, so tables and plot labels can always be written."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def current_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Drop rows superseded by a run of the same config on the same data with a changed checkpoint (same config
    hash and data identity, written earlier), so stale numbers never pool with fresh ones; and how many went.
    Rows of other data are never dropped: the report groups them by their data identity (:func:`aggregate`), so
    data restored to an earlier version reports that version's numbers, never the newer data's."""
    newest: dict[tuple[str, str], float] = {}
    for r in rows:
        h = r["cell"].get("config_hash")
        if h is not None:
            k = (h, data_of(r))
            newest[k] = max(newest.get(k, 0.0), r.get("written_at", 0.0))
    kept = [r for r in rows if r["cell"].get("config_hash") is None
            or r.get("written_at", 0.0) >= newest[(r["cell"]["config_hash"], data_of(r))]]
    return kept, len(rows) - len(kept)


def ambiguous_names(rows: list[dict[str, Any]]) -> frozenset[str]:
    """Dataset names that stand for more than one data identity among ``rows`` (a folder whose content changed,
    two folders of one name): their groups are told apart by identity, never pooled by name."""
    ids: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        ids[dataset_name(r)].add(data_of(r))
    return frozenset(name for name, found in ids.items() if len(found) > 1)


def aggregate(rows: list[dict[str, Any]]) -> list[Group]:
    """Pool the stored rows into groups, one row per seed; failed rows keep their messages, never an accuracy."""
    labels = strategy_labels(rows)
    ambiguous = ambiguous_names(rows)

    def group_of(r: dict[str, Any]) -> tuple:
        return (printable(setting_of(r, ambiguous)), printable(labels[r["hash"]]), printable(r["cell"]["model"]),
                int(r["cell"]["shots"]), data_of(r))

    # one row per group and seed: a rerun of the same setting (a new cell key after a default moved or a code
    # change, same label) replaces the older row instead of counting the seed twice; ok beats failed, then newest
    latest: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        k = (*group_of(r), r["cell"].get("seed", 0))
        rank = (r["status"] == "ok", r.get("written_at", 0.0))
        if k not in latest or rank >= (latest[k]["status"] == "ok", latest[k].get("written_at", 0.0)):
            latest[k] = r
    groups: dict[tuple, Group] = {}
    for r in sorted(latest.values(), key=lambda r: r["cell"].get("seed", 0)):
        cell, rec = r["cell"], r.get("record") or {}
        key = group_of(r)
        g = groups.setdefault(key, Group(*key[:4], data=key[4]))
        g.seeds.append(cell.get("seed", 0))
        bb, params = rec.get("backbone") or {}, rec.get("params") or {}
        if params:
            g.trainable, g.percent = params.get("trainable"), params.get("percent_of_backbone")
            g.backbone_params = params.get("backbone_params") or bb.get("params")
        g.pretrained = bb.get("pretrained") or g.pretrained
        if r["status"] == "ok":
            accs = [float(a) for a in rec.get("accuracies") or []]
            g.accuracies += accs
            g.wall_s.append(float(rec.get("wall_s") or 0.0))
            if len(accs) == 1 and not cell.get("ways"):
                g.by_seed[int(cell.get("seed", 0))] = accs[0]
            for run in rec.get("runs") or []:
                if run.get("chosen") is not None:
                    g.chosen.append(run["chosen"])
                    g.search_s.append(float(run.get("search_s") or 0.0))
                    g.searches.append(list(run.get("search") or []))
        else:
            g.failed.append(f"seed {cell.get('seed')}: {r.get('error') or 'failed'}")
    return sorted(groups.values(), key=lambda g: (g.setting, g.strategy, g.model, g.shots))


def fmt_setting(setting: dict[str, Any]) -> str:
    """One searched setting as ``k=v`` pairs in key order (floats as ``%g``; empty for the defaults)."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(setting.items()))


def fmt_chosen(g: Group) -> str:
    """The settings chosen on validation over a cell's tasks, most common first: ``lr=0.001 (7/10), lr=0.01 (3/10)``."""
    counts: dict[str, int] = defaultdict(int)
    for c in g.chosen:
        counts[fmt_setting(c)] += 1
    return "; ".join(f"{printable(k) or 'defaults'} ({n}/{len(g.chosen)})"
                     for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def paired(groups: list[Group], baseline: str) -> list[tuple[Group, Group, list[float]]]:
    """(group, its baseline group, per-seed differences in points) for every group of another strategy whose
    finished seeds are exactly those of the ``baseline`` strategy's group of the same setting, model and shots."""
    base = {(g.setting, g.model, g.shots): g for g in groups if g.strategy == baseline}
    out = []
    for g in groups:
        b = base.get((g.setting, g.model, g.shots))
        if g.strategy == baseline or b is None or not g.by_seed or set(g.by_seed) != set(b.by_seed):
            continue
        out.append((g, b, [100 * (g.by_seed[s] - b.by_seed[s]) for s in sorted(g.by_seed)]))
    return out


def unpaired(groups: list[Group], baseline: str) -> list[tuple[Group, str]]:
    """The groups of other strategies that :func:`paired` leaves out, each with the reason (no baseline cell,
    other seeds, no per-seed accuracies); settings without any ``baseline`` group are not listed."""
    base = {(g.setting, g.model, g.shots): g for g in groups if g.strategy == baseline}
    with_base = {g.setting for g in base.values()}
    out = []
    for g in groups:
        if g.strategy == baseline or g.setting not in with_base:
            continue
        b = base.get((g.setting, g.model, g.shots))
        if b is None:
            out.append((g, f"no {baseline} cell for this model and shots"))
        elif not g.accuracies or not b.accuracies:
            out.append((g, f"every seed of {'this cell' if not g.accuracies else baseline} failed"))
        elif not g.by_seed or not b.by_seed:
            out.append((g, "no per-seed accuracies to pair (episodic cells pool their episodes)"))
        elif set(g.by_seed) != set(b.by_seed):
            out.append((g, f"finished seeds {_seeds(g.by_seed)}; the baseline's {_seeds(b.by_seed)}"))
    return out


def _seeds(by_seed: dict[int, float]) -> str:
    """Seeds as ranges: ``0-4,7``."""
    runs: list[list[int]] = []
    for s in sorted(by_seed):
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


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
