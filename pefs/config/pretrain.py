"""The settings of ``pefs pretrain`` as plain data (stdlib only): one :func:`setting` per flag, checked up front.

A pretraining run trains a backbone on a data source's base classes (never its novel classes) with one
objective (supervised cross-entropy, SimCLR contrastive, MAE), or meta-trains it with the ProtoNet loss over
base-class episodes (``meta_train``), and writes a checkpoint directory ``pefs tune --checkpoint DIR`` loads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from pefs.config.fields import check_choice, setting
from pefs.config.run import DEFAULT_MODEL
from pefs.errors import PefsError, unknown

#: the objectives of ``--objective`` (``--meta-train`` is the ProtoNet stage, "protonet" in the record)
OBJECTIVES = ("supervised", "contrastive", "mae")
#: the objective a run uses when none is named (and ``--meta-train`` is off)
DEFAULT_OBJECTIVE = "supervised"


@dataclass
class PretrainConfig:
    """One pretraining run: a backbone, a data source's base classes, an objective (or ProtoNet meta-training)."""

    model: str = setting(DEFAULT_MODEL, "timm model name or offline model to start from (`pefs models` lists them)")
    out: str | None = setting(None, "the checkpoint directory to write (pefs tune --checkpoint DIR loads it)",
                              metavar="DIR")
    data: str | None = setting(None, "data source: fewshot:<root> / miniimagenet:<root> train on their base "
                               "classes; a source without base classes trains on its train split (never its test "
                               "split) and the checkpoint says so; default: the embedded fashion-mnist-small")
    objective: str | None = setting(None, f"what to learn: {' | '.join(OBJECTIVES)} (supervised cross-entropy on "
                                    "the base classes; contrastive: SimCLR NT-Xent over two augmented views; mae: "
                                    "masked-patch reconstruction, ViTs only); default supervised")
    meta_train: bool = setting(False, "ProtoNet meta-training over N-way K-shot episodes of the base classes on top "
                               "of the starting weights (--model's, or --checkpoint DIR from an earlier pretrain)")
    pretrained: bool = setting(True, "start from the model's pretrained weights (off: random weights)")
    checkpoint: str | None = setting(None, "start from local weights: a weight file, or a pefs pretrain directory",
                                     metavar="PATH")
    img_size: int | None = setting(None, "input resolution (default: the data's suggestion, else the model's)")
    epochs: int = setting(1, "passes over the base images (meta-training: as many episodes as hold that many images)")
    steps: int | None = setting(None, "optimizer steps, one batch or one episode each (overrides --epochs)",
                                metavar="N")
    batch_size: int = setting(32, "images per step (contrastive: two views each)")
    lr: float = setting(3e-4, "AdamW learning rate (linear warmup over the first 5% of steps, then cosine decay)")
    weight_decay: float = setting(0.05, "AdamW weight decay")
    mask_ratio: float = setting(0.75, "mae: fraction of patch tokens dropped before the encoder")
    temperature: float = setting(0.5, "contrastive: NT-Xent temperature")
    ways: int = setting(5, "meta-train: N classes per episode")
    shots: int = setting(5, "meta-train: K support images per class")
    queries: int = setting(5, "meta-train: query images per class")
    seed: int = setting(0, "seed of the initialisation, the order of images, views, masks and episodes")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = setting(
        "auto", "autocast while training; auto: bf16 on a CUDA GPU with native bf16, else no")
    deterministic: bool = setting(False, "fp32 throughout and deterministic GPU algorithms")
    num_workers: int | None = setting(None, "DataLoader processes decoding images (default: sized to the machine)",
                                      flags=("--workers",), metavar="N")
    progress: bool = setting(True, "print the loss as training goes", flags=("--quiet", "-q"))

    @property
    def stage(self) -> str:
        """What this run trains with: an objective's name, or "protonet" for ``meta_train``."""
        return "protonet" if self.meta_train else (self.objective or DEFAULT_OBJECTIVE)

    def validate(self) -> None:
        """Every value in range, before a model loads or an image decodes; one PefsError line otherwise."""
        if not self.out or not isinstance(self.out, str):
            raise PefsError("give the checkpoint directory to write: --out DIR")
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise unknown("objective", self.objective, OBJECTIVES)
        if self.meta_train and self.objective is not None:
            raise PefsError(f"--meta-train trains with the ProtoNet loss; drop --objective {self.objective} (to "
                            f"meta-train after {self.objective}, pretrain first and pass its directory as "
                            "--checkpoint)")
        for name in ("epochs", "batch_size", "ways", "shots", "queries"):
            _whole(name, getattr(self, name), 1)
        _whole("seed", self.seed, 0)
        if self.steps is not None:
            _whole("steps", self.steps, 1)
        if self.num_workers is not None:
            _whole("num_workers", self.num_workers, 0)
        if self.img_size is not None:
            _whole("img_size", self.img_size, 8)
        if self.batch_size < 2 and not self.meta_train:
            raise PefsError(f"batch_size must be >= 2 (contrastive negatives and BatchNorm statistics come from the "
                            f"other images of a step), got {self.batch_size}")
        if self.ways < 2:
            raise PefsError(f"ways must be >= 2 for an episode, got {self.ways}")
        for name, low in (("lr", 0.0), ("temperature", 0.0)):
            if not _number(getattr(self, name)) or getattr(self, name) <= low:
                raise PefsError(f"{name} must be > 0 and finite, got {getattr(self, name)!r}")
        if not _number(self.weight_decay) or self.weight_decay < 0:
            raise PefsError(f"weight_decay must be >= 0 and finite, got {self.weight_decay!r}")
        if not _number(self.mask_ratio) or not 0 < self.mask_ratio < 1:
            raise PefsError(f"mask_ratio must lie in (0, 1), got {self.mask_ratio!r}")
        check_choice(self, "mixed_precision")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PefsError(f"{name} must be a whole number >= {low}, got {value!r}")
