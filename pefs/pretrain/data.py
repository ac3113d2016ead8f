"""What a pretraining run reads: the base classes of its source (never the novel ones), seen through the
objective's augmentation, batched for the loop (episodes of base classes for meta-training).

A benchmark with a base / novel class split (``fewshot:<root>``, ``miniimagenet:<root>``) gives its base split; a
source without one gives its train split (its test split is never read) and the checkpoint says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from pefs.data import Dataset, ImageSet, augment_transform, eval_transform
from pefs.data.sampling import episodes
from pefs.errors import PefsError
from pefs.runtime.hardware import world_size

#: what the checkpoint says when the source has no base classes
NO_BASE_NOTE = ("the source has no base / novel class split: trained on its train split (never its test split); "
                "few-shot results on the same classes are not a transfer to novel classes")


@dataclass
class BasePool:
    """The images a run may train on and where they come from."""

    images: ImageSet
    split: str  #: "base", or "train" for a source without base classes
    note: str = ""


def base_pool(dataset: Dataset) -> BasePool:
    """The base classes of ``dataset`` (its ``base`` split), else its train split with a note saying so."""
    base = getattr(dataset, "base", None)
    if base is not None:
        return BasePool(base, "base")
    return BasePool(dataset.train, "train", NO_BASE_NOTE)


def simclr_transform(data_config: dict[str, Any], size: int) -> Callable:
    """SimCLR's augmentation (random resized crop 0.08-1, flip, colour jitter 0.4/0.4/0.4/0.1 with p 0.8, grey with
    p 0.2; no blur, as SimCLR's small-image setting), then the backbone's normalisation."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.ToTensor(),
        T.Normalize(data_config["mean"], data_config["std"]),
    ])


def crop_transform(data_config: dict[str, Any], size: int) -> Callable:
    """MAE's augmentation: random resized crop (scale 0.2-1) and flip, then the backbone's normalisation."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(data_config["mean"], data_config["std"])])


def transform_for(augment: str, data_config: dict[str, Any], size: int) -> Callable:
    """The per-image transform an objective asks for by name (see each objective's ``augment``)."""
    if augment == "simclr":
        return simclr_transform(data_config, size)
    if augment == "crop":
        return crop_transform(data_config, size)
    if augment == "light":
        return augment_transform(data_config, size)
    return eval_transform(data_config, size)


class PoolViews(TorchDataset):
    """Item k: ``views`` transformed views of image k and its label."""

    def __init__(self, images: ImageSet, transform: Callable, views: int) -> None:
        self.images, self.transform, self.views = images, transform, views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int) -> tuple:
        img = self.images.image(k)
        return (*(self.transform(img) for _ in range(self.views)), int(self.images.labels[k]))


class EpisodeSet(TorchDataset):
    """Item k: episode k as (support images, support labels, query images, query labels), labels 0..N-1."""

    def __init__(self, pool: ImageSet, cfg, count: int, transform: Callable) -> None:
        self.episodes = list(episodes(pool, cfg.ways, cfg.shots, cfg.queries, count, seed=cfg.seed))
        self.pool, self.transform = pool, transform

    def classes_seen(self) -> list[str]:
        """The class names the episodes draw from (all of them base classes)."""
        return sorted({self.pool.classes[c] for ep in self.episodes for c in ep.classes})

    def __len__(self) -> int:
        return len(self.episodes)

    def _stack(self, images: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([self.transform(images.image(i)) for i in range(len(images))])
        return x, torch.as_tensor(np.asarray(images.labels), dtype=torch.long)

    def __getitem__(self, k: int) -> tuple:
        ep = self.episodes[k]
        return (*self._stack(ep.support), *self._stack(ep.query))


def _one(items: list) -> Any:
    return items[0]


def loader_for(objective, pool: ImageSet, cfg, size: int, data_config: dict[str, Any], workers: int,
               pin: bool) -> tuple[DataLoader, int]:
    """The DataLoader the loop prepares and the number of optimizer steps it runs (``--steps``, else epochs)."""
    transform = transform_for(objective.augment, data_config, size)
    g = torch.Generator().manual_seed(int(cfg.seed))
    if cfg.meta_train:
        per_episode = cfg.ways * (cfg.shots + cfg.queries)
        count = cfg.steps or cfg.epochs * max(1, len(pool) // per_episode)
        data = EpisodeSet(pool, cfg, count, transform)
        return DataLoader(data, batch_size=1, collate_fn=_one, num_workers=workers, pin_memory=pin), count
    if len(pool) < 2:
        raise PefsError(f"pretraining needs at least 2 images; the {len(pool)} given are too few")
    batch = min(cfg.batch_size, len(pool))
    world = world_size()  # under a multi-process launch each process loads its share of every step's batch
    if batch % world:
        raise PefsError(f"--batch-size {batch} is the batch of one step over all {world} processes and must split "
                        f"equally: choose a multiple of {world} (at most the {len(pool)} images)")
    loader = DataLoader(PoolViews(pool, transform, objective.views), batch_size=batch // world, shuffle=True,
                        drop_last=True, num_workers=workers, pin_memory=pin, generator=g)
    return loader, cfg.steps or cfg.epochs * (len(pool) // batch)
