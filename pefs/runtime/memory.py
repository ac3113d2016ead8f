"""One run's own peak memory, not the process's running maximum, so records of a sweep are comparable.

On a GPU: CUDA's peak-allocation counter, reset when the run starts. On Linux: the peak-RSS mark (VmHWM) reset
through ``/proc/self/clear_refs`` when the run starts, read when it ends, and the growth over the RSS the run
started from. Elsewhere (no /proc): the process's maximum RSS, flagged as such in the record.
"""

from __future__ import annotations

import resource
from typing import Any

import torch


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak resident set size (VmHWM) to the current RSS
        return True
    except OSError:
        return False


class RunMemory:
    """Started at the beginning of a run; :meth:`figures` gives that run's peak and peak growth in MiB."""

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base_kb = torch.cuda.memory_allocated() / 1024
            self.how = "cuda max_memory_allocated since the run started"
            return
        self.per_run = _reset_rss_peak() and _status_kb("VmHWM") is not None
        self.base_kb = _status_kb("VmRSS") or 0
        self.how = ("peak RSS since the run started (VmHWM reset)" if self.per_run
                    else "peak RSS of the process (ru_maxrss; no per-run reset here)")

    def peak_kb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 1024
        if self.per_run:
            return float(_status_kb("VmHWM") or 0)
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    def figures(self) -> dict[str, Any]:
        """``peak_memory_mb`` (the run's peak), ``peak_memory_growth_mb`` (over where it started) and how."""
        peak = self.peak_kb()
        return {"peak_memory_mb": peak / 1024, "peak_memory_growth_mb": max(0.0, peak - self.base_kb) / 1024,
                "peak_memory_measure": self.how}
