"""``dn4``: DN4's image-to-class measure (Li et al. 2019, "Revisiting Local Descriptor based Image-to-Class Measure
for Few-shot Learning"). An image is its local descriptors, not one pooled vector: a ViT's patch tokens, or one
descriptor per position of a CNN's final feature map. For each of a query's descriptors, the cosines to its ``k``
nearest descriptors among *all* descriptors of a class's support images (every shot pooled together) are summed;
the class's score is that sum over the query's descriptors:

    score(q, c) = sum_{i in q} sum_{j in kNN_k(x_i, D_c)} cos(x_i, x_j),    D_c = descriptors of c's support images

k = 3 as in the paper. Where patch-match assigns descriptors one-to-one, DN4 lets every query descriptor find its
own neighbours (several may match one support descriptor), so a part seen in any shot counts.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pefs.errors import PefsError
from pefs.heads.base import class_counts
from pefs.heads.prototype import PrototypeHead

#: neighbours per query descriptor (the paper's k)
DN4_K = 3


class DN4Head(PrototypeHead):
    name = "dn4"
    summary = "DN4 image-to-class measure: each query patch token's k=3 nearest support tokens of a class, summed"
    reads = "tokens"
    k: int = DN4_K

    def fitted_parameters(self, features: int, n_classes: int) -> tuple[int, str]:
        return 0, (f"the dn4 head trains nothing: each query patch token adds its cosines to its {self.k} nearest "
                   "patch tokens among a class's support images (DN4's image-to-class measure)")

    def classify(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                 n_classes: int) -> torch.Tensor:
        return dn4_scores(support, labels, query, n_classes, self.k)


def dn4_scores(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_classes: int,
               k: int = DN4_K) -> torch.Tensor:
    """Scores (Q, n_classes) of queries' descriptors (Q, P, D) against support descriptors (S, P', D) with labels
    (S,): per query descriptor, the sum of its ``k`` largest cosines to the class's S_c * P' descriptors, summed
    over the query's P descriptors."""
    if support.ndim != 3 or query.ndim != 3 or support.shape[-1] != query.shape[-1]:
        raise PefsError(f"dn4 needs local descriptors (N, P, D): patch tokens of a ViT or the positions of a CNN "
                        f"feature map; got support {tuple(support.shape)}, query {tuple(query.shape)}")
    fewest = int(class_counts(labels, n_classes).min()) * support.shape[1]
    if not 1 <= k <= fewest:
        raise PefsError(f"dn4 takes k between 1 and the support descriptors of the smallest class ({fewest}), "
                        f"got k={k}")
    s, q = F.normalize(support.float(), dim=-1), F.normalize(query.float(), dim=-1)
    scores = torch.empty(len(q), n_classes)
    for c in range(n_classes):
        pool = s[labels == c].reshape(-1, s.shape[-1])  # (S_c * P', D): every shot's descriptors together
        sims = torch.einsum("qpd,kd->qpk", q, pool)  # (Q, P, S_c * P')
        scores[:, c] = sims.topk(k, dim=-1).values.sum(dim=(1, 2))
    return scores
