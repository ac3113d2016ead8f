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
from pefs.data.views import extra_views, mask_patches
from pefs.errors import PefsError
from pefs.heads import registry as heads
from pefs.model import PefsModel, wrap
from pefs.model.inference import predicted
from pefs.results.records import TaskResult
from pefs.runtime import distributed, engine, hardware, recipe
from pefs.runtime.caches import FrozenInputs
from pefs.runtime.start import StartState

#: offset of the seed of the queries' masks from the task's (the support's masks use the task's seed itself)
QUERY_MASK_SEED = 104_729


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
        self.token_masks = cfg.mask_ratio > 0 and token_mask.drops_tokens(self.model.backbone)
        #: ... through the tuned trunk, every step, when something inside the trunk trains (else pooled once)
        self.tuned_masks = self.token_masks and self.level != engine.level_of(self.model, "pooled")
        self._check_masks(mixing)
        if self.tuned_masks:
            self.level = 0  # masked views run the whole model every step: nothing inside the trunk is cached
        #: the patch tokens each support input keeps (bool (N, patches)) when views go masked through a tuned trunk
        self.support_keep: torch.Tensor | None = None
        self.start = StartState(self.model)
        self.transform = eval_transform(self.model.backbone.data_config, cfg.img_size)
        self.decoder = Decoder(self.transform)
        self.augment = augment_transform(self.model.backbone.data_config, cfg.img_size) if cfg.augment else None
        self.frozen = FrozenInputs(self.model, cfg, self.level, self.decoder)
        self.last_fit: engine.FitStats | None = None  #: the last task's fit (its losses and rates, for a tracker)

    def _check_masks(self, mixing: bool) -> None:
        """Refuse, before any work, masked views this model and head cannot take."""
        cfg, name = self.cfg, self.model.backbone.name
        if cfg.mask_ratio > 0 and cfg.mask_mode == "complementary" and not self.token_masks:
            raise PefsError(f"mask_mode 'complementary' pairs views by the patch tokens they keep; {name} has no "
                            "patch tokens pefs can drop (its masked views are painted in pixels): use mask_mode "
                            "random")
        if self.tuned_masks and hardware.world_size() > 1:
            raise PefsError("masked views through a tuned trunk run one forward per kept-token count in a step, "
                            "which data-parallel processes cannot synchronise: run this on one process")
        if cfg.query_views > 1 and cfg.mask_ratio > 0 and self.head.transductive:
            raise PefsError(f"query_views={cfg.query_views} scores each query view on its own, but head "
                            f"{self.head.name!r} is transductive (it reads every query of a task together): use "
                            "query_views 1 or a head that scores each query alone (linear, prototype, logistic, ...)")
        if self.token_masks and self.head.reads == "tokens":
            raise PefsError(f"masked views of {name} drop patch tokens, so head {self.head.name!r} (it compares "
                            "patch tokens) would see fewer patches in each view: use a head that reads pooled "
                            "features or logits (linear, proto, logistic)")
        if self.tuned_masks and mixing:
            raise PefsError("mixup / cutmix blend two images, but masked views keep each image's own patch tokens: "
                            "train masked views without --mixup / --cutmix")

    def view_figures(self) -> dict[str, Any]:
        """How the run made the support's extra views and scored its queries (for the result record)."""
        cfg = self.cfg
        if cfg.views == 1 and cfg.query_views == 1:
            return {}
        masked = cfg.mask_ratio > 0
        how = ("patch tokens dropped after the position embeddings, before the blocks (MAE)" if self.token_masks
               else "patches painted out in pixels" if masked else None)
        through = ("the tuned trunk, every training step" if self.tuned_masks
                   else "the frozen trunk, once per task" if masked else None)
        m = cfg.query_views
        query = (f"mean of each query's scores over its clean view and {m - 1} masked view{'s' * (m > 2)}"
                 if m > 1 and masked else "the clean view")
        return {"views": {"support_views": cfg.views, "masked": how, "through": through,
                          "mask_mode": cfg.mask_mode if masked else None, "mask_ratio": cfg.mask_ratio,
                          "query_views": m, "query_scores": query}}

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
        self.support_keep = None
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
        keep = self._masks(len(images), self.cfg.views - 1, xv, torch.Generator().manual_seed(seed))
        if self.tuned_masks:  # images, and which tokens each keeps in every training step
            self.support_keep = torch.cat([torch.ones(len(x), keep.shape[1], dtype=torch.bool), keep])
        else:  # the frozen trunk's pooled features of each view, computed once
            xv = engine.outputs(self.model, xv, self.cfg.train, 0, self.level, desc="support views", keep=keep)
        t["extract_s"] += time.perf_counter() - t0
        t["trunk_images"] += len(xv) if self.level else 0
        return torch.cat([x, xv]), torch.cat([y, yv])

    def _masks(self, n_images: int, n_views: int, views: torch.Tensor, g: torch.Generator) -> torch.Tensor | None:
        """The patches each of ``n_views`` masked views of ``n_images`` images keeps (view-major), or None when the
        views are not token-masked."""
        if not self.token_masks:
            return None
        grid = token_mask.token_grid(self.model.backbone, tuple(views.shape[-2:]))
        return token_mask.view_masks(n_images, n_views, grid, self.cfg.mask_ratio, self.cfg.mask_mode, g)

    def read(self, x: torch.Tensor, desc: str, keep: torch.Tensor | None = None) -> torch.Tensor:
        """What the head reads (logits, pooled features or patch tokens) for inputs at ``self.level`` (``keep``:
        the patch tokens each keeps)."""
        out = engine.outputs(self.model, x, self.cfg.train, self.level, self.head.reads, desc=desc, keep=keep)
        return self._head_view(out)

    def _head_view(self, out: torch.Tensor) -> torch.Tensor:
        return patch_tokens(self.model.backbone, out) if self.head.reads == "tokens" else out

    def _fit(self, xs: torch.Tensor, ys: torch.Tensor, seed: int, t: dict[str, float],
             cfg: TrainConfig) -> engine.FitStats:
        """Initialise the head (from the support's prototypes when it uses them) and train on the support."""
        model = self.model
        t0 = time.perf_counter()
        pooled = engine.outputs(model, xs, cfg, self.level, "pooled", desc="head init", keep=self.support_keep) \
            if self.head.uses_prototypes else None
        self.head.init_linear(model.head, pooled, ys, self.n_classes)
        t["extract_s"] += time.perf_counter() - t0
        head_cfg = dataclasses.replace(cfg, head_lr=cfg.head_lr * self.head.head_lr_factor)
        stats = engine.fit(model, xs, ys, head_cfg, seed=seed, start=self.level, keep=self.support_keep)
        t["extract_s"] += stats.extract_s
        t["train_s"] += stats.train_s
        return stats

    def _score(self, xs: torch.Tensor, ys: torch.Tensor, query: ImageSet, t: dict[str, float],
               cfg: TrainConfig, seed: int = 0) -> torch.Tensor:
        """Scores (queries, classes): the queries stream, decoded and scored batch by batch (a head scores each
        query on its own), so only the scores are kept; with ``query_views`` and masking, averaged over views. A
        transductive head reads every query of the task together: the queries' features are kept and scored in one
        call."""
        t0 = time.perf_counter()
        before = t["decode_s"] + t["extract_s"]
        n = self.n_classes
        with self.model.merged_view() if cfg.merge_for_eval else contextlib.nullcontext():
            sup = self.read(xs, "support", self.support_keep) if self.head.reads != "logits" else xs[:0]
            if self.head.transductive:
                feats = self._head_view(self.stream(query, self.head.reads, t))
                scores = self.head.classify(sup, ys, feats, n)
            else:
                scores = self.stream(query, self.head.reads, t,
                                     each=lambda q: self.head.classify(sup, ys, self._head_view(q), n))
            if self.cfg.query_views > 1 and self.cfg.mask_ratio > 0:
                scores = self._averaged(scores, sup, ys, query, t, seed)
        t["eval_s"] += time.perf_counter() - t0 - (t["decode_s"] + t["extract_s"] - before)
        return scores

    def _averaged(self, clean: torch.Tensor, sup: torch.Tensor, ys: torch.Tensor, query: ImageSet,
                  t: dict[str, float], seed: int) -> torch.Tensor:
        """Each query's ``clean`` scores averaged with its scores over ``query_views - 1`` masked views (drawn
        like the support's extra views, from a generator of their own per task), batch by batch."""
        cfg, m, n = self.cfg, self.cfg.query_views - 1, self.n_classes
        train = dataclasses.replace(cfg.train, progress=False)  # one pass per batch: no progress bar of its own
        g = torch.Generator().manual_seed(seed + QUERY_MASK_SEED)
        total, lo = clean.clone(), 0
        batches = decoded_batches(query, range(len(query)), self.decoder, cfg.train.eval_batch_size)
        while True:
            t0 = time.perf_counter()
            xb = next(batches, None)
            t["decode_s"] += time.perf_counter() - t0
            if xb is None:
                return total / (m + 1)
            t0 = time.perf_counter()
            xv = self.decoder.finish(xb).repeat(m, 1, 1, 1)  # view-major, as the support's extra views
            keep = self._masks(len(xb), m, xv, g)
            if keep is None:
                xv = mask_patches(xv, cfg.mask_ratio, cfg.mask_patch, g)
            out = engine.outputs(self.model, xv, train, 0, self.head.reads, desc="query views", keep=keep)
            t["extract_s"] += time.perf_counter() - t0
            t["decoded"] += len(xb)
            t["trunk_images"] += len(xv)
            total[lo:lo + len(xb)] += self.head.classify(sup, ys, self._head_view(out), n).view(m, len(xb), n).sum(0)
            lo += len(xb)

    def run(self, support: ImageSet, query: ImageSet, seed: int, train: TrainConfig | None = None) -> TaskResult:
        """Tune on ``support`` from the run's start, score ``query``; the task's accuracy, timings and steps.
        ``train``: this task's training values (a searched setting's), else the run's."""
        t, cfg = _timings(), train or self.cfg.train
        start_state = self.start.restore()
        hardware.seed_everything(seed)
        xs, ys = self.support(support, seed, t)
        stats = self._fit(xs, ys, seed, t, cfg) if self.trains else engine.FitStats(cached=self.level > 0)
        self.last_fit = stats
        pred = predicted(self._score(xs, ys, query, t, cfg, seed))  # the one scoring rule, as pefs predict's
        yq = torch.as_tensor(query.labels, dtype=torch.long)
        t["decoded"] = int(t["decoded"])  # images decoded for this task (the rest came from the run's cache)
        t["trunk_images"] = int(t["trunk_images"])  # images run through the trunk from pixels, without grad
        return TaskResult(seed=seed, accuracy=engine.accuracy(pred, yq), support=len(ys), query=len(yq), **t,
                          steps=stats.steps, final_loss=stats.final_loss, cached=stats.cached, level=self.level,
                          head_lr=cfg.head_lr * self.head.head_lr_factor if self.trains else None,
                          lr=engine.strategy_lr(self.model, cfg) if self.trains and not self.model.frozen_prefix
                          else None, start_state=start_state)
