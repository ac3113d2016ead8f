"""``pefs tune --final``: train one model on every labelled training image and save it as a model directory.

The protocol runs (K-shot seeds) choose a strategy and settings; ``--final`` then trains with them on all the
images of the training split (no K-shot sampling, no split of it held out) and saves the model with its class
names, preprocessing and config. When the data has its own test split, that split is never trained on: it is
scored, so the record says how the saved model does on images it has not seen; without one, the record gives
the training accuracy only (labelled as such).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pefs.config import head_of
from pefs.errors import PefsError
from pefs.heads.registry import HEADS, head_class
from pefs.model import directory as pefs_io
from pefs.runtime import distributed

if TYPE_CHECKING:
    from pefs.config import TuneConfig
    from pefs.data import Dataset
    from pefs.model.wrap import PefsModel
    from pefs.protocols.loop import Task
    from pefs.results.records import ProtocolRun, TaskResult
    from pefs.runtime.task import TaskRunner


def check_final(cfg: TuneConfig) -> None:
    """Refuse, before any compute, a ``--final`` run that cannot give one usable model directory."""
    distributed.check_launch(cfg.final)  # several processes split one --final fit, not K-shot seeds
    if cfg.save_adapter:
        pefs_io.check_writable_dir(cfg.save_adapter, "--final" if cfg.final else "--save-adapter")
    if not cfg.final:
        check_seed_dirs(cfg)
        return
    if not cfg.save_adapter:
        raise PefsError("--final saves a model directory: name it (pefs tune --final DIR; save_adapter=DIR)")
    pefs_io.check_replaceable(cfg.save_adapter, "--final")
    if cfg.ways:
        raise PefsError(f"--final trains on every labelled image; it does not run episodes (drop --ways {cfg.ways})")
    if len(cfg.seeds) > 1:
        raise PefsError(f"--final trains one model; give one seed, got {list(cfg.seeds)}")
    if head_class(head_of(cfg)).reads != "logits":
        usable = sorted(n for n in HEADS if head_class(n).reads == "logits")
        raise PefsError(f"--head {head_of(cfg)} classifies against the support images' features, which a model "
                        f"directory does not keep; --final needs a head that predicts by itself: {', '.join(usable)}")


def check_seed_dirs(cfg: TuneConfig) -> None:
    """``--save-adapter DIR`` on K-shot seeds saves ``DIR/seedN`` per seed: refuse, before any compute, a seed
    folder that holds other files (a save replaces it whole), and episodes, whose models are not saved."""
    if not cfg.save_adapter:
        return
    if cfg.ways:
        raise PefsError(f"--save-adapter {cfg.save_adapter} saves one model per K-shot seed; an episode's model "
                        f"knows only its {cfg.ways} sampled classes, by position, and is not saved: drop "
                        "--save-adapter, or drop --ways for K-shot seeds (or --final DIR for one model of every class)")
    for seed in cfg.seeds:
        pefs_io.check_replaceable(seed_dir(cfg.save_adapter, seed), "--save-adapter")


def seed_dir(save_adapter: str, seed: int) -> Path:
    """Where ``--save-adapter DIR`` saves seed ``seed``'s model: ``DIR/seedN``."""
    return Path(save_adapter) / f"seed{seed}"


def describe_model(model: PefsModel, cfg: TuneConfig, dataset: Dataset) -> None:
    """Give the model what its directory records: class names (K-shot runs), preprocessing and the tune config."""
    model.class_names = None if cfg.ways else list(dataset.classes)
    model.preprocessing = pefs_io.preprocessing(model.backbone.data_config, cfg.img_size)
    model.tune_config = cfg.to_dict()


def save_final(cfg: TuneConfig, runner: TaskRunner) -> Callable[[Task, TaskResult], None]:
    """After the final task: without a held-out split its accuracy is the training accuracy (recorded as such,
    never as accuracy); then the model directory is saved, once (by the main process of a multi-process run)."""
    def after(task: Task, result: TaskResult) -> None:
        if not task.info["held_out"]:
            result.info["train_accuracy"], result.accuracy = result.accuracy, None
        result.info["model_dir"] = str(distributed.on_main(lambda: runner.model.save(cfg.save_adapter)))
    return after


def final_summary(dataset: Dataset, run: ProtocolRun) -> dict[str, Any]:
    """The record's extra fields for a final fit: where the model went, what it trained on and was scored on, and
    (a multi-process launch only) over how many processes."""
    info = run.runs[0].info if run.runs else {}
    processes = distributed.world_size()  # a data-parallel fit says over how many processes it split its batches
    return {"final": True, "model_dir": info.get("model_dir"), "trained_on": len(dataset.train),
            "test_images": len(dataset.test) if info.get("held_out") else 0,
            **({"processes": processes} if processes > 1 else {})}
