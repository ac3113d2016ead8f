"""The head contract (:class:`Head`) and what several heads share: class prototypes and prototype initialisation.

A head decides how a task's queries are scored from what the model outputs (``reads``: logits, pooled
features or patch tokens). It never moves tensors between devices: it reads CPU tensors that
:mod:`pefs.runtime.engine` produced.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from pefs.errors import PefsError

#: initial logit scale of a prototype-initialised linear head: logits start as about SCALE x cosine
PROTO_SCALE = 10.0


class Head:
    """How a task's queries are scored. ``reads`` names the model output ``classify`` consumes."""

    name: ClassVar[str]
    summary: ClassVar[str]
    reads: ClassVar[Literal["logits", "pooled", "tokens"]] = "logits"
    #: True when ``init_linear`` needs the pooled support features (prototype initialisation)
    uses_prototypes: ClassVar[bool] = False
    #: the head trains at ``head_lr`` times this
    head_lr_factor: ClassVar[float] = 1.0
    #: True when ``classify`` reads the task's unlabelled queries together (transductive inference): the runner
    #: then passes every query of a task in one call, and the record says the query set was used (its accuracy
    #: is not comparable with an inductive head's, which scores each query on its own)
    transductive: ClassVar[bool] = False

    def trains(self, frozen_prefix: bool) -> bool:
        """Whether the model must be fitted on the support set (a frozen trunk with a prototype head need not)."""
        return True

    def fitted_parameters(self, features: int, n_classes: int) -> tuple[int, str]:
        """When the model trains nothing (:meth:`trains` False): the parameters this head itself fits on the
        support features per task, and a line saying how it classifies (the record's parameter note)."""
        return 0, f"the {self.name} head trains nothing: it classifies by the support features' class means"

    def init_linear(self, head: nn.Module, support: torch.Tensor | None, labels: torch.Tensor,
                    n_classes: int) -> None:
        """Initialise the model's linear head before training (from the pooled ``support`` features)."""
        as_linear(head).reset_parameters()

    def classify(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                 n_classes: int) -> torch.Tensor:
        """Scores (queries, classes): for logit heads the query logits themselves."""
        return query


def as_linear(head: nn.Module) -> nn.Linear:
    if not isinstance(head, nn.Linear):
        raise PefsError(f"this head needs the model's classifier to be an nn.Linear, found {type(head).__name__}")
    return head


def class_counts(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Support examples per class (n_classes,); a PefsError naming the classes that have none."""
    counts = torch.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        raise PefsError(f"classes {torch.nonzero(counts == 0).flatten().tolist()} have no support example")
    return counts


def check_pooled(head: str, support: torch.Tensor, query: torch.Tensor) -> None:
    """A PefsError unless ``support`` and ``query`` are pooled features (N, D) of one width."""
    if support.ndim != 2 or query.ndim != 2 or support.shape[1] != query.shape[1]:
        raise PefsError(f"the {head} head needs pooled features (N, D) of one width; got support "
                        f"{tuple(support.shape)}, query {tuple(query.shape)}")


def prototypes(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Mean feature of each class (n_classes, D), on ``features``' device (a head's CPU features, or a training
    episode's on the accelerator); every class must have at least one support example."""
    counts = class_counts(labels, n_classes)
    sums = features.new_zeros(n_classes, features.shape[-1]).index_add_(0, labels, features)
    return sums / counts[:, None].to(features.dtype)


@torch.no_grad()
def proto_init(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> None:
    """Set W_c = PROTO_SCALE * p_c / (|p_c| * mean |f|) and b = 0: logits start near PROTO_SCALE x cosine."""
    if head.out_features != n_classes or head.in_features != features.shape[-1]:
        raise PefsError(f"head is {head.in_features}->{head.out_features} but the support has "
                        f"{features.shape[-1]}-d features of {n_classes} classes")
    p = F.normalize(prototypes(features.float(), labels, n_classes), dim=-1)
    scale = PROTO_SCALE / features.float().norm(dim=-1).mean().clamp_min(1e-6)
    head.weight.copy_((scale * p).to(head.weight))
    if head.bias is not None:
        head.bias.zero_()
