"""What a run computes once per image: the inputs of the trainable part, kept for the whole run.

Pooled features when the trunk is frozen up to them (a few KB per image; also in the on-disk
:mod:`pefs.runtime.feature_store` when one is set), else decoded uint8 images or the activations at the frozen
level (``last-k``) within ``cache_mb``. Images the run has not seen yet are decoded in batches by a DataLoader
(``num_workers`` processes) and run through the frozen prefix as they are needed, so memory holds one batch of
images and the results, never a whole test split.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from pefs.config import TuneConfig
from pefs.data import ImageSet
from pefs.data.loading import ByteCache, Decoder, decoded_batches
from pefs.model import PefsModel
from pefs.runtime import engine, hardware
from pefs.runtime.feature_store import FeatureStore, cache_dir, image_key, trunk_fingerprint

#: images per shard of the on-disk feature store
STORE_SHARD = 4096


class FrozenInputs:
    """Inputs at ``level`` (see :mod:`pefs.backbones.split`) of every image a run sees, computed once each."""

    def __init__(self, model: PefsModel, cfg: TuneConfig, level: int, decoder: Decoder) -> None:
        self.model, self.cfg, self.level, self.decoder = model, cfg, level, decoder
        self.pooled_level = engine.level_of(model, "pooled")
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
        precision = hardware.inference_precision(self.cfg.train, hardware.accelerator().device)
        return FeatureStore(root, {"trunk": trunk_fingerprint(self.model), "model": str(self.cfg.model),
                                   "backbone": type(self.model.net).__name__, "transform": repr(self.decoder.transform),
                                   "precision": precision, "level": self.level})

    def figures(self) -> dict[str, Any]:
        """What the run's caches and the feature store held and served (for the result record)."""
        store = None if self.store is None else {"dir": str(self.store.dir), "hits": self.store.hits,
                                                  "misses": self.store.misses, "written": self.store.written}
        return {"cache": {"features": len(self._features), "cached": len(self._cache),
                          "cache_mb": self._cache.used / 2**20, "refused": self._cache.refused,
                          "uint8": self.decoder.uint8}, "feature_store": store}

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
        batches = decoded_batches(images, missing, self.decoder, cfg.eval_batch_size, hardware.decode_workers(cfg),
                                  hardware.pin_memory())
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

def _compact(x: torch.Tensor) -> torch.Tensor:
    """``x`` to keep: as bf16 when that holds its values exactly (the output of a bf16 pass), else a float copy."""
    h = x.to(torch.bfloat16)
    return h if torch.equal(h.float(), x) else x.clone()


def _widen(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype == torch.bfloat16 else x
