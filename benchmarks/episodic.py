"""Episodic benchmark: N-way K-shot episodes on the embedded model and data, one row per strategy/head/cache.

    .venv/bin/python -m benchmarks.episodic --out benchmarks/episodic.md   # the table in episodic.md + .json
    .venv/bin/python -m benchmarks.episodic --episodes 5              # a quick look, printed
    .venv/bin/python -m benchmarks.episodic --render                  # the table of benchmarks/episodic.json
    .venv/bin/python -m benchmarks.episodic --render X.json --out X.md   # an earlier run's data, into its page

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
    for r in data["rows"]:
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
                               f"Command: `{data['command']}` at commit `{data.get('git_commit', 'not recorded')}`.\n")


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
    args = p.parse_args(argv)
    data_path = render_source(args, Path(__file__).with_suffix(".json"))
    if data_path is not None:
        return _write(render(json.loads(data_path.read_text())), args.out)
    if args.out != "-" and not args.json:
        args.json = os.path.splitext(args.out)[0] + ".json"
    e1, e5 = (int(v) for v in args.fast_epochs.split(","))
    shots = [int(s) for s in args.shots.split(",")]
    data: dict[str, Any] = {**provenance(__file__, argv), "settings": vars(args), "load": load(), "rows": []}
    for row in rows({1: e1, 5: e5}):
        if args.only and row.label.split(" ")[0] not in args.only.split(","):
            continue
        for k in shots:
            r = run(row, k, args)
            data["rows"].append({"label": row.label, "strategy": row.strategy, "head": row.head, "shots": k,
                                 "epochs": r["epochs"], "process_s": r["process_s"], "record": r["rec"]})
            print(f"{row.label} {'cached' if r['rec']['cached'] else 'uncached'} {k}-shot: "
                  f"{100 * r['rec']['accuracy_mean']:.2f} ± {100 * r['rec']['accuracy_ci95']:.2f} "
                  f"({r['rec']['seconds_per_task']:.3f} s/episode)", file=sys.stderr, flush=True)
    data["machine"] = machine()
    data["load_end"] = load()
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
