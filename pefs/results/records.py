"""Typed results: what one task gave (:class:`TaskResult`) and what a protocol run gave (:class:`ProtocolRun`).

Plain data, stdlib only: the JSON record is ``dataclasses.asdict`` of these, so a reader of results (report,
store) never needs torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pefs.results.stats import METHOD, Summary

#: the timed phases of a task, in the order they happen
PHASES = ("decode_s", "extract_s", "train_s", "eval_s")


@dataclass
class TaskResult:
    """One tuned and scored task (a K-shot seed, an episode, the final fit)."""

    seed: int
    accuracy: float | None
    support: int  #: support images trained on, extra views included
    query: int  #: query images scored
    decode_s: float = 0.0
    extract_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0
    decoded: int = 0  #: images decoded for this task (the rest came from the run's caches)
    trunk_images: int = 0  #: images run through the trunk from pixels without grad
    steps: int = 0
    final_loss: float = float("nan")
    cached: bool = False
    level: int = 0
    head_lr: float | None = None
    lr: float | None = None  #: the strategies' learning rate the task trained at (None: nothing but the head)
    start_state: str = ""  #: fingerprint of the weights the task started from
    info: dict[str, Any] = field(default_factory=dict)  #: which task: episode index and classes, model directory

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {**d, **d.pop("info")}


@dataclass
class ProtocolRun:
    """Every task a protocol ran, in order; ``status`` "diverged" when one stopped training (its ``error``)."""

    runs: list[TaskResult] = field(default_factory=list)
    wall_s: float = 0.0
    status: str = "ok"
    error: str | None = None
    failed_task: dict[str, Any] | None = None  #: which task diverged ({"seed": 3} or {"episode": 7})

    @property
    def accuracies(self) -> list[float]:
        return [r.accuracy for r in self.runs if r.accuracy is not None]

    def seconds(self) -> dict[str, float]:
        """Each phase's seconds summed over the tasks."""
        return {k: sum(getattr(r, k) for r in self.runs) for k in PHASES}


@dataclass
class DatasetInfo:
    """Which data a run used: name, class count, licence and where it came from."""

    name: str
    classes: int
    licence: str | None = None
    source: str | None = None


@dataclass
class Machine:
    """Where a run ran: versions, threads and what ``inference_precision="auto"`` became there."""

    python: str
    torch: str
    cuda: bool
    threads: int
    inference_precision: str


@dataclass
class Accuracy:
    """Accuracy over the tasks: each task's, their mean and the half-width of its 95% interval (None when not
    meaningful), how many tasks the mean is over (None without a mean), their sample standard deviation and how
    the interval was computed (``"t"``: Student's t, :func:`pefs.results.stats.mean_ci`)."""

    mean: float | None
    ci95: float | None
    each: list[float]
    n: int | None = None
    sd: float | None = None
    method: str = METHOD

    @classmethod
    def of(cls, summary: Summary | None, each: list[float]) -> Accuracy:
        """From the summary of ``each`` (None: nothing to summarise, a failed run)."""
        if summary is None:
            return cls(None, None, each)
        return cls(summary.mean, summary.half_width, each, summary.n, summary.sd, summary.method)


@dataclass
class RunRecord:
    """One ``tune`` run's result record, assembled from typed parts; :meth:`to_dict` is the JSON record (the
    keys of every stored record in ``benchmarks/``, in the same order; records since the t interval also carry
    ``accuracy_n``, ``accuracy_sd`` and ``ci_method`` after ``accuracy_ci95``: older ones lack them, and their
    ``accuracy_ci95`` used the normal quantile, narrower than t at few seeds)."""

    config: dict[str, Any]  #: the caller's config
    resolved: dict[str, Any]  #: the config the run used (image size, precision filled in)
    config_hash: str
    schema: int
    protocol: str
    model: str
    strategy: str
    head: str
    shots: int | None  #: None for a --final fit, which trains on every training image (``trained_on``)
    ways: int | None
    dataset: DatasetInfo
    backbone: dict[str, Any] | None
    accuracy: Accuracy
    run: ProtocolRun
    params: dict[str, Any] | None
    cached: bool
    frozen_level: int | None
    peak_memory_mb: float
    machine: Machine
    fingerprints: dict[str, Any]
    key: str
    finished_at: str
    extra: dict[str, Any] = field(default_factory=dict)  #: memory and cache figures, selection, final fit
    path: str | None = None  #: where the record was written

    def to_dict(self) -> dict[str, Any]:
        """The JSON record."""
        run = self.run
        d: dict[str, Any] = {
            "pefs_record": 2, "config": self.config, "resolved": self.resolved, "config_hash": self.config_hash,
            "schema": self.schema, "protocol": self.protocol, "model": self.model, "strategy": self.strategy,
            "head": self.head, "shots": self.shots, "ways": self.ways, "dataset": dataclasses.asdict(self.dataset),
            "backbone": self.backbone, "accuracy_mean": self.accuracy.mean, "accuracy_ci95": self.accuracy.ci95,
            "accuracy_n": self.accuracy.n, "accuracy_sd": self.accuracy.sd, "ci_method": self.accuracy.method,
            "accuracies": self.accuracy.each, "runs": [r.to_dict() for r in run.runs], "params": self.params,
            "time_s": run.seconds(), "wall_s": run.wall_s,
            "seconds_per_task": run.wall_s / len(run.runs) if run.runs else None,
            "status": run.status, "error": run.error, "failed_task": run.failed_task, "cached": self.cached,
            "frozen_level": self.frozen_level, "peak_memory_mb": self.peak_memory_mb,
            "machine": dataclasses.asdict(self.machine), "fingerprints": self.fingerprints, "key": self.key,
            "finished_at": self.finished_at, **self.extra,
        }
        if self.path is not None:
            d["path"] = self.path
        return d
