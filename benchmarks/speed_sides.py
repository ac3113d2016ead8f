"""benchmarks/speed.py's worker side: the reference pipeline and pefs, one few-shot task per request.

Runs inside worker processes forked from the benchmark's fork server; torch, timm, peft and pefs are imported
lazily (the server has them loaded already).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.speed_parts import CACHED, classifier, flat_blocks, split_frozen


def protocol_tasks(s: dict[str, Any], protocol: str):
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
    """The timm architecture behind the run's pefs model name."""
    from pefs.backbones import OFFLINE_MODELS

    return OFFLINE_MODELS[s["model"]].timm_name if s["model"] in OFFLINE_MODELS else s["model"]


def model_kwargs(s: dict[str, Any]) -> dict[str, Any]:
    """The timm constructor's extra arguments: the image size, for models that take one (ViTs)."""
    from pefs.backbones import takes_img_size

    return {"img_size": s["img_size"]} if takes_img_size(s["model"]) else {}


def plain_model(s: dict[str, Any], classes: int):
    """What a timm user writes: the architecture, the checkpoint, a fresh ``classes``-way head."""
    import timm

    model = timm.create_model(_timm_name(s), checkpoint_path=s["checkpoint"], **model_kwargs(s))
    model.reset_classifier(classes)
    return model


def reference_transform(s: dict[str, Any], model) -> Callable:
    """timm's eval transform for ``model`` at the run's image size (what a timm user writes)."""
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    cfg["input_size"] = (3, s["img_size"], s["img_size"])
    return create_transform(**cfg, is_training=False)


def decode(images, tf: Callable):
    """Every image of an ImageSet through ``tf``, stacked, and its labels."""
    import numpy as np
    import torch

    x = torch.stack([tf(images.image(i)) for i in range(len(images))])
    return x, torch.as_tensor(np.asarray(images.labels), dtype=torch.long)


def _channels_last(s: dict[str, Any], model) -> bool:
    """Whether the reference runs ``model`` channels-last: a CNN, as pefs does, unless the run asks for NCHW."""
    return s.get("ref_layout", "channels-last") != "nchw" and is_cnn(model)


def is_cnn(model) -> bool:
    """pefs' own test (the backbone kind it describes): a ViT's patch-embedding conv does not make it a CNN."""
    from pefs.backbones.describe import describe_timm

    backbone = getattr(model, "backbone", None)  # a pefs.wrap model (VPT, adapters) is described already
    return (backbone or describe_timm(model, "reference", "")).kind == "cnn"


class RefSide:
    """The reference pipeline: plain timm (+ peft) and a plain PyTorch loop; the linear probe and last-k compute
    their frozen part once per image (:data:`CACHED`), their ``-naive`` kinds and every other strategy run the
    whole network every step; a CNN in ``s["ref_layout"]`` (channels-last, pefs' layout, unless the run asks for
    NCHW)."""

    def __init__(self, s: dict[str, Any], run: dict[str, Any], overrides: dict[str, Any]) -> None:
        import torch

        from pefs.config import TrainConfig

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
                             model_kwargs=model_kwargs(self.s), **self.run["options"])
        model = plain_model(self.s, classes)
        for p in model.parameters():
            p.requires_grad_(self.kind == "full")
        if self.kind == "lora":
            c = self._options("lora")
            blocks = model.blocks
            targets = [f"blocks.{n}" for n, m in blocks.named_modules() if isinstance(m, nn.Linear)
                       or (isinstance(m, nn.Conv2d) and m.groups == 1)]
            if c.targets:
                targets = [t for t in targets if any(t.endswith("." + x) for x in c.targets)]
            elif not is_cnn(model):
                targets = [t for t in targets if t.endswith(".qkv")] or targets
            peft.inject_adapter_in_model(peft.LoraConfig(r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout,
                                                         target_modules=targets), model)
            for n, p in model.named_parameters():
                p.requires_grad_("lora_" in n)
        elif self.kind in ("last-k", "last-k-naive"):
            k = self._options("last-k").k
            blocks = flat_blocks(model)
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
            for p in classifier(model).parameters():
                p.requires_grad_(True)
        return model

    def drop(self, protocol: str) -> None:
        self.models.pop(protocol, None)

    def setup(self, protocol: str, classes: int, epochs: int | None = None) -> dict[str, Any]:
        import torch

        torch.manual_seed(self.s["seed"])
        model = self.build(classes).to(self.dev)
        self.channels_last = _channels_last(self.s, model)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        net = getattr(model, "net", model)
        self.models[protocol] = (model, start, reference_transform(self.s, net))
        return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "channels_last": self.channels_last}

    def task(self, protocol: str, support, query, seed: int, epochs: int | None = None) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        model, start, tf = self.models[protocol]
        t0 = time.perf_counter()
        xs, ys = decode(support, tf)
        xq, yq = decode(query, tf)
        if self.channels_last:
            xs, xq = (x.contiguous(memory_format=torch.channels_last) for x in (xs, xq))
        t1 = time.perf_counter()
        model.load_state_dict(start)
        loss = float("nan")
        if self.kind == "prototype":
            model.eval()
            fs, fq = self._predict(model, xs, features=True), self._predict(model, xq, features=True)
            protos = torch.zeros(int(ys.max()) + 1, fs.shape[1]).index_add_(0, ys, fs)
            protos /= torch.bincount(ys).float()[:, None]
            t2 = time.perf_counter()
            scores = F.normalize(fq, dim=-1) @ F.normalize(protos, dim=-1).T
        elif self.kind in CACHED:  # fair: the frozen part runs once per image, then only the rest trains
            model.eval()
            prefix, rest = split_frozen(model, self.kind, self._options("last-k").k if self.kind == "last-k" else 0)
            fs, fq = self._predict(prefix, xs, features=True), self._predict(prefix, xq, features=True)
            torch.manual_seed(seed)
            classifier(model).reset_parameters()
            loss = self._fit(rest, fs, ys, seed, epochs or self.s["epochs"])
            t2 = time.perf_counter()
            scores = self._predict(rest, fq, features=True)
        else:
            torch.manual_seed(seed)
            classifier(model).reset_parameters()
            loss = self._fit(model, xs, ys, seed, epochs or self.s["epochs"])
            t2 = time.perf_counter()
            scores = self._predict(model, xq, features=True)
        pred = scores.argmax(-1)
        t3 = time.perf_counter()
        return {"total_s": t3 - t0, "decode_s": t1 - t0, "train_s": t2 - t1, "eval_s": t3 - t2,
                "accuracy": float((pred == yq).float().mean()), "final_loss": loss, "scores": scores.tolist()}

    def _fit(self, model, x, y, seed: int, epochs: int) -> float:
        import torch
        import torch.nn.functional as F
        from torch.utils.data import DataLoader, TensorDataset

        from pefs.strategies import default_lr

        c, bs = self.train, self.s["batch_size"]
        lr = c.lr if c.lr is not None else default_lr(self.run["strategy"])  # the rate pefs resolves for it
        head = {id(p) for p in classifier(model).parameters()}
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if id(p) in head], "lr": c.head_lr},
                  {"params": [p for p in params if id(p) not in head], "lr": lr}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=c.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(len(x) / bs))
        loader = DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        if self.kind in ("linear", "linear-naive"):
            model.eval()  # a frozen trunk: eval mode (the naive loop still runs it every step)
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
        """Predicted classes of ``x``, or with ``features`` the model's raw outputs (logits, or pooled features
        once the classifier is removed)."""
        import torch

        dev, bs = self.dev, self.s["eval_batch_size"]
        with torch.no_grad():
            out = [model(x[i:i + bs].to(dev)).float().cpu() for i in range(0, len(x), bs)]
        out_t = torch.cat(out)
        return out_t if features else out_t.argmax(-1)


#: protocols whose every timed task is cold on both sides (nothing cached from an earlier task)
COLD = ("episode", "kshot")


class PefsSide:
    """pefs' own path: one :class:`pefs.runtime.task.TaskRunner` per protocol, ``run`` per task."""

    def __init__(self, s: dict[str, Any], run: dict[str, Any], overrides: dict[str, Any]) -> None:
        from pefs.config import TrainConfig

        self.s, self.run = s, run
        ebs = {"eval_batch_size": s["pefs_eval_batch_size"]} if s["pefs_eval_batch_size"] else {}
        self.train = TrainConfig(epochs=s["epochs"], batch_size=s["batch_size"], progress=False,
                                 deterministic=s.get("deterministic", False), **ebs, **overrides)
        self.runners: dict[str, Any] = {}
        self.made: dict[str, tuple[int, int | None]] = {}  # protocol -> (classes, epochs) of its runner
        self.scores: list[Any] = []
        self.used: set[str] = set()  # protocols whose current runner has run a task (so it is no longer cold)

    def config(self, epochs: int | None = None):
        import dataclasses

        from pefs.config import TuneConfig

        train = dataclasses.replace(self.train, epochs=epochs or self.train.epochs)
        return TuneConfig(model=self.s["model"], strategy=self.run["strategy"], options=dict(self.run["options"]),
                          pretrained=self.s["pretrained"], checkpoint=self.s["pefs_checkpoint"],
                          img_size=self.s["img_size"], head=self.run["head"], train=train)

    def setup(self, protocol: str, classes: int, epochs: int | None = None) -> dict[str, Any]:
        from pefs.runtime import hardware
        from pefs.runtime.task import TaskRunner

        hardware.seed_everything(self.s["seed"])
        runner = TaskRunner(self.config(epochs), classes)
        classify = runner.head.classify

        def keep_scores(*args, **kwargs):  # the query scores pefs predicts from, for the strict agreement check
            out = classify(*args, **kwargs)
            self.scores.append(out)
            return out

        runner.head.classify = keep_scores
        self.runners[protocol], self.made[protocol] = runner, (classes, epochs)
        self.used.discard(protocol)
        # a prototype head on a frozen trunk trains nothing, although the wrapped model has a (unused) linear head
        return {"trainable": runner.model.param_report()["trainable"] if runner.trains else 0, "level": runner.level}

    def drop(self, protocol: str) -> None:
        self.runners.pop(protocol, None)

    def task(self, protocol: str, support, query, seed: int, epochs: int | None = None) -> dict[str, Any]:
        """One task; a cold protocol (``episode``, ``kshot``) gets a fresh runner first (untimed, as the
        reference's model is built once), so no image decoded or cached by an earlier task is reused. Only the
        ``stream`` protocol (a protocol run) keeps its runner and its run-wide cache from task to task."""
        import torch

        if protocol in COLD and protocol in self.used:
            self.setup(protocol, *self.made[protocol])
        runner = self.runners[protocol]
        self.used.add(protocol)
        self.scores.clear()
        t0 = time.perf_counter()
        r = runner.run(support, query, seed).to_dict()
        total = time.perf_counter() - t0
        return {"total_s": total, "decode_s": r["decode_s"], "extract_s": r["extract_s"], "train_s": r["train_s"],
                "eval_s": r["eval_s"], "accuracy": r["accuracy"], "final_loss": r["final_loss"],
                "cached": r["cached"], "level": r.get("level"), "steps": r["steps"], "decoded": r["decoded"],
                # the query set streams batch by batch: classify runs once per batch, in order
                "scores": torch.cat(self.scores).float().tolist()}


class SideWorker:
    """A worker for one side of one strategy: warm-up, then the tasks the parent sends, one at a time."""

    def __init__(self, s: dict[str, Any], role: str, run: dict[str, Any], overrides: dict[str, Any]) -> None:
        import torch

        self.s = s
        self.side = (RefSide if role == "ref" else PefsSide)(s, run, overrides)
        self.tasks = {p: protocol_tasks(s, p) for p in ("episode", "kshot", "stream")
                      if p != "stream" or run.get("stream")}
        warm = protocol_tasks(s, "warmup")[0]
        from benchmarks.live_memory import PeakMemory  # imports torch: worker side only

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
            from benchmarks.live_memory import LiveTensors

            support, query, seed, _ = self.tasks["episode"][0]
            with LiveTensors() as live:  # cold, as every timed episode: pefs' side takes a fresh runner
                self.side.task("episode", support, query, seed)
            out["tensor_peak_mb"] = live.peak_mb
        # what pefs' per-task bookkeeping costs in this process (after the peak memory is read)
        out["gc_collect_s"] = _time_median(gc.collect, self.s["repeats"])  # Accelerate's free_memory() after a fit
        runner = getattr(self.side, "runners", {}).get("episode")
        if runner is not None:
            from pefs.model.directory import weights_fingerprint

            out["restore_s"] = _time_median(runner.start.restore, self.s["repeats"])  # restores, checks bitwise
            out["fingerprint_s"] = _time_median(
                lambda: weights_fingerprint(list(runner.model.state_dict().items())), self.s["repeats"])
        return out


def _time_median(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
