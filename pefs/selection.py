"""Validation-based selection for K-shot transfer (``pefs tune --search lr=1e-4,1e-3 -o r=4,8``).

Per seed: draw the K shots and ``val_per_class`` validation images per class from the train split outside
them (:func:`pefs.data.kshot_split`), tune every setting of the search on the K shots and score it on the
validation images, pick the best (:func:`pefs.search.run_search`), then tune the chosen setting on the K
shots once more from the frozen start and score it once on the test split. The test split never takes part
in the choice. Each seed's run entry carries its chosen setting and the whole search table.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from pefs.config import TuneConfig
from pefs.data import Dataset, kshot_split
from pefs.engine import NonFiniteLoss
from pefs.errors import PefsError
from pefs.fewshot import TaskRunner
from pefs.records import ProtocolRun
from pefs.search import SearchSpace, apply, parse_search, run_search


def search_space(cfg: TuneConfig) -> SearchSpace:
    """The search ``cfg`` asks for (``cfg.search`` items and list-valued ``-o`` options); no axes: no search."""
    return parse_search([f"{k}={v}" for k, v in cfg.search.items()], cfg.options, cfg.strategy)


class _Runners:
    """One TaskRunner per model-changing part of a setting (strategy, options, head, caching); settings that
    only change training values share it (and its decoded images and cached features)."""

    def __init__(self, n_classes: int) -> None:
        self.n_classes, self.by_key = n_classes, {}

    def get(self, cfg: TuneConfig) -> TaskRunner:
        t = cfg.train
        key = json.dumps([cfg.strategy, cfg.options, cfg.head, t.cache_features, t.bn_stats, t.mixed_precision],
                         sort_keys=True, default=str)
        if key not in self.by_key:
            self.by_key[key] = TaskRunner(cfg, self.n_classes)
        runner = self.by_key[key]
        runner.cfg = cfg  # the training values of this setting (the model part is the same by the key)
        return runner


def run_kshot_search(cfg: TuneConfig, dataset: Dataset, space: SearchSpace
                     ) -> tuple[ProtocolRun, TaskRunner | None, NonFiniteLoss | None, dict[str, Any]]:
    """Every seed with selection on validation: the protocol run (each seed's result carries its chosen setting
    and search table), the runner of the last final fit (its model describes the record's parameters), the
    divergence that stopped the run (or None), and the record's ``selection`` summary."""
    if cfg.protocol != "kshot":
        raise PefsError("--search runs on K-shot transfer; episodes (--ways) would need a held-out part of each "
                        "support, which is not wired yet: drop --ways or --search")
    t_start = time.perf_counter()
    base, out = cfg, ProtocolRun()
    runners = _Runners(len(dataset.classes))
    runner: TaskRunner | None = None
    summary = {"selection": {"on": "validation", "val_per_class": cfg.val_per_class,
                             "axes": {a.name: list(a.values) for a in space.axes}, "chosen": []}}
    for seed in cfg.seeds:
        split = kshot_split(dataset, cfg.shots, seed=seed, val_per_class=cfg.val_per_class)

        def score(setting: dict[str, Any], split=split, seed=seed) -> float:
            try:
                return runners.get(_fixed(base, space, setting)).run(split.support, split.val, seed).accuracy
            except NonFiniteLoss:
                return float("nan")

        t0 = time.perf_counter()
        result = run_search(space, score)
        search_s = time.perf_counter() - t0
        runner = runners.get(_fixed(base, space, result.chosen))
        try:
            run = runner.run(split.support, split.query, seed)
        except NonFiniteLoss as e:
            out.status, out.error, out.failed_task = "diverged", f"seed {seed}: {e}", {"seed": seed}
            out.wall_s = time.perf_counter() - t_start
            return out, runner, e, summary
        if cfg.save_adapter:
            runner.model.save(Path(cfg.save_adapter) / f"seed{seed}")
        run.info.update(chosen=result.chosen, search_s=search_s, val_images=len(split.val), search=result.table)
        out.runs.append(run)
        summary["selection"]["chosen"].append(result.chosen)
    out.wall_s = time.perf_counter() - t_start
    return out, runner, None, summary


def _fixed(base: TuneConfig, space: SearchSpace, setting: dict[str, Any]) -> TuneConfig:
    """``base`` running ``setting``, with the fixed options only (searched list values removed)."""
    searched = {a.name for a in space.axes}
    plain = dataclasses.replace(base, options={k: v for k, v in base.options.items() if k not in searched},
                                search={})
    return apply(plain, setting)
