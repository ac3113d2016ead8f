"""Batch inference of a model in hand (``PefsModel.predict``): class names and probabilities per image.

Images are decoded by the data package's one decode path (:meth:`pefs.data.ImageSet.image`), a batch at a
time, in eval mode with the model's own preprocessing; ``pefs predict`` (:mod:`pefs.model.predict`) builds on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from pefs.data import ImageSet, eval_transform
from pefs.errors import PefsError

if TYPE_CHECKING:
    from pefs.model.wrap import PefsModel

@dataclass
class Predictions:
    """Probabilities (N, classes) over ``class_names``; ``labels`` are the top-1 class names."""

    class_names: list[str]
    probs: torch.Tensor

    @property
    def labels(self) -> list[str]:
        return [self.class_names[i] for i in self.probs.argmax(-1).tolist()]

    def top(self, k: int = 1) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable (class name, probability) pairs of each image, best first."""
        p, i = self.probs.topk(min(k, self.probs.shape[-1]), dim=-1)
        return [[(self.class_names[c], float(q)) for c, q in zip(ci.tolist(), pi.tolist())] for pi, ci in zip(p, i)]


def class_names_of(model: PefsModel) -> list[str]:
    """The model's class names in label order (``"0"``, ``"1"``, ... when it was saved without any)."""
    return list(model.class_names) if model.class_names else [str(i) for i in range(model.num_classes)]


def _inference_config(model: PefsModel):
    from pefs.config import TrainConfig

    train = dict((model.tune_config or {}).get("train") or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in train.items() if k in names and k != "progress"}, progress=False)


def _as_image_set(images: Any) -> ImageSet:
    if isinstance(images, ImageSet):
        return images
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    items = list(images)
    names = [str(x) if not isinstance(x, Image.Image) else f"image[{i}]" for i, x in enumerate(items)]
    return ImageSet([], np.zeros(len(items), dtype=int), names,
                    lambda i: items[i])  # ImageSet.image decodes a path or a PIL image (pefs.data.decode)


def predict_images(model: PefsModel, images: Any, batch_size: int = 16) -> Predictions:
    """Probabilities for PIL images, image paths or an ImageSet; an undecodable image is a PefsError naming it."""
    probs = []
    with contextlib.closing(stream(model, _as_image_set(images), batch_size)) as batches:  # unmerges on error
        for _, p, failed in batches:
            if failed:
                raise PefsError(failed[0][1])
            probs.append(p)
    return Predictions(class_names_of(model), torch.cat(probs) if probs else torch.empty(0, model.num_classes))


def stream(model: PefsModel, images: ImageSet, batch_size: int = 16,
           progress: bool = False) -> Iterator[tuple[list[int], torch.Tensor, list[tuple[str, str]]]]:
    """Batch by batch: (indices decoded, their probabilities, [(name, reason)] of those that failed to decode).
    Runs as ``pefs tune`` evaluates: the saved preprocessing, precision and merged evaluation."""
    from tqdm import tqdm

    from pefs.runtime import engine

    if batch_size < 1:
        raise PefsError(f"batch size must be >= 1, got {batch_size}")
    cfg = _inference_config(model)
    pre = dict(model.preprocessing)
    pre["input_size"] = tuple(pre["input_size"])
    transform = eval_transform(pre)
    merged = model.merged_view() if cfg.merge_for_eval else contextlib.nullcontext()
    with merged, tqdm(total=len(images), desc="predict", unit="img", disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            ok, xs, failed = [], [], []
            for i in range(start, min(start + batch_size, len(images))):
                try:
                    xs.append(transform(images.image(i)))
                    ok.append(i)
                except PefsError as e:
                    failed.append((images.names[i], str(e)))
            probs = (engine.outputs(model, torch.stack(xs), cfg, 0, "logits").float().softmax(-1) if xs
                     else torch.empty(0, model.num_classes))
            yield ok, probs, failed
            bar.update(len(ok) + len(failed))
