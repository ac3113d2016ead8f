"""The training recipe's opt-in parts (pefs.runtime.recipe): label smoothing, warmup, mixup / cutmix, EMA and
layer-wise learning-rate decay, each checked for what it computes; off, each leaves training as it was."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pefs.config import TrainConfig, TuneConfig
from pefs.errors import PefsError
from pefs.protocols.selection.search import parse_search
from pefs.runtime import engine, recipe
from tests.conftest import batch, cfg, close, tiny


def spy_steps(monkeypatch, after=None) -> list[list[float]]:
    """The rate of every optimizer group at each AdamW step; ``after(optimizer)`` runs after each step."""
    seen: list[list[float]] = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        seen.append([g["lr"] for g in self.param_groups])
        out = real_step(self, *args, **kwargs)
        if after:
            after(self)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return seen


# -- label smoothing --------------------------------------------------------------------------------------------

def test_label_smoothing_loss_is_torchs_smoothed_cross_entropy():
    """One step over the whole batch (a linear probe on cached features): the recorded loss is torch's
    cross-entropy with ``label_smoothing=0.1`` of the model's logits before the step."""
    x, y = batch()
    losses = {}
    for smoothing in (0.0, 0.1):
        m = tiny("vit")
        logits = engine.outputs(m, x, cfg())
        stats = engine.fit(m, x, y, cfg(epochs=1, batch_size=12, label_smoothing=smoothing), seed=0)
        expected = torch.nn.functional.cross_entropy(logits, y, label_smoothing=smoothing)
        assert stats.losses[0] == pytest.approx(float(expected), abs=1e-5)
        losses[smoothing] = stats.losses[0]
    assert losses[0.1] != pytest.approx(losses[0.0], abs=1e-4)


# -- warmup -----------------------------------------------------------------------------------------------------

def test_warmup_ramps_every_group_linearly_then_the_cosine_runs_over_the_rest(monkeypatch):
    seen = spy_steps(monkeypatch)
    engine.fit(tiny("vit", "last-k", k=1), *batch(), cfg(lr=1e-3, head_lr=1e-2, warmup_steps=3), seed=0)
    assert len(seen) == 9
    for s, lrs in enumerate(seen):
        factor = (s + 1) / 4 if s < 3 else 0.5 * (1 + math.cos(math.pi * (s - 3) / 6))
        assert lrs == pytest.approx([1e-2 * factor, 1e-3 * factor])
    ramp = [lrs[1] for lrs in seen[:4]]
    assert ramp == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # linear, up to the full rate at step 3


def test_warmup_zero_is_todays_schedule_exactly():
    f = recipe.lr_factor(9, 0)
    assert [f(s) for s in range(10)] == [0.5 * (1 + math.cos(math.pi * min(s, 9) / 9)) for s in range(10)]


def test_warmup_must_leave_cosine_steps():
    with pytest.raises(PefsError, match=r"warmup_steps=9 leaves no cosine decay: this fit takes 9 optimizer steps"):
        engine.fit(tiny("vit"), *batch(), cfg(warmup_steps=9), seed=0)


# -- mixup / cutmix ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{"mixup": 0.8}, {"cutmix": 1.0}, {"mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1}])
def test_a_mixed_batch_has_mixture_targets_and_changed_images(kw):
    np.random.seed(0)  # timm's Mixup draws from NumPy's generator (fit seeds it)
    x, _ = batch(8)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])  # timm blends image i with image 7 - i: here always another class
    original = x.clone()
    mixed, target = recipe.Mixing(TrainConfig(**kw), num_classes=3)(x, y)
    assert torch.equal(x, original)  # the support set is left alone
    assert target.shape == (8, 3) and torch.allclose(target.sum(1), torch.ones(8))
    assert (target.max(1).values < 1).all()  # every row a mixture, none one-hot
    assert not torch.allclose(mixed, original)


def test_fit_trains_on_mixed_batches_with_soft_targets(monkeypatch):
    targets = []
    real_loss = recipe.loss

    def loss(logits, target, c):
        targets.append(target)
        return real_loss(logits, target, c)

    monkeypatch.setattr(recipe, "loss", loss)
    x, y = batch()
    mixed = engine.fit(tiny("vit", "lora"), x, y, cfg(mixup=0.4, batch_size=4), seed=0)
    assert mixed.steps == 9 and all(t.is_floating_point() and t.shape == (4, 3) for t in targets)
    plain = engine.fit(tiny("vit", "lora"), x, y, cfg(batch_size=4), seed=0)
    assert mixed.losses != pytest.approx(plain.losses, abs=1e-4)


def test_mixing_refuses_cached_features_and_odd_batches():
    x, y = batch()
    with pytest.raises(PefsError, match=r"trains on cached activations .*add --no-cache-features"):
        engine.fit(tiny("vit"), x, y, cfg(mixup=0.2), seed=0)  # a linear probe caches pooled features
    assert engine.fit(tiny("vit"), x, y, cfg(mixup=0.2, cache_features=False, epochs=1), seed=0).steps == 3
    with pytest.raises(PefsError, match=r"12 training images in batches of 5 make a batch of 5"):
        engine.fit(tiny("vit", "lora"), x, y, cfg(cutmix=1.0, batch_size=5), seed=0)
    with pytest.raises(PefsError, match=r"batches of 4 make a batch of 1"):
        engine.fit(tiny("vit", "lora"), x[:9], y[:9], cfg(cutmix=1.0, batch_size=4), seed=0)


@pytest.mark.parametrize("given", [{"train": TrainConfig(progress=False, mixup=0.2)}, {"search": {"cutmix": "0,1"}}])
def test_task_runner_refuses_mixing_a_linear_probe_before_any_image_decodes(given):
    from pefs.runtime.task import TaskRunner

    c = TuneConfig(model="vit_tiny_patch16_224", pretrained=False, img_size=32, head="linear", **given)
    with pytest.raises(PefsError, match=r"strategy 'linear' with head 'linear' trains on cached activations"):
        TaskRunner(c, 3)


# -- EMA --------------------------------------------------------------------------------------------------------

def test_ema_weights_replace_the_trained_ones(monkeypatch):
    """The weights after a fit with ``ema=0.5`` are the average of the weights after each step (the first step's
    copied, then e <- 0.5 e + 0.5 w), which differ from the last step's (a fit without EMA)."""
    x, y = batch()
    snapshots: list[list[torch.Tensor]] = []
    m = tiny("vit", "lora")
    trainable = [p for p in m.parameters() if p.requires_grad]
    spy_steps(monkeypatch, after=lambda opt: snapshots.append([p.detach().clone() for p in trainable]))
    engine.fit(m, x, y, cfg(ema=0.5), seed=0)
    steps = list(snapshots)
    average = steps[0]
    for step in steps[1:]:
        average = [e + 0.5 * (w - e) for e, w in zip(average, step)]
    assert len(steps) == 9
    assert all(torch.allclose(p.detach().cpu(), e.cpu(), atol=1e-6) for p, e in zip(trainable, average))
    plain = tiny("vit", "lora")
    engine.fit(plain, x, y, cfg(), seed=0)
    last = [p for p in plain.parameters() if p.requires_grad]
    assert all(close(a, b) for a, b in zip(last, steps[-1]))  # the same training, without the average
    assert not all(torch.allclose(a.detach().cpu(), b.detach().cpu(), atol=1e-6) for a, b in zip(last, trainable))


# -- layer-wise learning-rate decay -----------------------------------------------------------------------------

def test_layer_decay_rates_are_the_published_formula_on_a_tiny_vit(monkeypatch):
    """Block i of n at lr x D^(n-i), what precedes the first block at lr x D^(n+1), the final norm at lr, the head
    at head_lr (BEiT's layer-wise decay, as timm's param_groups_layer_decay numbers it)."""
    seen: list[list[dict]] = []
    real_init = torch.optim.AdamW.__init__

    def init(self, groups, *args, **kwargs):
        seen.append([dict(g) for g in groups])  # the rates given, before the schedule moves them
        return real_init(self, groups, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", init)
    m = tiny("vit", "full")
    engine.fit(m, *batch(), cfg(lr=1e-3, head_lr=1e-2, layer_decay=0.5, epochs=1), seed=0)
    rate = {id(p): g["lr"] for g in seen[0] for p in g["params"]}
    bb, n, d = m.backbone, 12, 0.5
    assert len(bb.block_names) == n
    first_block = next(i for i, (name, _) in enumerate(m.net.named_parameters()) if name.startswith(bb.block_names[0]))
    for j, (name, p) in enumerate(m.net.named_parameters()):
        block = next((i for i, b in enumerate(bb.block_names) if name.startswith(b + ".")), None)
        if name.startswith(bb.head_name + "."):
            expected = 1e-2
        elif block is not None:
            expected = 1e-3 * d ** (n - block)
        else:
            expected = 1e-3 * d ** (n + 1) if j < first_block else 1e-3
        assert rate[id(p)] == pytest.approx(expected), name
    assert sorted({round(r, 15) for r in rate.values()}) == sorted(
        {round(1e-3 * d ** k, 15) for k in range(n + 2)} | {1e-2})


def test_layer_decay_between_blocks_follows_the_block_before():
    """A CNN's downsampling between stages (registered between two blocks) trains with the block before it."""
    m = tiny("convnext", "full")
    groups = recipe.param_groups(m, TrainConfig(layer_decay=0.5), 1.0)
    by_id = {id(p): g["lr"] for g in groups for p in g["params"]}
    blocks, n = m.backbone.block_names, len(m.backbone.block_names)
    block_of = [next((i for i, b in enumerate(blocks) if name.startswith(b + ".")), None)
                for name, _ in m.net.named_parameters()]
    between = 0
    for j, (name, p) in enumerate(m.net.named_parameters()):
        before = [i for i in block_of[:j] if i is not None]
        if block_of[j] is None and before and any(i is not None for i in block_of[j:]):
            assert by_id[id(p)] == 0.5 ** (n - before[-1]), name
            between += 1
    assert between == 12  # three downsamplings: a norm and a conv, weight and bias each


def test_layer_decay_unset_keeps_two_groups(monkeypatch):
    groups = recipe.param_groups(tiny("vit", "full"), TrainConfig(), 1e-3)
    assert [g["lr"] for g in groups] == [1e-2, 1e-3]


# -- the settings ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({"label_smoothing": 1.0}, r"label_smoothing must lie in \[0, 1\), got 1.0"),
    ({"warmup_steps": -1}, r"warmup_steps must be a whole number >= 0, got -1"),
    ({"mixup": -0.1}, r"mixup must be an alpha >= 0 and finite \(0: off\), got -0.1"),
    ({"cutmix": float("inf")}, r"cutmix must be an alpha >= 0"),
    ({"ema": 1.0}, r"ema must be a decay in \[0, 1\)"),
    ({"layer_decay": 0.0}, r"layer_decay must lie in \(0, 1\]"),
    ({"layer_decay": 1.5}, r"layer_decay must lie in \(0, 1\].*got 1.5"),
])
def test_recipe_values_out_of_range_are_refused(kw, message):
    with pytest.raises(PefsError, match=message):
        TrainConfig(**kw).validate()


def test_recipe_settings_are_searchable_and_hash_only_when_set():
    space = parse_search(["label_smoothing=0,0.1", "layer_decay=0.65,0.75", "warmup_steps=0,5", "ema=0,0.99",
                          "mixup=0,0.2", "cutmix=0,1"], strategy="lora")
    assert space.settings()[-1] == {"label_smoothing": 0.1, "layer_decay": 0.75, "warmup_steps": 5, "ema": 0.99,
                                    "mixup": 0.2, "cutmix": 1.0}
    assert TuneConfig(train=TrainConfig(label_smoothing=0.0, layer_decay=None)).hash() == TuneConfig().hash()
    assert TuneConfig(train=TrainConfig(label_smoothing=0.1)).hash() != TuneConfig().hash()
