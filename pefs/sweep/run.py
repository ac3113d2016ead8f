"""Sweeps: a grid of models × strategies × shots × seeds, one ``tune()`` run per cell, resumable.

Every cell is one seed, so a killed sweep loses at most the cell in flight: rerunning the same command
skips every cell whose config hash is already in the store. The whole grid is validated (model names,
strategies and their options, shots against the data, every TuneConfig) before the first cell runs.
Under ``accelerate launch`` process ``i`` of ``n`` takes cells ``i, i+n, ...`` and appends to its own shard.
A cell's key is its config hash plus fingerprints of the data's content and the checkpoint file
(:mod:`pefs.config.identity`): changed images under the same path run again. Separate sweeps sharing a store
split its cells through claim files (:mod:`pefs.results.claims`) and finish the cells of one that was killed.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pefs.backbones import check_name
from pefs.config import DEFAULT_MODEL, RUN_KEYS, TRAIN_KEYS, TrainConfig, TuneConfig, run_key
from pefs.config.checks import check_classes, check_seeds, check_writable_file
from pefs.config.files import check_outside
from pefs.data.sources import local_path
from pefs.errors import PefsError
from pefs.protocols.run import check_outputs, run_fingerprints
from pefs.results import claims
from pefs.results import store as results
from pefs.results.store import DEFAULT_STORE
from pefs.strategies.spec import applicable, valid_options
from pefs.sweep.recipe import as_list, check_settings, strategy_entry

#: seconds between looks at cells another process has claimed
POLL_S = 2.0


@dataclass
class StrategyEntry:
    """One strategy axis value: a spec ("lora", "lora+norm"), its own options and training overrides."""

    spec: str
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepSpec:
    """The grid and the settings shared by every cell."""

    models: list[str]
    strategies: list[StrategyEntry]
    shots: list[int]
    seeds: list[int]
    run: dict[str, Any] = field(default_factory=dict)  # TuneConfig fields: data, ways, pretrained, ...
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    options: dict[str, Any] = field(default_factory=dict)  # strategy options, routed to the strategies taking them
    store: str = DEFAULT_STORE
    output: str | None = None  # folder of tune's JSON records; default: next to the store
    progress: bool = False


@dataclass
class Cell:
    """One planned run: its position in the grid, its TuneConfig (one seed) and its key
    (:func:`pefs.config.identity.run_key`)."""

    index: int
    config: TuneConfig
    hash: str
    #: content fingerprints of the data and checkpoint (:func:`pefs.protocols.run.run_fingerprints`), part of ``hash``
    fingerprints: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {"model": c.model, "strategy": c.strategy, "options": c.options, "shots": c.shots,
                "seed": c.seeds[0], "protocol": c.protocol, "ways": c.ways, "data": c.data, "config": c.to_dict(),
                "config_hash": c.hash(), "fingerprints": self.fingerprints}

    def label(self) -> str:
        c = self.config
        opts = "".join(f" {k}={v}" for k, v in sorted(c.options.items()))
        what = f"{c.ways}-way {c.shots}-shot" if c.ways else f"{c.shots}-shot"
        return f"{c.model} | {c.strategy}{opts} | {what} | seed {c.seeds[0]}"


@dataclass
class SweepSummary:
    """What a sweep did in this process: cells run, skipped (already in the store), failed."""

    planned: int = 0
    mine: int = 0
    ran: int = 0
    skipped: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)
    shard: Path | None = None


def spec_from_settings(settings: dict[str, Any], where: str = "sweep settings") -> SweepSpec:
    """Turn flat settings (a recipe merged with flags) into a SweepSpec; every key and type is checked."""
    check_settings(settings, where)
    get = settings.get
    strategies = [StrategyEntry(*strategy_entry(e, where))
                  for e in as_list("strategies", get("strategies") or "linear", str, where)]
    return SweepSpec(
        models=[str(m).strip() for m in as_list("models", get("models") or DEFAULT_MODEL, str, where)],
        strategies=strategies,
        shots=as_list("shots", get("shots") if get("shots") is not None else 5, int, where),
        seeds=as_list("seeds", get("seeds") if get("seeds") is not None else 0, int, where),
        run={k: settings[k] for k in RUN_KEYS if settings.get(k) is not None},
        train={k: settings[k] for k in TRAIN_KEYS if settings.get(k) is not None},
        options=dict(get("options") or {}),
        store=str(results.check_store_path(get("store") or DEFAULT_STORE)), output=get("output"))


def _check_options_used(spec: SweepSpec) -> None:
    """A sweep-wide option that none of the sweep's strategies takes is refused, listing the valid ones."""
    for key in spec.options:
        if not any(key in applicable(s.spec, {key: None}) for s in spec.strategies):
            raise PefsError(f"unknown option {key!r}: none of the strategies "
                            f"{', '.join(s.spec for s in spec.strategies)} takes it; valid options: "
                            + valid_options([s.spec for s in spec.strategies],
                                            "none (these strategies take no options)"))


def plan(spec: SweepSpec, check_data: bool = True) -> list[Cell]:
    """Every cell of the grid, in order models × strategies × shots × seeds, after validating all of it
    (``check_data=False`` skips opening the dataset, e.g. to check a recipe whose data is on the hub)."""
    from pefs.strategies import build

    for m in spec.models:
        check_name(m)
    for s in spec.strategies:
        build(s.spec, **{**applicable(s.spec, spec.options), **s.options})
    _check_options_used(spec)
    for k in spec.shots:
        if k < 1:
            raise PefsError(f"shots must be whole numbers >= 1, got {k}")
    check_seeds(spec.seeds)
    output = spec.output or str(Path(spec.store).parent / "records")
    dataset = _check_data(spec) if check_data else None
    from pefs.protocols.run import resolve
    from pefs.protocols.selection.selector import search_space

    cells: list[Cell] = []
    prints: dict[tuple, dict[str, Any]] = {}
    for model in spec.models:
        for s in spec.strategies:
            options = {**applicable(s.spec, spec.options), **s.options}
            for shots in spec.shots:
                for seed in spec.seeds:
                    train = TrainConfig(**{**spec.train, **s.train, "progress": spec.progress})
                    cfg = TuneConfig(model=model, strategy=s.spec, shots=shots, seeds=(seed,), options=options,
                                     train=train, output=output, **spec.run)
                    cfg.validate()
                    search_space(cfg)  # a bad --search axis fails here, not in every cell
                    what = (cfg.data, cfg.checkpoint)
                    if what not in prints:
                        prints[what] = run_fingerprints(*what)
                    # the key of the resolved config and what it reads, as in the record tune() writes
                    cells.append(Cell(len(cells), cfg, run_key(resolve(cfg, dataset), prints[what]), prints[what]))
    return cells


def _check_data(spec: SweepSpec):
    """Load the dataset once (images decode lazily) and sample the largest shots, so a grid asking for more
    images than a class has fails before any cell runs; the dataset, for resolving the cells' configs."""
    from pefs.data import episodes, kshot_split, load_dataset

    dataset = load_dataset(spec.run.get("data"), label_column=spec.run.get("label_column"))
    check_classes(len(dataset.classes), dataset.name)
    most = max(spec.shots)
    if spec.run.get("ways"):
        next(iter(episodes(dataset.train, spec.run["ways"], most, spec.run.get("queries", 15), 1, seed=0)))
    else:
        kshot_split(dataset, most, seed=0)
    return dataset


def process_slot() -> tuple[int, int]:
    """(rank, world size) of this process. Under ``accelerate launch`` each process then detaches from the
    process group, so its cells train alone (no gradient sync, no data sharding across processes)."""
    if not any(k in os.environ for k in ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")):
        return 0, 1
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True Accelerate ignores CPU ranks
    rank, world, device = state.process_index, state.num_processes, state.device
    if world > 1:
        _detach(device)
    return rank, world


def _detach(device: Any) -> None:
    import torch.distributed as dist
    from accelerate.state import AcceleratorState, GradientState

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        os.environ.pop(k, None)
    os.environ["ACCELERATE_TORCH_DEVICE"] = str(device)


def my_cells(cells: list[Cell], rank: int, world: int) -> list[Cell]:
    """Process ``rank`` of ``world`` takes cells rank, rank+world, ... of the full (deterministic) grid."""
    if world < 1 or not 0 <= rank < world:
        raise PefsError(f"process rank must lie in 0..{world - 1}, got {rank} (world size {world})")
    return cells[rank::world]


def _run_tune(cfg: TuneConfig) -> dict[str, Any]:
    from pefs.protocols import run as tune

    return tune.tune(cfg)


Event = Callable[[str, Cell, dict[str, Any]], None]


def run_sweep(cells: list[Cell], store: str | Path, rank: int = 0, world: int = 1, retry_failed: bool = False,
              on_event: Event | None = None, runner: Callable[[TuneConfig], dict] | None = None) -> SweepSummary:
    """Run this process's share of ``cells`` not yet in ``store``, appending one row per finished cell.

    Each cell is claimed first (:mod:`pefs.results.claims`): a cell another live process is running is left to it and
    looked at again every POLL_S seconds, until its row appears (counted as skipped) or its claimer dies (then
    this process runs it). A cell whose tune raises a user error (PefsError, e.g. a diverged loss) is stored as
    failed with its message and, unless ``retry_failed``, not retried. ``on_event(kind, cell, info)`` reports
    progress (kinds: "problem", "skip", "start", "done", "failed", "waiting")."""
    store = results.check_store_path(store)
    runner = runner or _run_tune
    emit = on_event or (lambda kind, cell, info: None)
    shard = results.shard_path(store, rank, world)
    reads = {(str(c.config.data), c.config.checkpoint, c.config.output): c.config for c in cells}
    for cfg in reads.values():  # nothing written inside what the cells read
        check_outputs(cfg)
        check_outside(store, "--store", [(local_path(cfg.data), "data folder"), (cfg.checkpoint, "checkpoint files")])
    check_writable_file(shard, "results store", "--store")  # before any compute, not after it
    contents = results.load(store)
    summary = SweepSummary(planned=len(cells), problems=contents.problems, shard=shard)
    for message in contents.problems:
        emit("problem", None, {"message": message})
    mine = my_cells(cells, rank, world)
    summary.mine = len(mine)
    pending = list(enumerate(mine, 1))
    while pending:
        deferred = []
        for position, cell in pending:
            info = {"position": position, "of": len(mine)}
            if _done(contents.rows.get(cell.hash), retry_failed, summary, emit, cell, info):
                continue
            claim = claims.try_claim(store, cell.hash)
            if claim is None:
                deferred.append((position, cell))
                continue
            with claim:
                contents = results.refresh(contents, store)  # another process may have finished it meanwhile
                if _done(contents.rows.get(cell.hash), retry_failed, summary, emit, cell, info):
                    continue
                _run_cell(cell, runner, shard, rank, summary, emit, info)
        if deferred:
            emit("waiting", None, {"cells": [c for _, c in deferred]})
            time.sleep(POLL_S)
            contents = results.refresh(contents, store)
        pending = deferred
    return summary


def _done(row: dict[str, Any] | None, retry_failed: bool, summary: SweepSummary, emit: Event, cell: Cell,
          info: dict[str, Any]) -> bool:
    if row is not None and (row["status"] == "ok" or not retry_failed):
        summary.skipped += 1
        emit("skip", cell, {**info, "row": row})
        return True
    return False


def _run_cell(cell: Cell, runner: Callable[[TuneConfig], dict], shard: Path, rank: int, summary: SweepSummary,
              emit: Event, info: dict[str, Any]) -> None:
    emit("start", cell, info)
    try:
        record = runner(copy.deepcopy(cell.config))
    except PefsError as e:
        row = results.make_row(cell.hash, cell.describe(), "failed", getattr(e, "record", None), str(e), rank)
        results.append(shard, row)
        summary.failed += 1
        emit("failed", cell, {**info, "row": row})
        return
    row = results.make_row(cell.hash, cell.describe(), "ok", record, None, rank)
    results.append(shard, row)
    summary.ran += 1
    emit("done", cell, {**info, "row": row})
