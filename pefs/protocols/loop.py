"""The protocols as task iterators feeding one loop.

A :class:`Task` is a support set to tune on, a query set to score, and the seed that makes it repeatable.
K-shot transfer draws one task per seed (K per class from the train split, the whole test split as queries);
episodes draw E N-way K-shot tasks with Q queries per class; ``--final`` is one task on every training
image. :func:`run_protocol` runs any of them through a :class:`~pefs.runtime.task.TaskRunner` (the model loaded
once, restored to the same start before each task, run-wide caches) and stops at the first task whose
training diverges, keeping what finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from pefs.config import TrainConfig, TuneConfig
from pefs.data import Dataset, ImageSet, episodes, kshot_split
from pefs.errors import PefsError
from pefs.protocols.final import seed_dir
from pefs.results.records import ProtocolRun, TaskResult
from pefs.runtime.engine import NonFiniteLoss
from pefs.runtime.task import TaskRunner
from pefs.runtime.tracking import RunTracker


@dataclass
class Task:
    """One few-shot task: tune on ``support``, score ``query``; ``info`` says which task it is in a record."""

    seed: int
    support: ImageSet
    query: ImageSet
    info: dict[str, Any] = field(default_factory=dict)
    val: ImageSet | None = None  #: validation images outside ``support`` (K-shot with ``--search``), else None
    #: what each setting of a ``--search`` trains on when not ``support`` (VTAB-1k's train800 for a final fit)
    search_support: ImageSet | None = None

    def label(self) -> str:
        return f"episode {self.info['episode']}" if "episode" in self.info else f"seed {self.seed}"


def kshot_tasks(cfg: TuneConfig, dataset: Dataset, validate: bool = False) -> Iterator[Task]:
    """One task per seed: K images per class of the train split; the queries are the whole test split. With
    ``validate``, ``cfg.val_per_class`` validation images per class from the train split outside the K shots, or
    the benchmark's own validation images where it defines them (``dataset.select``: VTAB-1k, CoOp)."""
    select = getattr(dataset, "select", None) if validate else None
    for seed in cfg.seeds:
        per_class = cfg.val_per_class if validate and select is None else 0
        split = kshot_split(dataset, cfg.shots, seed=seed, val_per_class=per_class)
        if select is not None:
            search_support, val = select(split.support, cfg.shots, seed)
            yield Task(seed, split.support, split.query, val=val, search_support=search_support)
        else:
            yield Task(seed, split.support, split.query, val=split.val if validate else None)


def episode_tasks(cfg: TuneConfig, dataset: Dataset) -> Iterator[Task]:
    """``cfg.episodes`` N-way K-shot tasks drawn from the train split with ``cfg.queries`` queries per class."""
    seed = cfg.seeds[0]
    for i, ep in enumerate(episodes(dataset.train, cfg.ways, cfg.shots, cfg.queries, cfg.episodes, seed=seed)):
        yield Task(seed + i, ep.support, ep.query, {"episode": i, "classes": ep.classes})


def final_tasks(cfg: TuneConfig, dataset: Dataset, validate: bool = False) -> Iterator[Task]:
    """One task on every training image; its queries are the data's own test split, else the training images
    themselves (``info["held_out"]`` says which). With ``validate`` (a ``--search`` on a benchmark with its own
    validation split, e.g. VTAB-1k), the search trains on that benchmark's training part and scores its
    validation split (train800 / val200) before the chosen setting trains on every training image."""
    held_out = dataset.test is not None and len(dataset.test) > 0
    task = Task(cfg.seeds[0], dataset.train, dataset.test if held_out else dataset.train, {"held_out": held_out})
    select = getattr(dataset, "select", None) if validate else None
    if select is not None:
        task.search_support, task.val = select(dataset.train, None, cfg.seeds[0])
    yield task


def tasks(cfg: TuneConfig, dataset: Dataset, validate: bool = False) -> Iterator[Task]:
    """The tasks of ``cfg``'s protocol, lazily (each is sampled when the loop reaches it); ``validate``: K-shot
    tasks carry validation images (episodes hold theirs out of the support,
    :mod:`pefs.protocols.selection.selector`)."""
    if getattr(dataset, "episodic_only", False) and cfg.protocol != "episodic":
        raise PefsError(f"{dataset.name} ({getattr(dataset, 'benchmark', '')}) is scored on episodes only: every "
                        f"class is novel; give --ways N (the benchmark's 5-way) with --episodes, not "
                        f"{'--final' if cfg.final else 'K-shot seeds'}")
    if cfg.final:
        return final_tasks(cfg, dataset, validate)
    return episode_tasks(cfg, dataset) if cfg.protocol == "episodic" else kshot_tasks(cfg, dataset, validate)


def task_count(cfg: TuneConfig) -> int:
    return 1 if cfg.final else cfg.episodes if cfg.protocol == "episodic" else len(cfg.seeds)


def check_sampling(cfg: TuneConfig, dataset: Dataset, validate: bool = False) -> None:
    """Draw the first task, so sampling errors (more shots or ways than the data has) come before any weights
    load."""
    next(tasks(cfg, dataset, validate))


class Choice(NamedTuple):
    """What a selector chose for a task: the runner (model part of the setting), the training values, and what
    the task's record entry says about the choice."""

    runner: TaskRunner
    train: TrainConfig
    info: dict[str, Any]


#: picks the setting a task trains with (``--search``, ``--strategy auto``)
Choose = Callable[[Task], Choice]


def run_protocol(cfg: TuneConfig, dataset: Dataset, runner: TaskRunner | None,
                 after: Callable[[Task, TaskResult], None] | None = None,
                 choose: Choose | None = None,
                 track: RunTracker | None = None) -> tuple[ProtocolRun, NonFiniteLoss | None]:
    """Every task of the protocol, in order, each from the runner's start; ``after(task, result)`` runs after
    each (e.g. saving the tuned model), and K-shot seeds save their model with ``--save-adapter``. With
    ``choose`` (``--search``), each task first picks its setting on validation data and trains the chosen
    runner on the whole support. A diverged task ends the run: the finished tasks and the error come back
    with status "diverged". ``track`` (``--track``) logs each task's training steps and accuracy."""
    t0 = time.perf_counter()
    out = ProtocolRun()
    n = task_count(cfg)
    for task in tqdm(tasks(cfg, dataset, choose is not None), total=n, desc="tasks",
                     disable=not cfg.train.progress or n == 1):
        chosen: dict[str, Any] = {}
        train = None  # the run's own training values, unless a selector chose others
        try:
            if choose is not None:
                runner, train, chosen = choose(task)
            result = runner.run(task.support, task.query, task.seed, train)
        except NonFiniteLoss as e:
            out.status, out.error = "diverged", f"{task.label()}: {e}"
            out.failed_task = {"episode": task.info["episode"]} if "episode" in task.info else {"seed": task.seed}
            out.wall_s = time.perf_counter() - t0
            return out, e
        if track is not None:
            track.fit(runner.last_fit)
            track.task(result)
        result.info.update(task.info)
        result.info.update(chosen)
        if cfg.save_adapter and cfg.protocol == "kshot" and not cfg.final:
            runner.model.save(seed_dir(cfg.save_adapter, task.seed))
        if after is not None:
            after(task, result)
        out.runs.append(result)
    out.wall_s = time.perf_counter() - t0
    return out, None
