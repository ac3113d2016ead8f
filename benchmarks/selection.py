"""Selection study (issue 13): which parameters to tune at 1 and 5 shots, once every strategy's learning rate is
chosen on validation data instead of fixed.

    .venv/bin/python -m benchmarks.selection            # runs the sweeps (resuming), writes selection.md
    .venv/bin/python -m benchmarks.selection --render   # measures nothing: re-renders selection.md

The raw data is the sweep store ``benchmarks/selection/results.jsonl`` (every cell's full record: chosen values, the
whole search table, timings) plus ``benchmarks/selection.json`` (the commit, commands, machine and load of the run).
Five recipes fill the store: ``recipes/offline-selection{,-probe,-defaults,-logistic,-steps}.yaml``; two more
the scale store ``benchmarks/selection_scale/`` (``-scale``, ``-scale-probe``).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # started as a file: rerun as `python -m benchmarks.selection`
    import common

    common.run_as_module(__file__)

import json
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

from benchmarks.common import load, load_text, machine, now, parser, provenance, render_source
from pefs.results.report.sections import holm_line
from pefs.results.stats import Summary, holm_directions, mean_ci

HERE = Path(__file__).parent
ROOT = HERE.parent
STORE = HERE / "selection" / "results.jsonl"
DATA = HERE / "selection.json"
PAGE = HERE / "selection.md"
SCALE_STORE = HERE / "selection_scale" / "results.jsonl"
#: the recipes, in the order they run (None: recipes/offline-selection.yaml)
RECIPES = ("defaults", "logistic", "probe", None, "steps", "scale-probe", "scale")
BASELINE = "linear"  # the paired baseline: the linear probe with its head learning rate selected


def label(row: dict) -> str:
    """The strategy and its options; an unsearched row trained at another rate than today's default says which
    (``full lr=0.001``: full fine-tuning at the rate every strategy shipped with before defaults became per
    strategy)."""
    from pefs.strategies import default_lr

    cell, cfg = row["cell"], row["cell"]["config"]
    name = cell["strategy"] + "".join(f" {k}={v}" for k, v in sorted((cell.get("options") or {}).items()))
    lr = ((row["record"] or {}).get("resolved") or cfg).get("train", {}).get("lr")
    if cell["strategy"] != "linear" and not selected(row) and lr is not None and lr != default_lr(cell["strategy"]):
        name += f" lr={lr:g}"
    return f"{name} (logistic head)" if cfg.get("head") == "logistic" else name


def selected(row: dict) -> str:
    """What the row's search chose: "rates" (lr / head_lr), "steps", or "" (no search: shipped settings)."""
    axes = set(row["cell"]["config"].get("search") or {})
    return "steps" if "steps" in axes else "rates" if axes else ""


def load_cells(store: Path = STORE, by_model: bool = False) -> dict[tuple, dict[int, dict]]:
    """(strategy label, what was selected (:func:`selected`), shots) -> seed -> the stored row of the newest ok
    run (``by_model``: the model name first in the key)."""
    from pefs.results.aggregate import current_rows
    from pefs.results.store import load

    out: dict[tuple[str, bool, int], dict[int, dict]] = defaultdict(dict)
    rows, _ = current_rows(load(store).ok())
    for row in rows:
        key = (label(row), selected(row), int(row["cell"]["shots"]))
        out[(row["cell"]["model"], *key) if by_model else key][int(row["cell"]["seed"])] = row
    return out


def acc(row: dict) -> float:
    """The row's test accuracy in %."""
    return 100 * row["record"]["accuracies"][0]


def fmt(s: Summary, sign: bool = False) -> str:
    """``mean ± half-width (n=N)``, or says there is no interval."""
    m = f"{s.mean:+.1f}" if sign else f"{s.mean:.1f}"
    return f"{m} ± {s.half_width:.1f} (n={s.n})" if s.half_width is not None else f"{m} (n={s.n}, no CI)"


def chosen(rows: dict[int, dict]) -> str:
    """The chosen values over seeds, most common first: ``lr=0.01 ×7, lr=0.001 ×3``."""
    counts = Counter(", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(
        r["record"]["runs"][0]["chosen"].items())) for r in rows.values())
    return ", ".join(f"{c} ×{n}" for c, n in counts.most_common())


def paired(a: dict[int, dict], b: dict[int, dict]) -> tuple[list[float], list[int]]:
    """Per-seed differences a − b (points) over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    return [acc(a[s]) - acc(b[s]) for s in seeds], seeds


def verdict(s: Summary) -> str:
    """better / worse when the whole interval lies on that side of 0, else no difference (or one seed)."""
    return {"one value": "one seed", "above 0": "better", "below 0": "worse"}.get(s.direction(), "no difference")


def accs(rows: dict[int, dict]) -> Summary:
    """The rows' test accuracies (%), summarised."""
    return mean_ci([acc(r) for r in rows.values()])


def render_steps(cells: dict, shots: list[int]) -> list[str]:
    """The steps part: optimizer steps chosen on validation (10 / 40 / 160) against the shipped 10 epochs."""
    names = sorted({k[0] for k in cells if k[1] == "steps"}, key=lambda n: (n != BASELINE, n))
    if not names:
        return []
    lines = ["", "## How many optimizer steps", "",
             "`--search steps=10,40,160` at the default learning rates, against the study's 10 epochs (10 steps at "
             "1 shot: 10 images in one batch of 16; 40 steps at 5 shots).", "",
             "| strategy | shots | 10 epochs (%) | steps selected (%) | selected − 10 epochs (points) | chosen |",
             "|---|---|---|---|---|---|"]
    verdicts: dict[str, list[str]] = defaultdict(list)
    named: list[tuple[str, Summary]] = []
    for name in names:
        for k in shots:
            sel, ship = cells.get((name, "steps", k), {}), cells.get((name, "", k), {})
            if not sel or not ship:
                continue
            d = mean_ci(paired(sel, ship)[0])
            verdicts[verdict(d)].append(f"{name} at {k} shot{'s' if k > 1 else ''}")
            named.append((f"{name} at {k} shot{'s' if k > 1 else ''}", d))
            lines.append(f"| {name} | {k} | {fmt(accs(ship))} | {fmt(accs(sel))} | {fmt(d, sign=True)} | "
                         f"{chosen(sel)} |")
    lines += ["", "Choosing the step count on validation, paired against 10 epochs on the same seeds: better for "
              + (", ".join(verdicts["better"]) or "none") + "; worse for " + (", ".join(verdicts["worse"]) or "none")
              + "; no difference at 95% for " + (", ".join(verdicts["no difference"]) or "none") + ". "
              + ("With no row better, these data give no reason to replace epochs by a fixed step count as the "
                 "default" if not verdicts["better"] else "A row that is better argues for choosing the step count")
              + "; `--steps N` stays an option and a searchable setting.",
              "", holm_line(named, "paired comparisons (steps selected − 10 epochs)")]
    return lines


def render_defaults(cells: dict, shots: list[int]) -> list[str]:
    """How each strategy's default learning rate was chosen: the validation accuracy of every searched rate
    (never test), paired against 1e-3 (head_lr 1e-2 for the probe), the rates every strategy shipped with."""
    from pefs.strategies import default_lr

    lines = ["", "## Default learning rates, chosen on validation", "",
             "Every seed's search table holds the validation accuracy of each rate (5 images per class outside the "
             "K shots; the test split is never read). Against the rate every strategy shipped with (lr 1e-3; the "
             "probe's head_lr 1e-2), paired by seed. **Rule:** a strategy's default moves to another rate when that "
             "rate is better on validation at every shot count and the paired interval excludes 0 at one at "
             "least; the rate it moves to is `Strategy.default_lr` of that strategy, and the \"default rates\" "
             "rows above ran at it.", "",
             "| strategy | shots | validation % per rate | other rate − shipped rate (points, paired) | default now |",
             "|---|---|---|---|---|"]
    evidence: dict[tuple[str, float], list[Summary]] = defaultdict(list)
    named: list[tuple[str, Summary]] = []
    keys: list[tuple[str, float]] = []  # (strategy, rate) of each of named
    for name in sorted({k[0] for k in cells if k[1] == "rates"}, key=lambda n: (n != BASELINE, n)):
        for k in shots:
            rows = cells.get((name, "rates", k), {})
            if not rows:
                continue
            by_rate: dict[float, dict[int, float]] = defaultdict(dict)
            axis = ""
            for seed, row in rows.items():
                for entry in row["record"]["runs"][0]["search"]:
                    (axis, rate), = entry["setting"].items()
                    if entry["val_accuracy"] is not None:
                        by_rate[rate][seed] = 100 * entry["val_accuracy"]
            ref = 1e-2 if axis == "head_lr" else 1e-3
            per_rate = ", ".join(f"{r:g}: {statistics.fmean(v.values()):.1f}" for r, v in sorted(by_rate.items()))
            diffs = []
            for r, v in sorted(by_rate.items()):
                if r == ref:
                    continue
                d = mean_ci([v[s] - by_rate[ref][s] for s in sorted(set(v) & set(by_rate[ref]))])
                evidence[(name, r)].append(d)
                named.append((f"{name} at {k} shot{'s' if k > 1 else ''} ({axis} {r:g})", d))
                keys.append((name, r))
                diffs.append(f"{r:g}: {fmt(d, sign=True)}")
            now = f"head_lr {ref:g}" if axis == "head_lr" else f"lr {default_lr(name.split()[0]):g}"
            lines.append(f"| {name} | {k} | {axis} {per_rate} | {'; '.join(diffs)} | {now} |")
    met = [(n, r) for (n, r), ev in sorted(evidence.items()) if len(ev) == len(shots)
           and all(e.mean > 0 for e in ev) and any(e.direction() == "above 0" for e in ev)]
    holm = defaultdict(list)  # the same rule with Holm-adjusted intervals over every comparison of the table
    for key, d in zip(keys, holm_directions([d for _, d in named])):
        holm[key].append(d)
    met_holm = [(n, r) for n, r in met if "above 0" in holm[(n, r)]]
    lines += ["", "Met the rule: " + (", ".join(f"{n} at {r:g}" for n, r in met) or "none") + "; every other "
              "strategy keeps its rate (no other rate is better at every shot count, or none excludes 0). "
              + holm_line(named, "paired comparisons on validation (other rate − shipped rate)") + " With Holm's "
              "correction in the rule, it is met by: " + (", ".join(f"{n} at {r:g}" for n, r in met_holm) or "none")
              + (" (a default moved on evidence that does not survive the correction)" if met != met_holm else "")
              + "."]
    for name, old in sorted({(k[0].rsplit(" lr=", 1)[0], k[0]) for k in cells if " lr=" in k[0] and not k[1]}):
        checks = []
        for k in shots:
            d, _ = paired(cells.get((name, "", k), {}), cells.get((old, "", k), {}))
            if d:
                checks.append(f"{fmt(mean_ci(d), sign=True)} at {k} shot{'s' if k > 1 else ''}")
        lines.append(f"- Checked on test once the default moved: `{name}` at its new default minus `{old}`, "
                     f"paired: {', '.join(checks)}.")
    return lines


def render_scale(cells: dict) -> list[str]:
    """The scale x shots part: LoRA minus the linear probe, both selected, per model and shot count."""
    models = sorted({k[0] for k in cells})
    shots = sorted({k[3] for k in cells})
    lines = ["", "## Scale × shots with selection: LoRA against the linear probe", "",
             "EfficientNet-Lite0/1/2 (3.4M / 4.1M / 4.8M backbone parameters), the same protocol at 64 px, seeds "
             "0-2; LoRA's `lr` and the probe's `head_lr` both chosen on validation. Full `pefs report` of this "
             "store (with the shots × trainable parameters × accuracy 3-D plot): "
             "[selection_scale/report.md](selection_scale/report.md).", "",
             "| model | shots | linear probe (%) | LoRA (%) | LoRA − linear (points) | verdict | LoRA chose |",
             "|---|---|---|---|---|---|---|"]
    named: list[tuple[str, Summary]] = []
    for m in models:
        for k in shots:
            lin, lora = cells.get((m, BASELINE, "rates", k), {}), cells.get((m, "lora", "rates", k), {})
            if not lin or not lora:
                continue
            d = mean_ci(paired(lora, lin)[0])
            named.append((f"{m} at {k} shot{'s' if k > 1 else ''}", d))
            lines.append(f"| {m} | {k} | {fmt(accs(lin))} | {fmt(accs(lora))} | {fmt(d, sign=True)} | {verdict(d)} | "
                         f"{chosen(lora)} |")
    return [*lines, "", holm_line(named, "paired comparisons (LoRA − linear probe)")]


def machine_text(m: dict | str) -> str:
    """The machine in words; records before benchmarks/common.py stored these words themselves."""
    if isinstance(m, str):
        return m
    return f"{m['cpus']}-core {m['cpu']} ({m['platform']}), Python {m['python']}, torch {m['torch']}"


def render(cells: dict, meta: dict, scale: dict | None = None) -> str:
    """The page: accuracy with and without selection, paired differences, defaults, steps, scale."""
    shots = sorted({k[2] for k in cells})
    names = sorted({k[0] for k in cells}, key=lambda n: (n != BASELINE, n))
    lines = ["# Selection study: which parameters to tune at 1 and 5 shots (issue 13)", "",
             "EfficientNet-Lite0 (ImageNet weights, `efficientnet_lite0.offline`) on the embedded Fashion-MNIST "
             "subset at 64 px, K-shot transfer (K images per class of 10 classes, scored on the 400-image test "
             "split), 10 epochs, AdamW + cosine, batch 16. *Selected*: `--search` picks the learning rate on 5 "
             "validation images per class drawn from the train split outside the K shots (never the test split), "
             "retrains the chosen setting on the K shots and scores it once on test; backbone strategies search "
             "`lr` over 1e-4, 1e-3, 1e-2, the linear probe searches `head_lr` over 1e-3, 1e-2, 1e-1 (it trains "
             "only the head). *Default rates*: no search, each strategy at its default learning rate (1e-3; full "
             "fine-tuning 1e-4, chosen from this study's validation tables: see \"Default learning rates\" below; "
             "the row `full lr=0.001` is full fine-tuning at the rate it had before), head_lr 1e-2. The logistic "
             "probe (`--head logistic`) chooses its own L2 strength on held-out data.",
             "", "Intervals: 95% CI of the mean over seeds, t-based (Student's t with n−1 degrees of freedom); a "
             "paired difference uses the same seed's K shots on both sides.", "",
             f"Data: `benchmarks/selection/results.jsonl` (every cell's record: chosen values, the whole search "
             f"table, timings) and `benchmarks/selection.json`. Produced by commit "
             f"`{meta.get('git_commit', meta.get('commit', '?'))}` on {machine_text(meta.get('machine', '?'))}; "
             f"load average {load_text(meta.get('load'))} at the start (accuracies do not "
             "depend on load; seconds do). " + meta.get("note", ""), "",
             "Reproduce: `.venv/bin/python -m benchmarks.selection` (runs "
             + ", ".join(f"`pefs sweep --recipe {r} -q`" for r in meta.get("recipes", [])) + ", resuming); "
             "`--render` re-renders this page from the data.", ""]
    lines += ["## Accuracy with and without selection", "",
              "| strategy | shots | trainable | default rates (%) | selected (%) | selected − default (points) | "
              "chosen | search s / seed |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        for k in shots:
            sel, ship = cells.get((name, "rates", k), {}), cells.get((name, "", k), {})
            any_row = next(iter({**ship, **sel}.values()), None)
            if any_row is None:
                continue
            trainable = any_row["record"]["params"]["trainable"]
            a = fmt(accs(ship)) if ship else "–"
            b = fmt(accs(sel)) if sel else "–"
            d, _ = paired(sel, ship)
            dd = fmt(mean_ci(d), sign=True) if d else "–"
            cost = (f"{statistics.fmean(r['record']['runs'][0]['search_s'] for r in sel.values()):.1f}"
                    if sel else "–")
            lines.append(f"| {name} | {k} | {trainable:,} | {a} | {b} | {dd} | {chosen(sel) if sel else '–'} | "
                         f"{cost} |")
    answer = ["", "## Paired differences against the linear probe (both selected)", "",
              f"Each strategy's selected accuracy minus the selected `{BASELINE}` probe's on the same seed.", "",
              "| strategy | " + " | ".join(f"{k}-shot Δ (points) | verdict" for k in shots) + " |",
              "|---|" + "---|---|" * len(shots)]
    by_shot: dict[int, dict[str, list[str]]] = {k: defaultdict(list) for k in shots}
    vs_probe: list[tuple[str, Summary]] = []
    for name in names:
        if name == BASELINE:
            continue
        row = [name]
        for k in shots:
            # the logistic probe has no search of its own (it picks L2 inside): its shipped row is its selected one
            mine = cells.get((name, "rates", k)) or (cells.get((name, "", k)) if "logistic" in name else None)
            base = cells.get((BASELINE, "rates", k))
            if not mine or not base:
                row += ["–", "–"]
                continue
            d = mean_ci(paired(mine, base)[0])
            v = verdict(d)
            by_shot[k][v].append(name)
            vs_probe.append((f"{name} at {k} shot{'s' if k > 1 else ''}", d))
            row += [fmt(d, sign=True), v]
        if any(c != "–" for c in row[1:]):
            answer.append("| " + " | ".join(row) + " |")
    lines += [*answer, "", holm_line(vs_probe, "paired comparisons against the linear probe")]
    lines += ["", "## The answer, in plain words", ""]
    for k in shots:
        b = by_shot[k]
        base = cells.get((BASELINE, "rates", k), {})
        parts = [f"**{k} shot{'s' if k > 1 else ''}** (linear probe {fmt(accs(base))}):"]
        parts.append("better than the linear probe: " + (", ".join(b["better"]) or "none") + ";")
        parts.append("worse: " + (", ".join(b["worse"]) or "none") + ";")
        parts.append("no difference at 95%: " + (", ".join(b["no difference"]) or "none") + ".")
        lines.append("- " + " ".join(parts))
    helped: dict[str, list[str]] = {"helped": [], "hurt": []}
    vs_default: list[tuple[str, Summary]] = []
    for name in names:
        for k in shots:
            d, _ = paired(cells.get((name, "rates", k), {}), cells.get((name, "", k), {}))
            if len(d) < 2:
                continue
            s = mean_ci(d)
            vs_default.append((f"{name} at {k} shot{'s' if k > 1 else ''}", s))
            v = verdict(s)
            if v in ("better", "worse"):
                helped["helped" if v == "better" else "hurt"].append(f"{name} at {k} shot{'s' if k > 1 else ''} "
                                                                     f"({fmt(s, sign=True)})")
    lines.append("- **Did choosing the learning rate on validation help?** Selected − default, paired: helped "
                 + (", ".join(helped["helped"]) or "nowhere") + "; hurt " + (", ".join(helped["hurt"]) or "nowhere")
                 + "; everywhere else the interval covers 0 (the \"selected − default\" column). Where it helped, "
                 "the chosen values say which default would have been better (the \"chosen\" column). "
                 + holm_line(vs_default, "paired comparisons (selected − default)"))
    lines += ["", "The study store's own `pefs report` (search tables per cell, paired table, the shots × trainable "
              "parameters × accuracy 3-D plot): [selection/report.md](selection/report.md), "
              "[3-D plot](selection/shots_params_accuracy_3d.png)."]
    lines += ["", "Strategies whose interval covers 0 are not shown to differ from the linear probe by this many "
              "seeds; \"better\"/\"worse\" means the whole 95% interval of the paired difference lies on that side "
              "of 0. The study is one small model on one small data set at 64 px: it answers the question for this "
              "setting, not in general (`pefs tune --search strategy=...` answers it for a user's own data)."]
    lines += render_defaults(cells, shots)
    lines += render_steps(cells, shots)
    if scale:
        lines += render_scale(scale)
    return "\n".join(lines) + "\n"


def run_sweeps() -> list[str]:
    """Every recipe's sweep (each resumes its store), then each store's ``pefs report``; the recipes run."""
    recipes = [f"recipes/offline-selection{'-' + r if r else ''}.yaml" for r in RECIPES]
    pefs = Path(sys.executable).with_name("pefs")
    for r in recipes:
        subprocess.run([str(pefs), "sweep", "--recipe", r, "-q"], cwd=ROOT, check=True)
    # each store's own pefs report (tables, search tables, heatmap, 3-D plot) beside it; the study store holds three
    # linear variants, so its paired baseline is named whole: the probe with head_lr selected
    probe = "linear (epochs=10, head=linear-proto, search={'head_lr': '1e-3,1e-2,1e-1'})"
    for store, baseline in ((STORE, probe), (SCALE_STORE, "linear")):
        rel = store.relative_to(ROOT)
        subprocess.run([str(pefs), "report", "--store", str(rel), "--out", str(rel.parent), "--baseline", baseline],
                       cwd=ROOT, check=True)
    return recipes


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "benchmarks/selection.json, with the stores benchmarks/selection/ and selection_scale/")
    args = p.parse_args(argv)
    source = render_source(args, DATA)
    if source is None:
        meta = {**provenance(__file__, argv), "load": load(), "machine": machine()}
        meta["recipes"] = run_sweeps()
        meta.update(finished=now(), load_end=load())
        DATA.write_text(json.dumps(meta, indent=2) + "\n")
        source = DATA
    meta = json.loads(source.read_text())
    text = render(load_cells(), meta, load_cells(SCALE_STORE, by_model=True) if SCALE_STORE.exists() else None)
    PAGE.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
