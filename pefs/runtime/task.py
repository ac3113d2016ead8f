"""One few-shot task at a time on a model loaded once: both protocols (K-shot seeds, episodes) run through here.

Per task: restore the model's frozen start (so no weights leak between tasks), make the support's extra
views, initialise the head, fit, classify the queries. The query set streams: it is decoded in batches by a
DataLoader (``num_workers`` processes) and only what the head reads is kept, so memory does not grow with the
test split. What never changes between tasks is kept by image name for the run: pooled features when the
trunk is frozen up to them (a few KB per image; also in the on-disk :mod:`pefs.runtime.feature_store` store when one is
set), else decoded uint8 images or the activations at the frozen level (``last-k``) within ``cache_mb``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from pefs.backbones import token_mask
from pefs.backbones.split import patch_tokens
from pefs.config import TuneConfig
from pefs.data import ImageSet, augment_transform, eval_transform
from pefs.data.loading import ByteCache, Decoder, decoded_batches
from pefs.data.views import extra_views
from pefs.errors import PefsError
from pefs.heads import registry as heads
from pefs.model.wrap import PefsModel, wrap
from pefs.results.records import TaskResult
from pefs.runtime import engine
from pefs.runtime.feature_store import FeatureStore, cache_dir, image_key, trunk_fingerprint


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


#: images per shard of the on-disk feature store
STORE_SHARD = 4096


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
        self.decoder = Decoder(self.transform)
        self.views = cfg
        #: a ViT's masked views drop their masked patch tokens (MAE-style) instead of painting pixels
        self.token_masks = cfg.mask_ratio > 0 and token_mask.supports_token_masks(self.model.backbone)
        if self.token_masks and self.level != engine.level_of(self.model, "pooled"):
            raise PefsError(f"masked views of a ViT drop patch tokens, which needs a frozen trunk up to the pooled "
                            f"features (a linear probe or a prototype/logistic head); {cfg.strategy!r} with head "
                            f"{cfg.head!r} trains or caches inside the trunk")
        self.augment = augment_transform(self.model.backbone.data_config, cfg.img_size) if cfg.augment else None
        self.pooled_level = engine.level_of(self.model, "pooled")
        #: image name -> pooled features, kept for every image (a few KB each) when the frozen level is "pooled"
        self._features: dict[str, torch.Tensor] = {}
        #: image name -> uint8 image (level 0) or activation at ``self.level``, within --cache-mb
        self._cache = ByteCache(cfg.train.cache_mb * 2**20)
        self.store = self._open_store()
        self._pending: dict[int, str] = {}  # position -> store key of the images the store did not have

    def _open_store(self) -> FeatureStore | None:
        root = cache_dir(self.cfg.feature_cache)
        if root is None or self.level != self.pooled_level or self.level == 0:
            return None
        precision = engine.inference_precision(self.cfg.train, engine.accelerator().device)
        return FeatureStore(root, {"trunk": trunk_fingerprint(self.model), "model": str(self.cfg.model),
                                   "backbone": type(self.model.net).__name__, "transform": repr(self.transform),
                                   "precision": precision, "level": self.level})

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
        store = None if self.store is None else {"dir": str(self.store.dir), "hits": self.store.hits,
                                                  "misses": self.store.misses, "written": self.store.written}
        return {"cache": {"features": len(self._features), "cached": len(self._cache),
                          "cache_mb": self._cache.used / 2**20, "refused": self._cache.refused,
                          "uint8": self.decoder.uint8}, "feature_store": store}

    def clear_caches(self) -> None:
        """Forget the run's kept features and decoded images (the next task starts cold; the store stays)."""
        self._features.clear()
        self._cache = ByteCache(self.cfg.train.cache_mb * 2**20)

    def _memo(self, name: str) -> torch.Tensor | None:
        return self._features.get(name) if self.level == self.pooled_level else self._cache.get(name)

    def _keep(self, name: str, x: torch.Tensor) -> None:
        if self.level == self.pooled_level:
            self._features[name] = _compact(x)
        else:
            self._cache.put(name, _compact(x) if x.is_floating_point() else x)

    def _from_store(self, images: ImageSet, missing: list[int]) -> list[int]:
        """Fill the run's features from the on-disk store; the positions still missing."""
        if self.store is None or not missing:
            return missing
        keys = {p: image_key(images, p) for p in missing}
        found = self.store.get(list(keys.values()))
        for p, k in keys.items():
            if k in found:
                self._features[images.names[p]] = _compact(found[k])
        self._pending = {p: k for p, k in keys.items() if k not in found}
        return [p for p in missing if keys[p] not in found]

    def _produce(self, images: ImageSet, missing: list[int], t: dict[str, float]) -> Iterator[torch.Tensor]:
        """Inputs at ``self.level`` of ``images[missing]`` in order: decoded in batches (DataLoader workers),
        run through the frozen prefix batch by batch, kept in the run's caches (and the store)."""
        cfg = self.cfg.train
        prefix = engine.no_grad_pass(self.model, cfg, 0, self.level) if self.level else None
        batches = decoded_batches(images, missing, self.decoder, cfg.eval_batch_size, cfg.num_workers)
        done, new_keys, new_feats = 0, [], []
        while True:
            t0 = time.perf_counter()
            xb = next(batches, None)
            t["decode_s"] += time.perf_counter() - t0
            if xb is None:
                break
            pos = missing[done:done + len(xb)]
            done += len(xb)
            t["decoded"] += len(xb)
            if prefix is not None:
                t0 = time.perf_counter()
                xb = prefix(self.decoder.finish(xb))
                t["extract_s"] += time.perf_counter() - t0
                t["trunk_images"] += len(xb)
            for p, x in zip(pos, xb):
                self._keep(images.names[p], x)
            if self.store is not None:
                new_keys += [self._pending[p] for p in pos]
                new_feats.append(xb)
                if len(new_keys) >= STORE_SHARD:  # bounded memory; what is written survives a kill
                    self.store.put(new_keys, torch.cat(new_feats))
                    new_keys, new_feats = [], []
            yield from xb
        if self.store is not None and new_keys:
            self.store.put(new_keys, torch.cat(new_feats))

    def stream(self, images: ImageSet, stop: str | int, t: dict[str, float], desc: str = "evaluate",
               each: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Outputs at ``stop`` for every image of ``images`` (or ``each`` of each batch of them, e.g. its scores),
        in order, computed batch by batch: cached inputs at ``self.level`` where the run has them, the rest
        decoded and run through the frozen prefix as they are needed. Memory holds one batch of images and the
        results, not the set; batches are the same as without any cache."""
        n, b = len(images), self.cfg.train.eval_batch_size
        missing = [p for p, name in enumerate(images.names) if self._memo(name) is None]
        missing = self._from_store(images, missing)
        produced, todo = self._produce(images, missing, t), set(missing)
        rest = engine.no_grad_pass(self.model, self.cfg.train, self.level, stop)
        out = torch.empty(0)
        for lo in tqdm(range(0, n, b), desc=desc, disable=not self.cfg.train.progress, leave=False):
            xb = torch.stack([next(produced) if p in todo else _widen(self._memo(images.names[p]))
                              for p in range(lo, min(n, lo + b))])
            if self.level == 0:
                xb = self.decoder.finish(xb)
                if stop != 0:
                    t["trunk_images"] += len(xb)
            r = rest(xb) if each is None else each(rest(xb))
            if lo == 0:
                out = torch.empty((n, *r.shape[1:]), dtype=r.dtype)
            out[lo:lo + len(r)] = r
        next(produced, None)  # finishes the producer: writes the store shard
        return out

    def inputs(self, images: ImageSet, t: dict[str, float]) -> torch.Tensor:
        """Clean inputs at ``self.level`` for ``images`` (a support set: small), each decoded and run through
        the frozen prefix once per run."""
        return self.stream(images, self.level, t, desc="frozen prefix")

    def support(self, images: ImageSet, seed: int, t: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """The support's inputs at ``self.level``: every clean image, then its extra views (made per task)."""
        x = self.inputs(images, t)
        y = torch.as_tensor(images.labels, dtype=torch.long)
        if self.views.views == 1:
            return x, y
        t0 = time.perf_counter()
        clean = torch.cat([self.decoder.finish(xb) for xb in decoded_batches(
            images, range(len(images)), self.decoder, self.cfg.train.eval_batch_size)])
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
        t["trunk_images"] += len(xv) if self.level else 0
        return torch.cat([x, xv]), torch.cat([y, yv])

    def read(self, x: torch.Tensor, desc: str) -> torch.Tensor:
        """What the head reads (logits, pooled features or patch tokens) for inputs at ``self.level``."""
        out = engine.outputs(self.model, x, self.cfg.train, self.level, self.head.reads, desc=desc)
        return self._head_view(out)

    def _head_view(self, out: torch.Tensor) -> torch.Tensor:
        return patch_tokens(self.model.backbone, out) if self.head.reads == "tokens" else out

    def run(self, support: ImageSet, query: ImageSet, seed: int) -> TaskResult:
        """Tune on ``support`` from the frozen start, score ``query``; the task's accuracy, timings and steps."""
        t = dict.fromkeys(("decode_s", "extract_s", "train_s", "eval_s", "decoded", "trunk_images"), 0.0)
        cfg, model, n = self.cfg.train, self.model, self.n_classes
        model.load_state_dict(self.start)
        start_state = fingerprint(model)
        engine.seed_everything(seed)
        xs, ys = self.support(support, seed, t)
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
        before = t["decode_s"] + t["extract_s"]
        with model.merged_view() if cfg.merge_for_eval else contextlib.nullcontext():
            sup = self.read(xs, "support") if self.head.reads != "logits" else xs[:0]
            # the query streams: decoded batch by batch and scored batch by batch (heads score each query on its
            # own), so only the scores are kept; a head that reads all queries at once sets ``transductive``
            if getattr(self.head, "transductive", False):
                scores = self.head.classify(sup, ys, self._head_view(self.stream(query, self.head.reads, t)), n)
            else:
                scores = self.stream(query, self.head.reads, t,
                                     each=lambda q: self.head.classify(sup, ys, self._head_view(q), n))
        t["eval_s"] += time.perf_counter() - t0 - (t["decode_s"] + t["extract_s"] - before)
        pred = scores.argmax(-1)
        t["decoded"] = int(t["decoded"])  # images decoded for this task (the rest came from the run's cache)
        t["trunk_images"] = int(t["trunk_images"])  # images run through the trunk from pixels, without grad
        return TaskResult(seed=seed, accuracy=engine.accuracy(pred, yq), support=len(ys), query=len(yq), **t,
                          steps=stats.steps, final_loss=stats.final_loss, cached=stats.cached, level=self.level,
                          head_lr=cfg.head_lr * self.head.head_lr_factor if self.trains else None,
                          lr=engine.strategy_lr(model, cfg) if self.trains and not self.model.frozen_prefix else None,
                          start_state=start_state)


def _compact(x: torch.Tensor) -> torch.Tensor:
    """``x`` to keep: as bf16 when that holds its values exactly (the output of a bf16 pass), else a float copy."""
    h = x.to(torch.bfloat16)
    return h if torch.equal(h.float(), x) else x.clone()


def _widen(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype == torch.bfloat16 else x
