"""Validation-based selection (``pefs tune --search lr=1e-4,1e-3 -o r=4,8``), per task of the one protocol loop.

K-shot: per seed, the K shots and ``val_per_class`` validation images per class from the train split outside
them (:func:`pefs.data.kshot_split`); episodes: a held-out part of each support (:func:`pefs.data.hold_out`),
or the default setting when 1 shot leaves nothing to hold out (the record says so). Tune every setting of the
search on the rest and score it on the validation images, pick the best
(:func:`pefs.protocols.selection.search.run_search`),
then tune the chosen setting on the whole support from the same start and score it once on the queries. The
queries never take part in the choice. A benchmark with its own validation split (``dataset.select``) is
searched on it: VTAB-1k trains each setting on train800 (``--final``; K-shot: the K shots) and scores val200,
CoOp scores its K-shot draw of val; ``--final`` may then search too. Each task's run entry carries its chosen
setting and the search table.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

from pefs.config import TuneConfig, head_of
from pefs.data import ImageSet, hold_out
from pefs.errors import PefsError
from pefs.protocols.loop import Choice, Task
from pefs.protocols.selection.search import SearchSpace, apply, parse_search, run_search
from pefs.runtime.engine import NonFiniteLoss
from pefs.runtime.task import TaskRunner


def search_space(cfg: TuneConfig) -> SearchSpace:
    """The search ``cfg`` asks for (``cfg.search`` items and list-valued ``-o`` options); no axes: no search."""
    return parse_search([f"{k}={v}" for k, v in cfg.search.items()], cfg.options, cfg.strategy)


class _Runners:
    """One TaskRunner per model-changing part of a setting (strategy, options, head, caching); settings that
    only change training values share it (and its decoded images and cached features)."""

    def __init__(self, n_classes: int) -> None:
        self.n_classes, self.by_key = n_classes, {}
        self.describe: Callable[[TaskRunner], None] | None = None  #: what a new runner's model learns of the run

    def get(self, cfg: TuneConfig) -> TaskRunner:
        t = cfg.train
        key = json.dumps([cfg.strategy, cfg.options, head_of(cfg), t.cache_features, t.bn_stats, t.mixed_precision],
                         sort_keys=True, default=str)
        if key not in self.by_key:
            self.by_key[key] = TaskRunner(cfg, self.n_classes)
            if self.describe is not None:
                self.describe(self.by_key[key])
        return self.by_key[key]  # a setting's training values go to each run (TaskRunner.run's ``train``)


class Selector:
    """Validation-based selection as a wrapper around each task of the one protocol loop
    (:func:`pefs.protocols.loop.run_protocol`'s ``choose``): split a validation part off the task's training side,
    score every setting on it, hand back the chosen setting's runner (the loop retrains it on the whole
    support, from the same start, and scores it once on the queries) with what the record says of the choice."""

    def __init__(self, cfg: TuneConfig, n_classes: int, space: SearchSpace, own_val: str = "") -> None:
        if cfg.final and not own_val:
            raise PefsError("--final trains on every labelled image, leaving none to validate a --search on; choose "
                            "the settings with a --search run first, then run --final with them")
        self.base, self.space, self.runners = cfg, space, _Runners(n_classes)
        self.runner: TaskRunner | None = None  #: the runner of the last chosen setting (the record's model)
        episodic = cfg.protocol == "episodic"
        # an episode holds out at most half its shots per class (5-shot: 2), so the search still trains on the rest
        self.held_out = min(cfg.val_per_class, cfg.shots // 2) if episodic else cfg.val_per_class
        on = own_val or "validation" if not episodic else \
            "held-out support" if self.held_out else f"default ({cfg.shots}-shot: no held-out support)"
        self.summary: dict[str, Any] = {"on": on, "val_per_class": self.held_out,
                                        "axes": {a.name: list(a.values) for a in space.axes}, "chosen": []}

    def default(self) -> dict[str, Any]:
        """The setting a task without validation images runs: the TrainConfig and strategy defaults (the run's
        own values where it fixes them), never just the first value of each axis."""
        return {}

    def fixed(self, setting: dict[str, Any]) -> TuneConfig:
        """The run's config running ``setting``."""
        return _fixed(self.base, self.space, setting)

    def search(self, support: ImageSet, val: ImageSet, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Every setting tuned on ``support`` and scored on ``val``: the chosen setting and the table."""
        def score(setting: dict[str, Any]) -> float:
            fixed = self.fixed(setting)
            try:
                return self.runners.get(fixed).run(support, val, seed, fixed.train).accuracy
            except NonFiniteLoss:
                return float("nan")

        result = run_search(self.space, score)
        return result.chosen, result.table

    def __call__(self, task: Task) -> Choice:
        support = task.search_support if task.search_support is not None else task.support
        val = task.val
        if val is None and self.held_out:
            support, val = hold_out(task.support, self.held_out, task.seed)
        t0 = time.perf_counter()
        if val is None:
            chosen, table, n_val = self.default(), [], 0
        else:
            chosen, table = self.search(support, val, task.seed)
            n_val = len(val)
        fixed = self.fixed(chosen)
        self.runner = self.runners.get(fixed)
        self.summary["chosen"].append(chosen)
        info = {"chosen": chosen, "search_s": time.perf_counter() - t0, "val_images": n_val, "search": table}
        if val is not None and task.val is None:
            info["val_names"] = list(val.names)  # held out of the episode's support: never among its queries
        return Choice(self.runner, fixed.train, info)


def _fixed(base: TuneConfig, space: SearchSpace, setting: dict[str, Any]) -> TuneConfig:
    """``base`` running ``setting``, with the fixed options only (searched list values removed)."""
    searched = {a.name for a in space.axes}
    plain = dataclasses.replace(base, options={k: v for k, v in base.options.items() if k not in searched},
                                search={})
    return apply(plain, setting)
