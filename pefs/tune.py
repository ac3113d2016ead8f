"""``tune``: K-shot transfer seed by seed (or episodes, :mod:`pefs.episodic`) and the result record (``pefs tune``).

The record holds per-seed (per-episode) accuracies, their mean and 95% CI, trainable parameters, wall time
split into decode / frozen-prefix features / training / evaluation, and peak memory.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from pefs import engine
from pefs.config import SCHEMA_VERSION, TuneConfig, resolved
from pefs.data import Dataset, kshot_split, load_dataset
from pefs.engine import NonFiniteLoss
from pefs.episodic import check_episodes, run_episodes
from pefs.errors import PefsError
from pefs.fewshot import TaskRunner, build_model
from pefs.selection import run_kshot_search, search_space
from pefs.stats import mean_ci95

__all__ = ["build_model", "finish", "resolve", "run_kshot_seed", "tune", "write_record"]


def check_splits_disjoint(dataset: Dataset) -> None:
    """Images are cached by name, and leaks are ruled out by name: train and test names must differ."""
    if dataset.test is not None:
        shared = set(dataset.train.names) & set(dataset.test.names)
        if shared:
            raise PefsError(f"the train and test splits of {dataset.name!r} share {len(shared)} image names "
                            f"(e.g. {sorted(shared)[0]!r}); give them distinct names (from_arrays(prefix=...))")


def run_kshot_seed(cfg: TuneConfig, dataset: Dataset, seed: int, runner: TaskRunner) -> dict[str, Any]:
    """One seed of K-shot transfer: sample K per class, tune from the runner's start, score the whole test split."""
    split = kshot_split(dataset, cfg.shots, seed=seed)
    run = runner.run(split.support, split.query, seed)
    if cfg.save_adapter:
        runner.model.save(Path(cfg.save_adapter) / f"seed{seed}")
    return run


def resolve(cfg: TuneConfig, dataset: Dataset | None) -> TuneConfig:
    """A copy of ``cfg`` with what it leaves to run time filled in: the image size the dataset suggests and the
    precision "auto" becomes on this machine. Its hash is the run's identity (a sweep cell's store key), so
    ``--img-size 128`` and a default that resolves to 128 are one cell. ``cfg`` itself is never changed."""
    values: dict[str, Any] = {}
    if cfg.img_size is None and dataset is not None and dataset.suggested_img_size:
        values["img_size"] = dataset.suggested_img_size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # what Accelerate will pick
    precision = engine.inference_precision(cfg.train, device)
    return resolved(cfg, **values, train={"inference_precision": precision})


def tune(cfg: TuneConfig) -> dict[str, Any]:
    """Run the configured protocol (K-shot over seeds, or episodes); return the result record (also on disk).
    The record holds the caller's ``config`` and the ``resolved`` one it ran with; ``config_hash`` is the
    resolved one's."""
    cfg.validate()
    check_writable(cfg.output)  # before any compute, not after it
    dataset = load_dataset(cfg.data)
    check_splits_disjoint(dataset)
    requested, cfg = cfg, resolve(cfg, dataset)
    space = search_space(cfg)  # a bad search spec fails here, before any weights load
    if space.axes:
        body, runner = run_kshot_search(cfg, dataset, space, time.perf_counter())
        return finish(cfg, dataset, body, runner, requested)
    if cfg.protocol == "episodic":
        check_episodes(cfg, dataset)  # sampling errors before any weight loads
    else:
        kshot_split(dataset, cfg.shots, seed=cfg.seeds[0])
    t_start = time.perf_counter()
    runner = TaskRunner(cfg, cfg.ways if cfg.protocol == "episodic" else len(dataset.classes))
    try:
        if cfg.protocol == "episodic":
            body = run_episodes(cfg, dataset, runner, t_start)
        else:
            body = run_kshot(cfg, dataset, runner, t_start)
    except NonFiniteLoss as e:
        e.record = finish(cfg, dataset, e.partial, runner, requested)  # type: ignore[attr-defined]
        e.args = (f"{e}; the record says so: {e.record['path']}",)
        raise
    return finish(cfg, dataset, body, runner, requested)


def run_kshot(cfg: TuneConfig, dataset: Dataset, runner: TaskRunner, t_start: float) -> dict[str, Any]:
    """Every seed of K-shot transfer; a diverged seed raises NonFiniteLoss carrying the finished seeds."""
    runs: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        try:
            runs.append(run_kshot_seed(cfg, dataset, seed, runner))
        except NonFiniteLoss as e:
            e.partial = {"runs": runs, "wall_s": time.perf_counter() - t_start,  # type: ignore[attr-defined]
                         "status": "diverged", "error": str(e), "failed_seed": seed}
            raise
    return {"runs": runs, "wall_s": time.perf_counter() - t_start, "status": "ok"}


def finish(cfg: TuneConfig, dataset: Dataset, body: dict[str, Any], runner: TaskRunner | None,
           requested: TuneConfig | None = None) -> dict[str, Any]:
    """Assemble the record (mean and 95% CI over seeds/episodes) and write it as JSON. ``cfg`` is the resolved
    config the run used, ``requested`` the caller's (default: the same)."""
    runs = body.pop("runs")
    model = runner.model if runner is not None else None
    accs = [r["accuracy"] for r in runs]
    mean, ci = mean_ci95(accs) if accs and body.get("status", "ok") == "ok" else (None, None)
    params = model.param_report() if model is not None else None
    record = {
        "pefs_record": 2, "config": (requested or cfg).to_dict(), "resolved": cfg.to_dict(),
        "config_hash": cfg.hash(), "schema": SCHEMA_VERSION, "protocol": cfg.protocol,
        "model": cfg.model, "strategy": cfg.strategy, "head": cfg.head, "shots": cfg.shots, "ways": cfg.ways,
        "dataset": {"name": dataset.name, "classes": len(dataset.classes), "licence": dataset.licence},
        "backbone": model.backbone.describe() if model is not None else None,
        "accuracy_mean": mean, "accuracy_ci95": ci, "accuracies": accs, "runs": runs, "params": params,
        "time_s": {k: sum(r.get(k, 0.0) for r in runs) for k in ("decode_s", "extract_s", "train_s", "eval_s")},
        "seconds_per_task": body["wall_s"] / len(runs) if runs else None, "cached": runner is not None
        and runner.level > 0, "frozen_level": runner.level if runner is not None else None,
        "peak_memory_mb": engine.peak_memory_mb(), "machine": {"python": platform.python_version(),
                                                              "torch": torch.__version__,
                                                              "cuda": torch.cuda.is_available(),
                                                              "threads": torch.get_num_threads(),
                                                              # what inference_precision="auto" became here
                                                              "inference_precision": cfg.train.inference_precision},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **body,
    }
    record["path"] = str(write_record(record, cfg.output))
    return record


def write_record(record: dict[str, Any], output: str | Path) -> Path:
    """Write ``record`` atomically (temp file + rename) under ``output``; a clear error if we cannot."""
    out = Path(output)
    name = (f"{time.strftime('%Y%m%d-%H%M%S')}-{record['model']}-{record['strategy']}-{record['shots']}shot-"
            f"{record['config_hash'][:8]}.json").replace("/", "_").replace(":", "_")
    tmp = out / f".{name}.tmp"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(json.dumps(record, indent=2, default=str))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(out / name)
    except OSError as e:
        if tmp.parent.is_dir():  # never leave a half-written record behind (e.g. disk full)
            tmp.unlink(missing_ok=True)
        raise PefsError(f"cannot write the result record to {str(out)!r}: {e.strerror or e}") from e
    return out / name


def check_writable(output: str | Path) -> None:
    """Fail fast, naming the folder, when result records could not be written there."""
    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".pefs-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PefsError(f"output folder {str(out)!r} is not writable: {e.strerror or e}; choose another with "
                        "--output") from e
