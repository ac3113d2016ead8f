"""``prototype``: ProtoNet at test time. A query goes to the class whose mean support feature is nearest in cosine.
With a frozen strategy nothing trains; with a training strategy the model is tuned with a prototype-initialised
linear head, then queries are classified against prototypes of the tuned features."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pefs.heads.base import prototypes
from pefs.heads.linear import LinearProtoHead


class PrototypeHead(LinearProtoHead):
    name = "prototype"
    summary = "cosine to class prototypes (ProtoNet); with a training strategy, tuned via a proto-init head"
    reads = "pooled"

    def trains(self, frozen_prefix: bool) -> bool:
        return not frozen_prefix

    def classify(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                 n_classes: int) -> torch.Tensor:
        return F.normalize(query, dim=-1) @ F.normalize(prototypes(support, labels, n_classes), dim=-1).T
