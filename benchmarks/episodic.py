"""Episodic benchmark: N-way K-shot episodes on the embedded model and data, one row per strategy/head/cache.

    .venv/bin/python -m benchmarks.episodic --out benchmarks/episodic.md   # the table in episodic.md + .json
    .venv/bin/python -m benchmarks.episodic --episodes 5              # a quick look, printed
    .venv/bin/python -m benchmarks.episodic --render                  # the table of benchmarks/episodic.json
    .venv/bin/python -m benchmarks.episodic --render X.json --out X.md   # an earlier run's data, into its page
    .venv/bin/python -m benchmarks.episodic --add --only DN4 --out benchmarks/episodic.md  # rows added to the data

Every row is one ``pefs.protocols.run.tune`` run (what ``pefs tune --ways 5 --shots K --episodes E`` runs); the
script only chooses the settings, times nothing itself and copies mean, CI and seconds per episode from the
result records. ``OMP_WAIT_POLICY=PASSIVE`` is set before torch loads: on a CPU shared with other jobs,
OpenMP threads that spin-wait for each other made small batches 10-20x slower (see episodic.md).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # started as a file: rerun as `python -m benchmarks.episodic`
    import common

    common.run_as_module(__file__)

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import load, load_text, machine, parser, provenance, render_source, write_report

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch (imported below, inside functions) reads it on load
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Row:
    """One benchmark row: a strategy with a head, features cached or not, epochs per shot count."""

    label: str
    strategy: str
    head: str
    cache: bool
    epochs: dict[int, int]
    options: dict[str, Any] = field(default_factory=dict)


def rows(fast_epochs: dict[int, int]) -> list[Row]:
    """What to measure: linear/prototype cached and uncached (same epochs, so equal accuracy), last-k cached,
    the strategies that train inside the trunk uncached (nothing of theirs is frozen)."""
    from pefs.strategies import STRATEGIES

    out = [Row("linear probe", "linear", "linear-proto", True, {1: 30, 5: 30}),
           Row("linear probe", "linear", "linear-proto", True, fast_epochs),
           Row("linear probe", "linear", "linear-proto", False, fast_epochs),
           Row("prototype (ProtoNet)", "linear", "prototype", True, {1: 0, 5: 0}),
           Row("prototype (ProtoNet)", "linear", "prototype", False, {1: 0, 5: 0}),
           Row("last-k (k=2)", "last-k", "linear-proto", True, fast_epochs),
           Row("LoRA (r=8)", "lora", "linear-proto", False, fast_epochs)]
    out += [Row("Matching Networks (no FCE)", "linear", "matching", True, {1: 0, 5: 0}),
            Row("DN4 (k=3)", "linear", "dn4", True, {1: 0, 5: 0}),
            Row("BD-CSPN (transductive)", "linear", "bd-cspn", True, {1: 0, 5: 0}),
            Row("TIM-GD (transductive)", "linear", "tim", True, {1: 0, 5: 0})]
    if "vpt" in STRATEGIES:
        out.append(Row("VPT pixel prompt", "vpt", "linear-proto", False, fast_epochs, {"mode": "pixel"}))
    elif "adapter" in STRATEGIES:
        out.append(Row("adapter", "adapter", "linear-proto", False, fast_epochs))
    return out


def run(row: Row, shots: int, args: argparse.Namespace) -> dict[str, Any]:
    """One row at ``shots`` shots: the tune record, the epochs asked for and the process seconds around it."""
    from pefs.config import TrainConfig, TuneConfig
    from pefs.protocols.run import tune

    epochs = max(row.epochs[shots], 1)
    cfg = TuneConfig(strategy=row.strategy, head=row.head, options=dict(row.options), ways=args.ways, shots=shots,
                     queries=args.queries, episodes=args.episodes, seeds=(args.seed,), img_size=args.img_size,
                     output=args.records, train=TrainConfig(epochs=epochs, cache_features=row.cache,
                                                            progress=False))
    t0 = time.perf_counter()
    rec = tune(cfg)
    return {"rec": rec, "epochs": row.epochs[shots], "process_s": time.perf_counter() - t0}


def render(data: dict[str, Any]) -> str:
    """The Markdown table of a run, from its JSON data alone (``--json`` writes it, ``--render`` reads it); each
    row's mean and t 95% interval are computed from its record's episode accuracies."""
    from pefs.results.stats import mean_ci

    ways = data["settings"]["ways"]
    lines = ["| setting | strategy | head | features | epochs | trainable params | accuracy % (± 95% CI) "
             "| s / episode | run wall s |", "|---|---|---|---|---:|---:|---|---:|---:|"]
    for r in (r for r in data["rows"] if "added" not in r):
        rec = r["record"]
        feats = "cached" if rec["cached"] else "uncached"
        acc = mean_ci(rec["accuracies"]).scaled(100)  # t interval, whatever interval the record stored
        lines.append(f"| {ways}-way {r['shots']}-shot | {r['label']} | {r['head']} | {feats} | {r['epochs'] or '-'} "
                     f"| {rec['params']['trainable']:,} | {acc.mean:.2f} "
                     + ("(one episode, no CI)" if acc.half_width is None else f"± {acc.half_width:.2f}")
                     + f" | {rec['seconds_per_task']:.3f} | {rec['wall_s']:.1f} |")
    m = data["machine"]
    return "\n".join(lines) + (f"\n\nPython {m['python']}, torch {m['torch']}, {m['threads']} threads, "
                               f"{m['cpus']} CPUs; load average {load_text(data['load'])} at the start, "
                               f"{load_text(data.get('load_end'))} at the end.\n\n"
                               f"Command: `{data['command']}` at commit `{data.get('git_commit', 'not recorded')}`.\n"
                               + ("\n".join(render_added(data)) if data.get("added") else ""))


def _pm(summary: Any) -> str:
    return f"{summary.mean:.2f}" + (" (one episode, no CI)" if summary.half_width is None
                                    else f" ± {summary.half_width:.2f}")


def render_added(data: dict[str, Any]) -> list[str]:
    """The table of rows added later (``--add``), each beside the cached prototype row of the main table on the
    same episodes (its first N: episodes are drawn in sequence from the seed) and their paired difference; then
    each addition's machine, load, command and commit."""
    from pefs.results.stats import mean_ci, paired_diff

    ways = data["settings"]["ways"]
    proto = {r["shots"]: r["record"]["accuracies"] for r in data["rows"]
             if "added" not in r and r["head"] == "prototype" and r["record"]["cached"]}
    lines = ["", "Rows added later, by the additions listed under this table. \"prototype\" is the cached prototype "
             "row above on the same episodes (its first N; episodes are drawn in sequence from the seed), "
             "\"difference\" the paired difference from it, per episode (t 95% CI).", "",
             "| setting | strategy | head | features | episodes | trainable params | accuracy % (± 95% CI) "
             "| prototype, same episodes | difference (paired) | s / episode | run wall s | addition |",
             "|---|---|---|---|---:|---:|---|---|---|---:|---:|---:|"]
    for r in (r for r in data["rows"] if "added" in r):
        rec, n = r["record"], len(r["record"]["accuracies"])
        ref = proto[r["shots"]][:n]
        feats = "cached" if rec["cached"] else "uncached"
        lines.append(f"| {ways}-way {r['shots']}-shot | {r['label']} | {r['head']} | {feats} | {n} "
                     f"| {rec['params']['trainable']:,} | {_pm(mean_ci(rec['accuracies']).scaled(100))} "
                     f"| {_pm(mean_ci(ref).scaled(100))} | {_pm(paired_diff(rec['accuracies'], ref).scaled(100))} "
                     f"| {rec['seconds_per_task']:.3f} | {rec['wall_s']:.1f} | {r['added'] + 1} |")
    lines.append("")
    for i, a in enumerate(data["added"]):
        m = a["machine"]
        lines.append(f"Addition {i + 1}: Python {m['python']}, torch {m['torch']}, {m['threads']} threads, "
                     f"{m['cpus']} CPUs; load average {load_text(a['load'])} at the start, "
                     f"{load_text(a.get('load_end'))} at the end. Command: `{a['command']}` at commit "
                     f"`{a.get('git_commit', 'not recorded')}`, {a.get('measured_at', 'date not recorded')}.")
        lines.append("")
    return lines


def _check_addition(data: dict[str, Any], args: argparse.Namespace) -> None:
    """An addition must draw the main table's episodes: same ways, queries, image size and seed, and no more
    episodes than it has (the paired comparison reads the prototype row's first N)."""
    main = data["settings"]
    for key in ("ways", "queries", "img_size", "seed"):
        if getattr(args, key) != main[key]:
            sys.exit(f"--add: {key}={getattr(args, key)} differs from the data's {key}={main[key]}; an addition "
                     "must draw the same episodes")
    if args.episodes > main["episodes"]:
        sys.exit(f"--add: --episodes {args.episodes} exceeds the data's {main['episodes']}")
    if not args.only:
        sys.exit("--add needs --only: the rows to add")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "benchmarks/episodic.json")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", default="1,5")
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast-epochs", default="10,3", help="epochs of the uncached training rows at 1 and 5 shots")
    p.add_argument("--only", help="comma-separated row labels to run (default all)")
    p.add_argument("--records", default="runs/benchmarks", help="folder for the JSON result records")
    p.add_argument("--out", default="-", help="write the table here ('-' prints it)")
    p.add_argument("--json", help="write the raw data here: settings, machine, load, every row's full result "
                                  "record (default: beside --out, .json)")
    p.add_argument("--add", action="store_true",
                   help="run the --only rows and add them to the data (--json, default beside --out) as a later "
                        "addition with its own command, commit, machine and load; the rows there are kept")
    args = p.parse_args(argv)
    data_path = render_source(args, Path(__file__).with_suffix(".json"))
    if data_path is not None:
        return _write(render(json.loads(data_path.read_text())), args.out)
    if args.out != "-" and not args.json:
        args.json = os.path.splitext(args.out)[0] + ".json"
    e1, e5 = (int(v) for v in args.fast_epochs.split(","))
    shots = [int(s) for s in args.shots.split(",")]
    data: dict[str, Any] = {**provenance(__file__, argv), "settings": vars(args), "load": load(), "rows": []}
    addition = None
    if args.add:
        addition, data = data, json.loads(Path(args.json).read_text())
        _check_addition(data, args)
        del addition["rows"]
        data.setdefault("added", [])
    for row in rows({1: e1, 5: e5}):
        if args.only and row.label.split(" ")[0] not in args.only.split(","):
            continue
        for k in shots:
            r = run(row, k, args)
            data["rows"].append({"label": row.label, "strategy": row.strategy, "head": row.head, "shots": k,
                                 "epochs": r["epochs"], "process_s": r["process_s"], "record": r["rec"],
                                 **({"added": len(data["added"])} if addition is not None else {})})
            print(f"{row.label} {'cached' if r['rec']['cached'] else 'uncached'} {k}-shot: "
                  f"{100 * r['rec']['accuracy_mean']:.2f} ± {100 * r['rec']['accuracy_ci95']:.2f} "
                  f"({r['rec']['seconds_per_task']:.3f} s/episode)", file=sys.stderr, flush=True)
    target = addition if addition is not None else data
    target["machine"] = machine()
    target["load_end"] = load()
    if addition is not None:
        data["added"].append(addition)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1, default=str)
    return _write(render(data), args.out)


def _write(md: str, out: str) -> int:
    """Print the table (``out`` is ``-``) or write it into page ``out``."""
    if out == "-":
        print(md)
    else:
        write_report(out, md, "episodic.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
