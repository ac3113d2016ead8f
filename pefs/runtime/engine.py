"""Training and evaluation on Accelerate: the only module that places tensors on devices.

``fit`` trains a :class:`~pefs.model.wrap.PefsModel` on a decoded support set. The part of the network tuning
cannot change runs once: :func:`frozen_level` finds how deep that goes (the pooled features when only the
head trains, the input of the first trainable block for ``last-k``) and ``fit`` trains only the rest on the
cached activations; the result equals running the whole network every step (tests/test_engine.py), many
times faster. :func:`outputs` runs any level to logits, pooled features or tokens, in eval mode.
AdamW, cosine schedule, optional bf16/fp16 autocast, seeded and bit-for-bit repeatable on a CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from pefs.backbones.split import Stages, stages
from pefs.config import TrainConfig
from pefs.errors import PefsError
from pefs.strategies.spec import default_lr

_ACCELERATORS: dict[str, Any] = {}


@dataclass
class FitStats:
    """What a fit cost: seconds spent extracting features and training, steps taken, final loss."""

    extract_s: float = 0.0
    train_s: float = 0.0
    steps: int = 0
    final_loss: float = float("nan")
    cached: bool = False
    losses: list[float] = field(default_factory=list)


def accelerator():
    """The process's Accelerator: which device this process owns (one GPU per process under
    ``accelerate launch``, where sweeps spread cells over processes). Accelerate's state is global and fixes
    its precision once, so precision is set per call by :func:`autocast` instead.

    Models and batches are moved with ``.to(acc.device)`` rather than ``acc.prepare``: a few-shot task is a
    handful of batches, data-parallel wrapping only adds cost, and ``prepare``/``free_memory`` keep references
    and run ``gc.collect()`` (a third of a cached episode's time on a CPU)."""
    from accelerate import Accelerator

    if "acc" not in _ACCELERATORS:
        _ACCELERATORS["acc"] = Accelerator()
    return _ACCELERATORS["acc"]


def autocast(device: torch.device, mixed_precision: str):
    """Autocast to bf16/fp16 on ``device`` (a no-op for "no"); several precisions may run in one process."""
    if mixed_precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if mixed_precision == "bf16" else torch.float16)


@functools.cache
def native_bf16(device_type: str) -> bool:
    """True when ``device_type`` computes bf16 in hardware: a CUDA GPU with bf16, or a CPU with AVX-512 BF16 or
    AMX (read from /proc/cpuinfo; elsewhere False). Without it, bf16 autocast on a CPU is emulated and slow."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def inference_precision(cfg: TrainConfig, device: torch.device) -> str:
    """The autocast ("no", "bf16", "fp16") of no-grad passes on ``device`` under ``cfg``."""
    if cfg.inference_precision == "auto":
        return "bf16" if native_bf16(device.type) else cfg.mixed_precision
    return cfg.inference_precision


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a CPU run repeats bit for bit."""
    from accelerate.utils import set_seed

    set_seed(seed)


def _channels_last(model: nn.Module) -> bool:
    """CNNs run markedly faster on CPU in channels-last layout (measured 1.5-2.4x on EfficientNet-Lite0)."""
    bb = getattr(model, "backbone", None)
    return bb is not None and bb.kind == "cnn"


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


def _loader(*tensors: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle, generator=g)


def frozen_level(model: nn.Module, cfg: TrainConfig, reads: str = "pooled") -> int:
    """The deepest level (see :mod:`pefs.backbones.split`) whose activations tuning cannot change, capped at
    what the classifier ``reads`` ("pooled" or "tokens"): inputs there may be computed once and cached.

    0 (no caching) when caching is off, when BatchNorm statistics are set to update (they would move in the
    frozen part too), when a strategy does not say which blocks it leaves untouched, or when the backbone's
    layout is unknown and something before the pooled features trains. The frozen prefix runs in eval mode.
    """
    if not cfg.cache_features:
        return 0
    bb = model.backbone
    if cfg.bn_stats == "update" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return 0
    st = stages(bb)
    cap = st.tokens if reads == "tokens" else st.pooled
    if cap is None:
        return 0
    if model.frozen_prefix:
        return cap
    untouched = [s.frozen_blocks(bb) for s in model.strategies]
    if any(u is None for u in untouched) or not st.n_blocks or min(untouched) == 0:
        return 0
    first = min(untouched)
    prefix = tuple(n + "." for n in bb.block_names[:first])
    if any(p.requires_grad and n.startswith(prefix) for n, p in bb.model.named_parameters()):
        return 0  # a strategy claimed frozen blocks but trains inside them: do not trust the cut
    return min(st.block(first), cap)


def _forward(model: nn.Module, st: Stages, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Level ``start`` -> level ``stop``; from the image, through the model's own forward where one exists
    (so strategies that change the forward are honoured)."""
    if start == 0 and stop == st.logits:
        return model(h)
    if start == 0 and stop == st.pooled:
        return model.features(h)
    if start == 0 and stop == st.tokens:
        return model.net.forward_features(h)
    return st.run(h, start, stop)


class _Suffix(nn.Module):
    """What trains when inputs are cached at level ``start``: the rest of the model, up to the logits."""

    def __init__(self, model: nn.Module, st: Stages, start: int) -> None:
        super().__init__()
        self.model, self.st, self.start = model, st, start

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return _forward(self.model, self.st, h, self.start, self.st.logits)


def level_of(model: nn.Module, name: str | int) -> int:
    """The level called ``name`` ("logits", "pooled", "tokens") in ``model``; a PefsError when unknown."""
    st = stages(model.backbone)
    level = {"logits": st.logits, "pooled": st.pooled, "tokens": st.tokens}.get(name, name)  # type: ignore[arg-type]
    if level is None:
        raise PefsError(f"{model.backbone.name} has no known feature-map layout, so pefs cannot read its "
                        "unpooled tokens; supported: timm ViT, EfficientNet, ResNet, ConvNeXt")
    return int(level)


def no_grad_pass(model: nn.Module, cfg: TrainConfig, start: int,
                 stop: str | int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Prepare ``model`` once (eval mode, device, layout) for no-grad passes from level ``start`` to ``stop``;
    returns a function that runs one batch and gives a float32 CPU tensor (streaming callers call it per batch)."""
    st = stages(model.backbone)
    stop = level_of(model, stop)
    if start == stop:
        return lambda xb: xb.float()
    acc = accelerator()
    cl = _channels_last(model)
    if cl:
        model.to(memory_format=torch.channels_last)
    model.eval()
    model.to(acc.device)
    precision = inference_precision(cfg, acc.device)

    @torch.no_grad()
    def run(xb: torch.Tensor) -> torch.Tensor:
        with autocast(acc.device, precision):
            return _forward(model, st, _layout(xb.to(acc.device), cl), start, stop).float().cpu()

    return run


def outputs(model: nn.Module, x: torch.Tensor, cfg: TrainConfig, start: int = 0, stop: str | int = "logits",
            desc: str = "forward") -> torch.Tensor:
    """Run ``x`` (activations at level ``start``; 0 = images) to ``stop`` ("logits", "pooled", "tokens" or a
    level) in eval mode, batch by batch; the result is a float32 CPU tensor."""
    if level_of(model, stop) == start:
        return x.float()
    run = no_grad_pass(model, cfg, start, stop)
    b = cfg.eval_batch_size
    out = [run(x[i:i + b]) for i in tqdm(range(0, len(x), b), desc=desc, disable=not cfg.progress, leave=False)]
    return torch.cat(out) if out else torch.empty(0)


def strategy_lr(model: nn.Module, cfg: TrainConfig) -> float:
    """The learning rate of the strategies' parameters: ``cfg.lr``, or when unset the default of the model's
    strategy spec (:func:`pefs.strategies.spec.default_lr`)."""
    return cfg.lr if cfg.lr is not None else default_lr(model.spec)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    head = {id(p) for p in model.head.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) in head], "lr": cfg.head_lr},
              {"params": [p for p in trainable if id(p) not in head], "lr": strategy_lr(model, cfg)}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)


def checkpointing_target(model: nn.Module) -> nn.Module:
    """The module whose ``set_grad_checkpointing`` turns checkpointing on for ``model``, or a PefsError."""
    # a strategy that reruns the blocks itself switches it there; else the family's own switch (timm, transformers)
    own = [t for s in model.strategies if (t := s.checkpointing_target(model.backbone)) is not None]
    target = own[0] if own else model.backbone.checkpointing_target()
    if target is None:
        raise PefsError(f"grad_checkpointing needs a timm model with set_grad_checkpointing() or a transformers "
                        f"model with gradient_checkpointing_enable(); {model.backbone.name} "
                        f"({type(model.net).__name__}) has none: train without it")
    return target


@contextlib.contextmanager
def grad_checkpointing(model: nn.Module, enabled: bool):
    """Turn on timm's gradient checkpointing for the duration of a fit (off again afterwards)."""
    if not enabled:
        yield
        return
    target = checkpointing_target(model)
    target.set_grad_checkpointing(True)
    try:
        yield
    finally:
        target.set_grad_checkpointing(False)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, seed: int = 0,
        start: int = 0) -> FitStats:
    """Train ``model`` (a PefsModel) on ``x`` (images, or activations at level ``start`` that the caller
    cached) with labels ``y``. A frozen prefix beyond ``start`` runs once here, then only the rest trains:
    AdamW (head at ``head_lr``), cosine schedule over every step, shuffled batches seeded by ``seed``."""
    cfg.validate()
    cfg = dataclasses.replace(cfg, lr=strategy_lr(model, cfg))  # the strategies' default when --lr is unset
    seed_everything(seed)
    stats = FitStats()
    st = stages(model.backbone)
    level = max(start, frozen_level(model, cfg))
    if level > start:
        t0 = time.perf_counter()
        x = outputs(model, x, cfg, start, level, desc="frozen prefix")
        stats.extract_s = time.perf_counter() - t0
    stats.cached = level > 0
    trained = _Suffix(model, st, level)
    cl = _channels_last(model)
    if cl:
        model.to(memory_format=torch.channels_last)
    acc = accelerator()
    model.to(acc.device)
    opt = _optimizer(model, cfg)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none (the scaler is then a pass-through)
    scaler = torch.amp.GradScaler(acc.device.type, enabled=cfg.mixed_precision == "fp16")
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total = cfg.steps or cfg.epochs * steps_per_epoch  # --steps: a fixed count, passes repeat until it is reached
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    loader = _loader(x, y, batch_size=cfg.batch_size, shuffle=True, seed=seed)
    with grad_checkpointing(model, cfg.grad_checkpointing):
        model.train()
        if cfg.bn_stats == "frozen":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        t0 = time.perf_counter()
        bar = tqdm(total=total, desc="train", disable=not cfg.progress, leave=False)
        for epoch in range(math.ceil(total / steps_per_epoch)):
            for xb, yb in itertools.islice(loader, total - stats.steps):
                xb, yb = xb.to(acc.device), yb.to(acc.device)
                with autocast(acc.device, cfg.mixed_precision):
                    loss = nn.functional.cross_entropy(trained(_layout(xb, cl)).float(), yb)
                if not torch.isfinite(loss):
                    bar.close()
                    raise NonFiniteLoss(stats.steps + 1, epoch + 1, float(loss.detach()), cfg)
                opt.zero_grad(set_to_none=True)
                acc.backward(scaler.scale(loss))
                try:
                    scaler.step(opt)
                except RuntimeError as e:  # AdamW's step size overflowed float32 (an absurd learning rate)
                    if "overflow" not in str(e):
                        raise
                    bar.close()
                    raise NonFiniteLoss(stats.steps + 1, epoch + 1, float("inf"), cfg,
                                        f"the optimizer step overflowed at step {stats.steps + 1}") from e
                scaler.update()
                sched.step()
                stats.steps += 1
                stats.losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{stats.losses[-1]:.3f}")
        bar.close()
    stats.train_s = time.perf_counter() - t0
    stats.final_loss = stats.losses[-1] if stats.losses else float("nan")
    model.eval()
    if stats.steps:
        _check_after_last_step(model, cfg, stats.steps)
    return stats


@torch.no_grad()
def _check_after_last_step(model: nn.Module, cfg: TrainConfig, steps: int) -> None:
    """The loss is checked before each step; this checks what the last step left: every trainable weight finite
    (no extra forward pass: a task's evaluation would be the next to see a broken weight, too late)."""
    bad = next((n for n, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()), None)
    if bad is not None:
        raise NonFiniteLoss(steps, cfg.epochs, float("nan"), cfg,
                            f"trainable weight {bad!r} became NaN/inf after the last step ({steps})")


class NonFiniteLoss(PefsError):
    """Training diverged: the loss became NaN or infinite."""

    def __init__(self, step: int, epoch: int, value: float, cfg: TrainConfig, what: str | None = None) -> None:
        self.step, self.epoch, self.value = step, epoch, value
        what = what or f"training loss became {value} at step {step} (epoch {epoch})"
        super().__init__(f"{what}; lower the learning rate (lr={cfg.lr}, head_lr={cfg.head_lr}) or use "
                         "--mixed-precision no")


def predict(model: nn.Module, x: torch.Tensor, cfg: TrainConfig, features: torch.Tensor | None = None,
            start: int = 0) -> torch.Tensor:
    """Predicted class per image: from ``x`` at level ``start`` (0 = images), or from pooled ``features``."""
    if features is not None:
        return outputs(model, features, cfg, level_of(model, "pooled"), "logits").argmax(-1)
    return outputs(model, x, cfg, start, "logits", desc="evaluate").argmax(-1)


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).float().mean()) if len(y) else float("nan")


def peak_memory_mb() -> float:
    """Peak memory of this process: max allocated on the GPU when there is one, else peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
