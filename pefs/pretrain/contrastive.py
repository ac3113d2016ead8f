"""Contrastive pretraining: SimCLR (Chen et al. 2020). Two augmented views of each image pass the trunk and a
two-layer projection MLP; the NT-Xent loss makes each view pick its partner out of the other 2N - 2 views by
temperature-scaled cosine similarity (labels are not used)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pefs.backbones import Backbone

#: SimCLR's projection output width
PROJECTION_DIM = 128


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over 2N views: row i of ``z1`` and row i of ``z2`` are a positive pair; every other view is a
    negative; each view's own similarity is excluded. The mean cross-entropy over all 2N views."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = len(z1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=sim.device), float("-inf"))
    partner = (torch.arange(2 * n, device=sim.device) + n) % (2 * n)  # view i's partner: i + N (mod 2N)
    return F.cross_entropy(sim, partner)


class Contrastive(nn.Module):
    """``forward(view1, view2)`` -> NT-Xent of the projected pooled features."""

    views = 2
    augment = "simclr"

    def __init__(self, bb: Backbone, n_classes: int, cfg) -> None:
        super().__init__()
        self.bb, self.trunk, self.temperature = bb, bb.model, float(cfg.temperature)
        self.projection = nn.Sequential(nn.Linear(bb.width, bb.width), nn.ReLU(inplace=True),
                                        nn.Linear(bb.width, PROJECTION_DIM))

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of a batch of view pairs; ``labels`` are never read (self-supervised)."""
        z = self.projection(self.bb.features(torch.cat([v1, v2])))
        return nt_xent(z[:len(v1)], z[len(v1):], self.temperature)
