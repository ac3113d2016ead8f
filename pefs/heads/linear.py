"""``linear`` (random init, trained with the strategy) and ``linear-proto`` (initialised from the normalised class
prototypes of the support features, so training starts from a nearest-prototype classifier; the default)."""

from __future__ import annotations

import torch
from torch import nn

from pefs.errors import PefsError
from pefs.heads.base import Head, as_linear, proto_init


class LinearHead(Head):
    name = "linear"
    summary = "linear classifier, random init, trained"


class LinearProtoHead(Head):
    name = "linear-proto"
    summary = "linear classifier initialised from normalised class prototypes, trained"
    uses_prototypes = True
    #: a prototype-initialised head is already a good classifier, and its weights are small (about
    #: PROTO_SCALE / (|f| sqrt(D)), ~0.01 for EfficientNet's 1280-d features); Adam's first steps move each
    #: weight by about the learning rate, so at head_lr=1e-2 they erase the init; a tenth of it keeps the
    #: prototype classifier's accuracy and refines it (benchmarks/episodic.md compares the heads).
    head_lr_factor = 0.1

    def init_linear(self, head: nn.Module, support: torch.Tensor | None, labels: torch.Tensor,
                    n_classes: int) -> None:
        if support is None:
            raise PefsError("a prototype-initialised head needs the support features")
        proto_init(as_linear(head), support, labels, n_classes)
