"""Batch inference of a model in hand (``PefsModel.predict``): class names and probabilities per image.

Images are decoded by the data package's one decode path (:meth:`pefs.data.ImageSet.image`), a batch at a
time, in eval mode with the model's own preprocessing; ``pefs predict`` (:mod:`pefs.model.predict`) builds on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from pefs.config import TrainConfig
from pefs.config.fields import choices
from pefs.data import ImageSet, eval_transform
from pefs.errors import PefsError

if TYPE_CHECKING:
    from pefs.model.wrap import PefsModel

#: ``--precision`` of ``pefs predict``: the autocast of its passes, tune's ``--inference-precision`` choices
PRECISIONS: tuple[str, ...] = choices(TrainConfig, "inference_precision") or ()


def top_classes(scores: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Indices (N, k) of each row's ``k`` highest scores, best first: the one scoring rule of pefs (tune's
    evaluation, ``PefsModel.predict``, ``pefs predict``). Equal scores rank the lower class index first, so the
    top-1 is exactly ``torch.argmax`` (the first maximum) and the same image gets the same label everywhere."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def predicted(scores: torch.Tensor) -> torch.Tensor:
    """The top-1 class index of each row of ``scores`` (:func:`top_classes`)."""
    return top_classes(scores, 1)[..., 0]


@dataclass
class Predictions:
    """Probabilities (N, classes) over ``class_names``; ``labels`` are the top-1 class names. Classes are ranked
    by ``scores`` (the logits) when given, else by ``probs``, with :func:`top_classes`' tie rule."""

    class_names: list[str]
    probs: torch.Tensor
    scores: torch.Tensor | None = None

    @classmethod
    def from_scores(cls, class_names: list[str], scores: torch.Tensor) -> Predictions:
        """Predictions from logits: probabilities are their softmax, the ranking is theirs (two logits that
        differ may round to one probability)."""
        scores = scores.float()
        return cls(class_names, scores.softmax(-1), scores)

    def _ranking(self, k: int) -> torch.Tensor:
        return top_classes(self.scores if self.scores is not None else self.probs, k)

    @property
    def labels(self) -> list[str]:
        return [self.class_names[i] for i in self._ranking(1)[:, 0].tolist()]

    def top(self, k: int = 1) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable (class name, probability) pairs of each image, best first."""
        i = self._ranking(min(k, self.probs.shape[-1]))
        p = self.probs.gather(-1, i)
        return [[(self.class_names[c], float(q)) for c, q in zip(ci.tolist(), pi.tolist())] for pi, ci in zip(p, i)]


def class_names_of(model: PefsModel) -> list[str]:
    """The model's class names in label order (``"0"``, ``"1"``, ... when it was saved without any)."""
    return list(model.class_names) if model.class_names else [str(i) for i in range(model.num_classes)]


def _inference_config(model: PefsModel, precision: str | None = None):
    """The training config the model was tuned with (its no-grad passes run as tune's did); ``precision``
    overrides its inference precision (default: the one tune used, recorded in the model directory)."""
    if precision is not None and precision not in PRECISIONS:
        raise PefsError(f"unknown precision {precision!r}; valid choices: {', '.join(PRECISIONS)}")
    train = dict((model.tune_config or {}).get("train") or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in train.items() if k in names and k != "progress"}, progress=False)
    if precision is not None:
        cfg.inference_precision = precision
    return cfg


def _as_image_set(images: Any) -> ImageSet:
    if isinstance(images, ImageSet):
        return images
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    items = list(images)
    names = [str(x) if not isinstance(x, Image.Image) else f"image[{i}]" for i, x in enumerate(items)]
    return ImageSet([], np.zeros(len(items), dtype=int), names,
                    lambda i: items[i])  # ImageSet.image decodes a path or a PIL image (pefs.data.decoding)


def predict_images(model: PefsModel, images: Any, batch_size: int = 16, precision: str | None = None) -> Predictions:
    """Probabilities for PIL images, image paths or an ImageSet; an undecodable image is a PefsError naming it."""
    scores = []
    with contextlib.closing(stream(model, _as_image_set(images), batch_size, precision=precision)) as batches:
        for _, s, failed in batches:  # closing: a merged view is unmerged on error
            if failed:
                raise PefsError(failed[0][1])
            scores.append(s)
    return Predictions.from_scores(class_names_of(model),
                                   torch.cat(scores) if scores else torch.empty(0, model.num_classes))


def saved_transform(model: PefsModel) -> Callable:
    """The eval preprocessing ``model`` was tuned with (saved in its model directory), as a transform."""
    pre = dict(model.preprocessing)
    pre["input_size"] = tuple(pre["input_size"])
    return eval_transform(pre)


def decode_each(images: ImageSet, indices: Iterable[int], transform: Callable
                ) -> tuple[list[int], list[torch.Tensor], list[tuple[str, str]]]:
    """``transform`` of each image of ``indices``: the indices decoded, their tensors, and (name, reason) of each
    image that cannot be decoded (one bad file never stops the others)."""
    ok, xs, failed = [], [], []
    for i in indices:
        try:
            xs.append(transform(images.image(i)))
            ok.append(i)
        except PefsError as e:
            failed.append((images.names[i], str(e)))
    return ok, xs, failed


def stream(model: PefsModel, images: ImageSet, batch_size: int = 16, progress: bool = False,
           precision: str | None = None) -> Iterator[tuple[list[int], torch.Tensor, list[tuple[str, str]]]]:
    """Batch by batch: (indices decoded, their logits (float32), [(name, reason)] of those that failed to decode).
    Runs as ``pefs tune`` evaluates: the saved preprocessing, precision (unless ``precision`` is given) and
    merged evaluation; rank the logits with :func:`top_classes` (or :meth:`Predictions.from_scores`)."""
    from tqdm import tqdm

    from pefs.runtime import engine

    if batch_size < 1:
        raise PefsError(f"batch size must be >= 1, got {batch_size}")
    cfg = _inference_config(model, precision)
    transform = saved_transform(model)
    merged = model.merged_view() if cfg.merge_for_eval else contextlib.nullcontext()
    with merged, tqdm(total=len(images), desc="predict", unit="img", disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            ok, xs, failed = decode_each(images, range(start, min(start + batch_size, len(images))), transform)
            scores = (engine.outputs(model, torch.stack(xs), cfg, 0, "logits").float() if xs
                      else torch.empty(0, model.num_classes))
            yield ok, scores, failed
            bar.update(len(ok) + len(failed))
