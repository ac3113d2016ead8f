"""The few-shot heads of issue #28: Matching Networks, DN4, and the transductive BD-CSPN and TIM — each on a case
whose answer is known by construction, their refusals, and how a run feeds and records a transductive head."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from pefs.config import TrainConfig, TuneConfig
from pefs.errors import PefsError
from pefs.heads import registry as heads
from pefs.heads.bd_cspn import BD_CSPN_EPSILON, BDCSPNHead, rectified_prototypes
from pefs.heads.dn4 import dn4_scores
from pefs.heads.matching import matching_scores
from pefs.heads.tim import tim_loss, tim_weights
from pefs.protocols.run import tune
from pefs.runtime.task import TaskRunner

NEW = ("matching", "dn4", "bd-cspn", "tim")


def at(deg: float) -> torch.Tensor:
    """The unit vector at ``deg`` degrees in the plane."""
    r = math.radians(deg)
    return torch.tensor([math.cos(r), math.sin(r)])


def clusters(seed: int = 0, ways: int = 4, per: int = 6, dim: int = 16, spread: float = 0.05):
    """Support (ways*2, dim) and query (ways*per, dim) features around ``ways`` orthogonal centres, with labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:ways] * 3.0
    ys, yq = torch.arange(ways).repeat(2), torch.arange(ways).repeat_interleave(per)
    noise = lambda n: spread * torch.randn(n, dim, generator=g)  # noqa: E731
    return centres[ys] + noise(len(ys)), ys, centres[yq] + noise(len(yq)), yq


# one 2-class task in the plane: supports at 0 and 90 degrees; 8 class-0 queries at 30..44 degrees, 8 class-1
# queries at 82..96, and a borderline query at 50 degrees, nearer the class-0 queries (6 degrees) than the class-1
# ones (32) but nearer the class-1 support (40 degrees) than the class-0 support (50)
SUPPORT, LABELS = torch.stack([at(0), at(90)]), torch.tensor([0, 1])
QUERY = torch.stack([at(a) for a in (*range(30, 46, 2), *range(82, 98, 2), 50)])


def test_the_new_heads_are_registered_with_their_contract():
    """Each new head builds by its --head name, is offered by the config's choices, reads what it needs (pooled
    features; patch tokens for dn4), trains nothing on a frozen trunk, and only bd-cspn and tim are transductive."""
    from pefs.config.fields import choices

    assert set(NEW) <= set(choices(TuneConfig, "head"))
    built = {n: heads.build(n) for n in NEW}
    assert {n: h.reads for n, h in built.items()} == {"matching": "pooled", "dn4": "tokens", "bd-cspn": "pooled",
                                                      "tim": "pooled"}
    assert not any(h.trains(frozen_prefix=True) for h in built.values())
    assert {n for n in heads.HEADS if heads.build(n).transductive} == {"bd-cspn", "tim"}


@pytest.mark.parametrize("name", NEW)
def test_well_separated_clusters_are_classified_exactly(name):
    """On tight clusters around orthogonal centres every new head labels every query with its cluster."""
    s, ys, q, yq = clusters()
    if name == "dn4":  # each image as 3 local descriptors (all near its centre)
        s, q = s[:, None].repeat(1, 3, 1), q[:, None].repeat(1, 3, 1)
    assert torch.equal(heads.build(name).classify(s, ys, q, 4).argmax(-1), yq)


def test_matching_scores_are_the_attention_weighted_label_sum():
    """Matching Networks' P(c|q) is sum_i softmax_i(cos(q, s_i)) [y_i = c], computed here by hand for one query;
    unlike ProtoNet, one support image close to the query outweighs a class mean."""
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    y = torch.tensor([0, 1, 1])
    q = torch.tensor([[0.8, 0.6]])
    cos = torch.tensor([0.8, 0.6, 0.96])
    a = cos.exp() / cos.exp().sum()
    assert torch.allclose(matching_scores(s, y, q, 2).exp(), torch.stack([a[0], a[1] + a[2]])[None], atol=1e-6)
    assert matching_scores(s, y, q, 2).argmax().item() == 1


def test_dn4_decides_by_local_descriptors_where_the_class_means_tie():
    """Class 0's images show parts e1 and e2, class 1's show (e1+e2)/2 +- e3: the pooled means are equal, so the
    prototype head cannot tell the classes apart, while DN4 matches each query part to its own class's parts."""
    e = torch.eye(4)
    mid = (e[0] + e[1]) / 2
    img0, img1 = torch.stack([e[0], e[1]]), torch.stack([mid + e[2], mid - e[2]])
    support, labels = torch.stack([img0, img0, img1, img1]), torch.tensor([0, 0, 1, 1])
    query = torch.stack([img0, img1])
    pooled = heads.build("prototype").classify(support.mean(1), labels, query.mean(1), 2)
    assert torch.allclose(pooled[:, 0], pooled[:, 1])  # the means tie
    scores = dn4_scores(support, labels, query, 2)
    assert scores.argmax(-1).tolist() == [0, 1]
    # query descriptor e1 against class 0's pool {e1, e2, e1, e2}: top-3 cosines 1 + 1 + 0; twice (e1 and e2)
    assert scores[0, 0].item() == pytest.approx(4.0)
    assert scores[0, 1].item() == pytest.approx(2 * 3 * 0.5 / math.sqrt(1.5), abs=1e-6)


def test_dn4_refuses_what_it_cannot_read():
    """dn4 on pooled (N, D) features, or with k above the smallest class's support descriptors, is one PefsError."""
    with pytest.raises(PefsError, match=r"^dn4 needs local descriptors \(N, P, D\).*got support \(2, 4\)"):
        dn4_scores(torch.ones(2, 4), torch.tensor([0, 1]), torch.ones(3, 4), 2)
    with pytest.raises(PefsError, match=r"^dn4 takes k between 1 and .* \(2\), got k=3$"):
        dn4_scores(torch.ones(2, 2, 4), torch.tensor([0, 1]), torch.ones(3, 2, 4), 2, k=3)


def test_dn4_on_a_model_without_patch_tokens_is_refused_before_running(tmp_path, image_folder):
    """A run with --head dn4 on a model whose unpooled tokens pefs cannot read stops in one line, before any task."""
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    cfg = TuneConfig(data=str(image_folder), head="dn4", img_size=32, output=str(tmp_path / "runs"))
    cfg.model = body  # type: ignore[assignment]
    with pytest.raises(PefsError, match="cannot read its unpooled tokens"):
        TaskRunner(cfg, 3)


@pytest.mark.parametrize("name", ["matching", "bd-cspn", "tim"])
def test_pooled_heads_refuse_patch_tokens(name):
    """A pooled head given (N, P, D) tokens says it needs pooled features, naming both shapes."""
    with pytest.raises(PefsError, match=rf"^the {name} head needs pooled features \(N, D\) of one width; got "
                                        r"support \(2, 3, 4\), query \(1, 4\)$"):
        heads.build(name).classify(torch.ones(2, 3, 4), torch.tensor([0, 1]), torch.ones(1, 4), 2)


def test_bd_cspn_rectified_prototype_is_the_published_weighted_sum():
    """With the query set's mean equal to the support's (no cross-set shift), class 0's rectified prototype is
    (e^(eps cos 0) s_0 + 8 e^(eps cos 35) q) / (e^eps + 8 e^(eps cos 35)) for 8 pseudo-labelled queries q at
    35 degrees: pulled from the support's 0 degrees toward the queries."""
    a = at(35)
    b = torch.ones(2) - a  # class-1 queries, placed so the query mean is the support mean (0.5, 0.5)
    protos, shifted = rectified_prototypes(SUPPORT, LABELS, torch.stack([a] * 8 + [b] * 8), 2)
    assert torch.allclose(shifted[:8], a.expand(8, 2), atol=1e-6)  # no shift
    w0, wq = math.exp(BD_CSPN_EPSILON), 8 * math.exp(BD_CSPN_EPSILON * math.cos(math.radians(35)))
    assert torch.allclose(protos[0], (w0 * SUPPORT[0] + wq * a) / (w0 + wq), atol=1e-5)
    assert 10 < math.degrees(math.atan2(protos[0, 1], protos[0, 0])) < 35


def test_bd_cspn_cross_set_shift_undoes_a_translated_query_set():
    """Queries translated by a constant vector (a domain shift) fool the prototype head; BD-CSPN's shift
    (support mean - query mean) moves them back, so every query gets its class."""
    e = torch.eye(3)
    clean = torch.stack([e[0] + 0.1 * e[1], e[0] - 0.1 * e[1], e[1] + 0.1 * e[0], e[1] - 0.1 * e[0]])
    yq = torch.tensor([0, 0, 1, 1])  # per class, the clean queries' mean is the class's support
    query = clean + torch.tensor([-0.9, 0.9, 0.0])
    assert heads.build("prototype").classify(e[:2], LABELS, query, 2).argmax(-1).tolist() == [1, 1, 1, 1]
    assert torch.equal(heads.build("bd-cspn").classify(e[:2], LABELS, query, 2).argmax(-1), yq)


@pytest.mark.parametrize("name", ["bd-cspn", "tim"])
def test_transduction_flips_the_borderline_query_to_the_query_cluster_it_sits_in(name):
    """The 50-degree query is nearer the class-1 support, so the inductive heads say 1; it sits 6 degrees from the
    class-0 queries and 32 from the class-1 ones, and the transductive heads, which read those queries, say 0;
    every other query keeps its class."""
    truth = [0] * 8 + [1] * 8
    for inductive in ("prototype", "matching"):
        assert heads.build(inductive).classify(SUPPORT, LABELS, QUERY, 2).argmax(-1).tolist() == truth + [1]
    assert heads.build(name).classify(SUPPORT, LABELS, QUERY, 2).argmax(-1).tolist() == truth + [0]


def test_tim_lowers_its_objective_from_the_prototypes():
    """TIM-GD starts at the support class means of the normalised features and its steps lower the published
    objective (lambda CE - (marginal entropy - alpha conditional entropy)); zero steps leave the class means."""
    s, q = F.normalize(SUPPORT, dim=-1), F.normalize(QUERY, dim=-1)
    start = tim_weights(s, LABELS, q, 2, steps=0)
    assert torch.equal(start, s)
    fitted = tim_weights(s, LABELS, q, 2, steps=200)
    assert tim_loss(s, LABELS, q, fitted) < tim_loss(s, LABELS, q, start) - 1e-3


def test_a_run_passes_every_query_to_a_transductive_head_at_once_and_records_it(tmp_path, image_folder,
                                                                                 monkeypatch):
    """A transductive head gets the task's whole query set in one call, whatever --eval-batch-size (so its scores
    do not depend on the batching), and the run's record says the query set was used transductively; an
    inductive head's record has no such key."""
    calls: list[int] = []
    original = BDCSPNHead.classify

    def spy(self, support, labels, query, n):
        calls.append(len(query))
        return original(self, support, labels, query, n)

    monkeypatch.setattr(BDCSPNHead, "classify", spy)
    base = dict(model="vit_tiny_patch16_224", pretrained=False, img_size=32, data=str(image_folder), ways=3, shots=1,
                queries=3, episodes=2, output=str(tmp_path / "runs"))
    recs = [tune(TuneConfig(head="bd-cspn", **base, train=TrainConfig(eval_batch_size=b, progress=False)))
            for b in (2, 64)]
    assert calls == [9, 9, 9, 9]  # 2 episodes x 2 runs, each 3 ways x 3 queries in one call
    assert recs[0]["accuracies"] == recs[1]["accuracies"]
    assert recs[0]["transductive"]["heads"] == ["bd-cspn"] and "unlabelled" in recs[0]["transductive"]["note"]
    assert "transductive" in recs[0]["params"]["note"]
    plain = tune(TuneConfig(head="prototype", **base, train=TrainConfig(progress=False)))
    assert "transductive" not in plain


def test_pefs_strategies_lists_every_head_and_marks_the_transductive_ones(capsys):
    """`pefs strategies` ends with every --head name, its summary and what it reads; only bd-cspn and tim are
    marked as reading the task's queries together."""
    from pefs.cli.main import main

    assert main(["strategies"]) == 0
    lines = capsys.readouterr().out.split("heads (--head):\n", 1)[1].splitlines()
    assert [ln.split()[0] for ln in lines] == list(heads.HEADS)
    marked = {ln.split()[0] for ln in lines if "transductive: reads the task's queries together" in ln}
    assert marked == {"bd-cspn", "tim"} and any(ln.startswith("dn4 ") and "[reads tokens]" in ln for ln in lines)


def test_a_searched_transductive_head_is_recorded_too():
    """A run that searches heads on validation data names every transductive head it may use in its record's
    ``transductive`` entry; a run with only inductive heads gets no entry."""
    from pefs.protocols.run import query_use

    searched = query_use(TuneConfig(search={"head": "prototype,tim,bd-cspn"}))
    assert searched["transductive"]["heads"] == ["bd-cspn", "tim"]
    assert query_use(TuneConfig(head="matching", search={"head": "dn4,prototype"})) == {}
    assert query_use(TuneConfig(head="tim"))["transductive"]["heads"] == ["tim"]
