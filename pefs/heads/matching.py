"""``matching``: Matching Networks (Vinyals et al. 2016) at test time. Each query attends over the support
embeddings with a softmax of cosine similarities, and its class distribution is the attention-weighted sum of the
support labels:

    P(c | q) = sum_i a(q, s_i) [y_i = c],    a(q, s_i) = softmax_i(cos(q, s_i))

This is the variant without full-context embeddings (FCE): the paper's bidirectional LSTM over the support and
attention LSTM over the query are trained episodically on base classes, which pefs does not do; here both sets are
embedded by the model's pooled features. Unlike ProtoNet, every support image votes on its own (no class mean),
weighted by how close it is to the query.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pefs.heads.base import check_pooled, class_counts
from pefs.heads.prototype import PrototypeHead


class MatchingHead(PrototypeHead):
    name = "matching"
    summary = "Matching Networks (no FCE): softmax-of-cosine attention over the support, labels summed"
    reads = "pooled"
    #: multiplies the cosines inside the softmax: 1 as published (the attention is softmax(cos))
    temperature: float = 1.0

    def fitted_parameters(self, features: int, n_classes: int) -> tuple[int, str]:
        return 0, ("the matching head trains nothing: each query attends over the support features (softmax of "
                   "cosines) and sums their labels")

    def classify(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                 n_classes: int) -> torch.Tensor:
        return matching_scores(support, labels, query, n_classes, self.temperature)


def matching_scores(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_classes: int,
                    temperature: float = 1.0) -> torch.Tensor:
    """Log class probabilities (Q, n_classes) of queries (Q, D) given support features (S, D) and labels (S,):
    log of the attention-weighted label sum, the attention a softmax over the S support images of
    ``temperature`` x cosine."""
    check_pooled("matching", support, query)
    class_counts(labels, n_classes)
    cos = F.normalize(query.float(), dim=-1) @ F.normalize(support.float(), dim=-1).T  # (Q, S)
    attention = (temperature * cos).softmax(-1)
    probs = attention @ F.one_hot(labels, n_classes).float()  # (Q, C), rows sum to 1
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
