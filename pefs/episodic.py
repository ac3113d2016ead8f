"""The episodic protocol: E tasks of N-way K-shot with Q queries per class, each tuned from the same frozen start.

The backbone loads once (:class:`~pefs.fewshot.TaskRunner`); every episode restores its start state, so no
weights leak between episodes, and each run entry carries the fingerprint of the state it started from.
When the trunk is frozen up to some level (linear probe, prototype heads, ``last-k``), the activations
there are computed once per pool image for the whole run and every episode trains only what follows.
Mean and 95% CI (1.96·std/√E) are over episodes.
"""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm

from pefs.config import TuneConfig
from pefs.data import Dataset, episodes
from pefs.engine import NonFiniteLoss
from pefs.fewshot import TaskRunner


def check_episodes(cfg: TuneConfig, dataset: Dataset) -> None:
    """Raise the sampling errors (ways > classes, shots+queries > images of a class) before loading weights."""
    next(episodes(dataset.train, cfg.ways, cfg.shots, cfg.queries, 1, seed=cfg.seeds[0]))


def run_episodes(cfg: TuneConfig, dataset: Dataset, runner: TaskRunner, t_start: float | None = None) -> dict[str, Any]:
    """Tune and score ``cfg.episodes`` episodes drawn from the train split; one run entry per episode."""
    t_start = time.perf_counter() if t_start is None else t_start
    seed = cfg.seeds[0]
    tasks = episodes(dataset.train, cfg.ways, cfg.shots, cfg.queries, cfg.episodes, seed=seed)
    runs: list[dict[str, Any]] = []
    for i, ep in enumerate(tqdm(tasks, total=cfg.episodes, desc="episodes", disable=not cfg.train.progress)):
        try:
            run = runner.run(ep.support, ep.query, seed + i)
        except NonFiniteLoss as e:
            e.partial = {"runs": runs, "wall_s": time.perf_counter() - t_start,  # type: ignore[attr-defined]
                         "status": "diverged", "error": f"episode {i}: {e}", "failed_episode": i}
            raise
        runs.append({"episode": i, "classes": ep.classes, **run})
    return {"runs": runs, "wall_s": time.perf_counter() - t_start, "status": "ok"}
