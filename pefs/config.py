"""TuneConfig: everything one ``pefs tune`` run needs, validated before any weight is loaded."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pefs.backbones import DEFAULT_MODEL
from pefs.data.views import ViewConfig
from pefs.engine import TrainConfig
from pefs.errors import PefsError, unknown
from pefs.heads import DEFAULT_HEAD, HEADS

#: fields that do not change a run's numbers, so they stay out of its hash (a sweep resumes across them)
RESULT_NEUTRAL = ("output", "save_adapter", "feature_cache")
#: (gradient checkpointing recomputes the same activations: tests/test_speed_options.py checks equal losses)
#: (workers, cache budget and the feature store change where inputs come from, not their values)
RESULT_NEUTRAL_TRAIN = ("progress", "eval_batch_size", "grad_checkpointing", "num_workers", "cache_mb")


@dataclass
class TuneConfig:
    """One run: a model, a strategy, a dataset and a protocol (K-shot transfer, or episodes when ``ways``)."""

    model: str = DEFAULT_MODEL
    strategy: str = "linear"
    shots: int = 5
    seeds: tuple[int, ...] = (0,)
    data: str | None = None
    ways: int | None = None  # set -> episodic protocol
    queries: int = 15
    episodes: int = 100
    pretrained: bool = True
    checkpoint: str | None = None
    img_size: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: str = "runs"
    save_adapter: str | None = None
    #: classifier head: linear | linear-proto | prototype | patch-match (see pefs.heads)
    head: str = DEFAULT_HEAD
    #: views per support image (1 = the clean image only); extra views are augmented and/or masked
    views: int = 1
    augment: bool = False
    mask_ratio: float = 0.0
    mask_patch: int = 16
    #: directory of the on-disk feature store (pefs.features); None: $PEFS_FEATURE_CACHE, else no store
    feature_cache: str | None = None

    @property
    def view_config(self) -> ViewConfig:
        return ViewConfig(self.views, self.augment, self.mask_ratio, self.mask_patch)

    @property
    def protocol(self) -> str:
        return "episodic" if self.ways else "kshot"

    def validate(self) -> None:
        if not isinstance(self.shots, int) or self.shots < 1:
            raise PefsError(f"shots must be a whole number >= 1, got {self.shots!r}")
        if not self.seeds:
            raise PefsError("seeds must name at least one seed")
        if self.img_size is not None and self.img_size < 8:
            raise PefsError(f"img_size must be >= 8 pixels, got {self.img_size}")
        if self.ways is not None and (not isinstance(self.ways, int) or self.ways < 2):
            raise PefsError(f"ways must be a whole number >= 2 for an episode, got {self.ways!r}")
        if self.ways is not None and len(self.seeds) > 1:
            raise PefsError(f"episodes draw their own tasks from one seed; give one seed, got {list(self.seeds)}")
        for name in ("queries", "episodes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise PefsError(f"{name} must be a whole number >= 1, got {getattr(self, name)!r}")
        if self.head not in HEADS:
            raise unknown("head", self.head, list(HEADS))
        if self.feature_cache is not None and not isinstance(self.feature_cache, str):
            raise PefsError(f"feature_cache must be a directory path, got {self.feature_cache!r}")
        self.view_config.validate()
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        return d

    def hash(self) -> str:
        """A stable hash of everything that affects the result (not output paths or progress bars)."""
        d = self.to_dict()
        for k in RESULT_NEUTRAL:
            d.pop(k)
        for k in RESULT_NEUTRAL_TRAIN:
            d["train"].pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
