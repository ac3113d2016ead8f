"""Meta-training with the ProtoNet loss (Snell et al. 2017): in each N-way K-shot episode of base classes, the
class prototypes are the mean pooled features of the support images, and the queries are classified by negative
squared Euclidean distance to them (cross-entropy over the episode's N classes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pefs.backbones import Backbone
from pefs.heads.base import prototypes


def prototype_logits(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, ways: int) -> torch.Tensor:
    """(Q, N) logits: minus the squared distance of each query feature to each class's mean support feature."""
    return -torch.cdist(query.float(), prototypes(support, labels, ways).float()).pow(2)


class ProtoNet(nn.Module):
    """``forward(support, support_labels, query, query_labels)`` -> the episode's ProtoNet loss."""

    views = 1
    augment = "none"

    def __init__(self, bb: Backbone, n_classes: int, cfg) -> None:
        super().__init__()
        self.bb, self.trunk, self.ways = bb, bb.model, int(cfg.ways)

    def forward(self, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
        f = self.bb.features(torch.cat([sx, qx]))
        return F.cross_entropy(prototype_logits(f[:len(sx)], sy, f[len(sx):], self.ways), qy)
