"""``patch-match``: a query's patch tokens are matched one-to-one (Hungarian assignment,
:func:`scipy.optimize.linear_sum_assignment`) to the patch tokens of each class's support images; the score is
the mean cosine of the matched pairs, so several object parts count, not one pooled vector. On CNNs each
position of the final feature map is a patch (a 128 px EfficientNet image gives a 4x4 grid)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from pefs.errors import PefsError
from pefs.heads.prototype import PrototypeHead


class PatchMatchHead(PrototypeHead):
    name = "patch-match"
    summary = "one-to-one Hungarian matching of query patch tokens to each class's support patch tokens"
    reads = "tokens"

    def fitted_parameters(self, features: int, n_classes: int) -> tuple[int, str]:
        return 0, ("the patch-match head trains nothing: it matches each query's patch tokens one-to-one (Hungarian "
                   "assignment) to each class's support patch tokens")

    def classify(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                 n_classes: int) -> torch.Tensor:
        return patch_match_scores(support, labels, query, n_classes)


def assignment(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The best one-to-one assignment (Hungarian) of rows (query patches) to columns (support patches) of a
    similarity matrix: matched row and column indices (``pefs explain --support`` draws them)."""
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(sim, maximize=True)


def match_score(sim: np.ndarray) -> float:
    """Mean similarity of the best one-to-one assignment of rows (query patches) to columns (support patches)."""
    rows, cols = assignment(sim)
    return float(sim[rows, cols].sum() / sim.shape[0])


def patch_match_scores(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                       n_classes: int) -> torch.Tensor:
    """Scores (Q, n_classes): each query's P patches matched one-to-one against the K*P' patches of the
    class's support images (cosine similarity), averaged over the query's patches."""
    if support.ndim != 3 or query.ndim != 3:
        raise PefsError(f"patch-match needs patch tokens (N, P, D); got support {tuple(support.shape)}, "
                        f"query {tuple(query.shape)}")
    s, q = F.normalize(support.float(), dim=-1), F.normalize(query.float(), dim=-1)
    if q.shape[1] > s.shape[1] * int(torch.bincount(labels, minlength=n_classes).min()):
        raise PefsError(f"patch-match needs at least as many support patches per class as query patches "
                        f"({q.shape[1]}); every class needs at least one support image")
    scores = torch.empty(len(q), n_classes)
    for c in range(n_classes):
        pool = s[labels == c].reshape(-1, s.shape[-1])  # all patches of the class's support images
        sims = torch.einsum("qpd,kd->qpk", q, pool).numpy()
        for i in range(len(q)):
            scores[i, c] = match_score(sims[i])
    return scores
