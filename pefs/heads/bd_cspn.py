"""``bd-cspn``: BD-CSPN (Liu et al. 2020, "Prototype Rectification for Few-Shot Learning"), a transductive
cosine-prototype classifier: the task's unlabelled queries rectify the class prototypes before the queries are
classified against them. Two steps, on pooled features:

1. Cross-set shift (the cross-class bias): every query moves by xi = mean(support) - mean(queries), so the two
   sets share a mean.
2. Prototype rectification (the intra-class bias): each shifted query is pseudo-labelled with its nearest basic
   prototype (cosine to the support class means); the ``z`` most confident of each class (highest cosine) join that
   class's support, and the rectified prototype is the weighted sum over the class's enlarged set,

       P'_c = sum_i w_i x_i,    w_i = softmax_i(epsilon * cos(x_i, P_c))    (over the members of class c)

Queries are then classified by cosine to P'_c. ``z`` = 8 and ``epsilon`` = 10 (the values of the paper's
re-implementations; easyfsl's ``BDCSPN`` pseudo-labels every query with epsilon = 1).

Transductive: the scores of one query depend on the others, so the task runner passes the whole query set in one
call and the result record says the query set was used (``transductive``).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pefs.heads.base import check_pooled, prototypes
from pefs.heads.prototype import PrototypeHead

#: pseudo-labelled queries added per class, at most
BD_CSPN_Z = 8
#: softmax temperature of the rectification weights
BD_CSPN_EPSILON = 10.0


class BDCSPNHead(PrototypeHead):
    name = "bd-cspn"
    summary = ("BD-CSPN (transductive): prototypes rectified with pseudo-labelled queries after a cross-set "
               "mean shift; cosine to them")
    reads = "pooled"
    transductive = True

    def fitted_parameters(self, features: int, n_classes: int) -> tuple[int, str]:
        return 0, ("the bd-cspn head trains nothing: it rectifies the class means with the task's unlabelled "
                   "queries (transductive: cross-set shift, then pseudo-labelled queries join each class)")

    def classify(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                 n_classes: int) -> torch.Tensor:
        check_pooled(self.name, support, query)
        protos, shifted = rectified_prototypes(support.float(), labels, query.float(), n_classes)
        return F.normalize(shifted, dim=-1) @ F.normalize(protos, dim=-1).T


def rectified_prototypes(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_classes: int,
                         z: int = BD_CSPN_Z, epsilon: float = BD_CSPN_EPSILON) -> tuple[torch.Tensor, torch.Tensor]:
    """BD-CSPN's prototypes (n_classes, D) and the shifted queries (Q, D), from support features (S, D) with labels
    (S,) and query features (Q, D)."""
    shifted = query + (support.mean(0) - query.mean(0))  # the cross-set shift
    basic = prototypes(support, labels, n_classes)
    cos = F.normalize(shifted, dim=-1) @ F.normalize(basic, dim=-1).T  # (Q, C)
    confidence, pseudo = cos.max(-1)
    out = torch.empty_like(basic)
    for c in range(n_classes):
        mine = torch.nonzero(pseudo == c).flatten()
        chosen = mine[confidence[mine].argsort(descending=True)[:z]]
        members = torch.cat([support[labels == c], shifted[chosen]])  # (S_c + Z_c, D)
        weights = (epsilon * F.cosine_similarity(members, basic[c][None], dim=-1)).softmax(0)
        out[c] = weights @ members
    return out, shifted
