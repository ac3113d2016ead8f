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
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from pefs.backbones.split import Stages, stages
from pefs.backbones.token_mask import run_kept
from pefs.config import TrainConfig
from pefs.errors import PefsError
from pefs.runtime import distributed, recipe
from pefs.runtime.hardware import (
    accelerator,
    autocast,
    configure_backends,
    inference_precision,
    seed_everything,
    training_precision,
)
from pefs.strategies.spec import default_lr


@dataclass
class FitStats:
    """What a fit cost: seconds spent extracting features and training, steps taken, final loss."""

    extract_s: float = 0.0
    train_s: float = 0.0
    steps: int = 0
    final_loss: float = float("nan")
    cached: bool = False
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)  #: the strategies' learning rate at each step
    head_lrs: list[float] = field(default_factory=list)  #: the head's learning rate at each step


def _channels_last(model: nn.Module) -> bool:
    """CNNs run faster in channels-last layout (benchmarks/speed.md, its "layout" probe, measures by how much)."""
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
    configure_backends(cfg, acc.device)
    cl = _place(model, acc.device)
    model.eval()
    precision = inference_precision(cfg, acc.device)

    @torch.no_grad()
    def run(xb: torch.Tensor) -> torch.Tensor:
        with autocast(acc.device, precision):
            return _forward(model, st, _layout(xb.to(acc.device, non_blocking=True), cl), start, stop).float().cpu()

    return run


def outputs(model: nn.Module, x: torch.Tensor, cfg: TrainConfig, start: int = 0, stop: str | int = "logits",
            desc: str = "forward", keep: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``x`` (activations at level ``start``; 0 = images) to ``stop`` ("logits", "pooled", "tokens" or a
    level) in eval mode, batch by batch; the result is a float32 CPU tensor. ``keep`` (bool (N, patches), images
    only): the patch tokens each image keeps (:func:`pefs.backbones.token_mask.run_kept`)."""
    if level_of(model, stop) == start:
        return x.float()
    _check_keep(keep, start, len(x))
    run = no_grad_pass(model, cfg, start, stop)
    b = cfg.eval_batch_size
    out = [run_kept(model.backbone, run, x[i:i + b], None if keep is None else keep[i:i + b])
           for i in tqdm(range(0, len(x), b), desc=desc, disable=not cfg.progress, leave=False)]
    return torch.cat(out) if out else torch.empty(0)


def _check_keep(keep: torch.Tensor | None, start: int, n: int) -> None:
    """Token masks act on images entering the model: refuse them with cached activations or the wrong count."""
    if keep is not None and (start != 0 or len(keep) != n):
        raise PefsError(f"token masks need images (level 0) and one mask per image; got level {start}, "
                        f"{len(keep)} masks for {n} inputs")


def strategy_lr(model: nn.Module, cfg: TrainConfig) -> float:
    """The learning rate of the strategies' parameters: ``cfg.lr``, or when unset the default of the model's
    strategy spec (:func:`pefs.strategies.spec.default_lr`)."""
    return cfg.lr if cfg.lr is not None else default_lr(model.spec)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW: the head at ``head_lr``, the rest at the strategies' rate (per block with ``layer_decay``)."""
    return torch.optim.AdamW(recipe.param_groups(model, cfg, strategy_lr(model, cfg)), weight_decay=cfg.weight_decay)


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
        start: int = 0, keep: torch.Tensor | None = None) -> FitStats:
    """Train ``model`` (a PefsModel) on ``x`` (images, or activations at level ``start`` that the caller
    cached) with labels ``y``. A frozen prefix beyond ``start`` runs once here, then only the rest trains:
    AdamW (head at ``head_lr``), cosine schedule over every step, shuffled batches seeded by ``seed``; the
    recipe's opt-in parts (:mod:`pefs.runtime.recipe`: warmup, label smoothing, mixup / cutmix, EMA, layer
    decay) where the config turns them on. ``keep`` (bool (N, patches)): the patch tokens each image keeps in
    every step (MAE-style masked views through the tuned trunk; nothing is cached then). The model
    stays on the training device afterwards (the accelerator's); what it returns from :func:`outputs` is on the
    CPU."""
    cfg.validate()
    cfg = dataclasses.replace(cfg, lr=strategy_lr(model, cfg))  # the strategies' default when --lr is unset
    seed_everything(seed)
    stats = FitStats()
    _check_keep(keep, start, len(x))
    level = start if keep is not None else max(start, frozen_level(model, cfg))
    if keep is not None and recipe.mixes(cfg):
        raise PefsError("mixup / cutmix blend two images, but masked views keep each image's own patch tokens: "
                        "train masked views without --mixup / --cutmix")
    recipe.check_mixing(recipe.mixes(cfg), level)  # before any work: mixing needs images, and even batches
    recipe.check_even_batches(cfg, len(x))
    distributed.check_batches(cfg.batch_size, len(x), even=recipe.mixes(cfg))  # processes share each batch
    if level > start:
        t0 = time.perf_counter()
        x = outputs(model, x, cfg, start, level, desc="frozen prefix")
        stats.extract_s = time.perf_counter() - t0
    stats.cached = level > 0
    device = accelerator().device
    configure_backends(cfg, device)
    cl = _place(model, device)
    trained = _Suffix(model, stages(model.backbone), level)
    t0 = time.perf_counter()
    with grad_checkpointing(model, cfg.grad_checkpointing):
        _train_mode(model, cfg)
        with distributed.data_parallel(trained) as trained:  # DDP under a multi-process launch, else itself
            _train_steps(model, trained, x, y, cfg, seed, cl, stats, keep)
    stats.train_s = time.perf_counter() - t0
    stats.final_loss = stats.losses[-1] if stats.losses else float("nan")
    model.eval()
    if stats.steps:
        _check_after_last_step(model, cfg, stats.steps)
    return stats


def _place(model: nn.Module, device: torch.device) -> bool:
    """Move ``model`` to ``device`` (channels-last for a CNN); whether inputs go channels-last too."""
    cl = _channels_last(model)
    if cl:
        model.to(memory_format=torch.channels_last)
    model.to(device)
    return cl


def _train_mode(model: nn.Module, cfg: TrainConfig) -> None:
    """Training mode, with BatchNorm's statistics frozen unless ``bn_stats="update"``."""
    model.train()
    if cfg.bn_stats == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


#: a training set up to this size moves to the device once and is batched there; a larger one (``--final`` on
#: every image of a big split, uncached) stays on the host and goes over batch by batch
SUPPORT_ON_DEVICE_BYTES = 1 << 30
#: optimizer steps between reads of the loss on a GPU: each read waits for the GPU, so the loop reads (and checks
#: for NaN/inf) every this many steps there; a CPU has nothing to wait for and reads every step, before its update
GPU_LOSS_EVERY = 16


def _train_steps(model: nn.Module, trained: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                 seed: int, cl: bool, stats: FitStats, keep: torch.Tensor | None = None) -> None:
    """The optimizer steps. A support set moves to the device once and batches are indexed there (the shuffled
    order is a seeded DataLoader's, so it repeats); losses are read in groups (:data:`GPU_LOSS_EVERY`)."""
    acc = accelerator()
    device = acc.device
    precision = training_precision(cfg, device)
    opt = _optimizer(model, cfg)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none (the scaler is then a pass-through)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    per_epoch = math.ceil(len(x) / cfg.batch_size)
    total = cfg.steps or cfg.epochs * per_epoch  # --steps: a fixed count, passes repeat until it is reached
    recipe.check_warmup(cfg, total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, recipe.lr_factor(total, cfg.warmup_steps))
    mix = recipe.Mixing(cfg, model.num_classes) if recipe.mixes(cfg) else None
    ema = recipe.WeightAverage(model, cfg.ema) if cfg.ema else None
    order = _loader(torch.arange(len(x)), batch_size=cfg.batch_size, shuffle=True, seed=seed)
    for s in model.strategies:
        s.begin_fit(model.backbone, total)
    if x.numel() * x.element_size() <= SUPPORT_ON_DEVICE_BYTES:  # a support set: one copy, batches indexed there
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    classes = y.shape[-1] if y.is_floating_point() and y.ndim == 2 else int(y.max()) + 1 if len(y) else 2
    losses = _LossReader(stats, cfg, total, GPU_LOSS_EVERY if device.type == "cuda" else 1, classes)
    try:
        for epoch in range(math.ceil(total / per_epoch)):
            for (idx,) in itertools.islice(order, total - stats.steps):
                idx, weight = distributed.share(idx)  # this process's part of the step's batch (all of it alone)
                xb, yb = x[idx.to(x.device)], y[idx.to(y.device)]
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                xb, yb = mix(xb, yb) if mix else (xb, yb)
                kb = None if keep is None else keep[idx]
                with autocast(device, precision):
                    out = run_kept(model.backbone, lambda h: trained(_layout(h, cl)), xb, kb).float()
                    loss = recipe.loss(out, yb, cfg) * weight if len(yb) else out.sum() * 0.0  # an empty share
                # a strategy's own loss term (AdaLoRA's penalty), whole on every process: DDP's average keeps it whole
                loss = sum((r for s in model.strategies if (r := s.regularizer(model.backbone)) is not None), loss)
                losses.add(distributed.mean(loss), epoch + 1)  # raises at a NaN/inf loss when it reads it
                opt.zero_grad(set_to_none=True)
                acc.backward(scaler.scale(loss))
                try:
                    scaler.step(opt)
                except RuntimeError as e:  # AdamW's step size overflowed float32 (an absurd learning rate)
                    if "overflow" not in str(e):
                        raise
                    raise NonFiniteLoss(stats.steps + 1, epoch + 1, float("inf"), cfg,
                                        f"the optimizer step overflowed at step {stats.steps + 1}") from e
                scaler.update()
                scale = sched.get_last_lr()[0] / opt.param_groups[0]["initial_lr"]  # this step's schedule factor
                stats.lrs.append(cfg.lr * scale), stats.head_lrs.append(cfg.head_lr * scale)
                sched.step()
                stats.steps += 1
                for s in model.strategies:
                    s.after_step(model.backbone, stats.steps)
                if ema:
                    ema.update(stats.steps)
        losses.read()
        if ema:
            ema.copy_to()  # the average is what is evaluated and saved
    finally:
        losses.bar.close()


#: a finite loss this many times above the larger of the first step's loss, chance's (ln C, what a uniform guess
#: scores) and 1 is a diverged run, not a result: a sound run's loss falls from about chance; ``--lr 1e9`` with
#: ``full`` jumps from 0.25 to 14 (6 x ln 10) in one step and ends at chance accuracy
EXPLODED_FACTOR = 5.0


class _LossReader:
    """Per-step losses kept on the device and read every ``every`` steps: the progress bar, the record's losses
    and the NaN/inf check (naming the first bad step), without a host synchronisation at every step."""

    def __init__(self, stats: FitStats, cfg: TrainConfig, total: int, every: int, classes: int = 2) -> None:
        self.stats, self.cfg, self.every = stats, cfg, every
        self.chance = math.log(max(classes, 2))  # the cross-entropy of a uniform guess
        self.pending: list[tuple[torch.Tensor, int]] = []
        self.bar = tqdm(total=total, desc="train", disable=not cfg.progress, leave=False)

    def add(self, loss: torch.Tensor, epoch: int) -> None:
        self.pending.append((loss.detach(), epoch))
        if len(self.pending) >= self.every:
            self.read()

    def read(self) -> None:
        if not self.pending:
            return
        values = torch.stack([v for v, _ in self.pending]).float().cpu().tolist()
        epochs = [e for _, e in self.pending]
        self.pending = []
        for value, epoch in zip(values, epochs):
            step = len(self.stats.losses) + 1
            if not math.isfinite(value):
                raise NonFiniteLoss(step, epoch, value, self.cfg)
            first = self.stats.losses[0] if self.stats.losses else value
            bound = EXPLODED_FACTOR * max(first, self.chance, 1.0)
            if value > bound:
                raise NonFiniteLoss(step, epoch, value, self.cfg,
                                    f"training loss became {value:.4g} at step {step} (epoch {epoch}): it exploded, "
                                    f"over {bound:.3g} ({EXPLODED_FACTOR:g} x the larger of the first step's "
                                    f"{first:.3g} and chance's {self.chance:.3g})")
            self.stats.losses.append(value)
        self.bar.update(len(values))
        self.bar.set_postfix(loss=f"{values[-1]:.3f}")


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


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).float().mean()) if len(y) else float("nan")
