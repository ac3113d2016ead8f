"""``logistic``: a converged linear probe, multinomial logistic regression on frozen features (the CLIP
linear-probe protocol).

The objective is the mean cross-entropy plus ``l2 / 2 * |W|^2`` (the bias is not penalised), minimised to
convergence with L-BFGS in float64. Features are centred and scaled to unit mean norm on the fitting data, so
one L2 grid serves every backbone. The L2 strength is chosen on validation features when given, else by
cross-validation on the training features (fold j holds out the j-th example of every class), by the lowest
held-out cross-entropy (a handful of held-out images moves accuracy in coarse steps with many ties; their
log-loss is smooth; benchmarks/linear_probe.md compares both criteria); with one
example per class there is nothing to hold out and :data:`DEFAULT_L2` is used (:attr:`LogisticProbe.chosen_by`
says which). The chosen strength is then refitted on all training features. The folds do not know which
rows are extra views of one image (``--views``): a view may be held out while its clean image trains, which
makes the held-out data easier than new images and can favour a weaker L2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from pefs.errors import PefsError
from pefs.heads.prototype import PrototypeHead

#: the L2 strengths tried, strongest first (warm starts run from strong to weak regularisation)
L2_GRID: tuple[float, ...] = tuple(10.0 ** k for k in range(0, -7, -1))
#: used when nothing can be held out (one example per class): the best fixed strength on average over 1-10
#: shots of the embedded Fashion-MNIST subset through EfficientNet-Lite0 (benchmarks/linear_probe.md)
DEFAULT_L2 = 1e-3
MAX_FOLDS = 5


def _normaliser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(0)
    scale = (x - mean).norm(dim=-1).mean().clamp_min(1e-12)
    return mean, scale


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None, max_iter: int = 500,
                 tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (C, D) and bias (C,) minimising mean cross-entropy + ``l2``/2 |W|^2 on float64 ``x``, by L-BFGS."""
    w = torch.zeros(n_classes, x.shape[1], dtype=torch.float64) if init is None else init[0].clone()
    b = torch.zeros(n_classes, dtype=torch.float64) if init is None else init[1].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def _folds(y: torch.Tensor, n_classes: int) -> list[torch.Tensor]:
    """Boolean held-out masks: fold j holds out the j-th example of every class (every class in every fold)."""
    counts = torch.bincount(y, minlength=n_classes)
    k = min(int(counts.min()), MAX_FOLDS)
    rank = torch.zeros_like(y)
    for c in range(n_classes):
        idx = torch.nonzero(y == c).flatten()
        rank[idx] = torch.arange(len(idx))
    return [rank % k == j for j in range(k)]


@dataclass
class LogisticProbe:
    """Fit with :meth:`fit`, then :meth:`logits`. ``table`` holds (l2, validation accuracy, validation loss)."""

    grid: tuple[float, ...] = L2_GRID
    #: "loss": lowest held-out cross-entropy (ties: higher accuracy); "accuracy": the reverse
    criterion: str = "loss"
    l2: float | None = None
    chosen_by: str = ""
    table: list[tuple[float, float, float]] = field(default_factory=list)

    def fit(self, x: torch.Tensor, y: torch.Tensor, n_classes: int,
            val: tuple[torch.Tensor, torch.Tensor] | None = None) -> LogisticProbe:
        """Choose the L2 strength (on ``val``, else by cross-validation, else the default), then refit on all."""
        if x.ndim != 2 or len(x) != len(y) or not len(x):
            raise PefsError(f"the probe needs (N, D) features with N labels, got {tuple(x.shape)} and {len(y)} labels")
        if not self.grid or any(not (v > 0) for v in self.grid):
            raise PefsError(f"the L2 grid must hold values > 0, got {list(self.grid)}")
        if self.criterion not in ("loss", "accuracy"):
            raise PefsError(f"criterion must be loss or accuracy, got {self.criterion!r}")
        y = y.long()
        if int(y.min()) < 0 or int(y.max()) >= n_classes:
            raise PefsError(f"labels must lie in 0..{n_classes - 1}, got {int(y.min())}..{int(y.max())}")
        counts = torch.bincount(y, minlength=n_classes)
        if (counts == 0).any():
            raise PefsError(f"classes {torch.nonzero(counts == 0).flatten().tolist()} have no training example")
        if val is not None and len(val[0]):
            self.table = self._scores([(x, y, val[0], val[1].long())], n_classes)
            self.chosen_by = "validation"
        elif int(counts.min()) >= 2:
            splits = [(x[~m], y[~m], x[m], y[m]) for m in _folds(y, n_classes)]
            self.table = self._scores(splits, n_classes)
            self.chosen_by = f"{len(splits)}-fold cross-validation"
        else:
            self.table, self.l2, self.chosen_by = [], DEFAULT_L2, "default (one example per class: nothing to hold out)"
        if self.table and self.criterion == "loss":
            self.l2 = min(self.table, key=lambda r: (r[2], -r[1]))[0]
        elif self.table:
            self.l2 = max(self.table, key=lambda r: (r[1], -r[2]))[0]
        self.mean, self.scale = _normaliser(x.double())
        self.w, self.b = fit_logistic(self._norm(x), y, n_classes, self.l2)
        return self

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() - self.mean) / self.scale

    def _scores(self, splits: list[tuple[torch.Tensor, ...]], n_classes: int) -> list[tuple[float, float, float]]:
        acc = dict.fromkeys(self.grid, 0.0)
        loss = dict.fromkeys(self.grid, 0.0)
        n = sum(len(s[3]) for s in splits)
        for xt, yt, xv, yv in splits:
            mean, scale = _normaliser(xt.double())
            xt, xv = (xt.double() - mean) / scale, (xv.double() - mean) / scale
            init = None
            for l2 in sorted(self.grid, reverse=True):
                init = fit_logistic(xt, yt, n_classes, l2, init)
                logits = xv @ init[0].T + init[1]
                acc[l2] += float((logits.argmax(-1) == yv).sum()) / n
                loss[l2] += float(F.cross_entropy(logits, yv, reduction="sum")) / n
        return [(l2, acc[l2], loss[l2]) for l2 in self.grid]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, C) of features ``x`` as float32."""
        if self.l2 is None:
            raise PefsError("the probe is not fitted yet: call fit() first")
        return (self._norm(x) @ self.w.T + self.b).float()


class LogisticHead(PrototypeHead):
    name = "logistic"
    summary = "converged logistic-regression probe (L-BFGS, L2 chosen on held-out support) on pooled features"

    def __init__(self) -> None:
        #: the probe fitted on the current task's support (queries are scored batch by batch: fit once per task)
        self._fitted: tuple[torch.Tensor, torch.Tensor, LogisticProbe] | None = None

    def fitted_parameters(self, features: int, n_classes: int) -> tuple[int, str]:
        return n_classes * (features + 1), ("the logistic head fits a weight and bias per class on the pooled "
                                            "support features (L-BFGS); the backbone trains nothing")

    def classify(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                 n_classes: int) -> torch.Tensor:
        f = self._fitted
        if f is None or f[0] is not support or f[1] is not labels:  # held references: identity means same task
            self._fitted = f = (support, labels, LogisticProbe().fit(support, labels, n_classes))
        return f[2].logits(query)
