"""``pefs tune --final``: train one model on every labelled training image and save it as a model directory.

The protocol runs (K-shot seeds) choose a strategy and settings; ``--final`` then trains with them on all the
images of the training split (no K-shot sampling, no split of it held out) and saves the model with its class
names, preprocessing and config. When the data has its own test split, that split is never trained on: it is
scored, so the record says how the saved model does on images it has not seen; without one, the record gives
the training accuracy only (labelled as such).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pefs import io as pefs_io
from pefs.errors import PefsError
from pefs.heads import HEADS

if TYPE_CHECKING:
    from pefs.config import TuneConfig
    from pefs.data import Dataset
    from pefs.fewshot import TaskRunner
    from pefs.model import PefsModel


def check_final(cfg: TuneConfig) -> None:
    """Refuse, before any compute, a ``--final`` run that cannot give one usable model directory."""
    if cfg.save_adapter:
        pefs_io.check_writable_dir(cfg.save_adapter, "--final" if cfg.final else "--save-adapter")
    if not cfg.final:
        return
    if not cfg.save_adapter:
        raise PefsError("--final saves a model directory: name it (pefs tune --final DIR; save_adapter=DIR)")
    if cfg.ways:
        raise PefsError(f"--final trains on every labelled image; it does not run episodes (drop --ways {cfg.ways})")
    if len(cfg.seeds) > 1:
        raise PefsError(f"--final trains one model; give one seed, got {list(cfg.seeds)}")
    if HEADS[cfg.head].reads != "logits":
        usable = sorted(n for n, h in HEADS.items() if h.reads == "logits")
        raise PefsError(f"--head {cfg.head} classifies against the support images' features, which a model "
                        f"directory does not keep; --final needs a head that predicts by itself: {', '.join(usable)}")


def describe_model(model: PefsModel, cfg: TuneConfig, dataset: Dataset) -> None:
    """Give the model what its directory records: class names (K-shot runs), preprocessing and the tune config."""
    model.class_names = None if cfg.ways else list(dataset.classes)
    model.preprocessing = pefs_io.preprocessing(model.backbone.data_config, cfg.img_size)
    model.tune_config = cfg.to_dict()


def run_final(cfg: TuneConfig, dataset: Dataset, runner: TaskRunner, t_start: float) -> dict[str, Any]:
    """Train on the whole training split, score the data's own test split (else report training accuracy), save."""
    seed = cfg.seeds[0]
    held_out = dataset.test is not None and len(dataset.test) > 0
    run = runner.run(dataset.train, dataset.test if held_out else dataset.train, seed)
    if not held_out:
        run["train_accuracy"], run["accuracy"] = run["accuracy"], None
    run["model_dir"] = str(runner.model.save(cfg.save_adapter))
    return {"runs": [run], "wall_s": time.perf_counter() - t_start, "status": "ok", "final": True,
            "model_dir": run["model_dir"], "trained_on": len(dataset.train),
            "test_images": len(dataset.test) if held_out else 0}
