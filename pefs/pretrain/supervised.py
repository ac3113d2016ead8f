"""Supervised pretraining: cross-entropy of a linear classifier over the base classes on the pooled features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pefs.backbones import Backbone


class Supervised(nn.Module):
    """``forward(images, labels)`` -> cross-entropy of a fresh linear head over ``n_classes`` base classes."""

    #: what each item of the data gives: one augmented view and its label
    views = 1
    augment = "light"

    def __init__(self, bb: Backbone, n_classes: int, cfg) -> None:
        super().__init__()
        self.bb, self.trunk = bb, bb.model  # the trunk is a submodule: prepare() and the optimizer see it
        self.classifier = nn.Linear(bb.width, n_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.classifier(self.bb.features(x)), y)
