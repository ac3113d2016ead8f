"""Episodic benchmark: N-way K-shot episodes on the embedded model and data, one row per strategy/head/cache.

    .venv/bin/python benchmarks/episodic.py                      # the table in benchmarks/episodic.md
    .venv/bin/python benchmarks/episodic.py --episodes 5 --out -  # a quick look, printed

Every row is one ``pefs.tune.tune`` run (what ``pefs tune --ways 5 --shots K --episodes E`` runs); the
script only chooses the settings, times nothing itself and copies mean, CI and seconds per episode from the
result records. ``OMP_WAIT_POLICY=PASSIVE`` is set before torch loads: on a CPU shared with other jobs,
OpenMP threads that spin-wait for each other made small batches 10-20x slower (see episodic.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any

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
    from pefs.config import TuneConfig
    from pefs.engine import TrainConfig
    from pefs.tune import tune

    epochs = max(row.epochs[shots], 1)
    cfg = TuneConfig(strategy=row.strategy, head=row.head, options=dict(row.options), ways=args.ways, shots=shots,
                     queries=args.queries, episodes=args.episodes, seeds=(args.seed,), img_size=args.img_size,
                     output=args.records, train=TrainConfig(epochs=epochs, cache_features=row.cache,
                                                            progress=False))
    t0 = time.perf_counter()
    rec = tune(cfg)
    return {"rec": rec, "epochs": row.epochs[shots], "process_s": time.perf_counter() - t0}


def table(results: list[tuple[Row, int, dict[str, Any]]], args: argparse.Namespace) -> str:
    lines = ["| setting | strategy | head | features | epochs | trainable params | accuracy % (± 95% CI) "
             "| s / episode | run wall s |", "|---|---|---|---|---:|---:|---|---:|---:|"]
    for row, shots, r in results:
        rec = r["rec"]
        feats = "cached" if rec["cached"] else "uncached"
        lines.append(f"| {args.ways}-way {shots}-shot | {row.label} | {row.head} | {feats} | {r['epochs'] or '-'} "
                     f"| {rec['params']['trainable']:,} | {100 * rec['accuracy_mean']:.2f} ± "
                     f"{100 * rec['accuracy_ci95']:.2f} | {rec['seconds_per_task']:.3f} | {rec['wall_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    args = p.parse_args(argv)
    e1, e5 = (int(v) for v in args.fast_epochs.split(","))
    shots = [int(s) for s in args.shots.split(",")]
    results = []
    for row in rows({1: e1, 5: e5}):
        if args.only and row.label.split(" ")[0] not in args.only.split(","):
            continue
        for k in shots:
            r = run(row, k, args)
            results.append((row, k, r))
            print(f"{row.label} {'cached' if r['rec']['cached'] else 'uncached'} {k}-shot: "
                  f"{100 * r['rec']['accuracy_mean']:.2f} ± {100 * r['rec']['accuracy_ci95']:.2f} "
                  f"({r['rec']['seconds_per_task']:.3f} s/episode)", file=sys.stderr, flush=True)
    import torch

    md = table(results, args) + (f"\n\nPython {platform.python_version()}, torch {torch.__version__}, "
                                 f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs.\n")
    if args.out == "-":
        print(md)
    else:
        with open(args.out, "w") as f:
            f.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
