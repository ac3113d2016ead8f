"""TuneConfig: everything one ``pefs tune`` run needs, validated before any weight is loaded."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pefs.backbones import DEFAULT_MODEL
from pefs.engine import TrainConfig
from pefs.errors import PefsError


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
        if self.ways is not None and self.ways < 2:
            raise PefsError(f"ways must be >= 2 for an episode, got {self.ways}")
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        return d

    def hash(self) -> str:
        """A stable hash of everything that affects the result (not output paths or progress bars)."""
        d = self.to_dict()
        for k in ("output", "save_adapter"):
            d.pop(k)
        d["train"].pop("progress")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
