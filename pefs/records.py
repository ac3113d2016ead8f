"""Typed results: what one task gave (:class:`TaskResult`) and what a protocol run gave (:class:`ProtocolRun`).

Plain data, stdlib only: the JSON record is ``dataclasses.asdict`` of these, so a reader of results (report,
store) never needs torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

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
