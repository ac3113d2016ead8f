#!/usr/bin/env python
"""pefs' frozen-prefix pass against a bare forward loop, in one process, on the same images (benchmarks/speed.md).

speed.py times the forward-only limit in a separate probe process; this script checks, without the process
boundary, whether ``pefs.engine.outputs`` (what TaskRunner runs once per image for the linear probe and
prototype heads) costs more than a hand-written ``inference_mode`` + autocast loop over the same network, batch 16,
channels-last, bf16 where the CPU has it natively. Per episode (5-way 5-shot, 15 queries, 100 images): the bare
loop twice (cold, then warm) and pefs once, interleaved.

    .venv/bin/python benchmarks/prefix_vs_forward.py [--episodes 6]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=6)
    a = p.parse_args()
    import torch

    from pefs import engine
    from pefs.config import TuneConfig
    from pefs.data import episodes, load_default
    from pefs.fewshot import TaskRunner

    torch.manual_seed(0)
    cfg = TuneConfig(model="efficientnet_lite0.offline", strategy="linear", head="prototype", img_size=128,
                     train=engine.TrainConfig(progress=False))
    runner = TaskRunner(cfg, 5)
    net, device = runner.model.net, torch.device("cpu")
    precision = engine.inference_precision(cfg.train, device)

    def bare(x: torch.Tensor) -> None:
        x = x.contiguous(memory_format=torch.channels_last)
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with torch.inference_mode(), cast:
            for i in range(0, len(x), 16):
                net.forward_head(net.forward_features(x[i:i + 16]), pre_logits=True)

    print(f"precision of no-grad passes: {precision}; torch threads {torch.get_num_threads()}")
    print("| episode | bare loop, cold (s) | bare loop, warm (s) | pefs engine.outputs (s) |\n|---|---|---|---|")
    rows = []
    for k, e in enumerate(episodes(load_default().train, 5, 5, 15, a.episodes, seed=0)):
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
        print(f"| {k} | {times[0]:.3f} | {times[1]:.3f} | {times[2]:.3f} |")
    med = [statistics.median(r[i] for r in rows) for i in range(3)]
    print(f"| median | {med[0]:.3f} | {med[1]:.3f} | {med[2]:.3f} |")
    print(f"\npefs ÷ bare (warm), median over episodes: {med[2] / med[1]:.2f}×")


if __name__ == "__main__":
    main()
