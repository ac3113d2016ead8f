"""Streaming decode: a DataLoader over an ImageSet whose worker processes decode images to uint8 tensors, and
the byte-budgeted cache the run keeps them (or the activations made from them) in.

Decoding stays :meth:`ImageSet.image` (the one decode path); the eval transform is split at its
``ToTensor``: the PIL part (resize, crop) runs in the workers and yields uint8 (C, H, W) tensors, a quarter
of float32's bytes to move between processes and to cache; :meth:`Decoder.finish` turns a uint8 batch into
the normalised float batch, with the same elementwise operations as ``ToTensor`` + ``Normalize`` (so equal
bit for bit to transforming image by image). A transform of another shape is applied whole in the workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from pefs.data.sources import ImageSet
from pefs.errors import PefsError

#: sets smaller than this decode in the calling process even when workers are asked for
MIN_PARALLEL = 256


class Decoder:
    """An eval transform split into a per-image uint8 part and a per-batch float part (see the module doc)."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform
        steps = list(getattr(transform, "transforms", []))
        names = [type(t).__name__ for t in steps]
        cut = max((i for i, n in enumerate(names) if n in ("ToTensor", "MaybeToTensor")), default=None)
        tail = names[cut + 1:] if cut is not None else None
        #: True when images come out of the workers as uint8 and are normalised per batch
        self.uint8 = tail is not None and tail in ([], ["Normalize"])
        self.pil_steps = steps[:cut] if self.uint8 else []
        norm = steps[-1] if self.uint8 and tail == ["Normalize"] else None
        self.mean = torch.as_tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1) if norm is not None else None
        self.std = torch.as_tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1) if norm is not None else None

    def item(self, img: Any) -> torch.Tensor:
        """One decoded RGB image -> uint8 (C, H, W) (or the float result of the whole transform)."""
        if not self.uint8:
            return self.transform(img)
        for step in self.pil_steps:
            img = step(img)
        arr = np.array(img, dtype=np.uint8, copy=True)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def finish(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch from :meth:`item` -> the normalised float32 batch the model reads."""
        if batch.dtype != torch.uint8:
            return batch
        x = batch.to(torch.float32).div(255)
        return x.sub_(self.mean).div_(self.std) if self.mean is not None else x


class _Failed:
    """A decode error carried out of a worker process as a value, so the PefsError reaches the user intact."""

    def __init__(self, message: str) -> None:
        self.message = message


class DecodedImages(TorchDataset):
    """``images[indices[k]]`` decoded by :meth:`ImageSet.image` and made a tensor by ``decoder``."""

    def __init__(self, images: ImageSet, indices: Sequence[int], decoder: Decoder) -> None:
        self.images, self.indices, self.decoder = images, list(indices), decoder

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> torch.Tensor | _Failed:
        try:
            return self.decoder.item(self.images.image(self.indices[k]))
        except PefsError as e:
            return _Failed(str(e))


def _collate(items: list) -> torch.Tensor | _Failed:
    failed = next((x for x in items if isinstance(x, _Failed)), None)
    return failed if failed is not None else torch.stack(items)


def decoded_batches(images: ImageSet, indices: Sequence[int], decoder: Decoder, batch_size: int,
                    num_workers: int = 0, pin_memory: bool = False) -> Iterator[torch.Tensor]:
    """Batches of ``images[indices]`` in order, decoded by ``num_workers`` processes (0: this one) ahead of use;
    uint8 when ``decoder.uint8``; in page-locked memory with ``pin_memory`` (the runtime asks for it beside a GPU).
    An undecodable image raises the PefsError that names it. Fewer than ``MIN_PARALLEL`` images (a support set,
    an episode) decode in this process."""
    if not len(indices):
        return
    if len(indices) < MIN_PARALLEL:
        num_workers = 0  # starting worker processes costs more than they save on a few images (benchmarks/scale.md)
    # a private generator: starting the iterator draws a seed from it, never from the global RNG, so how (and
    # whether) images are loaded cannot change a run's head init or shuffling
    loader = DataLoader(DecodedImages(images, indices, decoder), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate, generator=torch.Generator().manual_seed(0),
                        prefetch_factor=4 if num_workers else None, persistent_workers=False,
                        pin_memory=pin_memory)
    for batch in loader:
        if isinstance(batch, _Failed):
            raise PefsError(batch.message)
        yield batch


class ByteCache:
    """Tensors by key within a byte budget. When full it keeps what it has and refuses newcomers (no eviction):
    a run reads the same images in the same order every task, where LRU would evict each entry just before its
    next use and keep nothing useful, while keep-first serves ``budget / size`` of them every time."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget, self.used = int(budget_bytes), 0
        self._items: dict[str, torch.Tensor] = {}
        self.refused = 0

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> torch.Tensor | None:
        return self._items.get(key)

    def put(self, key: str, value: torch.Tensor) -> bool:
        """Keep ``value`` (a copy that owns its bytes) if it fits the budget; True when kept."""
        if key in self._items:
            return True
        size = value.numel() * value.element_size()
        if self.used + size > self.budget:
            self.refused += 1
            return False
        self._items[key] = value.clone()
        self.used += size
        return True
