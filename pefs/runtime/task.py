"""One few-shot task at a time on a model loaded once: every protocol (K-shot seeds, episodes, the final fit)
runs through :class:`TaskRunner`.

Per task: put back the run's start (:mod:`pefs.runtime.start`: only what a task can change), make the support's
extra views, initialise the head, fit, classify the queries. What never changes between tasks is computed once
per image for the run (:mod:`pefs.runtime.caches`); the query set streams through it, so memory does not grow
with the test split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch

from pefs.backbones import takes_img_size, token_mask
from pefs.backbones.split import patch_tokens
from pefs.config import TrainConfig, TuneConfig, head_of
from pefs.data import ImageSet, augment_transform, eval_transform
from pefs.data.loading import Decoder, decoded_batches
from pefs.data.views import extra_views
from pefs.errors import PefsError
from pefs.heads import registry as heads
from pefs.model import PefsModel, wrap
from pefs.model.inference import predicted
from pefs.results.records import TaskResult
from pefs.runtime import distributed, engine, hardware, recipe
from pefs.runtime.caches import FrozenInputs
from pefs.runtime.start import StartState


def build_model(cfg: TuneConfig, num_classes: int) -> PefsModel:
    """The configured backbone and strategies with a ``num_classes`` head."""
    kwargs = {"img_size": cfg.img_size} if cfg.img_size and takes_img_size(cfg.model) else {}
    return wrap(cfg.model, cfg.strategy, num_classes=num_classes, pretrained=cfg.pretrained,
                checkpoint=cfg.checkpoint, model_kwargs=kwargs, **cfg.options)


def _timings() -> dict[str, float]:
    """A task's clock: seconds per part, images decoded, images run through the trunk from pixels."""
    return dict.fromkeys(("decode_s", "extract_s", "train_s", "eval_s", "decoded", "trunk_images"), 0.0)


class TaskRunner:
    """Loads the model once and runs task after task from the same start, on the run's frozen inputs."""

    def __init__(self, cfg: TuneConfig, num_classes: int) -> None:
        self.cfg, self.n_classes = cfg, num_classes
        hardware.seed_everything(cfg.seeds[0])  # random inits (new heads, adapters, --no-pretrained) repeat
        self.model = build_model(cfg, num_classes)
        self.head = heads.build(head_of(cfg))
        self.trains = self.head.trains(self.model.frozen_prefix)
        reads = "tokens" if self.head.reads == "tokens" else "pooled"
        if reads == "tokens":
            engine.level_of(self.model, reads)  # refuses a backbone without a known token layout
        if cfg.train.grad_checkpointing:
            engine.checkpointing_target(self.model)  # refuses, before any work, a model that cannot checkpoint
        #: level of the inputs fit/classify start from; everything before it is computed once per image
        self.level = engine.frozen_level(self.model, cfg.train, reads)
        mixing = recipe.mixes(cfg.train) or bool({"mixup", "cutmix"} & set(cfg.search))  # searched ones too
        recipe.check_mixing(self.trains and mixing, self.level,
                            f"strategy {cfg.strategy!r} with head {self.head.name!r}")
        #: a ViT's masked views drop their masked patch tokens (MAE-style) instead of painting pixels
        self.token_masks = cfg.mask_ratio > 0 and token_mask.supports_token_masks(self.model.backbone)
        if self.token_masks and self.level != engine.level_of(self.model, "pooled"):
            raise PefsError(f"masked views of a ViT drop patch tokens, which needs a frozen trunk up to the pooled "
                            f"features (a linear probe or a prototype/logistic head); {cfg.strategy!r} with head "
                            f"{cfg.head!r} trains or caches inside the trunk")
        self.start = StartState(self.model)
        self.transform = eval_transform(self.model.backbone.data_config, cfg.img_size)
        self.decoder = Decoder(self.transform)
        self.augment = augment_transform(self.model.backbone.data_config, cfg.img_size) if cfg.augment else None
        self.frozen = FrozenInputs(self.model, cfg, self.level, self.decoder)
        self.last_fit: engine.FitStats | None = None  #: the last task's fit (its losses and rates, for a tracker)

    def param_report(self) -> dict[str, Any]:
        """The model's trainable parameters, or, when nothing trains (a frozen trunk with a head that classifies
        from features), what the head itself fits per task (0 for prototypes), with a note saying so."""
        params = self.model.param_report()
        if self.trains:
            return params
        fitted, note = self.head.fitted_parameters(self.model.backbone.width, self.n_classes)
        return {**params, "trainable": fitted, "trainable_without_head": 0, "head": fitted,
                "percent_of_backbone": 100.0 * fitted / max(params["backbone_params"], 1),
                "breakdown": {"head": fitted} if fitted else {}, "note": note}

    def cache_figures(self) -> dict[str, Any]:
        """What the run's caches and the feature store held and served (for the result record)."""
        return self.frozen.figures()

    def stream(self, images: ImageSet, stop: str | int, t: dict[str, float], desc: str = "evaluate",
               each: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Outputs at ``stop`` (or ``each`` of each batch of them) for every image of ``images``, in order
        (:meth:`FrozenInputs.stream`). Under a multi-process launch each process streams its share of the images
        and the rows are gathered back (:mod:`pefs.runtime.distributed`)."""
        n, world = len(images), distributed.world_size()
        if world == 1 or n < world:
            return self.frozen.stream(images, stop, t, desc, each)
        part = self.frozen.stream(images.subset(distributed.shard_indices(n)), stop, t, desc, each)
        return distributed.gather_rows(part, n)

    def support(self, images: ImageSet, seed: int, t: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """The support's inputs at ``self.level``: every clean image, then its extra views (made per task)."""
        x = self.stream(images, self.level, t, desc="frozen prefix")
        y = torch.as_tensor(images.labels, dtype=torch.long)
        if self.cfg.views == 1:
            return x, y
        t0 = time.perf_counter()
        clean = torch.cat([self.decoder.finish(xb) for xb in decoded_batches(
            images, range(len(images)), self.decoder, self.cfg.train.eval_batch_size)])
        views = dataclasses.replace(self.cfg, mask_ratio=0.0) if self.token_masks else self.cfg
        xv, yv = extra_views(images, views, clean, self.augment, seed)
        t["decode_s"] += time.perf_counter() - t0
        t["decoded"] += len(images) * (self.cfg.views if self.cfg.augment else 1)
        t0 = time.perf_counter()
        if self.token_masks:
            xv = token_mask.pooled_views(self.model.backbone, xv, self.cfg.mask_ratio, self.cfg.mask_mode, seed,
                                         self.cfg.train.eval_batch_size)
        else:
            xv = engine.outputs(self.model, xv, self.cfg.train, 0, self.level, desc="support views")
        t["extract_s"] += time.perf_counter() - t0
        t["trunk_images"] += len(xv) if self.level else 0
        return torch.cat([x, xv]), torch.cat([y, yv])

    def read(self, x: torch.Tensor, desc: str) -> torch.Tensor:
        """What the head reads (logits, pooled features or patch tokens) for inputs at ``self.level``."""
        out = engine.outputs(self.model, x, self.cfg.train, self.level, self.head.reads, desc=desc)
        return self._head_view(out)

    def _head_view(self, out: torch.Tensor) -> torch.Tensor:
        return patch_tokens(self.model.backbone, out) if self.head.reads == "tokens" else out

    def _fit(self, xs: torch.Tensor, ys: torch.Tensor, seed: int, t: dict[str, float],
             cfg: TrainConfig) -> engine.FitStats:
        """Initialise the head (from the support's prototypes when it uses them) and train on the support."""
        model = self.model
        t0 = time.perf_counter()
        pooled = engine.outputs(model, xs, cfg, self.level, "pooled", desc="head init") \
            if self.head.uses_prototypes else None
        self.head.init_linear(model.head, pooled, ys, self.n_classes)
        t["extract_s"] += time.perf_counter() - t0
        head_cfg = dataclasses.replace(cfg, head_lr=cfg.head_lr * self.head.head_lr_factor)
        stats = engine.fit(model, xs, ys, head_cfg, seed=seed, start=self.level)
        t["extract_s"] += stats.extract_s
        t["train_s"] += stats.train_s
        return stats

    def _score(self, xs: torch.Tensor, ys: torch.Tensor, query: ImageSet, t: dict[str, float],
               cfg: TrainConfig) -> torch.Tensor:
        """Scores (queries, classes): the queries stream, decoded and scored batch by batch (a head scores each
        query on its own), so only the scores are kept. A transductive head reads every query of the task
        together: the queries' features are kept and scored in one call."""
        t0 = time.perf_counter()
        before = t["decode_s"] + t["extract_s"]
        n = self.n_classes
        with self.model.merged_view() if cfg.merge_for_eval else contextlib.nullcontext():
            sup = self.read(xs, "support") if self.head.reads != "logits" else xs[:0]
            if self.head.transductive:
                feats = self._head_view(self.stream(query, self.head.reads, t))
                scores = self.head.classify(sup, ys, feats, n)
            else:
                scores = self.stream(query, self.head.reads, t,
                                     each=lambda q: self.head.classify(sup, ys, self._head_view(q), n))
        t["eval_s"] += time.perf_counter() - t0 - (t["decode_s"] + t["extract_s"] - before)
        return scores

    def run(self, support: ImageSet, query: ImageSet, seed: int, train: TrainConfig | None = None) -> TaskResult:
        """Tune on ``support`` from the run's start, score ``query``; the task's accuracy, timings and steps.
        ``train``: this task's training values (a searched setting's), else the run's."""
        t, cfg = _timings(), train or self.cfg.train
        start_state = self.start.restore()
        hardware.seed_everything(seed)
        xs, ys = self.support(support, seed, t)
        stats = self._fit(xs, ys, seed, t, cfg) if self.trains else engine.FitStats(cached=self.level > 0)
        self.last_fit = stats
        pred = predicted(self._score(xs, ys, query, t, cfg))  # the one scoring rule, as pefs predict's
        yq = torch.as_tensor(query.labels, dtype=torch.long)
        t["decoded"] = int(t["decoded"])  # images decoded for this task (the rest came from the run's cache)
        t["trunk_images"] = int(t["trunk_images"])  # images run through the trunk from pixels, without grad
        return TaskResult(seed=seed, accuracy=engine.accuracy(pred, yq), support=len(ys), query=len(yq), **t,
                          steps=stats.steps, final_loss=stats.final_loss, cached=stats.cached, level=self.level,
                          head_lr=cfg.head_lr * self.head.head_lr_factor if self.trains else None,
                          lr=engine.strategy_lr(self.model, cfg) if self.trains and not self.model.frozen_prefix
                          else None, start_state=start_state)
