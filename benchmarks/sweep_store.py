"""A frozen-prefix sweep with and without the on-disk feature store: wall time and trunk forward passes.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.sweep_store   # measure, write sweep_store.json + .md
    .venv/bin/python -m benchmarks.sweep_store --render            # re-render sweep_store.md

The sweep: 3 shots (1, 5, 10) x 3 seeds (0-2) x {linear probe (head linear), prototype head}, on
efficientnet_lite0.offline, one ``pefs sweep`` command per head (so 2 processes and 18 cells per condition),
over an image folder of Fashion-MNIST PNGs (Debian ``dataset-fashion-mnist``). "With the store": both
commands get ``--feature-cache DIR`` (empty at the start), so the second command starts from what the first
wrote. Trunk passes: images run through the trunk (``trunk_images`` of every run of every cell record).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # started as a file: rerun as `python -m benchmarks.sweep_store`
    import common

    common.run_as_module(__file__)

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import load, machine, module_env, parser, provenance, provenance_section, render_source

HERE = Path(__file__).parent

HEADS = ("linear", "prototype")


def sweep(data: Path, work: Path, head: str, store: Path | None, args) -> dict:
    """One ``pefs sweep`` process; its wall time and the trunk passes and accuracies of its cells."""
    results = work / f"results-{head}.jsonl"
    cmd = [sys.executable, "-m", "pefs.cli", "sweep", "--data", str(data), "--model", "efficientnet_lite0.offline",
           "--strategies", "linear", "--head", head, "--shots", args.shots, "--seeds", args.seeds,
           "--img-size", str(args.img_size), "--workers", str(args.workers), "--store", str(results), "-q"]
    if store is not None:
        cmd += ["--feature-cache", str(store)]
    env = module_env(__file__)  # pefs from this repository
    env.pop("PEFS_FEATURE_CACHE", None)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    recs = [r["record"] for r in rows if r["status"] == "ok"]
    return {"head": head, "store": store is not None, "process_wall_s": wall, "cells": len(recs),
            "cells_wall_s": sum(r["wall_s"] for r in recs),
            "trunk_images": sum(run["trunk_images"] for r in recs for run in r["runs"]),
            "store_hits": sum((r.get("feature_store") or {}).get("hits", 0) for r in recs),
            "accuracies": {f"{r['shots']}shot-seed{r['config']['seeds'][0]}": r["accuracy_mean"] for r in recs}}


def measure(args) -> dict:
    """Both sweeps without the store, then both with one store: each sweep's :func:`sweep` result."""
    from benchmarks import fmnist

    data = fmnist.write_folder(Path(args.work) / "data", args.n_test)
    out = {}
    for cond in ("without", "with"):
        work = Path(args.work) / cond
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        store = work / "features" if cond == "with" else None
        out[cond] = [sweep(data, work, head, store, args) for head in HEADS]
        print(cond, [(r["head"], round(r["process_wall_s"], 1), r["trunk_images"]) for r in out[cond]], flush=True)
    return out


def render(d: dict) -> str:
    """The Markdown report from the raw results."""
    tot = {c: (sum(r["process_wall_s"] for r in d["results"][c]), sum(r["cells_wall_s"] for r in d["results"][c]),
               sum(r["trunk_images"] for r in d["results"][c])) for c in ("without", "with")}
    same = all(a["accuracies"] == b["accuracies"] for a, b in zip(d["results"]["without"], d["results"]["with"]))
    cpus = d["machine"]["cpus"] if "machine" in d else d["nproc"]  # records before benchmarks/common.py: nproc
    lines = ["# A frozen-prefix sweep with and without the feature store", "",
             f"shots {d['shots']} x seeds {d['seeds']} x {{linear probe, prototype head}} = "
             f"{sum(r['cells'] for r in d['results']['with'])} cells, "
             f"efficientnet_lite0.offline at {d['img_size']} px, {d['workers']} DataLoader worker(s), "
             f"one torch thread; data: {d['n_test']:,} Fashion-MNIST test images + 20 train images per class, "
             "as PNG files. One `pefs sweep` process per head; with the store both get the same "
             "`--feature-cache DIR`, empty at the start.", "",
             f"Measured on a {cpus}-core machine. {d.get('note', '')} Each condition ran once (N=1, no spread), "
             "\"without\" first.", "",
             "| | sweep processes, wall (s) | cells' own wall (s) | trunk forward passes (images) |",
             "|---|---:|---:|---:|"]
    for c in ("without", "with"):
        lines.append(f"| {c} the store | {tot[c][0]:.1f} | {tot[c][1]:.1f} | {tot[c][2]:,} |")
    lines += ["", f"Speed-up of the whole sweep: {tot['without'][0] / tot['with'][0]:.2f}x; trunk passes "
              f"{tot['without'][2] / max(tot['with'][2], 1):.1f}x fewer. Accuracies of every cell "
              f"{'identical' if same else 'DIFFER'} with and without the store.", "",
              "| condition | head | wall (s) | trunk passes | store hits |", "|---|---|---:|---:|---:|"]
    for c in ("without", "with"):
        for r in d["results"][c]:
            lines.append(f"| {c} | {r['head']} | {r['process_wall_s']:.1f} | {r['trunk_images']:,} | "
                         f"{r['store_hits']:,} |")
    lines += ["", "Without the store every cell (one seed of one shot count) is a fresh `pefs tune` inside the "
              "sweep and runs the trunk over the whole test split and its support. With it, the first cell runs "
              "the trunk once per image and writes the features; every later cell, and the second sweep "
              "process, reads them. Process wall time includes Python start-up and imports (~10 s each).", ""]
    lines += provenance_section({**d, "machine": {"cpus": cpus, "threads": 1, **d.get("machine", {})}},
                                "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.sweep_store",
                                ".venv/bin/python -m benchmarks.sweep_store --render")
    return "\n".join(lines)


def main() -> None:
    p = parser(__doc__, "--out")
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--shots", default="1,5,10")
    p.add_argument("--seeds", default="0-2")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--work", default="/tmp/pefs-sweep-store")
    p.add_argument("--out", default=str(HERE / "sweep_store.json"))
    p.add_argument("--note", default="", help="what else ran on the machine while measuring")
    a = p.parse_args()
    source = render_source(a, a.out)
    if source is None:
        start = load()
        results = measure(a)
        d = {**provenance(__file__), "machine": machine(), "load_start": start, "load_end": load(),
             "n_test": a.n_test, "shots": a.shots, "seeds": a.seeds, "img_size": a.img_size, "workers": a.workers,
             "note": a.note, "results": results}
        Path(a.out).write_text(json.dumps(d, indent=2) + "\n")
        source = Path(a.out)
    (HERE / "sweep_store.md").write_text(render(json.loads(source.read_text())))


if __name__ == "__main__":
    main()
