#!/usr/bin/env python
"""pefs' frozen-prefix pass against a bare forward loop, in one process, on the same images (benchmarks/speed.md).

speed.py times the forward-only limit in a separate probe process; this script checks, without the process
boundary, whether ``pefs.runtime.engine.outputs`` (what TaskRunner runs once per image for the linear probe and
prototype heads) costs more than a hand-written ``inference_mode`` + autocast loop over the same network, batch 16,
channels-last, bf16 where the CPU has it natively. Per episode (5-way 5-shot, 15 queries, 100 images): the bare
loop twice (cold, then warm) and pefs once, interleaved.

    .venv/bin/python -m benchmarks.prefix_vs_forward [--episodes 6]   # measures: prefix_vs_forward.json + speed.md
    .venv/bin/python -m benchmarks.prefix_vs_forward --render        # re-renders speed.md's section from the JSON

The raw data (machine, versions, commit, command, load, every episode's times) goes to ``--json``; the section of
``--page`` between this script's markers is rendered from it alone.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # started as a file: rerun as `python -m benchmarks.prefix_vs_forward`
    import common

    common.run_as_module(__file__)

import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import load, load_text, machine, parser, provenance, render_source, write_section

HERE = Path(__file__).resolve().parent


def measure(episodes_n: int) -> dict[str, Any]:
    """Time the bare loop (cold, warm) and pefs' engine.outputs per episode; every sample is returned."""
    import torch

    from pefs.config import TuneConfig
    from pefs.data import episodes, load_default
    from pefs.runtime import engine, hardware
    from pefs.runtime.task import TaskRunner

    start, load_start = provenance(__file__), load()
    torch.manual_seed(0)
    cfg = TuneConfig(model="efficientnet_lite0.offline", strategy="linear", head="prototype", img_size=128,
                     train=engine.TrainConfig(progress=False))
    runner = TaskRunner(cfg, 5)
    net, device = runner.model.net, torch.device("cpu")
    precision = hardware.inference_precision(cfg.train, device)

    def bare(x: torch.Tensor) -> None:
        x = x.contiguous(memory_format=torch.channels_last)
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with torch.inference_mode(), cast:
            for i in range(0, len(x), 16):
                net.forward_head(net.forward_features(x[i:i + 16]), pre_logits=True)

    rows = []
    for e in episodes(load_default().train, 5, 5, 15, episodes_n, seed=0):
        x = torch.cat([torch.stack([runner.transform(s.image(i)) for i in range(len(s))])
                       for s in (e.support, e.query)])
        times = []
        for step in ("bare", "bare", "pefs"):
            t0 = time.perf_counter()
            if step == "bare":
                bare(x)
            else:
                engine.outputs(runner.model, x, cfg.train, 0, runner.level)
            times.append(time.perf_counter() - t0)
        rows.append(times)
        print(f"[prefix_vs_forward] episode {len(rows) - 1}: {times}", file=sys.stderr, flush=True)
    return {**start, "precision": precision, "machine": machine(), "load_start": load_start, "load_end": load(),
            "episodes": episodes_n,
            "seconds": [{"bare_cold": r[0], "bare_warm": r[1], "pefs": r[2]} for r in rows]}


def render(d: dict[str, Any]) -> str:
    """The section's Markdown, from the JSON data alone."""
    cols = ("bare_cold", "bare_warm", "pefs")
    med = {c: statistics.median(r[c] for r in d["seconds"]) for c in cols}
    m = d["machine"]
    threads = d.get("threads", m.get("threads"))  # records before benchmarks/common.py: beside the machine
    lines = [f"Command: `{d['command']}` at commit `{d['git_commit']}` "
             "(raw data: its `--json` file, by default `benchmarks/prefix_vs_forward.json`); "
             f"Python {m['python']}, torch {m['torch']}, {m['cpus']} CPUs, load average (1/5/15 min) "
             f"{load_text(d['load_start'])} at the start, {load_text(d['load_end'])} at the end.", "",
             f"precision of no-grad passes: {d['precision']}; torch threads {threads}", "",
             "| episode | bare loop, cold (s) | bare loop, warm (s) | pefs engine.outputs (s) |", "|---|---|---|---|"]
    lines += [f"| {k} | {r['bare_cold']:.3f} | {r['bare_warm']:.3f} | {r['pefs']:.3f} |"
              for k, r in enumerate(d["seconds"])]
    lines += [f"| median | {med['bare_cold']:.3f} | {med['bare_warm']:.3f} | {med['pefs']:.3f} |", "",
              f"pefs ÷ bare (warm), median over episodes: {med['pefs'] / med['bare_warm']:.2f}×"]
    return "\n".join(lines)


def main() -> None:
    p = parser(__doc__, "--json")
    p.add_argument("--episodes", type=int, default=6)
    p.add_argument("--json", type=Path, default=HERE / "prefix_vs_forward.json", help="the raw data")
    p.add_argument("--page", type=Path, default=HERE / "speed.md", help="the page whose section is rendered")
    a = p.parse_args()
    source = render_source(a, a.json)
    if source is not None:
        if not source.exists():
            sys.exit(f"prefix_vs_forward.py: --render needs the raw data {source} (run without --render first)")
        data = json.loads(source.read_text())
    else:
        data = measure(a.episodes)
        a.json.write_text(json.dumps(data, indent=1) + "\n")
    body = render(data)
    print(body)
    write_section(a.page, body, "prefix_vs_forward.py")


if __name__ == "__main__":
    main()
