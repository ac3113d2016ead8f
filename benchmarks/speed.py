#!/usr/bin/env python
"""pefs against the plain timm + peft pipeline a user would write: same data, seeds, weights and hyperparameters.

For each strategy two worker processes run the same few-shot tasks alternately (A, B, A, B, ...):

* **reference**: ``timm.create_model`` with the backbone's weights, ``peft.inject_adapter_in_model`` (LoRA) or a
  linear head, a plain PyTorch loop (AdamW, cosine schedule) in NCHW layout that runs the whole network every step
  (the frozen trunk included), then evaluation over the queries. Strategies with no standard library (VPT, adapters)
  get their modules from ``pefs.wrap`` and the same plain loop.
* **pefs**: :class:`pefs.fewshot.TaskRunner`, the path behind ``pefs tune`` and the episodic runner (channels-last,
  Accelerate, frozen-prefix caching).

Both start from identical weights (the same seeded construction), see the same batches in the same order and
keep BatchNorm statistics frozen, so they compute the same function up to floating-point layout effects; their
accuracies must agree, or the comparison is void (the report says so). Per strategy: median seconds per episode
(N-way K-shot, Q queries per class) and per K-shot run (all classes, full test split), task images per second,
each worker's peak memory growth (RSS on a CPU: every worker is forked fresh from one pre-imported server; peak
allocated on a GPU), accuracy of both sides, and pefs' time as a multiple of one inference-mode forward pass
over the task's support + query images (the forward-only limit). Then hardware probes (layout, bf16 autocast,
threads, eval batch size, torch.compile), pefs with fp32 vs bf16 no-grad passes (``inference_precision``), a
protocol run of many episodes (where pefs' run-wide cache amortises), and strategies again with pefs'
``grad_checkpointing`` (memory for time).

    .venv/bin/python benchmarks/speed.py                       # full run (~10 min on 2 CPU cores)
    .venv/bin/python benchmarks/speed.py --tiny                # tiny random model, 1 epoch (what the test runs)
    .venv/bin/python benchmarks/speed.py --strategies linear,lora --episodes 5 --markdown out.md --json out.json

The parent process only orchestrates (standard library); all measuring happens in the workers.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: imported once by the fork server, so every worker starts with them loaded and none of their memory in its delta
PRELOAD = ["torch", "timm", "timm.data", "peft", "accelerate", "pefs", "pefs.fewshot", "pefs.engine"]
#: strategies run by default, in this order, when registered (``prototype`` is the linear probe with pefs'
#: prototype head); ``full`` is there for the memory comparison
AUTO = ["linear", "prototype", "last-k", "lora", "vpt", "adapter", "full"]
#: strategies whose frozen prefix pefs computes once (targets: >= 5x the reference, <= 1.3x the forward limit)
FROZEN = ("linear", "prototype", "last-k")
#: a quick subset for --tiny: the timm linear probe, the prototype head, peft LoRA, a pefs-built strategy, full
TINY = ["linear", "prototype", "lora", "full"]
DEFAULT_OPTIONS = ["vpt.mode=pixel"]
COLUMNS = ["strategy", "epochs", "trainable", "ref s/episode", "pefs s/episode", "speed-up", "pefs ÷ fwd limit",
           "pefs ÷ bf16 fwd limit",
           "ref s/K-shot", "pefs s/K-shot", "ref img/s", "pefs img/s", "ref peak MB", "pefs peak MB",
           "ref tensor MB", "pefs tensor MB",
           "ref acc (ep / K-shot)", "pefs acc (ep / K-shot)", "agree"]
TARGET_SPEEDUP, TARGET_LIMIT, TARGET_TRAIN, TARGET_MEMORY = 5.0, 1.3, 1.0, 0.5


# --------------------------------------------------------------------------------------------------- settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
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
    p.add_argument("--json", type=Path, help="write every measurement here")
    p.add_argument("--markdown", type=Path, help="write the report here (also printed)")
    p.add_argument("--from-json", type=Path, metavar="PATH", help="measure nothing: render the report of an earlier "
                                                                  "run's --json output")
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
        "batch_size": a.batch_size, "pefs_eval_batch_size": a.eval_batch_size,
        "eval_batch_size": a.eval_batch_size or a.batch_size,
        "strategies": pick(a.strategies, "auto", ",".join(TINY)), "options": options, "repeats": pick(a.repeats, 3, 1),
        "threads": pick(a.threads, 0, 1),
        "precision_strategies": [s for s in precision.split(",") if s], "probes": not a.no_probes,
        "stream_episodes": pick(a.stream_episodes, 100, 2),
        "stream_strategies": [x for x in pick(a.stream_strategies, "prototype", "linear").split(",") if x],
        "checkpointed": [x for x in pick(a.checkpointed, "lora", "").split(",") if x],
        "compile": not (a.no_compile or tiny), "compile_timeout": a.compile_timeout, "seed": a.seed,
    }


# ------------------------------------------------------------------------------------------ worker processes


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Peak memory growth of this process from now: VmHWM after resetting it (Linux), else ru_maxrss;
    on a GPU the peak allocated by torch."""

    def __init__(self, cuda: bool) -> None:
        import torch

        self.cuda = cuda
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            self.how = "torch.cuda.max_memory_allocated"
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the peak RSS (VmHWM) to the current RSS
            self.exact, self.how = True, "VmHWM reset via /proc/self/clear_refs"
        except OSError:
            self.exact, self.how = False, "ru_maxrss (includes peaks before the baseline)"
        self.base = _rss_kb("VmRSS")

    def delta_mb(self) -> float:
        import torch

        if self.cuda:
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        if self.exact:
            return (_rss_kb("VmHWM") - self.base) / 1024
        import resource

        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.base) / 1024


def _tasks(s: dict[str, Any], protocol: str):
    """The ImageSets of every timed task of ``protocol``: (support, query, seed, ways) per task."""
    from pefs.data import episodes, kshot_split, load_default

    ds = load_default()
    if protocol == "episode":
        eps = episodes(ds.train, s["ways"], s["shots"], s["queries"], s["episodes"], seed=s["seed"])
        return [(e.support, e.query, s["seed"] + i, s["ways"]) for i, e in enumerate(eps)]
    if protocol == "stream":  # a protocol run: many episodes from one pool, as `pefs tune --ways` draws them
        eps = episodes(ds.train, s["ways"], s["shots"], s["queries"], s["stream_episodes"], seed=s["seed"] + 500)
        return [(e.support, e.query, s["seed"] + 500 + i, s["ways"]) for i, e in enumerate(eps)]
    if protocol == "warmup":  # a task of its own, run by a separate runner/model: no cache is shared
        e = next(episodes(ds.train, s["ways"], s["shots"], s["queries"], 1, seed=s["seed"] + 9_999))
        return [(e.support, e.query, s["seed"] + 9_999, s["ways"])]
    out = []
    for j in range(s["kshot_runs"]):
        split = kshot_split(ds, s["kshot_shots"], seed=s["seed"] + j)
        out.append((split.support, split.query, s["seed"] + j, len(ds.classes)))
    return out


def _timm_name(s: dict[str, Any]) -> str:
    from pefs.backbones import OFFLINE_MODELS

    return OFFLINE_MODELS[s["model"]].timm_name if s["model"] in OFFLINE_MODELS else s["model"]


def _model_kwargs(s: dict[str, Any]) -> dict[str, Any]:
    from pefs.fewshot import _takes_img_size

    return {"img_size": s["img_size"]} if _takes_img_size(s["model"]) else {}


def _plain_model(s: dict[str, Any], classes: int):
    """What a timm user writes: the architecture, the checkpoint, a fresh ``classes``-way head."""
    import timm

    model = timm.create_model(_timm_name(s), checkpoint_path=s["checkpoint"], **_model_kwargs(s))
    model.reset_classifier(classes)
    return model


def _transform(s: dict[str, Any], model) -> Callable:
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    cfg["input_size"] = (3, s["img_size"], s["img_size"])
    return create_transform(**cfg, is_training=False)


def _decode(images, tf: Callable):
    import numpy as np
    import torch

    x = torch.stack([tf(images.image(i)) for i in range(len(images))])
    return x, torch.as_tensor(np.asarray(images.labels), dtype=torch.long)


def _classifier(model):
    get = getattr(model, "get_classifier", None)
    return get() if get is not None else model.head


def _cnn(model) -> bool:
    import torch

    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


class RefSide:
    """The reference pipeline: plain timm (+ peft), plain PyTorch loop, NCHW, the whole network every step."""

    def __init__(self, s: dict[str, Any], run: dict[str, Any], overrides: dict[str, Any]) -> None:
        import torch

        from pefs.engine import TrainConfig

        self.s, self.run, self.kind = s, run, run["ref"]
        self.train = TrainConfig()  # the same learning rates and weight decay pefs uses
        self.dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.models: dict[str, tuple[Any, dict, Callable]] = {}

    def _options(self, cls_name: str) -> Any:
        from pefs.strategies import STRATEGIES

        return STRATEGIES[cls_name].config_class.from_options(cls_name, **self.run["options"])

    def build(self, classes: int):
        """The model at its frozen start, ``requires_grad`` only where the strategy trains."""
        import peft
        from torch import nn

        if self.kind == "wrap":  # no standard library implements it: pefs makes the modules, the loop stays plain
            import pefs

            return pefs.wrap(self.s["model"], self.run["strategy"], num_classes=classes,
                             pretrained=self.s["pretrained"], checkpoint=self.s["pefs_checkpoint"],
                             model_kwargs=_model_kwargs(self.s), **self.run["options"])
        model = _plain_model(self.s, classes)
        for p in model.parameters():
            p.requires_grad_(self.kind == "full")
        if self.kind == "lora":
            c = self._options("lora")
            blocks = model.blocks
            targets = [f"blocks.{n}" for n, m in blocks.named_modules() if isinstance(m, nn.Linear)
                       or (isinstance(m, nn.Conv2d) and m.groups == 1)]
            if c.targets:
                targets = [t for t in targets if any(t.endswith("." + x) for x in c.targets)]
            elif not _cnn(model):
                targets = [t for t in targets if t.endswith(".qkv")] or targets
            peft.inject_adapter_in_model(peft.LoraConfig(r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout,
                                                         target_modules=targets), model)
            for n, p in model.named_parameters():
                p.requires_grad_("lora_" in n)
        elif self.kind == "last-k":
            k = self._options("last-k").k
            blocks = [b for stage in model.blocks for b in (stage if isinstance(stage, nn.Sequential) else [stage])]
            for b in blocks[-k:]:
                for p in b.parameters():
                    p.requires_grad_(True)
            for name in ("bn2", "norm", "fc_norm"):  # the final norm after the blocks
                m = getattr(model, name, None)
                if isinstance(m, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
                    for p in m.parameters():
                        p.requires_grad_(True)
        if self.kind == "prototype":
            model.reset_classifier(0)  # the model now returns pooled features
        else:
            for p in _classifier(model).parameters():
                p.requires_grad_(True)
        return model

    def drop(self, protocol: str) -> None:
        self.models.pop(protocol, None)

    def setup(self, protocol: str, classes: int, epochs: int | None = None) -> dict[str, Any]:
        import torch

        torch.manual_seed(self.s["seed"])
        model = self.build(classes).to(self.dev)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        net = getattr(model, "net", model)
        self.models[protocol] = (model, start, _transform(self.s, net))
        return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}

    def task(self, protocol: str, support, query, seed: int, epochs: int | None = None) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        model, start, tf = self.models[protocol]
        t0 = time.perf_counter()
        xs, ys = _decode(support, tf)
        xq, yq = _decode(query, tf)
        t1 = time.perf_counter()
        model.load_state_dict(start)
        loss = float("nan")
        if self.kind == "prototype":
            model.eval()
            fs, fq = self._predict(model, xs, features=True), self._predict(model, xq, features=True)
            protos = torch.zeros(int(ys.max()) + 1, fs.shape[1]).index_add_(0, ys, fs)
            protos /= torch.bincount(ys).float()[:, None]
            t2 = time.perf_counter()
            pred = (F.normalize(fq, dim=-1) @ F.normalize(protos, dim=-1).T).argmax(-1)
        else:
            torch.manual_seed(seed)
            _classifier(model).reset_parameters()
            loss = self._fit(model, xs, ys, seed, epochs or self.s["epochs"])
            t2 = time.perf_counter()
            pred = self._predict(model, xq)
        t3 = time.perf_counter()
        return {"total_s": t3 - t0, "decode_s": t1 - t0, "train_s": t2 - t1, "eval_s": t3 - t2,
                "accuracy": float((pred == yq).float().mean()), "final_loss": loss}

    def _fit(self, model, x, y, seed: int, epochs: int) -> float:
        import torch
        import torch.nn.functional as F
        from torch.utils.data import DataLoader, TensorDataset

        c, bs = self.train, self.s["batch_size"]
        head = {id(p) for p in _classifier(model).parameters()}
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if id(p) in head], "lr": c.head_lr},
                  {"params": [p for p in params if id(p) not in head], "lr": c.lr}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=c.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(len(x) / bs))
        loader = DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        if self.kind == "linear":
            model.eval()  # a frozen trunk: eval mode, and it still runs every step
        else:
            model.train()
            for m in model.modules():  # pretrained BatchNorm statistics stay (as pefs' default bn_stats="frozen")
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        loss = torch.tensor(float("nan"))
        for _ in range(epochs):
            for xb, yb in loader:
                loss = F.cross_entropy(model(xb.to(self.dev)), yb.to(self.dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        return float(loss)

    def _predict(self, model, x, features: bool = False):
        import torch

        dev, bs = self.dev, self.s["eval_batch_size"]
        with torch.no_grad():
            out = [model(x[i:i + bs].to(dev)).float().cpu() for i in range(0, len(x), bs)]
        out_t = torch.cat(out)
        return out_t if features else out_t.argmax(-1)


class PefsSide:
    """pefs' own path: one :class:`pefs.fewshot.TaskRunner` per protocol, ``run`` per task."""

    def __init__(self, s: dict[str, Any], run: dict[str, Any], overrides: dict[str, Any]) -> None:
        from pefs.engine import TrainConfig

        self.s, self.run = s, run
        ebs = {"eval_batch_size": s["pefs_eval_batch_size"]} if s["pefs_eval_batch_size"] else {}
        self.train = TrainConfig(epochs=s["epochs"], batch_size=s["batch_size"], progress=False, **ebs, **overrides)
        self.runners: dict[str, Any] = {}

    def config(self, epochs: int | None = None):
        import dataclasses

        from pefs.config import TuneConfig

        train = dataclasses.replace(self.train, epochs=epochs or self.train.epochs)
        return TuneConfig(model=self.s["model"], strategy=self.run["strategy"], options=dict(self.run["options"]),
                          pretrained=self.s["pretrained"], checkpoint=self.s["pefs_checkpoint"],
                          img_size=self.s["img_size"], head=self.run["head"], train=train)

    def setup(self, protocol: str, classes: int, epochs: int | None = None) -> dict[str, Any]:
        from pefs import engine
        from pefs.fewshot import TaskRunner

        engine.seed_everything(self.s["seed"])
        runner = TaskRunner(self.config(epochs), classes)
        self.runners[protocol] = runner
        return {"trainable": runner.model.param_report()["trainable"], "level": runner.level}

    def drop(self, protocol: str) -> None:
        self.runners.pop(protocol, None)

    def task(self, protocol: str, support, query, seed: int, epochs: int | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        r = self.runners[protocol].run(support, query, seed)
        total = time.perf_counter() - t0
        return {"total_s": total, "decode_s": r["decode_s"], "extract_s": r["extract_s"], "train_s": r["train_s"],
                "eval_s": r["eval_s"], "accuracy": r["accuracy"], "final_loss": r["final_loss"],
                "cached": r["cached"], "level": r.get("level"), "steps": r["steps"], "decoded": r["decoded"]}


class SideWorker:
    """A worker for one side of one strategy: warm-up, then the tasks the parent sends, one at a time."""

    def __init__(self, s: dict[str, Any], role: str, run: dict[str, Any], overrides: dict[str, Any]) -> None:
        import torch

        self.s = s
        self.side = (RefSide if role == "ref" else PefsSide)(s, run, overrides)
        self.tasks = {p: _tasks(s, p) for p in ("episode", "kshot", "stream") if p != "stream" or run.get("stream")}
        warm = _tasks(s, "warmup")[0]
        self.memory = PeakMemory(torch.cuda.is_available())
        # warm-up: a separate model on a separate task, one epoch (kernels, lazy imports, Accelerate state)
        self.side.setup("warmup", warm[3], epochs=1)
        self.side.task("warmup", warm[0], warm[1], warm[2], epochs=1)
        self.side.drop("warmup")
        self.info: dict[str, Any] = {}
        for p in self.tasks:
            if self.tasks[p]:
                t0 = time.perf_counter()
                self.info[p] = {**self.side.setup(p, self.tasks[p][0][3]), "setup_s": time.perf_counter() - t0}

    def handle(self, job: dict[str, Any]) -> dict[str, Any]:
        support, query, seed, _ = self.tasks[job["protocol"]][job["index"]]
        out = self.side.task(job["protocol"], support, query, seed)
        out["images"], out["queries"] = len(support) + len(query), len(query)
        return out

    def finish(self) -> dict[str, Any]:
        import gc

        out = {"peak_mb": self.memory.delta_mb(), "memory_method": self.memory.how, "setup": self.info}
        if not self.memory.cuda and self.tasks["episode"]:
            # the CPU analogue of max_memory_allocated: the first episode again, counting live tensors
            from live_memory import LiveTensors

            support, query, seed, _ = self.tasks["episode"][0]
            runner = getattr(self.side, "runners", {}).get("episode")
            if runner is not None:
                runner._memo.clear()  # cold, as a first episode: decode and frozen prefix counted too
            with LiveTensors() as live:
                self.side.task("episode", support, query, seed)
            out["tensor_peak_mb"] = live.peak_mb
        # what pefs' per-task bookkeeping costs in this process (after the peak memory is read)
        out["gc_collect_s"] = _time_median(gc.collect, self.s["repeats"])  # Accelerate's free_memory() after a fit
        runner = getattr(self.side, "runners", {}).get("episode")
        if runner is not None:
            from pefs.fewshot import fingerprint

            out["restore_s"] = _time_median(lambda: runner.model.load_state_dict(runner.start), self.s["repeats"])
            out["fingerprint_s"] = _time_median(lambda: fingerprint(runner.model), self.s["repeats"])
        return out


def _time_median(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class ProbeWorker:
    """The forward-only limit on request, the hardware probes, and (role ``compile``) torch.compile."""

    def __init__(self, s: dict[str, Any]) -> None:
        import torch

        self.s = s
        self.dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.base = _plain_model(s, s["ways"]).eval().to(self.dev)
        self.cl = _cnn(self.base) and self.dev.type == "cpu"
        if self.cl:
            self.base = self.base.to(memory_format=torch.channels_last)
        self.tf = _transform(s, self.base)
        from pefs.engine import native_bf16

        self.bf16 = native_bf16(self.dev.type)
        self.tasks = {p: _tasks(s, p) for p in ("episode", "kshot")}
        self._images: dict[tuple[str, int], Any] = {}

    def images(self, protocol: str, index: int):
        import torch

        key = (protocol, index)
        if key not in self._images:
            support, query, _, _ = self.tasks[protocol][index]
            self._images[key] = torch.cat([_decode(support, self.tf)[0], _decode(query, self.tf)[0]])
        return self._images[key]

    def _layout(self, x):
        import torch

        return x.contiguous(memory_format=torch.channels_last) if self.cl else x

    def _forward(self, model, x, bs: int, bf16: bool = False) -> None:
        import torch

        with torch.inference_mode(), torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=bf16):
            for i in range(0, len(x), bs):
                model(x[i:i + bs])
        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    def handle(self, job: dict[str, Any]) -> dict[str, Any]:
        if job["kind"] == "limit":
            x = self._layout(self.images(job["protocol"], job["index"])).to(self.dev)
            bs = self.s["eval_batch_size"]
            variants = {"limit_s": lambda: self._forward(self.base, x, bs)}
            if self.bf16:  # the same pass in bf16 autocast, the fastest forward this hardware offers
                variants["limit_bf16_s"] = lambda: self._forward(self.base, x, bs, True)
            timed = interleaved(variants, self.s["repeats"], len(x))  # median of repeats, after a warm-up call
            return {"images": len(x), **{k: v["s"] for k, v in timed.items()}}
        if job["kind"] == "probes":
            return self.probes()
        if job["kind"] == "compile":
            return self.compile()
        raise ValueError(f"unknown job {job}")

    def _train_step(self, model, x, y, bf16: bool = False) -> Callable[[], None]:
        import torch
        import torch.nn.functional as F

        def step() -> None:
            model.zero_grad(set_to_none=True)
            with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            if self.dev.type == "cuda":
                torch.cuda.synchronize()
        return step

    def _trainable_copy(self, channels_last: bool):
        import copy

        import torch

        m = copy.deepcopy(self.base)
        m = m.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        m.train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.eval()
        for p in m.parameters():
            p.requires_grad_(True)
        return m

    def probes(self) -> dict[str, Any]:
        import copy

        import torch
        import torch.nn.functional as F

        s, reps = self.s, self.s["repeats"]
        bs, tb = s["eval_batch_size"], s["batch_size"]
        x_all = self.images("episode", 0).to(self.dev)
        x = x_all[: max(64, bs)] if len(x_all) >= 64 else x_all
        xe, xt = x[:bs], x[:tb]
        yt = torch.arange(len(xt), device=self.dev) % s["ways"]
        cl = self._layout
        out: dict[str, Any] = {"device": self.dev.type, "threads": torch.get_num_threads(),
                               "cpu_capability": torch.backends.cpu.get_cpu_capability()}
        if _cnn(self.base):
            nchw = copy.deepcopy(self.base).to(memory_format=torch.contiguous_format)
            base_cl = self.base.to(memory_format=torch.channels_last)
            xe_cl = xe.contiguous(memory_format=torch.channels_last)
            out["layout, inference"] = interleaved(
                {"NCHW": lambda: self._forward(nchw, xe, bs),
                 "channels-last": lambda: self._forward(base_cl, xe_cl, bs)}, reps, len(xe))
            tr_n, tr_c = self._trainable_copy(False), self._trainable_copy(True)
            xt_cl = xt.contiguous(memory_format=torch.channels_last)
            out["layout, training (full fwd+bwd)"] = interleaved(
                {"NCHW": self._train_step(tr_n, xt, yt), "channels-last": self._train_step(tr_c, xt_cl, yt)},
                reps, len(xt))
            del nchw, tr_n
        else:
            tr_c = self._trainable_copy(False)
        xe_l, xt_l, x_l = cl(xe), cl(xt), cl(x)
        out["bf16 autocast, inference"] = interleaved(
            {"fp32": lambda: self._forward(self.base, xe_l, bs),
             "bf16": lambda: self._forward(self.base, xe_l, bs, True)}, reps, len(xe))
        with torch.inference_mode():
            f32 = self.base.forward_head(self.base.forward_features(x_l), pre_logits=True).float()
            with torch.autocast(self.dev.type, dtype=torch.bfloat16):
                f16 = self.base.forward_head(self.base.forward_features(x_l), pre_logits=True).float()
            cos = F.cosine_similarity(f32, f16, dim=-1)
        out["bf16 autocast, inference"]["feature cosine fp32 vs bf16 (min / mean)"] = [float(cos.min()),
                                                                                       float(cos.mean())]
        out["bf16 autocast, training (full fwd+bwd)"] = interleaved(
            {"fp32": self._train_step(tr_c, xt_l, yt), "bf16": self._train_step(tr_c, xt_l, yt, True)},
            reps, len(xt))
        del tr_c
        if self.dev.type == "cpu":
            default = torch.get_num_threads()
            counts = sorted({1, default, os.cpu_count() or default})
            out["threads, inference"] = interleaved(
                {f"{n} threads": _with_threads(n, default, lambda: self._forward(self.base, xe_l, bs)) for n in counts},
                reps, len(xe))
        out["eval batch size, inference"] = interleaved(
            {f"batch {b}": (lambda b=b: self._forward(self.base, x_l, b)) for b in (16, 32, 64) if b <= len(x)},
            reps, len(x))
        return out

    def compile(self) -> dict[str, Any]:
        import torch

        s, bs = self.s, self.s["eval_batch_size"]
        x = self._layout(self.images("episode", 0)[:bs]).to(self.dev)
        t0 = time.perf_counter()
        compiled = torch.compile(self.base)
        self._forward(compiled, x, bs)
        compile_s = time.perf_counter() - t0
        ab = interleaved({"eager": lambda: self._forward(self.base, x, bs),
                          "compiled": lambda: self._forward(compiled, x, bs)}, s["repeats"], len(x))
        gain = 1 / ab["eager"]["img_s"] - 1 / ab["compiled"]["img_s"]  # seconds saved per image
        return {"compile_s": compile_s, "speed": ab, "break_even_images": compile_s / gain if gain > 0 else None,
                "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}


def _with_threads(n: int, default: int, fn: Callable[[], None]) -> Callable[[], None]:
    import torch

    def run() -> None:
        torch.set_num_threads(n)
        try:
            fn()
        finally:
            torch.set_num_threads(default)
    return run


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, images: int) -> dict[str, Any]:
    """Time each variant ``repeats`` times in alternating order (A B C, C B A, ...) after one untimed call
    each; the median seconds and images per second per variant, and each one's speed relative to the first."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(max(repeats, 1)):
        for k in list(fns) if r % 2 == 0 else list(reversed(fns)):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    first = med[next(iter(fns))]
    return {k: {"s": med[k], "img_s": images / med[k], "speedup": first / med[k], "runs": times[k]} for k in fns}


def _info(s: dict[str, Any]) -> dict[str, Any]:
    """Environment facts, the strategies and heads pefs offers, and the timm checkpoint both sides load."""
    import accelerate
    import peft
    import timm
    import torch

    import pefs
    from pefs.backbones import OFFLINE_MODELS
    from pefs.strategies import STRATEGIES

    if s["model"] in OFFLINE_MODELS:
        net = pefs.load(s["model"]).model  # the packaged weights, as a plain timm state dict
    else:
        torch.manual_seed(s["seed"])
        net = timm.create_model(s["model"], pretrained=False, **_model_kwargs(s))  # a random-weight model
    torch.save(net.state_dict(), s["checkpoint"])
    try:
        from pefs.heads import HEADS

        heads = sorted(HEADS)
    except ImportError:
        heads = []
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    cuda = torch.cuda.is_available()
    from pefs.engine import TrainConfig, inference_precision

    return {"strategies": sorted(STRATEGIES), "heads": heads, "cuda": cuda, "default_epochs": TrainConfig().epochs,
            "pefs_inference_precision": inference_precision(TrainConfig(), torch.device("cuda" if cuda else "cpu")),
            "default_eval_batch_size": TrainConfig().eval_batch_size,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu", "cpu": cpu, "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
                         "peft": peft.__version__, "accelerate": accelerate.__version__,
                         "pefs": pefs.__version__}}


def worker_main(conn, role: str, s: dict[str, Any], run: dict[str, Any] | None, overrides: dict[str, Any]) -> None:
    """Entry point of every worker process: build, say ready, answer jobs until told to stop."""
    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import warnings

        import torch

        warnings.filterwarnings("ignore")
        if s["threads"]:
            torch.set_num_threads(s["threads"])
        if role == "compile":
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = overrides["cache_dir"]
        info = _info(s) if role == "probe" else {}  # the first worker also writes the shared checkpoint
        w: Any = ProbeWorker(s) if role in ("probe", "compile") else SideWorker(s, role, run or {}, overrides)
        conn.send({"ready": True, "info": info})
        while True:
            job = conn.recv()
            if job["kind"] == "stop":
                conn.send(w.finish() if isinstance(w, SideWorker) else {})
                return
            conn.send(w.handle(job))
    except BaseException:  # report anything, the parent decides what it means
        conn.send({"error": traceback.format_exc()})


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
        self.conn.send(job)
        return self._recv(timeout)

    def close(self) -> dict[str, Any]:
        out = self.ask({"kind": "stop"})
        self.proc.join(30)
        return out

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()  # only this worker, which this script started
        self.proc.join(10)


def plan(s: dict[str, Any], info: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The strategy runs to make and why any asked-for strategy is skipped."""
    wanted = AUTO if s["strategies"] == "auto" else [n.strip() for n in s["strategies"].split(",") if n.strip()]
    runs, skipped = [], []
    frozen = s["frozen_epochs"] or info["default_epochs"]
    for name in wanted:
        if name == "prototype":
            if "prototype" not in info["heads"]:
                skipped.append("prototype: pefs has no prototype head (pefs.heads)")
                continue
            runs.append({"name": name, "strategy": "linear", "head": "prototype", "options": {}, "ref": "prototype",
                         "epochs": 0, "stream": name in s["stream_strategies"]})
            continue
        if name not in info["strategies"]:
            skipped.append(f"{name}: not a registered pefs strategy")
            continue
        opts = dict(s["options"].get(name, {}))
        label = name + "".join(f" {k}={v}" for k, v in opts.items())
        ref = name if name in ("linear", "lora", "full", "last-k") else "wrap"
        runs.append({"name": label, "strategy": name, "head": "linear", "options": opts, "ref": ref,
                     "epochs": frozen if name in FROZEN else s["epochs"], "stream": name in s["stream_strategies"]})
        if name in s["checkpointed"]:  # the same job with pefs trading time for memory
            runs.append({**runs[-1], "name": label + " +grad ckpt", "stream": False,
                         "overrides": {"grad_checkpointing": True}})
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
    vals = [r[key] for r in rows if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key]))]
    return statistics.median(vals) if vals else None


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows]
    return sum(vals) / len(vals) if vals else None


def summarize(run: dict[str, Any], res: dict[str, Any]) -> dict[str, Any]:
    """One table row's numbers from a reference-vs-pefs comparison."""
    ref, pf = res["a"], res["b"]
    row: dict[str, Any] = {"name": run["name"], "strategy": run["strategy"], "frozen": run["name"] in FROZEN,
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
        n = sum(r_["queries"] for r_ in pf[p])
        pa, pb = row[f"ref_{p}_acc"], row[f"pefs_{p}_acc"]
        noise = 1.96 * math.sqrt(max((pa + pb) / 2 * (1 - (pa + pb) / 2), 0.0) * 2 / n) if n else 0.0
        row[f"acc_noise_{p}"] = max(noise, 1.0 / n) if n else 0.0
        row[f"agree_{p}"] = abs(pa - pb) <= row[f"acc_noise_{p}"] + 1e-9
    row["tasks"] = res
    return row


# ------------------------------------------------------------------------------------------------------ report


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def render(r: dict[str, Any]) -> str:
    """The Markdown report: settings, the main table, time breakdown, targets, probes, bf16, GPU."""
    s, info = r["settings"], r["info"]
    mem = "peak allocated on the GPU" if info["cuda"] else "peak RSS growth of the worker process"
    ep_images = s["ways"] * (s["shots"] + s["queries"])
    lines = [
        "## pefs vs the plain timm + peft pipeline",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores, {info['threads']} torch threads, device "
        f"{info['device']} (CPU capability {info['cpu_capability']}); python {info['versions']['python']}, "
        f"torch {info['versions']['torch']}, timm {info['versions']['timm']}, peft {info['versions']['peft']}, "
        f"accelerate {info['versions']['accelerate']}",
        f"- load average (1/5/15 min): {_load(r['load_start'])} at the start, {_load(r['load_end'])} at the end; "
        f"wall time {r['wall_s']:.0f} s",
        f"- command: `{r['command']}`",
        f"- model {s['model']} at {s['img_size']} px; episode = {s['ways']}-way {s['shots']}-shot, {s['queries']} "
        f"queries per class ({ep_images} images), median of {s['episodes']}; K-shot run = {s['kshot_shots']} "
        f"per class over all classes, the full test split as queries ({s['kshot_runs']} run(s)); epochs per "
        f"strategy in the table (same on both sides), batch {s['batch_size']}, eval batch: pefs "
        f"{s['pefs_eval_batch_size'] or info['default_eval_batch_size']}, reference and limit {s['eval_batch_size']}, "
        "AdamW + cosine with pefs' default learning rates; both sides: same tasks, seeds, initial weights, "
        "frozen BatchNorm statistics; pefs with its linear head (prototype row: its prototype head)",
        f"- memory: peak MB = {mem}, from after imports to the end (warm-up task + all timed tasks)"
        + ("" if info["cuda"] else "; tensor MB = the most live tensor memory while the worker runs the first "
           "episode once more (benchmarks/live_memory.py, the CPU analogue of torch.cuda.max_memory_allocated; "
           "weights that existed before are not counted)"),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in r["rows"]:
        if "error" in row:
            why = row["error"].strip().splitlines()[-1][:80]
            lines.append(f"| {row['name']} | failed: {why} |" + " |" * (len(COLUMNS) - 2))
            continue
        agree = []
        for p in ("episode", "kshot"):
            if f"agree_{p}" in row:
                d = abs(row[f"ref_{p}_acc"] - row[f"pefs_{p}_acc"])
                agree.append(("yes" if row[f"agree_{p}"] else "**NO**") + f" (Δ{d:.3f})")
        cells = [
            row["name"], str(row["epochs"] or "– (no training)"), _trainable(row),
            _f(row.get("ref_episode_s")), _f(row.get("pefs_episode_s")), _f(row.get("speedup_episode"), "{:.1f}×"),
            _f(row.get("pefs_vs_limit_episode"), "{:.2f}×"), _f(row.get("pefs_vs_limit_bf16_episode"), "{:.2f}×"),
            _f(row.get("ref_kshot_s")), _f(row.get("pefs_kshot_s")),
            _f(row.get("ref_episode_img_s"), "{:.0f}"), _f(row.get("pefs_episode_img_s"), "{:.0f}"),
            _f(row.get("ref_peak_mb"), "{:.0f}"), _f(row.get("pefs_peak_mb"), "{:.0f}"),
            _f(row.get("ref_tensor_mb"), "{:.0f}"), _f(row.get("pefs_tensor_mb"), "{:.0f}"),
            f"{_f(row.get('ref_episode_acc'), '{:.3f}')} / {_f(row.get('ref_kshot_acc'), '{:.3f}')}",
            f"{_f(row.get('pefs_episode_acc'), '{:.3f}')} / {_f(row.get('pefs_kshot_acc'), '{:.3f}')}",
            ", ".join(agree) or "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "s/episode and s/K-shot: median wall seconds per task from decoded-on-the-fly images to predictions "
        "(decoding included on both sides; model construction is per run, not per task, and shown below). "
        "speed-up = ref ÷ pefs per episode. img/s = task images (support + query) per second. ÷ fwd limit = pefs "
        "per episode ÷ one inference-mode fp32 forward over the same images (channels-last on a CPU CNN). "
        "agree: |Δaccuracy| within 1.96·√(2p(1−p)/n) over the n query predictions of each protocol.",
    ]
    lines += _breakdown(r)
    lines += _stream(r)
    lines += _targets(r)
    lines += _probes(r)
    if r["skipped"]:
        lines += ["", "Skipped: " + "; ".join(r["skipped"]) + "."]
    return "\n".join(lines) + "\n"


def _trainable(row: dict[str, Any]) -> str:
    """pefs' trainable count; the reference's too when it differs (a prototype reference trains nothing)."""
    n, ref = row.get("trainable"), row.get("trainable_ref")
    if n is None:
        return "–"
    return f"{n:,}" + (f" (ref {ref:,})" if ref is not None and ref != n and row["name"] != "prototype" else "")


def _load(v: list[float]) -> str:
    return "/".join(f"{x:.2f}" for x in v)


def _breakdown(r: dict[str, Any]) -> list[str]:
    lines = ["", "### Where the time goes (median seconds per episode)", "",
             "| strategy | side | setup (per run) | decode | frozen prefix | train | evaluate | other | total | "
             "fwd limit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        if "error" in row or "ref_episode_parts" not in row:
            continue
        for side in ("ref", "pefs"):
            parts = row[f"{side}_episode_parts"]
            setup = row["setup_s"][side].get("episode", {}).get("setup_s")
            limit = _f(row.get("limit_episode_s")) if side == "pefs" else ""
            lines.append(f"| {row['name']} | {side} | {_f(setup)} | {_f(parts['decode_s'])} | "
                         f"{_f(parts.get('extract_s'))} | {_f(parts['train_s'])} | {_f(parts['eval_s'])} | "
                         f"{_f(parts.get('other_s'))} | {_f(row[f'{side}_episode_s'])} | {limit} |")
    lines += ["", "other = total − the parts pefs times (restoring the start state, the start-state fingerprint, "
                  "optimizer and device set-up). Per-task bookkeeping measured alone in the pefs workers (median over "
                  "strategies; a full ``gc.collect()`` is what Accelerate's ``free_memory()`` runs): "
              + ", ".join(f"{label} {statistics.median(v):.3f} s" for label, key in (
                  ("gc.collect()", "gc_collect_s"), ("load_state_dict(start)", "restore_s"),
                  ("fingerprint(model)", "fingerprint_s"))
                  if (v := [row[key] for row in r["rows"] if row.get(key) is not None]))
              + "."]
    return lines


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 6, per strategy: the measured value and whether it is met."""
    out = []
    rows = [x for x in r["rows"] if "error" not in x and x.get("pefs_episode_s")]
    full = next((x for x in rows if x["strategy"] == "full"), None)
    for row in rows:
        if row["strategy"] == "full":
            continue
        if row["frozen"]:
            out.append({"target": f"frozen prefix ≥ {TARGET_SPEEDUP:.0f}× faster than the reference per episode",
                        "strategy": row["name"], "value": f"{row['speedup_episode']:.1f}×",
                        "met": row["speedup_episode"] >= TARGET_SPEEDUP})
            if row.get("speedup_stream") is not None:
                n = r["settings"]["stream_episodes"]
                out.append({"target": f"frozen prefix ≥ {TARGET_SPEEDUP:.0f}× faster per episode over a {n}-episode "
                                      "protocol", "strategy": row["name"], "value": f"{row['speedup_stream']:.1f}×",
                            "met": row["speedup_stream"] >= TARGET_SPEEDUP})
            # against the forward pass in the precision pefs' no-grad passes ran in (bf16 where native)
            lim = "bf16_" if r["info"].get("pefs_inference_precision") == "bf16" and \
                row.get("pefs_vs_limit_bf16_episode") is not None else ""
            if row.get(f"pefs_vs_limit_{lim}episode") is not None:
                other = "" if not lim else f"; {row['pefs_vs_limit_episode']:.2f}× the fp32 limit"
                out.append({"target": f"frozen prefix ≤ {TARGET_LIMIT}× the forward-only limit",
                            "strategy": row["name"], "value": f"{row[f'pefs_vs_limit_{lim}episode']:.2f}× the "
                            f"{'bf16' if lim else 'fp32'} limit ({row[f'pefs_vs_limit_{lim}episode_no_decode']:.2f}× "
                            f"without decoding{other})",
                            "met": row[f"pefs_vs_limit_{lim}episode"] <= TARGET_LIMIT})
        else:
            ratio = row["pefs_episode_s"] / row["ref_episode_s"]
            out.append({"target": f"pefs ≤ {TARGET_TRAIN:.1f}× the reference's time, same steps",
                        "strategy": row["name"], "value": f"{ratio:.2f}×", "met": ratio <= TARGET_TRAIN})
        key = "pefs_tensor_mb" if full is not None and full.get("pefs_tensor_mb") else "pefs_peak_mb"
        if full is not None and full.get(key) and row.get(key):
            ratio = row[key] / full[key]
            rss = "" if key == "pefs_peak_mb" else f"; peak RSS {row['pefs_peak_mb'] / full['pefs_peak_mb']:.2f}×"
            out.append({"target": f"peak memory ≤ {TARGET_MEMORY}× full fine-tuning's (same batch)",
                        "strategy": row["name"], "value": f"{ratio:.2f}× ({row[key]:.0f} vs {full[key]:.0f} MB "
                        f"{'live tensors' if key == 'pefs_tensor_mb' else 'peak RSS'}{rss})",
                        "met": ratio <= TARGET_MEMORY})
    return out


def _stream(r: dict[str, Any]) -> list[str]:
    """The protocol run: many episodes from one pool, where pefs' run-wide cache of frozen features pays."""
    rows = [x for x in r["rows"] if "error" not in x and x.get("pefs_stream_s")]
    if not rows:
        return []
    s = r["settings"]
    lines = ["", f"### Protocol run: {s['stream_episodes']} episodes of one {s['ways']}-way {s['shots']}-shot "
                 "protocol (mean s/episode)", "",
             "| strategy | epochs | ref s/episode | pefs s/episode | speed-up | pefs ÷ fwd limit (fp32 / bf16) | "
             "images pefs decoded and ran through the trunk | ref acc | pefs acc | agree |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        d = abs(row["ref_stream_acc"] - row["pefs_stream_acc"])
        limits = " / ".join(_f(row.get(k), "{:.2f}×") for k in ("pefs_vs_limit_stream", "pefs_vs_limit_bf16_stream"))
        cells = [row["name"], str(row["epochs"] or "–"), f"{row['ref_stream_s']:.2f}", f"{row['pefs_stream_s']:.2f}",
                 f"{row['speedup_stream']:.1f}×", limits, f"{row['pefs_stream_decoded']} of {row['stream_images']}",
                 f"{row['ref_stream_acc']:.3f}", f"{row['pefs_stream_acc']:.3f}",
                 f"{'yes' if row['agree_stream'] else '**NO**'} (Δ{d:.3f})"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Each side runs the episodes in one process from one model, as `pefs tune --ways` does. The "
                  "reference runs the network over every image of every episode. pefs decodes each image and runs "
                  "the frozen trunk on it once per run, the first time an episode draws it; later episodes read the "
                  "cache. The limit is the median per-episode forward limit of the main table."]
    return lines


def _targets(r: dict[str, Any]) -> list[str]:
    rows = targets(r)
    if not rows:
        return []
    lines = ["", "### Targets", "", "| target | strategy | measured | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['strategy']} | {t['value']} | {'yes' if t['met'] else '**no**'} |" for t in rows]
    return lines


def _probes(r: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    pr = r.get("probes")
    if pr and "error" not in pr:
        lines += ["", f"### Hardware probes ({pr['device']}, {pr['threads']} threads, CPU capability "
                      f"{pr['cpu_capability']}; interleaved, median of {r['settings']['repeats']})", "",
                  "| probe | variant | img/s | vs first variant |", "|---|---|---|---|"]
        for name, variants in pr.items():
            if not isinstance(variants, dict):
                continue
            for v, m in variants.items():
                if isinstance(m, dict):
                    lines.append(f"| {name} | {v} | {m['img_s']:.0f} | {m['speedup']:.2f}× |")
            extra = {k: v for k, v in variants.items() if not isinstance(v, dict)}
            for k, v in extra.items():
                lines.append(f"| {name} | {k} | {' / '.join(f'{x:.4f}' for x in v)} | |")
    elif pr:
        lines += ["", f"Hardware probes failed: {pr['error'].splitlines()[-1]}"]
    c = r.get("compile")
    if c:
        if "error" in c:
            lines += ["", f"torch.compile: {c['error'].splitlines()[-1]}"]
        else:
            for label, m in c.items():
                be = m["break_even_images"]
                lines += ["", f"torch.compile ({label} inductor cache), inference, batch "
                              f"{r['settings']['eval_batch_size']}: compile + first call {m['compile_s']:.1f} s; then "
                              f"{m['speed']['compiled']['img_s']:.0f} img/s vs eager {m['speed']['eager']['img_s']:.0f}"
                              f" img/s; pays off after "
                              + (f"{be:,.0f} images" if be else "never (not faster)") + "."]
    for key, title in (("bf16", "pefs with TrainConfig(inference_precision=\"no\") (fp32) vs \"bf16\": no-grad "
                               "passes only, training in fp32"),):
        rows = r.get(key) or []
        if not rows:
            continue
        lines += ["", f"### {title} ({r['info']['device']}; same tasks, interleaved)", "",
                  "| strategy | fp32 s/episode | bf16 s/episode | speed-up | fp32 acc | bf16 acc | fp32 peak MB | "
                  "bf16 peak MB |", "|---|---|---|---|---|---|---|---|"]
        for row in rows:
            if "error" in row:
                lines.append(f"| {row['name']} | failed: {row['error'].splitlines()[-1][:80]} | | | | | | |")
                continue
            lines.append(f"| {row['name']} | {row['ref_episode_s']:.2f} | {row['pefs_episode_s']:.2f} | "
                         f"{row['speedup_episode']:.2f}× | {row['ref_episode_acc']:.3f} | {row['pefs_episode_acc']:.3f}"
                         f" | {row['ref_peak_mb']:.0f} | {row['pefs_peak_mb']:.0f} |")
    lines += ["", "### GPU", "", r["gpu"]]
    return lines


# ------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        md = render(json.loads(args.from_json.read_text()))
        print(md)
        if args.markdown:
            args.markdown.write_text(md)
        return 0
    s = settings(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t_start = time.perf_counter()
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/speed.py",
                                                  *(sys.argv[1:] if argv is None else argv)])
    result: dict[str, Any] = {"command": command, "settings": s, "load_start": list(os.getloadavg()),
                              "rows": [], "bf16": []}
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
            _say(f"{run['name']}: reference vs pefs, load {_load(list(os.getloadavg()))}")
            try:
                wanted = protocols + (("stream",) if run.get("stream") and s["stream_episodes"] else ())
                res = compare(ctx, s, run, ("ref", {}), ("pefs", run.get("overrides", {})), wanted, probe)
                row = summarize(run, res)
            except WorkerError as e:
                row = {"name": run["name"], "strategy": run["strategy"], "error": str(e)}
                if not probe.proc.is_alive():
                    probe = Worker(ctx, "probe", s)
            row["load"] = list(os.getloadavg())
            result["rows"].append(row)
        probe.close()
        by_name = {run["strategy"]: run for run in runs if run["head"] == "linear" and not run.get("overrides")}
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
    result["gpu"] = ("CUDA available: every table above ran on the GPU (Accelerate placed pefs' tensors)."
                     if info["cuda"] else
                     "Skipped: torch.cuda.is_available() is False on this machine. On a GPU this script runs every "
                     "comparison above on the GPU (memory = torch.cuda.max_memory_allocated), with pefs' no-grad "
                     "passes in bf16 where the GPU supports it.")
    result["load_end"] = list(os.getloadavg())
    result["wall_s"] = time.perf_counter() - t_start
    result["targets"] = targets(result)
    md = render(result)
    print(md)
    if args.markdown:
        args.markdown.write_text(md)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 1 if any("error" in row for row in result["rows"]) else 0


_T0 = time.perf_counter()


def _say(msg: str) -> None:
    print(f"[speed {time.perf_counter() - _T0:5.0f} s] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
