"""Peak memory of live tensors on a CPU: the analogue of ``torch.cuda.max_memory_allocated``.

A process's peak RSS on a CPU also counts memory the allocator keeps after tensors are freed (glibc raises its
mmap threshold as large blocks come and go, so freed activations stay in the heap), which blurs a comparison
of strategies run one after the other. :class:`LiveTensors` instead counts the bytes of every tensor storage
created while it is active, until that storage is freed, and keeps the maximum. Tensors that existed before
(the model's weights) are not counted.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensors(TorchDispatchMode):
    """``with LiveTensors() as lt: ...`` then ``lt.peak_mb``: the most tensor memory alive at once inside."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self.current = self.peak = 0

    def _freed(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._live:  # views and in-place results share a counted storage
                    self._live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    weakref.finalize(storage, self._freed, key)
                    self.peak = max(self.peak, self.current)
        return out

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20
