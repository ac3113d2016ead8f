"""One few-shot task at a time on a model loaded once: both protocols (K-shot seeds, episodes) run through here.

Per task: restore the model's frozen start (so no weights leak between tasks), make the support's extra
views, initialise the head, fit, classify the queries. What never changes between tasks is computed once per
run and kept by image name: decoded images, and the activations at the frozen level (pooled features for a
linear probe or a prototype head, the input of the first trainable block for ``last-k``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from typing import Any

import torch

from pefs import engine, heads
from pefs.backbones import token_mask
from pefs.backbones.split import patch_tokens
from pefs.config import TuneConfig
from pefs.data import ImageSet, augment_transform, eval_transform
from pefs.data.views import extra_views
from pefs.errors import PefsError
from pefs.model import PefsModel, wrap


def build_model(cfg: TuneConfig, num_classes: int) -> PefsModel:
    """The configured backbone and strategies with a ``num_classes`` head."""
    kwargs = {"img_size": cfg.img_size} if cfg.img_size and _takes_img_size(cfg.model) else {}
    return wrap(cfg.model, cfg.strategy, num_classes=num_classes, pretrained=cfg.pretrained,
                checkpoint=cfg.checkpoint, model_kwargs=kwargs, **cfg.options)


def _takes_img_size(name: str) -> bool:
    return isinstance(name, str) and any(k in name for k in ("vit", "deit", "eva", "beit", "swin"))


def fingerprint(model: torch.nn.Module) -> str:
    """A hash of every tensor in the model's state: equal fingerprints mean identical weights."""
    h = hashlib.blake2b(digest_size=8)
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class TaskRunner:
    """Loads the model once and runs task after task from the same start, with run-wide caches."""

    def __init__(self, cfg: TuneConfig, num_classes: int) -> None:
        self.cfg, self.n_classes = cfg, num_classes
        engine.seed_everything(cfg.seeds[0])  # random inits (new heads, adapters, --no-pretrained) repeat
        self.model = build_model(cfg, num_classes)
        self.head = heads.build(cfg.head)
        self.trains = self.head.trains(self.model.frozen_prefix)
        reads = "tokens" if self.head.reads == "tokens" else "pooled"
        if reads == "tokens":
            engine.level_of(self.model, reads)  # refuses a backbone without a known token layout
        if cfg.train.grad_checkpointing:
            engine.checkpointing_target(self.model)  # refuses, before any work, a model that cannot checkpoint
        #: level of the inputs fit/classify start from; everything before it is computed once per image
        self.level = engine.frozen_level(self.model, cfg.train, reads)
        self.start = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.start_fingerprint = fingerprint(self.model)
        self.transform = eval_transform(self.model.backbone.data_config, cfg.img_size)
        self.views = cfg.view_config
        #: a ViT's masked views drop their masked patch tokens (MAE-style) instead of painting pixels
        self.token_masks = cfg.mask_ratio > 0 and token_mask.supports_token_masks(self.model.backbone)
        if self.token_masks and self.level != engine.level_of(self.model, "pooled"):
            raise PefsError(f"masked views of a ViT drop patch tokens, which needs a frozen trunk up to the pooled "
                            f"features (a linear probe or a prototype/logistic head); {cfg.strategy!r} with head "
                            f"{cfg.head!r} trains or caches inside the trunk")
        self.augment = augment_transform(self.model.backbone.data_config, cfg.img_size) if cfg.augment else None
        self._memo: dict[str, torch.Tensor] = {}  # image name -> clean input at self.level

    def inputs(self, images: ImageSet, t: dict[str, float]) -> torch.Tensor:
        """Clean inputs at ``self.level`` for ``images``: decoded and run through the frozen prefix once per run."""
        missing = [i for i, n in enumerate(images.names) if n not in self._memo]
        if missing:
            t0 = time.perf_counter()
            x = torch.stack([self.transform(images.image(i)) for i in missing])
            t["decode_s"] += time.perf_counter() - t0
            t["decoded"] += len(missing)
            t0 = time.perf_counter()
            x = engine.outputs(self.model, x, self.cfg.train, 0, self.level, desc="frozen prefix")
            t["extract_s"] += time.perf_counter() - t0
            self._memo.update((images.names[i], h) for i, h in zip(missing, x))
        if not len(images):
            return torch.empty(0)
        return torch.stack([self._memo[n] for n in images.names])

    def support(self, images: ImageSet, seed: int, t: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """The support's inputs at ``self.level``: every clean image, then its extra views (made per task)."""
        x = self.inputs(images, t)
        y = torch.as_tensor(images.labels, dtype=torch.long)
        if self.views.views == 1:
            return x, y
        t0 = time.perf_counter()
        clean = torch.stack([self.transform(images.image(i)) for i in range(len(images))])
        views = dataclasses.replace(self.views, mask_ratio=0.0) if self.token_masks else self.views
        xv, yv = extra_views(images, views, clean, self.augment, seed)
        t["decode_s"] += time.perf_counter() - t0
        t["decoded"] += len(images) * (self.views.views if self.views.augment else 1)
        t0 = time.perf_counter()
        if self.token_masks:
            xv = token_mask.pooled_views(self.model.backbone, xv, self.views.mask_ratio, self.views.mask_mode, seed,
                                         self.cfg.train.eval_batch_size)
        else:
            xv = engine.outputs(self.model, xv, self.cfg.train, 0, self.level, desc="support views")
        t["extract_s"] += time.perf_counter() - t0
        return torch.cat([x, xv]), torch.cat([y, yv])

    def read(self, x: torch.Tensor, desc: str) -> torch.Tensor:
        """What the head reads (logits, pooled features or patch tokens) for inputs at ``self.level``."""
        out = engine.outputs(self.model, x, self.cfg.train, self.level, self.head.reads, desc=desc)
        return patch_tokens(self.model.backbone, out) if self.head.reads == "tokens" else out

    def run(self, support: ImageSet, query: ImageSet, seed: int) -> dict[str, Any]:
        """Tune on ``support`` from the frozen start, score ``query``; the task's accuracy, timings and steps."""
        t = dict.fromkeys(("decode_s", "extract_s", "train_s", "eval_s", "decoded"), 0.0)
        cfg, model, n = self.cfg.train, self.model, self.n_classes
        model.load_state_dict(self.start)
        start_state = fingerprint(model)
        engine.seed_everything(seed)
        xs, ys = self.support(support, seed, t)
        xq = self.inputs(query, t)
        yq = torch.as_tensor(query.labels, dtype=torch.long)
        stats = engine.FitStats(cached=self.level > 0)
        if self.trains:
            t0 = time.perf_counter()
            pooled = engine.outputs(model, xs, cfg, self.level, "pooled", desc="head init") \
                if self.head.uses_prototypes else None
            self.head.init_linear(model.head, pooled, ys, n)
            t["extract_s"] += time.perf_counter() - t0
            head_cfg = dataclasses.replace(cfg, head_lr=cfg.head_lr * self.head.head_lr_factor)
            stats = engine.fit(model, xs, ys, head_cfg, seed=seed, start=self.level)
            t["extract_s"] += stats.extract_s
            t["train_s"] += stats.train_s
        t0 = time.perf_counter()
        with model.merged_view() if cfg.merge_for_eval else contextlib.nullcontext():
            sup = self.read(xs, "support") if self.head.reads != "logits" else xs[:0]
            scores = self.head.classify(sup, ys, self.read(xq, "evaluate"), n)
        t["eval_s"] += time.perf_counter() - t0
        pred = scores.argmax(-1)
        t["decoded"] = int(t["decoded"])  # images decoded for this task (the rest came from the run's cache)
        return {"seed": seed, "accuracy": engine.accuracy(pred, yq), "support": len(ys), "query": len(yq), **t,
                "steps": stats.steps, "final_loss": stats.final_loss, "cached": stats.cached, "level": self.level,
                "head_lr": cfg.head_lr * self.head.head_lr_factor if self.trains else None,
                "start_state": start_state}
