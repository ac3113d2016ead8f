"""Per-task bookkeeping: what restoring a run's start costs each task, by strategy and model size.

    .venv/bin/python -m benchmarks.restore                  # writes benchmarks/restore.json and .md
    .venv/bin/python -m benchmarks.restore --render         # re-renders restore.md from restore.json

Every task of a run (a K-shot seed, an episode) tunes from the same start. pefs 0.2 keeps only what a task can
change (trainable parameters and every buffer: ``pefs.runtime.start.StartState``), copies it back before each
task and proves it by comparing the live tensors with the kept copy bit for bit (the copy is fingerprinted once
per run, as is the whole model). pefs 0.1 reloaded the whole state dict and fingerprinted every tensor each
task. Both are timed here on random-weight timm models at 224 px (``--repeats`` times each, median), on the CPU.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # started as a file: rerun as `python -m benchmarks.restore`
    import common

    common.run_as_module(__file__)

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import load, load_text, machine, parser, provenance, render_source

STRATEGIES = ("linear", "lora", "full")


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_one(model: str, strategy: str, repeats: int) -> dict:
    """Both ways of putting a task's start back, timed on one wrapped model."""
    from pefs.model import wrap
    from pefs.model.directory import weights_fingerprint
    from pefs.runtime.start import StartState

    m = wrap(model, strategy, num_classes=5, pretrained=False)
    start = StartState(m)
    whole = {k: v.detach().clone() for k, v in m.state_dict().items()}

    def reload_whole() -> None:  # pefs 0.1: every tensor reloaded and hashed, per task
        m.load_state_dict(whole)
        weights_fingerprint(list(m.state_dict().items()))

    return {"model": model, "strategy": strategy, "changeable": sum(t.numel() for t in start.saved.values()),
            "params": sum(p.numel() for p in m.parameters()), "restore_s": _median_s(start.restore, repeats),
            "reload_whole_s": _median_s(reload_whole, repeats)}


def measure(models: list[str], repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    load_start = load()
    rows = [measure_one(m, s, repeats) for m in models for s in STRATEGIES]
    return {"rows": rows, "repeats": repeats, "threads": threads, "machine": machine(), "load_start": load_start,
            "load_end": load(), **provenance(__file__)}


def markdown(r: dict) -> str:
    """The page, from the record alone."""
    lines = ["# Per-task restore of the run's start", "",
             f"`{r['command']}` at commit `{r['git_commit']}`, {r['measured_at']} (raw numbers: "
             "`benchmarks/restore.json`).", "",
             "Before each task pefs puts back what the task can change and compares it bit for bit with the copy "
             "it keeps (0.2; the copy is fingerprinted once per run); 0.1 reloaded and fingerprinted the whole "
             "state. Median of "
             f"{r['repeats']} repeats, {r['threads']} torch threads, random-weight timm models at 224 px.", "",
             "| model | strategy | tensors a task can change | parameters | 0.2 restore + bitwise check (ms) | "
             "0.1 reload + whole fingerprint (ms) |", "|---|---|---:|---:|---:|---:|"]
    for row in r["rows"]:
        lines.append(f"| {row['model']} | {row['strategy']} | {row['changeable']:,} | {row['params']:,} | "
                     f"{1000 * row['restore_s']:.1f} | {1000 * row['reload_whole_s']:.1f} |")
    m = r["machine"]
    lines += ["", f"Machine: {m['cpus']} CPUs ({m['cpu']}), torch {m['torch']}, {m['device']}; load average "
              f"{load_text(r['load_start'])} at the start, {load_text(r['load_end'])} at the end (other work on "
              "the machine only adds time).", ""]
    return "\n".join(lines)


def main() -> None:
    p = parser(__doc__, "benchmarks/restore.json")
    p.add_argument("--models", default="vit_small_patch16_224,vit_base_patch16_224")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).with_suffix("")), help="output stem")
    a = p.parse_args()
    data = render_source(a, a.out + ".json")
    if data is not None:
        if not data.exists():
            sys.exit(f"restore.py: --render needs the raw data {data} (run without --render first)")
        Path(a.out + ".md").write_text(markdown(json.loads(data.read_text())))
        return
    r = measure(a.models.split(","), a.repeats, a.threads)
    Path(a.out + ".json").write_text(json.dumps(r, indent=2) + "\n")
    Path(a.out + ".md").write_text(markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
