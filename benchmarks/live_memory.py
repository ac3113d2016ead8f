"""Peak memory of live tensors on a CPU: the analogue of ``torch.cuda.max_memory_allocated``.

A process's peak RSS on a CPU also counts memory the allocator keeps after tensors are freed (glibc raises its
mmap threshold as large blocks come and go, so freed activations stay in the heap), which blurs a comparison
of strategies run one after the other. :class:`LiveTensors` instead counts the bytes of every tensor storage
created while it is active, until that storage is freed, and keeps the maximum. Tensors that existed before
(the model's weights) are not counted. :class:`PeakMemory` measures the other way: a process's peak RSS growth
(or torch's peak allocation on a GPU), which both benchmarks report beside it.
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


def rss_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Peak memory growth of this process from now: VmHWM after resetting it (Linux), else ru_maxrss;
    on a GPU the peak allocated by torch."""

    def __init__(self, cuda: bool) -> None:
        import torch

        self.cuda = cuda
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            self.how = "torch.cuda.max_memory_allocated"
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the peak RSS (VmHWM) to the current RSS
            self.exact, self.how = True, "VmHWM reset via /proc/self/clear_refs"
        except OSError:
            self.exact, self.how = False, "ru_maxrss (includes peaks before the baseline)"
        self.base = rss_kb("VmRSS")

    def delta_mb(self) -> float:
        import torch

        if self.cuda:
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        if self.exact:
            return (rss_kb("VmHWM") - self.base) / 1024
        import resource

        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.base) / 1024
