"""``--track``: a run logged to an experiment tracker through Accelerate's trackers (TensorBoard, W&B, MLflow) or
pefs' own CSV tracker (an Accelerate ``GeneralTracker``).

What a run logs: its resolved config as hyperparameters, each training step's loss and learning rates
(``train/loss``, ``train/lr``: the strategies' rate, ``train/head_lr``; steps count on across tasks), each task's
accuracy (``task/accuracy`` at step = the task's number, 1 first) and the record's summary (``run/...``, at step =
the number of tasks). Every process logs its own runs (sweeps spread cells over processes); a run split over
processes (``--final`` under a multi-process launch) is logged by the main process alone.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, on_main_process

from pefs.config import TuneConfig
from pefs.config.files import write_text
from pefs.errors import PefsError

#: tracker -> the package it needs (csv needs none)
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_tracker(cfg: TuneConfig) -> None:
    """Refuse, before anything is built, a ``--track`` whose package is not installed, naming the install."""
    pkg = PACKAGES.get(cfg.track or "")
    if pkg is not None and importlib.util.find_spec(pkg) is None:
        raise PefsError(f"--track {cfg.track} needs the {pkg} package, which is not installed: pip install {pkg} "
                        "(or pip install 'pefs[track]' for every tracker); --track csv needs nothing")


def track_dir(cfg: TuneConfig) -> Path:
    """Where ``cfg``'s tracker writes: ``--track-dir``, else ``tracking`` inside the run's output folder."""
    return Path(cfg.track_dir) if cfg.track_dir else Path(cfg.output) / "tracking"


def run_name(cfg: TuneConfig) -> str:
    """One run's name in its tracker: when, model, strategy, shots and config hash (as its record's file)."""
    shots = "final" if cfg.final else f"{cfg.shots}shot"
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model}-{cfg.strategy}-{shots}-{cfg.hash()[:8]}"
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)


def hparams(cfg: TuneConfig) -> dict[str, bool | int | float | str]:
    """The resolved config flattened to what every tracker stores as hyperparameters (``train.lr``; None as
    "none", lists and dicts as JSON)."""
    out: dict[str, bool | int | float | str] = {}

    def put(prefix: str, d: dict[str, Any]) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and k == "train":
                put(f"{prefix}{k}.", v)
            elif isinstance(v, (bool, int, float, str)):
                out[prefix + k] = v
            else:
                out[prefix + k] = "none" if v is None else json.dumps(v, default=str, sort_keys=True)

    put("", cfg.to_dict())
    return out


def _accelerate_tracker(kind: str, name: str, directory: Path) -> Any:
    """Accelerate's own tracker ``kind`` for run ``name`` writing under ``directory`` (W&B offline unless
    WANDB_MODE says otherwise; MLflow to a file store there unless MLFLOW_TRACKING_URI names another)."""
    from accelerate import tracking

    if kind == "tensorboard":
        return tracking.TensorBoardTracker(name, str(directory))
    if kind == "wandb":
        return tracking.WandBTracker(name, dir=str(directory), mode=os.environ.get("WANDB_MODE", "offline"))
    import mlflow

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri((directory / "mlruns").resolve().as_uri())
    return tracking.MLflowTracker(experiment_name="pefs", logging_dir=str(directory), run_name=name)


class CsvTracker(GeneralTracker):
    """pefs' CSV tracker for one run: ``DIR/RUN/config.json`` and ``DIR/RUN/metrics.csv`` (step, name, value), each
    row appended whole and flushed."""

    name = "csv"
    requires_logging_directory = True

    def __init__(self, run: str, directory: Path) -> None:
        super().__init__()
        self.dir = directory / run
        self.file: io.TextIOBase | None = None

    @property
    def tracker(self) -> Path:
        return self.dir

    @on_main_process
    def start(self) -> None:
        write_text(self.dir / "metrics.csv", "step,name,value\n", "tracking log")
        self.file = open(self.dir / "metrics.csv", "a", newline="", encoding="utf-8")

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        write_text(self.dir / "config.json", json.dumps(values, indent=2, default=str), "tracking config")

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        rows = io.StringIO()
        csv.writer(rows).writerows(["" if step is None else step, k, v] for k, v in values.items())
        assert self.file is not None, "start() opens the log"
        self.file.write(rows.getvalue())
        self.file.flush()

    @on_main_process
    def finish(self) -> None:
        if self.file is not None:
            self.file.close()


class RunTracker:
    """One run's tracker: an Accelerate tracker object driven by the calls ``Accelerator.init_trackers`` / ``log`` /
    ``end_training`` make (``start``, ``store_init_configuration``, ``log``, ``finish``). Not through an
    Accelerator itself: its ``init_trackers`` and ``log`` run on the main process only, so the cells a sweep gives
    the other processes would go untracked, and ``end_training`` would end the process group a sweep still uses."""

    def __init__(self, cfg: TuneConfig, every_process: bool = True) -> None:
        """``every_process``: each process tracks the runs it does (a sweep's cells); False for a run split over
        processes, which the main process alone tracks (the tracker's ``main_process_only``)."""
        from pefs.runtime.hardware import accelerator

        accelerator()  # Accelerate's trackers run in its process state (which process is the main one)
        self.kind, self.dir, self.name = cfg.track, track_dir(cfg), run_name(cfg)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PefsError(f"cannot write --track logs to {str(self.dir)!r}: {e.strerror or e}") from e
        base = self.name
        for i in range(2, 1000):  # the same run again within a second: its own folder, never the last one's
            if not (self.dir / self.name).exists():
                break
            self.name = f"{base}-{i}"
        self.tracker = (CsvTracker(self.name, self.dir) if self.kind == "csv"
                        else _accelerate_tracker(str(self.kind), self.name, self.dir))
        self.tracker.main_process_only = not every_process
        self.tracker.start()
        self.tracker.store_init_configuration(hparams(cfg))
        self.step, self.tasks = 0, 0

    def log(self, values: dict[str, Any], step: int) -> None:
        self.tracker.log(values, step=step)

    def fit(self, stats: Any) -> None:
        """A fit's steps (:class:`pefs.runtime.engine.FitStats`): loss and learning rates, numbered on from the
        last fit's."""
        for loss, lr, head_lr in zip(stats.losses, stats.lrs, stats.head_lrs):
            self.step += 1
            self.log({"train/loss": loss, "train/lr": lr, "train/head_lr": head_lr}, step=self.step)

    def task(self, result: Any) -> None:
        """A finished task (a :class:`pefs.results.records.TaskResult`): its accuracy, steps and support size."""
        self.tasks += 1
        values = {"task/steps": result.steps, "task/support": result.support}
        if result.accuracy is not None:
            values["task/accuracy"] = result.accuracy
        self.log(values, step=self.tasks)

    def summary(self, record: dict[str, Any]) -> None:
        """The record's summary: mean accuracy and interval, trainable parameters, wall time."""
        params = record.get("params") or {}
        values = {"run/accuracy_mean": record.get("accuracy_mean"), "run/accuracy_ci95": record.get("accuracy_ci95"),
                  "run/trainable_params": params.get("trainable"), "run/wall_s": record.get("wall_s")}
        self.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=self.tasks)

    def close(self) -> None:
        self.tracker.finish()

    def where(self) -> dict[str, str]:
        """What the record says about the tracking: the tracker, its folder and the run's name."""
        return {"with": str(self.kind), "dir": str(self.dir), "run": self.name}


@contextlib.contextmanager
def tracked(cfg: TuneConfig, every_process: bool = True) -> Iterator[RunTracker | None]:
    """The run's tracker for the duration of the block (None without ``--track``); finished however it ends.
    ``every_process``: see :class:`RunTracker`."""
    if cfg.track is None:
        yield None
        return
    track = RunTracker(cfg, every_process)
    try:
        yield track
    finally:
        track.close()
