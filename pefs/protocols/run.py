"""``tune``: one protocol run (:mod:`pefs.protocols.loop`: K-shot seeds, episodes, the final fit) and its record.

The record holds per-seed (per-episode) accuracies, their mean and 95% CI, trainable parameters, wall time
split into decode / frozen-prefix features / training / evaluation, and peak memory.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pefs.backbones import check_pretrained_fits, check_weights
from pefs.backbones.sources.checkpoint import check_checkpoint_path, is_pretrain_dir
from pefs.config import SCHEMA_VERSION, TuneConfig, checks, head_of, resolved, run_key
from pefs.config.checks import check_classes
from pefs.config.files import check_outside, write_text
from pefs.config.identity import file_digest
from pefs.data import Dataset, load_dataset
from pefs.data.benchmarks import provenance
from pefs.data.decoding import image_limit
from pefs.data.fingerprint import data_fingerprint
from pefs.data.sources import local_path
from pefs.errors import PefsError
from pefs.heads.registry import head_class
from pefs.pretrain import checkpoint as pretrained
from pefs.protocols.final import check_final, describe_model, final_summary, save_final
from pefs.protocols.loop import Task, check_sampling, run_protocol
from pefs.protocols.selection.auto import AutoSelector
from pefs.protocols.selection.selector import Selector, search_space
from pefs.results.records import Accuracy, DatasetInfo, Machine, ProtocolRun, RunRecord, TaskResult
from pefs.results.stats import mean_ci
from pefs.runtime import distributed, hardware, tracking
from pefs.runtime.engine import NonFiniteLoss
from pefs.runtime.memory import RunMemory
from pefs.runtime.task import TaskRunner, build_model
from pefs.strategies import spec

__all__ = ["RunDiverged", "build_model", "finish", "resolve", "tune", "write_record"]


def run_fingerprints(data: str | None, checkpoint: str | None) -> dict[str, Any]:
    """The fingerprints of a run's data and checkpoint (None without one): part of a sweep cell's key."""
    ckpt = file_digest(check_checkpoint_path(checkpoint)) if checkpoint else None
    return {"data": data_fingerprint(data), "checkpoint": ckpt}


def check_splits_disjoint(dataset: Dataset) -> None:
    """Images are cached by name, and leaks are ruled out by name: train and test names must differ."""
    if dataset.test is not None:
        shared = set(dataset.train.names) & set(dataset.test.names)
        if shared:
            raise PefsError(f"the train and test splits of {dataset.name!r} share {len(shared)} image names "
                            f"(e.g. {sorted(shared)[0]!r}); give them distinct names (from_arrays(prefix=...))")


def resolve(cfg: TuneConfig, dataset: Dataset | None) -> TuneConfig:
    """A copy of ``cfg`` with what it leaves to run time filled in: the image size the dataset suggests, the
    precision "auto" becomes on this machine and the strategy's default learning rate. Its hash is the run's
    identity (a sweep cell's store key), so ``--img-size 128`` and a default that resolves to 128 are one cell.
    ``cfg`` itself is never changed."""
    values: dict[str, Any] = {}
    if cfg.img_size is None and dataset is not None and dataset.suggested_img_size:
        values["img_size"] = dataset.suggested_img_size
    device = hardware.default_device()
    train: dict[str, Any] = {"inference_precision": hardware.inference_precision(cfg.train, device),
                             "mixed_precision": hardware.training_precision(cfg.train, device)}
    if cfg.train.lr is None and cfg.strategy != "auto" and "strategy" not in cfg.search:
        # one strategy: its default rate is part of the run's identity (searched strategies and auto resolve
        # each candidate's own default when they build it); an unknown strategy is refused here
        train["lr"] = spec.default_lr(cfg.strategy)
    values["head"] = head_of(cfg)  # a default linear probe's head is logistic: a new key, never an old AdamW cell
    return resolved(cfg, **values, options=spec.typed_options(cfg.strategy, cfg.options), train=train)


class RunDiverged(NonFiniteLoss):
    """``tune`` stopped because a task's training diverged; ``record`` is the record written for the run (status
    "diverged", the tasks that finished, the error)."""

    def __init__(self, cause: NonFiniteLoss, record: dict[str, Any]) -> None:
        PefsError.__init__(self, f"{cause}; the record says so: {record['path']}")
        self.step, self.epoch, self.value, self.record = cause.step, cause.epoch, cause.value, record


def tune(cfg: TuneConfig) -> dict[str, Any]:
    """Run the configured protocol (K-shot over seeds, episodes, or the final fit); return the result record
    (also on disk). The record holds the caller's ``config`` and the ``resolved`` one it ran with; its
    ``config_hash`` and ``key`` are the resolved one's. A diverged task raises :class:`RunDiverged`. Images over
    ``cfg.max_image_pixels`` are refused for the run's duration (its DataLoader workers too)."""
    cfg.validate()
    check_outputs(cfg)
    check_writable(cfg.output)  # before any compute, not after it
    if cfg.checkpoint:
        check_checkpoint_path(cfg.checkpoint)
    check_weights(cfg.model, cfg.pretrained, cfg.checkpoint)
    pretraining = pretraining_of(cfg)
    check_final(cfg)
    tracking.check_tracker(cfg)
    with image_limit(cfg.max_image_pixels):
        return _tune(cfg, pretraining)


def pretraining_of(cfg: TuneConfig) -> dict[str, Any]:
    """``{"pretraining": ...}`` for the record when the checkpoint is a ``pefs pretrain`` directory (first the model
    and image size it fits, then its weights against their recorded SHA-256 and fingerprint: a changed file is
    refused), else nothing."""
    if not is_pretrain_dir(cfg.checkpoint):
        return {}
    check_pretrained_fits(cfg.checkpoint, cfg.model, {"img_size": cfg.img_size} if cfg.img_size else None)
    return {"pretraining": pretrained.summary(cfg.checkpoint, pretrained.verify(cfg.checkpoint))}


def _tune(cfg: TuneConfig, pretraining: dict[str, Any]) -> dict[str, Any]:
    """:func:`tune` after its up-front checks."""
    memory = RunMemory()  # this run's peak, not the process's running maximum
    dataset = load_dataset(cfg.data, label_column=cfg.label_column)
    check_classes(len(dataset.classes), dataset.name)
    check_splits_disjoint(dataset)
    requested, cfg = cfg, resolve(cfg, dataset)
    n_classes = cfg.ways if cfg.protocol == "episodic" else len(dataset.classes)
    selector = selection(cfg, n_classes, dataset)  # a bad search spec fails here, before any weights load
    if selector is not None:
        selector.runners.describe = lambda r: describe_model(r.model, r.cfg, dataset)
    check_sampling(cfg, dataset, selector is not None)  # sampling errors before any weight loads
    runner = TaskRunner(cfg, n_classes) if selector is None else None
    if runner is not None:
        describe_model(runner.model, cfg, dataset)
    with tracking.tracked(cfg, every_process=not (cfg.final and distributed.world_size() > 1)) as track:
        run, diverged = run_protocol(cfg, dataset, runner, _after_each_task(cfg, runner, selector), selector, track)
        runner = selector.runner if selector is not None else runner
        extra = {**memory.figures(), **(runner.cache_figures() if selector is None else {}),
                 **(runner.view_figures() if runner is not None else {}),
                 **({"selection": selector.summary} if selector is not None else {}),
                 **(final_summary(dataset, run) if cfg.final else {}), **provenance(dataset), **pretraining,
                 **({"tracking": track.where()} if track is not None else {})}
        record = finish(cfg, dataset, run, runner, requested, extra)
        if track is not None:
            track.summary(record)
    if diverged is not None:
        raise RunDiverged(diverged, record)
    return record


def selection(cfg: TuneConfig, n_classes: int, dataset: Dataset | None = None) -> Selector | None:
    """What chooses each task's setting on validation data: ``--strategy auto``, ``--search``, or nothing. A
    benchmark with its own validation split (``dataset.select``: VTAB-1k's val200, CoOp's val) is searched on it."""
    if cfg.strategy == "auto":
        return AutoSelector(cfg, n_classes)
    space = search_space(cfg)
    own = getattr(dataset, "select", None) is not None and cfg.protocol != "episodic"
    own_val = f"{getattr(dataset, 'benchmark', '')}'s own validation split" if own else ""
    return Selector(cfg, n_classes, space, own_val) if space.axes else None


def _after_each_task(cfg: TuneConfig, runner: TaskRunner | None,
                     selector: Selector | None = None) -> Callable[[Task, TaskResult], None] | None:
    """What follows each task: the final fit saves its model directory, the chosen setting's with a search
    (K-shot seeds' ``--save-adapter`` is :func:`pefs.protocols.loop.run_protocol`'s)."""
    if not cfg.final or (runner is None and selector is None):
        return None
    if runner is not None:
        return save_final(cfg, runner)

    def after(task: Task, result: TaskResult) -> None:
        if selector is not None and selector.runner is not None:  # the setting chosen for this task
            save_final(cfg, selector.runner)(task, result)
    return after


def finish(cfg: TuneConfig, dataset: Dataset, run: ProtocolRun, runner: TaskRunner | None,
           requested: TuneConfig | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the record (mean and t 95% CI over seeds/episodes) and write it as JSON. ``cfg`` is the resolved
    config the run used, ``requested`` the caller's (default: the same); ``extra`` holds the run's memory figures
    (:meth:`pefs.runtime.memory.RunMemory.figures`) and whatever else the record carries."""
    model = runner.model if runner is not None else None
    accs = run.accuracies
    # the mean and its t 95% interval; one seed (episode) has no interval (None: 0.0 would claim no uncertainty)
    summary = mean_ci(accs) if accs and run.status == "ok" else None
    params = runner.param_report() if runner is not None else None
    prints = run_fingerprints(cfg.data, cfg.checkpoint)
    extra = {**dict(extra or {}), **query_use(cfg)}
    peak = extra.pop("peak_memory_mb")  # the run's own peak (RunMemory.figures(), which tune() passes)
    rec = RunRecord(
        config=(requested or cfg).to_dict(), resolved=cfg.to_dict(), config_hash=cfg.hash(), schema=SCHEMA_VERSION,
        model=cfg.model, strategy=cfg.strategy, head=head_of(cfg), ways=cfg.ways,  # a final fit trains on every
        protocol="final" if cfg.final else cfg.protocol, shots=None if cfg.final else cfg.shots,  # image: not K shots
        dataset=DatasetInfo(dataset.name, len(dataset.classes), dataset.licence, dataset.source),
        backbone=model.backbone.describe() if model is not None else None, accuracy=Accuracy.of(summary, accs),
        run=run, params=params, cached=runner is not None and runner.level > 0,
        frozen_level=runner.level if runner is not None else None, peak_memory_mb=peak,
        machine=Machine(platform.python_version(), torch.__version__, torch.cuda.is_available(),
                        torch.get_num_threads(), cfg.train.inference_precision),  # what "auto" precision became
        fingerprints=prints, key=run_key(cfg, prints), finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        extra=extra)
    rec.path = distributed.on_main(lambda: str(write_record(rec.to_dict(), cfg.output)))  # one record per run
    return rec.to_dict()


def query_use(cfg: TuneConfig) -> dict[str, Any]:
    """``{"transductive": {...}}`` when a head the run uses or searches reads each task's unlabelled queries
    together (its accuracy then uses the query set, and is not comparable with an inductive head's); nothing
    otherwise, so every other record keeps its keys."""
    names = [head_of(cfg)]
    if "head" in cfg.search:
        names += [v for a in search_space(cfg).axes if a.name == "head" for v in a.values]
    used = sorted({n for n in names if head_class(n).transductive})
    if not used:
        return {}
    return {"transductive": {"heads": used, "note": "transductive inference: the head classifies each task's "
                             "queries together, using their unlabelled features (labels never), so one query's "
                             "prediction depends on the others"}}


def write_record(record: dict[str, Any], output: str | Path) -> Path:
    """Write ``record`` atomically under ``output`` (:mod:`pefs.config.files`); a clear error if we cannot."""
    out = Path(output)
    shots = "final" if record.get("final") else f"{record['shots']}shot"
    name = (f"{time.strftime('%Y%m%d-%H%M%S')}-{record['model']}-{record['strategy']}-{shots}-"
            f"{record['config_hash'][:8]}.json").replace("/", "_").replace(":", "_")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PefsError(f"cannot write the result record to {str(out)!r}: {e.strerror or e}") from e
    write_text(out / name, json.dumps(record, indent=2, default=str), "result record")
    return out / name


def check_outputs(cfg: TuneConfig) -> None:
    """Refuse, before anything is created, a record folder or model directory that is, or sits inside, what the
    run reads (its data, its checkpoint): ``cd photos && pefs tune --data .`` would make ``runs/`` a class."""
    inputs = [(local_path(cfg.data), "data folder"), (cfg.checkpoint, "checkpoint files")]
    check_outside(cfg.output, "--output", inputs)
    if cfg.save_adapter:
        check_outside(cfg.save_adapter, "--final" if cfg.final else "--save-adapter", inputs)


def check_writable(output: str | Path) -> None:
    """Fail fast, naming the folder, when result records could not be written there."""
    checks.check_writable_dir(output, "output folder", "--output")
