"""``tim``: TIM-GD (Boudiaf et al. 2020, "Transductive Information Maximization for Few-Shot Learning"), a
transductive classifier: class weights W start at the support class means and are fitted by gradient descent on
the support labels *and* the mutual information between the task's unlabelled queries and their predictions.

Features are L2-normalised; p(c | x) = softmax_c(-tau/2 * |x - W_c|^2) with tau = 15. The loss is

    lambda * CE(support) - (H(mean query prediction) - alpha * mean H(query prediction))

with lambda = 0.1, alpha = 0.1: the marginal entropy keeps the queries spread over the classes, the conditional
entropy makes each query's prediction confident (the decision boundary moves into low-density regions of the query
set). Adam at lr 1e-4 for 1000 steps, as the paper's TIM-GD (the authors' code's defaults).

Transductive: the scores of one query depend on the others, so the task runner passes the whole query set in one
call and the result record says the query set was used (``transductive``).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pefs.heads.base import check_pooled, prototypes
from pefs.heads.prototype import PrototypeHead

TIM_TEMPERATURE = 15.0
TIM_CE_WEIGHT = 0.1  # lambda
TIM_MARGINAL_WEIGHT = 1.0
TIM_CONDITIONAL_WEIGHT = 0.1  # alpha
TIM_LR = 1e-4
TIM_STEPS = 1000


class TIMHead(PrototypeHead):
    name = "tim"
    summary = ("TIM-GD (transductive): class weights fitted on the support labels and the mutual information of "
               "the queries' predictions")
    reads = "pooled"
    transductive = True
    steps: int = TIM_STEPS

    def fitted_parameters(self, features: int, n_classes: int) -> tuple[int, str]:
        return n_classes * features, ("the tim head fits a weight vector per class on the support labels and the "
                                      "task's unlabelled queries (transductive information maximisation, TIM-GD); "
                                      "the backbone trains nothing")

    def classify(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                 n_classes: int) -> torch.Tensor:
        check_pooled(self.name, support, query)
        s, q = F.normalize(support.float(), dim=-1), F.normalize(query.float(), dim=-1)
        return tim_logits(q, tim_weights(s, labels, q, n_classes, self.steps))


def tim_logits(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Logits (N, C) = -tau/2 |x - W_c|^2 of features (N, D) against class weights (C, D)."""
    return TIM_TEMPERATURE * (x @ weights.T - 0.5 * (weights * weights).sum(-1) - 0.5 * (x * x).sum(-1, keepdim=True))


def tim_loss(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """TIM's objective: lambda * support cross-entropy - (marginal entropy - alpha * conditional entropy) of the
    queries' predictions."""
    ce = F.cross_entropy(tim_logits(support, weights), labels)
    p = tim_logits(query, weights).softmax(-1)
    conditional = -(p * (p + 1e-12).log()).sum(-1).mean()
    marginal = p.mean(0)
    marginal_entropy = -(marginal * (marginal + 1e-12).log()).sum()
    return TIM_CE_WEIGHT * ce - (TIM_MARGINAL_WEIGHT * marginal_entropy - TIM_CONDITIONAL_WEIGHT * conditional)


def tim_weights(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_classes: int,
                steps: int = TIM_STEPS) -> torch.Tensor:
    """Class weights (C, D) after ``steps`` Adam steps on :func:`tim_loss`, from the support class means; support
    (S, D) with labels (S,) and query (Q, D) features, L2-normalised by the caller."""
    weights = prototypes(support, labels, n_classes).clone().requires_grad_(True)
    opt = torch.optim.Adam([weights], lr=TIM_LR)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            tim_loss(support, labels, query, weights).backward()
            opt.step()
    return weights.detach()
