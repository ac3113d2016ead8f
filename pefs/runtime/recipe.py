"""The training recipe's opt-in parts, from timm where timm has them: label smoothing, linear warmup before the
cosine schedule, mixup / cutmix (``timm.data.Mixup``), an exponential moving average of the trained weights
(``timm.utils.ModelEmaV3``) and layer-wise learning-rate decay.

Each is off by default and, while off, leaves :mod:`pefs.runtime.engine` computing exactly what it computed
before it existed (the same schedule expression, the same two parameter groups, the same loss call).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pefs.config import TrainConfig
from pefs.errors import PefsError


def lr_factor(total: int, warmup: int) -> Callable[[int], float]:
    """The multiplier of every group's rate at optimizer step ``s`` (0-based) of ``total``: a cosine from 1 to 0
    over the steps, after ``warmup`` steps that ramp linearly up to it ((s + 1) / (warmup + 1): no step at
    rate 0, the full rate at the cosine's first step). ``warmup=0`` is today's cosine, the same expression."""
    if not warmup:
        return lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    decay = total - warmup
    return lambda s: ((s + 1) / (warmup + 1) if s < warmup
                      else 0.5 * (1 + math.cos(math.pi * min(s - warmup, decay) / decay)))


def check_warmup(cfg: TrainConfig, total: int) -> None:
    """A warmup must leave the cosine at least one step of the fit's ``total``."""
    if cfg.warmup_steps >= total:
        raise PefsError(f"warmup_steps={cfg.warmup_steps} leaves no cosine decay: this fit takes {total} optimizer "
                        f"steps (epochs x batches per epoch, or --steps); set --warmup-steps below {total}")


def param_groups(model: nn.Module, cfg: TrainConfig, lr: float) -> list[dict[str, Any]]:
    """The optimizer's groups: the head at ``head_lr``, then the rest at ``lr``; with ``layer_decay`` D the rest
    is split by depth (``Backbone.block_names``, the blocks in order): block i of n at lr x D^(n-i), what the
    network registers before its first block (stem, patch embedding, position embedding) at lr x D^(n+1), what
    it registers between two blocks (a CNN's downsampling between stages) with the block before it, what comes
    after the last block (final norm, neck) at lr. Empty groups are dropped."""
    head = {id(p) for p in model.head.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) in head], "lr": cfg.head_lr}]
    if cfg.layer_decay is None:
        groups.append({"params": [p for p in trainable if id(p) not in head], "lr": lr})
    else:
        groups += _depth_groups(model, [p for p in trainable if id(p) not in head], cfg.layer_decay, lr)
    return [g for g in groups if g["params"]]


def _depth_groups(model: nn.Module, params: list[nn.Parameter], decay: float, lr: float) -> list[dict[str, Any]]:
    """``params`` grouped by depth for layer-wise decay (see :func:`param_groups`)."""
    blocks = list(model.backbone.block_names)
    if not blocks:
        raise PefsError(f"layer_decay needs the backbone's blocks in order; pefs knows none for "
                        f"{model.backbone.name}: train without --layer-decay")
    n, wanted = len(blocks), {id(p) for p in params}
    depth: dict[int, int] = {}  # parameter -> 0 stem, 1 + i block i, n + 1 after the last block
    last = -1  # the last block whose parameters were registered before this one
    for name, p in model.net.named_parameters():
        i = next((i for i, b in enumerate(blocks) if name.startswith(b + ".")), None)
        last = i if i is not None else last
        if id(p) in wanted:  # outside the blocks: the stem, between two blocks (a downsampling) or after them
            depth.setdefault(id(p), 1 + last if i is not None or 0 <= last < n - 1 else (0 if last < 0 else n + 1))
    by_depth: list[list[nn.Parameter]] = [[] for _ in range(n + 2)]
    for p in params:  # a trainable parameter outside the network's own (none today) trains at lr
        by_depth[depth.get(id(p), n + 1)].append(p)
    scales = [decay ** (n + 1)] + [decay ** (n - i) for i in range(n)] + [1.0]
    return [{"params": ps, "lr": lr * s} for ps, s in zip(by_depth, scales)]


def mixes(cfg: TrainConfig) -> bool:
    """Whether training batches are mixed (mixup or cutmix on)."""
    return cfg.mixup > 0 or cfg.cutmix > 0


def check_mixing(mixing: bool, level: int, what: str = "") -> None:
    """Mixup / cutmix (``mixing``) blend images: refuse when training starts from cached activations (level > 0).
    Mixing the cached features instead would be a different method (manifold mixup); cutmix means nothing there."""
    if mixing and level > 0:
        raise PefsError(f"mixup / cutmix blend training images, but {what or 'this fit'} trains on cached "
                        f"activations (the frozen part of the network runs once per image and is kept); add "
                        "--no-cache-features to train from the images every step (slower), or drop --mixup / "
                        "--cutmix")


def check_even_batches(cfg: TrainConfig, n: int) -> None:
    """timm's Mixup pairs each image with another of its batch, so every batch of ``n`` images must be even."""
    if not mixes(cfg):
        return
    sizes = {min(cfg.batch_size, n)} | ({n % cfg.batch_size} if n > cfg.batch_size and n % cfg.batch_size else set())
    odd = sorted(s for s in sizes if s % 2)
    if odd:
        raise PefsError(f"mixup / cutmix need even batches (timm's Mixup pairs the images of a batch); "
                        f"{n} training images in batches of {cfg.batch_size} make a batch of {odd[0]}: choose a "
                        f"--batch-size that is even and leaves an even remainder (an odd image count cannot)")


class Mixing:
    """``timm.data.Mixup`` over a batch of images and integer labels: blended images and soft targets (label
    smoothing folded in), trained with soft-target cross-entropy."""

    def __init__(self, cfg: TrainConfig, num_classes: int) -> None:
        from timm.data import Mixup

        self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                           num_classes=num_classes)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mixup(x.clone(), y)  # Mixup blends in place: the support set stays as it was


def loss(logits: torch.Tensor, target: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Cross-entropy against integer labels (smoothed by ``label_smoothing``) or soft targets (mixed)."""
    if target.is_floating_point():
        return torch.sum(-target * nn.functional.log_softmax(logits, dim=-1), dim=-1).mean()
    return nn.functional.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)


class _Tracked(nn.Module):
    """The trainable parameters and the buffers of a model, as one module (what the EMA averages)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.params = nn.ParameterList([p for p in model.parameters() if p.requires_grad])
        for i, b in enumerate(model.buffers()):
            self.register_buffer(f"b{i}", b)


class WeightAverage:
    """``timm.utils.ModelEmaV3`` over the trainable parameters and buffers of a model (not its frozen weights,
    which an average would only copy); :meth:`update` after every optimizer step, :meth:`copy_to` at the end."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        from timm.utils import ModelEmaV3

        self.tracked = _Tracked(model)
        self.ema = ModelEmaV3(self.tracked, decay=decay)

    def update(self, step: int) -> None:
        """After optimizer step ``step`` (1-based; the first copies the weights, as timm's train script)."""
        self.ema.update(self.tracked, step=step)

    @torch.no_grad()
    def copy_to(self) -> None:
        """Put the averaged weights into the model's own tensors."""
        for mine, averaged in zip(self.tracked.state_dict().values(), self.ema.module.state_dict().values()):
            mine.copy_(averaged)
