"""Classifier heads: prototypes, prototype-initialised linear heads, Hungarian patch matching."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pefs.backbones.split import patch_tokens
from pefs.errors import PefsError
from pefs.heads import registry as heads
from pefs.heads.base import PROTO_SCALE, prototypes
from pefs.heads.linear import LinearProtoHead
from pefs.heads.patch_match import match_score, patch_match_scores
from pefs.heads.prototype import PrototypeHead
from tests.conftest import tiny


def brute_force_match(sim: np.ndarray) -> float:
    """Best one-to-one assignment of every row to a distinct column, by trying every ordered choice."""
    rows, cols = sim.shape
    return max(sum(sim[r, c] for r, c in enumerate(perm)) for perm in itertools.permutations(range(cols), rows)) / rows


@pytest.mark.parametrize("seed", range(5))
def test_hungarian_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    for rows, cols in ((3, 3), (3, 5), (4, 6)):
        sim = rng.uniform(-1, 1, (rows, cols))
        assert match_score(sim) == pytest.approx(brute_force_match(sim))


def test_patch_match_scores_against_brute_force_cosines():
    g = torch.Generator().manual_seed(0)
    support, labels = torch.randn(4, 2, 5, generator=g), torch.tensor([0, 0, 1, 1])  # 2 shots x 2 patches per class
    query = torch.randn(3, 3, 5, generator=g)
    scores = patch_match_scores(support, labels, query, 2)
    for q in range(3):
        for c in range(2):
            pool = F.normalize(support[labels == c].reshape(-1, 5), dim=-1)
            sim = (F.normalize(query[q], dim=-1) @ pool.T).numpy()
            assert scores[q, c].item() == pytest.approx(brute_force_match(sim), abs=1e-6)


def test_patch_match_counts_parts_a_pooled_vector_misses():
    # class 0's support shows parts A and B; class 1's shows A twice. A query with parts A and B must pick class 0,
    # and one-to-one matching stops a query of two A parts from scoring perfectly against class 0.
    a, b = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])
    support, labels = torch.stack([torch.stack([a, b]), torch.stack([a, a])]), torch.tensor([0, 1])
    scores = patch_match_scores(support, labels, torch.stack([torch.stack([a, b]), torch.stack([a, a])]), 2)
    assert scores.argmax(-1).tolist() == [0, 1]
    assert scores[1, 0] == pytest.approx(0.5)


def test_prototype_head_is_cosine_to_class_means():
    feats = torch.tensor([[1.0, 0], [3.0, 0.2], [0, 1.0], [0.1, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    protos = prototypes(feats, labels, 2)
    assert torch.allclose(protos, torch.tensor([[2.0, 0.1], [0.05, 1.5]]))
    scores = PrototypeHead().classify(feats, labels, torch.tensor([[5.0, 1.0], [0.2, 0.3]]), 2)
    assert scores.argmax(-1).tolist() == [0, 1]
    assert scores[0, 0] == pytest.approx(F.cosine_similarity(torch.tensor([5.0, 1.0]), protos[0], dim=0).item())


def test_proto_init_linear_head_decides_like_the_prototype_classifier():
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(15, 8, generator=g).abs(), torch.arange(15) % 5
    head = nn.Linear(8, 5)
    LinearProtoHead().init_linear(head, feats, labels, 5)
    query = torch.randn(40, 8, generator=g).abs()
    with torch.no_grad():
        logits = head(query)
    cos = PrototypeHead().classify(feats, labels, query, 5)
    assert torch.equal(logits.argmax(-1), cos.argmax(-1))
    assert head.bias.abs().max() == 0 and logits.abs().max() < PROTO_SCALE * 3


def test_prototypes_need_every_class():
    with pytest.raises(PefsError, match=r"classes \[2\] have no support example"):
        prototypes(torch.ones(2, 3), torch.tensor([0, 1]), 3)


def test_unknown_head():
    with pytest.raises(PefsError, match="^unknown head 'knn'; valid choices: bd-cspn, dn4, linear, linear-proto, "
                                        "logistic, matching, patch-match, prototype, tim$"):
        heads.build("knn")


def test_which_heads_train():
    assert heads.build("linear").trains(frozen_prefix=True)
    assert not heads.build("prototype").trains(frozen_prefix=True)
    assert heads.build("prototype").trains(frozen_prefix=False)  # tuned through a prototype-initialised head
    assert not heads.build("patch-match").trains(frozen_prefix=True)


def test_patch_tokens_of_vit_and_cnn():
    vit = tiny("vit").eval()
    with torch.no_grad():
        t = vit.net.forward_features(torch.zeros(2, 3, 32, 32))
    assert patch_tokens(vit.backbone, t).shape == (2, 4, 192)  # 2x2 patches, class token dropped
    cnn = tiny("resnet")
    assert patch_tokens(cnn.backbone, torch.zeros(2, 512, 3, 4)).shape == (2, 12, 512)  # one per map position


def test_each_frozen_head_says_how_it_classifies():
    """A record's parameter note names what the head does: class means for prototypes, Hungarian matching of
    patch tokens for patch-match (not the prototype sentence it used to inherit)."""
    assert "class means" in heads.build("prototype").fitted_parameters(8, 3)[1]
    count, note = heads.build("patch-match").fitted_parameters(8, 3)
    assert count == 0 and "Hungarian" in note and "class means" not in note


def test_each_head_declares_what_the_task_feeds_it():
    """Every head but the plain linear one starts its trained head from the support prototypes, at a tenth of
    head_lr (a larger rate erases the init); the plain linear head starts at random, at head_lr itself; a frozen
    prototype head fits no parameters of its own."""
    assert {n: heads.build(n).uses_prototypes for n in heads.HEADS} == {n: n != "linear" for n in heads.HEADS}
    assert {n: heads.build(n).head_lr_factor for n in heads.HEADS} == {n: 1.0 if n == "linear" else 0.1
                                                                       for n in heads.HEADS}
    assert heads.build("prototype").fitted_parameters(8, 3) == (
        0, "the prototype head trains nothing: it classifies by the support features' class means")


def test_the_linear_head_starts_each_task_from_a_fresh_random_init():
    """``init_linear`` of the plain linear head re-draws the head's weights, so no task starts from the last one's."""
    head = nn.Linear(6, 3)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    heads.build("linear").init_linear(head, None, torch.tensor([0, 1, 2]), 3)
    assert head.weight.abs().sum() > 0 and head.bias.abs().sum() > 0


def test_a_prototype_initialised_head_without_support_features_is_refused():
    """linear-proto cannot start without the support features: one PefsError, and the head is left as it was."""
    head = nn.Linear(4, 2)
    before = head.weight.detach().clone()
    with pytest.raises(PefsError, match="^a prototype-initialised head needs the support features$"):
        LinearProtoHead().init_linear(head, None, torch.tensor([0, 1]), 2)
    assert torch.equal(head.weight, before)


def test_logistic_probe_criterion_and_folds():
    """The probe's L2 is the grid value with the best held-out accuracy under ``criterion="accuracy"`` (the
    lowest loss by default); cross-validation holds out the j-th example of every class in fold j (mod the fold
    count: at most 5 folds, no more than the smallest class), each example once;
    an unknown criterion is refused naming the two valid ones."""
    from pefs.heads.logistic import LogisticProbe, _folds

    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(6)
    x = torch.randn(18, 4, generator=g) + 2.0 * F.one_hot(y, 4).double().float()
    folds = _folds(y, 3)
    assert len(folds) == 5 and (sum(m.long() for m in folds) == 1).all()  # every example held out exactly once
    assert [torch.bincount(y[m], minlength=3).tolist() for m in folds] == [[2, 2, 2]] + [[1, 1, 1]] * 4
    assert len(_folds(y[:9], 3)) == 3
    acc = LogisticProbe(criterion="accuracy").fit(x, y, 3)
    assert acc.chosen_by == "5-fold cross-validation"
    assert acc.l2 == max(acc.table, key=lambda r: (r[1], -r[2]))[0]
    with pytest.raises(PefsError, match="^criterion must be loss or accuracy, got 'f1'$"):
        LogisticProbe(criterion="f1").fit(x, y, 3)


def test_patch_match_head_scores_and_refusals():
    """The patch-match head's scores are ``patch_match_scores``; features that are not (N, P, D) tokens, or a class
    with fewer support patches than a query has, are refused in one line (many queries of few patches are fine)."""
    g = torch.Generator().manual_seed(0)
    support, labels = torch.randn(2, 3, 4, generator=g), torch.tensor([0, 1])
    query = torch.randn(5, 2, 4, generator=g)
    head = heads.build("patch-match")
    assert torch.equal(head.classify(support, labels, query, 2), patch_match_scores(support, labels, query, 2))
    with pytest.raises(PefsError, match=r"needs patch tokens \(N, P, D\); got support \(2, 3, 4\), query \(5, 4\)"):
        patch_match_scores(support, labels, query[:, 0], 2)
    with pytest.raises(PefsError, match=r"at least as many support patches per class as query patches \(4\)"):
        patch_match_scores(support, labels, torch.randn(1, 4, 4, generator=g), 2)
