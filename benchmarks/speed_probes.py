"""benchmarks/speed.py's forward-only limit, hardware probes and worker entry point (in the worker processes)."""

from __future__ import annotations

import os
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

from benchmarks.common import machine
from benchmarks.speed_sides import (
    SideWorker,
    decode,
    is_cnn,
    model_kwargs,
    plain_model,
    protocol_tasks,
    reference_transform,
)


class ProbeWorker:
    """The forward-only limit on request, the hardware probes, and (role ``compile``) torch.compile."""

    def __init__(self, s: dict[str, Any]) -> None:
        import torch

        self.s = s
        self.dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.base = plain_model(s, s["ways"]).eval().to(self.dev)
        self.cl = is_cnn(self.base) and self.dev.type == "cpu"
        if self.cl:
            self.base = self.base.to(memory_format=torch.channels_last)
        self.tf = reference_transform(s, self.base)
        from pefs.runtime.hardware import native_bf16

        self.bf16 = native_bf16(self.dev.type)
        self.tasks = {p: protocol_tasks(s, p) for p in ("episode", "kshot")}
        self._images: dict[tuple[str, int], Any] = {}

    def images(self, protocol: str, index: int):
        import torch

        key = (protocol, index)
        if key not in self._images:
            support, query, _, _ = self.tasks[protocol][index]
            self._images[key] = torch.cat([decode(support, self.tf)[0], decode(query, self.tf)[0]])
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
        if is_cnn(self.base):
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
        net = timm.create_model(s["model"], pretrained=False, **model_kwargs(s))  # a random-weight model
    torch.save(net.state_dict(), s["checkpoint"])
    try:
        from pefs.heads.registry import HEADS

        heads = sorted(HEADS)
    except ImportError:
        heads = []
    m = machine()  # in the worker: its threads are the ones every timed task ran with
    from pefs.config import TrainConfig
    from pefs.runtime.hardware import inference_precision

    return {**m, "strategies": sorted(STRATEGIES), "heads": heads, "default_epochs": TrainConfig().epochs,
            "pefs_inference_precision": inference_precision(TrainConfig(), torch.device("cuda" if m["cuda"] else
                                                                                        "cpu")),
            "default_eval_batch_size": TrainConfig().eval_batch_size,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "versions": {"python": m["python"], "torch": m["torch"], "timm": timm.__version__,
                         "peft": peft.__version__, "accelerate": accelerate.__version__, "pefs": pefs.__version__}}


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
