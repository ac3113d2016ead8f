#!/usr/bin/env python
"""Peak training memory of each strategy against full fine-tuning at the same batch, across model sizes.

Each (model, strategy) trains in a fresh process through ``pefs.runtime.engine.fit`` (what ``pefs tune`` runs): a few
steps on random images at one batch size. Two measures: the peak of live tensor memory created during a fit
(:class:`benchmarks.live_memory.LiveTensors` on a CPU, ``torch.cuda.max_memory_allocated`` on a GPU), which the
ratios use, and on a CPU the process's peak RSS growth from after the model is built (VmHWM reset through
/proc/self/clear_refs), which also counts memory the allocator keeps after tensors die. A
strategy written ``NAME@ckpt`` runs with ``TrainConfig(grad_checkpointing=True)``. Models without offline
weights use random ones: memory and time do not depend on the weights' values.

    .venv/bin/python -m benchmarks.memory                      # ViT-S/16, ViT-B/16, EfficientNet-Lite0
    .venv/bin/python -m benchmarks.memory --tiny               # a tiny ViT, 1 step (what the test runs)
    .venv/bin/python -m benchmarks.memory --markdown benchmarks/memory.run.md   # data: benchmarks/memory.run.json
    .venv/bin/python -m benchmarks.memory --render             # the report of benchmarks/memory.json, printed
    .venv/bin/python -m benchmarks.memory --render benchmarks/memory.run.json --markdown benchmarks/memory.run.md
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # started as a file: rerun as `python -m benchmarks.memory`
    import common

    common.run_as_module(__file__)

import argparse
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import load, load_text, machine, parser, provenance, render_source, write_report

MODELS = ["vit_small_patch16_224", "vit_base_patch16_224", "efficientnet_lite0.offline"]
STRATEGIES = ["full", "full@ckpt", "linear", "last-k", "bias", "lora", "lora@ckpt", "vpt", "vpt@ckpt", "adapter",
              "adapter@ckpt"]
TARGET = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--tiny`` fills smaller defaults later, in :func:`main`)."""
    p = parser(__doc__, "benchmarks/memory.json")
    p.add_argument("--tiny", action="store_true", help="a tiny ViT at 32 px, 1 step, a few strategies")
    p.add_argument("--models", help=f"comma-separated pefs model names (default {','.join(MODELS)})")
    p.add_argument("--strategies", help=f"comma-separated, NAME@ckpt for gradient checkpointing (default "
                                        f"{','.join(STRATEGIES)})")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, help="input side in pixels (default 224; --tiny: 32)")
    p.add_argument("--steps", type=int, default=1, help="training steps per fit (default 1: gradients and AdamW "
                                                         "state exist from the first step on)")
    p.add_argument("--json", type=Path, help="write every measurement here (default: beside --markdown, .json)")
    p.add_argument("--markdown", type=Path, help="write the report here (also printed)")
    return p.parse_args(argv)


def measure(model: str, spec: str, batch: int, img_size: int, steps: int, conn) -> None:
    """In a fresh process: build ``model`` with ``spec``, train ``steps`` steps, send peak memory and time."""
    try:
        import torch

        import pefs
        from pefs.backbones import OFFLINE_MODELS
        from pefs.runtime import engine

        strategy, _, flag = spec.partition("@")
        kwargs = {"img_size": img_size} if "vit" in model else {}
        torch.manual_seed(0)
        m = pefs.wrap(model, strategy, num_classes=5, pretrained=model in OFFLINE_MODELS, model_kwargs=kwargs,
                      **({"mode": "pixel"} if strategy == "vpt" and "vit" not in model else {}))
        x = torch.randn(batch, 3, img_size, img_size)
        y = torch.arange(batch) % 5
        cfg = engine.TrainConfig(epochs=steps, batch_size=batch, progress=False, grad_checkpointing=flag == "ckpt")
        from benchmarks.live_memory import LiveTensors, PeakMemory

        cuda = torch.cuda.is_available()
        if cuda:
            m.cuda()
        memory = PeakMemory(cuda)  # from here: peak RSS growth on a CPU, peak allocated on a GPU
        stats = engine.fit(m, x, y, cfg)
        grown = memory.delta_mb()
        out = {"rss_mb": None if cuda else grown, "s_per_step": stats.train_s / max(stats.steps, 1),
               "trainable": m.param_report()["trainable"], "params": m.backbone_params, "cached": stats.cached}
        if cuda:
            out["peak_mb"] = grown
        else:
            with LiveTensors() as live:  # a second fit, counting live tensors (slower: not timed)
                engine.fit(m, x, y, cfg)
            out["peak_mb"] = live.peak_mb
        conn.send(out)
    except BaseException as e:  # the parent reports it in the table
        conn.send({"error": f"{type(e).__name__}: {e}"})


def run_one(ctx, model: str, spec: str, batch: int, img_size: int, steps: int) -> dict[str, Any]:
    """:func:`measure` in a fresh process; its answer, or why there is none."""
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=measure, args=(model, spec, batch, img_size, steps, child))
    proc.start()
    child.close()
    try:
        out = parent.recv() if parent.poll(1800) else {"error": "no answer within 30 minutes"}
    except EOFError:
        out = {"error": "the process died (out of memory?)"}
    proc.join(30)
    return out


def render(r: dict[str, Any]) -> str:
    """The report, from the JSON data alone."""
    s = r["settings"]
    lines = ["## Peak training memory vs full fine-tuning (same batch)", "",
             f"- command: `{r['command']}` at commit `{r.get('git_commit', 'not recorded')}`",
             f"- batch {s['batch_size']}, {s['steps']} training step(s) through "
             f"`pefs.runtime.engine.fit`; load average {load_text(r['load'])} at the start",
             f"- peak MB: {r['memory']}; RSS MB: the process's peak RSS growth over the first fit", "",
             "| model | px | params | strategy | trainable | peak MB | ÷ full | ≤ 0.5× | RSS MB | RSS ÷ full | "
             "s/step |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, rows in r["results"].items():
        full = rows.get("full", {}).get("peak_mb")
        for spec, m in rows.items():
            if "error" in m:
                lines.append(f"| {model} | | | {spec} | failed: {m['error'][:90]} | | | | | | |")
                continue
            ratio = m["peak_mb"] / full if full and spec != "full" else None
            verdict = f"{ratio:.2f}× | {'yes' if ratio <= TARGET else 'no'}" if ratio else "– | –"
            full_rss = rows.get("full", {}).get("rss_mb")
            rss = "– | –" if m.get("rss_mb") is None else f"{m['rss_mb']:.0f} | " + (
                f"{m['rss_mb'] / full_rss:.2f}×" if full_rss and spec != "full" else "–")
            lines.append(f"| {model} | {m['img_size']} | {m['params'] / 1e6:.1f} M | {spec} | {m['trainable']:,} | "
                         f"{m['peak_mb']:.0f} | {verdict} | {rss} | {m['s_per_step']:.2f} |")
    lines += ["", "`@ckpt`: the same strategy with `TrainConfig(grad_checkpointing=True)` (timm recomputes each "
                  "block's activations in backward). `linear` and `last-k` train on cached frozen-prefix "
                  "activations, so their step runs only the head or the last blocks."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    data = render_source(a, Path(__file__).with_suffix(".json"))
    if data is not None:
        md = render(json.loads(data.read_text()))
        print(md, end="")
        if a.markdown:
            write_report(a.markdown, md, "memory.py")
        return 0
    if a.markdown and not a.json:
        a.json = a.markdown.with_suffix(".json")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    models = (a.models or ("vit_tiny_patch16_224" if a.tiny else ",".join(MODELS))).split(",")
    specs = (a.strategies or ("full,linear,lora,lora@ckpt" if a.tiny else ",".join(STRATEGIES))).split(",")
    s = {"batch_size": a.batch_size, "img_size": a.img_size or (32 if a.tiny else 224),
         "steps": a.steps}
    ctx = mp.get_context("spawn")
    start, load_start = provenance(__file__, argv), load()
    results: dict[str, dict[str, Any]] = {}
    for model in models:
        # the CNN at the 128 px of the speed benchmark unless a size is given
        img = s["img_size"] if "vit" in model or a.img_size or a.tiny else 128
        results[model] = {}
        for spec in specs:
            print(f"[memory] {model} {spec}", file=sys.stderr, flush=True)
            results[model][spec] = {**run_one(ctx, model, spec, s["batch_size"], img, s["steps"]), "img_size": img}
    where = machine()
    memory = ("torch.cuda.max_memory_allocated growth over the fit" if where["cuda"] else
              "the most live tensor memory during a fit (benchmarks/live_memory.py; weights that existed before "
              "are not counted), the CPU analogue of torch.cuda.max_memory_allocated")
    r = {**start, "settings": s, "results": results, "memory": memory, "load": load_start, "load_end": load(),
         "machine": where}
    md = render(r)
    print(md)
    if a.markdown:
        write_report(a.markdown, md, "memory.py")
    if a.json:
        a.json.write_text(json.dumps(r, indent=1))
    return 1 if any("error" in m for rows in results.values() for m in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
