#!/usr/bin/env python
"""pefs against the plain timm + peft pipeline a user would write: same data, seeds, weights and hyperparameters.

For each strategy two worker processes run the same few-shot tasks alternately (A, B, A, B, ...):

* **reference**: ``timm.create_model`` with the backbone's weights, ``peft.inject_adapter_in_model`` (LoRA) or a
  linear head, a plain PyTorch loop (AdamW, cosine schedule), then evaluation over the queries. The linear probe and
  last-k references compute the frozen part once per image (features; the last k blocks' input) and train the
  rest on it (``benchmarks/speed_parts.py``); ``linear-naive`` / ``last-k-naive`` rows keep the loop that reruns
  the frozen trunk every step, labelled; every other strategy runs the whole network every step. A CNN runs
  channels-last, as pefs does (timm's own
  ``--channels-last``; ``--ref-layout nchw`` for PyTorch's default): the layout changes the order of floating-point
  sums, and training to near-zero loss amplifies that into differing predictions, so both sides use one layout
  (the layout's own speed is a hardware probe). Strategies with no standard library (VPT, adapters)
  get their modules from ``pefs.wrap`` and the same plain loop.
* **pefs**: :class:`pefs.runtime.task.TaskRunner`, the path behind ``pefs tune`` and the episodic runner (channels-last,
  Accelerate, frozen-prefix caching).

Both start from identical weights (the same seeded construction), see the same batches in the same order and
keep BatchNorm statistics frozen, so they compute the same function up to floating-point layout effects; their
predictions must be identical query by query except floating-point ties, or the comparison is void (the
report says so, and the run exits 1). pefs' side runs a linear head and fp32 no-grad passes there (the row says
so); the fp32-vs-bf16 section runs its bf16 default. Per strategy: median seconds per episode
(N-way K-shot, Q queries per class) and per K-shot run (all classes, full test split), task images per second,
each worker's peak memory growth (RSS on a CPU: every worker is forked fresh from one pre-imported server; peak
allocated on a GPU), accuracy of both sides, and pefs' time as a multiple of one inference-mode forward pass
over the task's support + query images (the forward-only limit). Then hardware probes (layout, bf16 autocast,
threads, eval batch size, torch.compile), pefs with fp32 vs bf16 no-grad passes (``inference_precision``), a
protocol run of many episodes (where pefs' run-wide cache amortises), and strategies again with pefs'
``grad_checkpointing`` (memory for time).

    .venv/bin/python -m benchmarks.speed                       # full run (~13 min on 2 CPU cores)
    .venv/bin/python -m benchmarks.speed --tiny                # tiny random model, 1 epoch (what the test runs)
    .venv/bin/python -m benchmarks.speed --strategies linear,lora --episodes 5 --markdown out.md --json out.json
    .venv/bin/python -m benchmarks.speed --render              # the report of benchmarks/speed.json, printed

The parent process only orchestrates (standard library); all measuring happens in the workers. Modules of
``benchmarks``: ``speed_sides`` (the reference and pefs sides of a task), ``speed_probes`` (forward limit, hardware
probes, the workers' entry point), ``speed_report`` (tables and verdicts), ``live_memory`` (live tensor memory on
a CPU), ``common`` (machine, load, provenance, pages).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # started as a file: rerun as `python -m benchmarks.speed`
    import common

    common.run_as_module(__file__)

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import load, load_text, parser, provenance, render_source, write_report
from benchmarks.speed_probes import worker_main
from benchmarks.speed_report import render, targets

#: imported once by the fork server, so every worker starts with them loaded and none of their memory in its delta
PRELOAD = ["torch", "timm", "timm.data", "peft", "accelerate", "pefs", "pefs.runtime.task", "pefs.runtime.engine"]
#: strategies run by default, in this order, when registered (``prototype`` is the linear probe with pefs'
#: prototype head); ``full`` is there for the memory comparison
AUTO = ["linear", "linear-naive", "prototype", "last-k", "last-k-naive", "lora", "vpt", "adapter", "full"]
#: second, labelled references of the frozen-prefix rows: the plain loop that reruns the frozen part every step
#: (the fair reference of ``linear`` / ``last-k`` computes it once per image, as a PyTorch user who caches does)
NAIVE = ("linear-naive", "last-k-naive")
#: strategies whose frozen prefix pefs computes once (targets: no slower than the fair reference, >= 3x over a
#: protocol run, <= 1.3x the forward limit)
FROZEN = ("linear", "prototype", "last-k")
#: what pefs' side runs with in every comparison row, where it differs from pefs' defaults, so that both sides
#: compute the same function and are judged on identical predictions: a randomly initialised linear head (the
#: default ``linear-proto`` starts from prototypes) and fp32 no-grad passes (``auto`` is bf16 on bf16 hardware; the
#: fp32-vs-bf16 section measures that). Each row's label says so.
SAME_FUNCTION = {"head": "linear", "inference_precision": "no"}
#: a quick subset for --tiny: the timm linear probe, the prototype head, peft LoRA, a pefs-built strategy, full
TINY = ["linear", "linear-naive", "prototype", "lora", "full"]
DEFAULT_OPTIONS = ["vpt.mode=pixel"]


# --------------------------------------------------------------------------------------------------- settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--tiny`` fills smaller defaults in :func:`settings`)."""
    p = parser(__doc__, "benchmarks/speed.json", formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random model, 32 px, 1 episode, 1 epoch, no compile")
    p.add_argument("--model", help="pefs model name (default efficientnet_lite0.offline; --tiny: test_efficientnet)")
    p.add_argument("--img-size", type=int, help="input side in pixels (default 128; --tiny: 32)")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=5, help="support images per class in an episode")
    p.add_argument("--queries", type=int, default=15, help="query images per class in an episode")
    p.add_argument("--episodes", type=int, help="timed episodes per side and strategy (default 3; --tiny: 1)")
    p.add_argument("--kshot-shots", type=int, help="K of the K-shot run over all classes (default 5; --tiny: 1)")
    p.add_argument("--kshot-runs", type=int, default=1, help="timed K-shot runs per side and strategy (0: none)")
    p.add_argument("--epochs", type=int, help="epochs over the support set for strategies that train through the "
                                              "backbone (default 5; --tiny: 1)")
    p.add_argument("--frozen-epochs", type=int, help="epochs for the frozen-prefix strategies, whose reference "
                                                     "runs the trunk every step (default 0: pefs' TrainConfig "
                                                     "default, 30; --tiny: 1)")
    p.add_argument("--ref-layout", choices=("channels-last", "nchw"), default="channels-last",
                   help="memory layout of the reference side for CNNs (default: channels-last, pefs' layout)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-batch-size", type=int, help="pefs' eval batch (default: its TrainConfig default); the "
                                                       "reference and the forward-only limit use it too, else the "
                                                       "training batch size")
    p.add_argument("--strategies", help=f"comma-separated (default: those of {', '.join(AUTO)} that pefs has; "
                                        f"--tiny: {','.join(TINY)})")
    p.add_argument("-o", "--option", action="append", default=None, metavar="STRATEGY.KEY=VALUE",
                   help=f"strategy option (default: {' '.join(DEFAULT_OPTIONS)})")
    p.add_argument("--repeats", type=int, help="rounds of each interleaved probe, median taken (default 3)")
    p.add_argument("--threads", type=int, help="torch threads in every worker (default: torch's; --tiny: 1)")
    p.add_argument("--precision-strategies", help="strategies run by pefs with inference_precision no (fp32) vs "
                                                  "bf16 (default linear,lora; --tiny: none; '' to skip)")
    p.add_argument("--stream-episodes", type=int, help="episodes of the protocol run, where pefs' run-wide cache "
                                                       "amortises (default 100, as `pefs tune --ways`; --tiny: 2; "
                                                       "0: none)")
    p.add_argument("--stream-strategies", help="strategies given the protocol run (default prototype; --tiny: linear)")
    p.add_argument("--checkpointed", help="strategies measured again with pefs' grad_checkpointing=True "
                                          "(default lora; --tiny: none; '' to skip)")
    p.add_argument("--no-probes", action="store_true", help="skip the hardware probes")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile probe")
    p.add_argument("--compile-timeout", type=float, default=240.0, help="seconds before a compile probe is abandoned")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true",
                   help="pefs' side with TrainConfig(deterministic=True): fp32 throughout, no TF32, deterministic "
                        "GPU algorithms (the same numbers as on a CPU; slower on a GPU)")
    p.add_argument("--json", type=Path, help="write every measurement here (default: beside --markdown, .json)")
    p.add_argument("--markdown", type=Path, help="write the report here (also printed)")
    return p.parse_args(argv)


def settings(a: argparse.Namespace) -> dict[str, Any]:
    """Plain, picklable settings for the workers (``--tiny`` fills smaller defaults)."""
    tiny = a.tiny

    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if tiny else full)

    options: dict[str, dict[str, str]] = {}
    for item in a.option if a.option is not None else DEFAULT_OPTIONS:
        key, sep, value = item.partition("=")
        name, dot, field = key.rpartition(".")
        if not sep or not dot:
            raise SystemExit(f"option {item!r} must read STRATEGY.KEY=VALUE")
        options.setdefault(name, {})[field] = value
    precision = pick(a.precision_strategies, "linear,lora", "")
    return {
        "tiny": tiny, "model": pick(a.model, "efficientnet_lite0.offline", "test_efficientnet"),
        "img_size": pick(a.img_size, 128, 32), "ways": a.ways, "shots": a.shots, "queries": a.queries,
        "episodes": pick(a.episodes, 3, 1), "kshot_shots": pick(a.kshot_shots, 5, 1), "kshot_runs": a.kshot_runs,
        "epochs": pick(a.epochs, 5, 1), "frozen_epochs": pick(a.frozen_epochs, 0, 1),
        "batch_size": a.batch_size, "pefs_eval_batch_size": a.eval_batch_size, "ref_layout": a.ref_layout,
        "eval_batch_size": a.eval_batch_size or a.batch_size,
        "strategies": pick(a.strategies, "auto", ",".join(TINY)), "options": options, "repeats": pick(a.repeats, 3, 1),
        "threads": pick(a.threads, 0, 1),
        "precision_strategies": [s for s in precision.split(",") if s], "probes": not a.no_probes,
        "stream_episodes": pick(a.stream_episodes, 100, 2),
        "stream_strategies": [x for x in pick(a.stream_strategies, "prototype", "linear").split(",") if x],
        "checkpointed": [x for x in pick(a.checkpointed, "lora", "").split(",") if x],
        "compile": not (a.no_compile or tiny), "compile_timeout": a.compile_timeout, "seed": a.seed,
        "deterministic": a.deterministic,
    }


# ------------------------------------------------------------------------------------------------- the parent


class WorkerError(RuntimeError):
    """A worker raised, died or timed out; the message carries its traceback."""


class Worker:
    """A worker process forked from the server, driven job by job through a pipe."""

    def __init__(self, ctx, role: str, s: dict[str, Any], run: dict[str, Any] | None = None,
                 overrides: dict[str, Any] | None = None, timeout: float | None = None, wait: bool = True) -> None:
        self.role = role
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, role, s, run, overrides or {}), daemon=True)
        self.proc.start()
        child.close()
        self.first: dict[str, Any] = {}
        if wait:
            self.ready(timeout)

    def ready(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the worker's first message (set-up and warm-up done)."""
        self.first = self._recv(timeout)
        return self.first

    def _recv(self, timeout: float | None) -> dict[str, Any]:
        try:
            if not self.conn.poll(timeout):
                self.kill()
                raise WorkerError(f"{self.role} worker gave no answer within {timeout:.0f} s")
            out = self.conn.recv()
        except (EOFError, OSError) as e:
            self.kill()
            raise WorkerError(f"{self.role} worker died (exit code {self.proc.exitcode})") from e
        if "error" in out:
            self.kill()
            raise WorkerError(f"{self.role} worker failed:\n{out['error']}")
        return out

    def ask(self, job: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send one job and wait for its answer."""
        self.conn.send(job)
        return self._recv(timeout)

    def close(self) -> dict[str, Any]:
        """Stop the worker; its final report (peak memory, set-up)."""
        out = self.ask({"kind": "stop"})
        self.proc.join(30)
        return out

    def kill(self) -> None:
        """End the worker process now, whatever it is doing."""
        if self.proc.is_alive():
            self.proc.terminate()  # only this worker, which this script started
        self.proc.join(10)


def plan(s: dict[str, Any], info: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The strategy runs to make and why any asked-for strategy is skipped."""
    wanted = AUTO if s["strategies"] == "auto" else [n.strip() for n in s["strategies"].split(",") if n.strip()]
    runs, skipped = [], []
    frozen = s["frozen_epochs"] or info["default_epochs"]
    streamed = set(s["stream_strategies"]) if s["stream_episodes"] else set()  # --stream-episodes 0: no protocol run
    for name in wanted:
        if name == "prototype":
            if "prototype" not in info["heads"]:
                skipped.append("prototype: pefs has no prototype head (pefs.heads.registry)")
                continue
            runs.append({"name": name, "strategy": "linear", "head": "prototype", "options": {}, "ref": "prototype",
                         "epochs": 0, "stream": name in streamed,
                         "overrides": {"inference_precision": "no"}, "pefs_options": "head prototype, fp32 no-grad"})
            continue
        strategy = name.removesuffix("-naive") if name in NAIVE else name
        if strategy not in info["strategies"]:
            skipped.append(f"{name}: not a registered pefs strategy")
            continue
        opts = dict(s["options"].get(strategy, {}))
        label = name + "".join(f" {k}={v}" for k, v in opts.items())
        ref = name if name in ("linear", "lora", "full", "last-k", *NAIVE) else "wrap"
        runs.append({"name": label, "strategy": strategy, "head": SAME_FUNCTION["head"], "options": opts, "ref": ref,
                     "epochs": frozen if strategy in FROZEN else s["epochs"], "stream": name in streamed,
                     "overrides": {"inference_precision": SAME_FUNCTION["inference_precision"]},
                     "pefs_options": "head linear, fp32 no-grad"})
        if name in s["checkpointed"]:  # the same job with pefs trading time for memory
            runs.append({**runs[-1], "name": label + " +grad ckpt", "stream": False, "checkpointed": True,
                         "overrides": {**runs[-1]["overrides"], "grad_checkpointing": True}})
    return runs, skipped


def compare(ctx, s: dict[str, Any], run: dict[str, Any], a: tuple[str, dict], b: tuple[str, dict],
            protocols: tuple[str, ...] = ("episode", "kshot"), probe: Worker | None = None) -> dict[str, Any]:
    """Run the same tasks on two workers alternately (A B, B A, ...); per-task results, limits and memory."""
    s = {**s, "epochs": max(run["epochs"], 1)}
    wa, wb = Worker(ctx, a[0], s, run, a[1], wait=False), None
    try:  # both set up and warm up at once (untimed); the timed tasks then run one at a time
        wb = Worker(ctx, b[0], s, run, b[1], wait=False)
        wa.ready()
        wb.ready()
        res: dict[str, Any] = {"a": {p: [] for p in protocols}, "b": {p: [] for p in protocols},
                               "limit": {p: [] for p in protocols}}
        r = 0
        for p in protocols:
            n = {"episode": s["episodes"], "kshot": s["kshot_runs"], "stream": s["stream_episodes"]}[p]
            for i in range(n):
                job = {"kind": "task", "protocol": p, "index": i}
                for key, w in ((("a", wa), ("b", wb)) if r % 2 == 0 else (("b", wb), ("a", wa))):
                    res[key][p].append(w.ask(job))
                if probe is not None and p != "stream":  # a stream's episodes have the episodes' limit
                    res["limit"][p].append(probe.ask({"kind": "limit", "protocol": p, "index": i}))
                r += 1
        res["a_final"], res["b_final"] = wa.close(), wb.close()
        return res
    finally:
        for w in (wa, wb):
            if w is not None:
                w.kill()


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    """The median of ``key`` over the rows that have a number there."""
    vals = [r[key] for r in rows if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key]))]
    return statistics.median(vals) if vals else None


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    """The mean of ``key`` over the rows."""
    vals = [r[key] for r in rows]
    return sum(vals) / len(vals) if vals else None


def summarize(run: dict[str, Any], res: dict[str, Any]) -> dict[str, Any]:
    """One table row's numbers from a reference-vs-pefs comparison."""
    ref, pf = res["a"], res["b"]
    row: dict[str, Any] = {"name": run["name"], "strategy": run["strategy"], "frozen": run["name"] in FROZEN,
                           "pefs_options": run.get("pefs_options"),
                           "epochs": run["epochs"],
                           "ref_peak_mb": res["a_final"]["peak_mb"], "pefs_peak_mb": res["b_final"]["peak_mb"],
                           "ref_tensor_mb": res["a_final"].get("tensor_peak_mb"),
                           "pefs_tensor_mb": res["b_final"].get("tensor_peak_mb"),
                           "memory_method": res["b_final"]["memory_method"],
                           **{k: res["b_final"].get(k) for k in ("gc_collect_s", "restore_s", "fingerprint_s")},
                           "trainable_ref": res["a_final"]["setup"].get("episode", {}).get("trainable"),
                           "trainable": res["b_final"]["setup"].get("episode", {}).get("trainable"),
                           "setup_s": {"ref": res["a_final"]["setup"], "pefs": res["b_final"]["setup"]}}
    for p in ("episode", "kshot", "stream"):
        if not pf.get(p):
            continue
        agg = _mean if p == "stream" else _median  # a stream's cost is its total over its episodes
        for side, rows in (("ref", ref[p]), ("pefs", pf[p])):
            row[f"{side}_{p}_s"] = agg(rows, "total_s")
            row[f"{side}_{p}_acc"] = _mean(rows, "accuracy")
            row[f"{side}_{p}_img_s"] = rows[0]["images"] / row[f"{side}_{p}_s"]
            for t in rows:
                t["other_s"] = t["total_s"] - sum(t.get(k, 0.0) for k in ("decode_s", "extract_s", "train_s", "eval_s"))
            row[f"{side}_{p}_parts"] = {k: agg(rows, k) if all(k in t for t in rows) else None
                                        for k in ("decode_s", "extract_s", "train_s", "eval_s", "other_s")}
            row[f"{side}_{p}_loss"] = _mean(rows, "final_loss") if all(
                not math.isnan(r["final_loss"]) for r in rows) else None
        limits = res["limit"].get("episode" if p == "stream" else p) or []
        row[f"limit_{p}_s"] = _median(limits, "limit_s") if limits else None
        row[f"limit_bf16_{p}_s"] = _median(limits, "limit_bf16_s") if limits else None
        row[f"speedup_{p}"] = row[f"ref_{p}_s"] / row[f"pefs_{p}_s"]
        for lim in ("", "bf16_"):
            if row[f"limit_{lim}{p}_s"]:
                row[f"pefs_vs_limit_{lim}{p}"] = row[f"pefs_{p}_s"] / row[f"limit_{lim}{p}_s"]
                row[f"pefs_vs_limit_{lim}{p}_no_decode"] = (row[f"pefs_{p}_s"] - row[f"pefs_{p}_parts"]["decode_s"]) \
                    / row[f"limit_{lim}{p}_s"]
        if p == "stream":
            row["pefs_stream_decoded"] = sum(t.get("decoded", 0) for t in pf[p])
            row["stream_images"] = sum(t["images"] for t in pf[p])
        row.update(agreement(ref[p], pf[p], p))
    row["tasks"] = res
    return row


#: two scores closer than this (relative to the task's largest |score|) are a floating-point tie: the sides run
#: the same function in other layouts and orders (channels-last, cached prefix, fused kernels), so their argmax may
#: differ there and nowhere else
TIE = 1e-3


def agreement(ref: list[dict[str, Any]], pf: list[dict[str, Any]], p: str) -> dict[str, Any]:
    """Strict agreement of two sides computing the same function, query by query: predictions must be identical
    except where, on either side, the two predicted classes' scores tie to within floating-point noise (TIE)."""
    mismatches = ties = queries = 0
    worst = 0.0
    for a, b in zip(ref, pf):
        for sa, sb in zip(a["scores"], b["scores"]):
            queries += 1
            scale = max(max(abs(v) for v in sa), max(abs(v) for v in sb), 1e-12)
            worst = max(worst, max(abs(x - y) for x, y in zip(sa, sb)) / scale)
            ia, ib = max(range(len(sa)), key=sa.__getitem__), max(range(len(sb)), key=sb.__getitem__)
            if ia == ib:
                continue
            mismatches += 1
            ties += min(abs(sa[ia] - sa[ib]), abs(sb[ia] - sb[ib])) <= TIE * scale
    return {f"queries_{p}": queries, f"mismatch_{p}": mismatches, f"mismatch_tie_{p}": ties,
            f"score_diff_{p}": worst, f"agree_{p}": mismatches == ties}


# ------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = render_source(args, Path(__file__).with_suffix(".json"))
    if data is not None:
        md = render(json.loads(data.read_text()))
        print(md)
        if args.markdown:
            write_report(args.markdown, md, "speed.py")
        return 0
    if args.markdown and not args.json:
        args.json = args.markdown.with_suffix(".json")
    s = settings(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t_start = time.perf_counter()
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    result: dict[str, Any] = {**provenance(__file__, argv), "settings": s, "load_start": load(), "rows": [],
                              "bf16": []}
    with tempfile.TemporaryDirectory(prefix="pefs-speed-") as tmp:
        s["checkpoint"] = str(Path(tmp) / "backbone.pth")
        offline = s["model"].endswith(".offline")
        s["pretrained"] = offline
        s["pefs_checkpoint"] = None if offline else s["checkpoint"]
        _say(f"preparing {s['model']} (the first worker imports torch, timm, peft, pefs)")
        probe = Worker(ctx, "probe", s)
        info = result["info"] = probe.first["info"]
        runs, result["skipped"] = plan(s, info)
        if s["probes"]:
            _say("hardware probes")
            try:
                result["probes"] = probe.ask({"kind": "probes"})
            except WorkerError as e:
                result["probes"] = {"error": str(e)}
                probe = Worker(ctx, "probe", s)
        protocols = ("episode", "kshot") if s["kshot_runs"] else ("episode",)
        for run in runs:
            _say(f"{run['name']}: reference vs pefs, load {load_text(load())}")
            try:
                wanted = protocols + (("stream",) if run.get("stream") and s["stream_episodes"] else ())
                res = compare(ctx, s, run, ("ref", {}), ("pefs", run.get("overrides", {})), wanted, probe)
                row = summarize(run, res)
            except WorkerError as e:
                row = {"name": run["name"], "strategy": run["strategy"], "error": str(e)}
                if not probe.proc.is_alive():
                    probe = Worker(ctx, "probe", s)
            row["load"] = load()
            result["rows"].append(row)
        probe.close()
        by_name = {run["strategy"]: run for run in runs if run["head"] == "linear" and not run.get("checkpointed")
                   and run["ref"] not in NAIVE}
        for name in s["precision_strategies"]:
            if name not in by_name:
                continue
            _say(f"{name}: pefs with fp32 vs bf16 no-grad passes")
            run = {**by_name[name], "stream": False}
            try:
                res = compare(ctx, s, run, ("pefs", {"inference_precision": "no"}),
                              ("pefs", {"inference_precision": "bf16"}), ("episode",))
                result["bf16"].append(summarize(run, res))
            except WorkerError as e:
                result["bf16"].append({"name": run["name"], "error": str(e)})
        if s["compile"]:
            result["compile"] = {}
            cache = str(Path(tmp) / "inductor")
            for label in ("cold", "warm"):
                _say(f"torch.compile, {label} cache (up to {s['compile_timeout']:.0f} s)")
                try:
                    w = Worker(ctx, "compile", s, overrides={"cache_dir": cache})
                    result["compile"][label] = w.ask({"kind": "compile"}, timeout=s["compile_timeout"])
                    w.close()
                except WorkerError as e:
                    result["compile"] = {"error": str(e)}
                    break
    result["gpu"] = ("CUDA available: the workers chose torch.device('cuda') (memory = "
                     "torch.cuda.max_memory_allocated)." if info["cuda"] else
                     "Skipped: torch.cuda.is_available() is False on this machine; no GPU number is reported.")
    result["load_end"] = load()
    result["wall_s"] = time.perf_counter() - t_start
    result["targets"] = targets(result)
    md = render(result)
    print(md)
    if args.markdown:
        write_report(args.markdown, md, "speed.py")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    disagree = [f"{row['name']} ({p})" for row in result["rows"] for p in ("episode", "kshot", "stream")
                if row.get(f"agree_{p}") is False]
    if disagree:
        print("speed.py: reference and pefs predict differently beyond floating-point ties: " + ", ".join(disagree),
              file=sys.stderr)
    return 1 if disagree or any("error" in row for row in result["rows"]) else 0


_T0 = time.perf_counter()


def _say(msg: str) -> None:
    """A progress line on stderr, with the seconds since the script started."""
    print(f"[speed {time.perf_counter() - _T0:5.0f} s] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
