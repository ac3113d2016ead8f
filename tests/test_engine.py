"""The engine: backbone split points, frozen-prefix caching (cached == uncached), repeatability, NaN errors."""

from __future__ import annotations

import math

import pytest
import torch

import pefs
from pefs.backbones.split import stages
from pefs.config import TrainConfig
from pefs.errors import PefsError
from pefs.runtime import engine, hardware
from pefs.runtime.engine import NonFiniteLoss
from pefs.strategies.last_k import final_norms
from tests.conftest import TINY_MODELS, batch, cfg, tiny


@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_stages_reproduce_the_model_at_every_cut(family):
    m = tiny(family).eval()
    st = stages(m.backbone)
    x, _ = batch(2)
    with torch.no_grad():
        logits, pooled = m(x), m.features(x)
        assert torch.allclose(st.run(x, 0, st.pooled), pooled, atol=1e-5)
        for i in range(st.n_blocks + 1):
            h = st.run(x, 0, st.block(i))
            assert torch.allclose(st.run(h, st.block(i), st.logits), logits, atol=1e-5), f"cut before block {i}"


@pytest.mark.parametrize("family, strategy", [("vit", "linear"), ("vit", "last-k"), ("efficientnet", "linear"),
                                              ("efficientnet", "last-k"), ("convnext", "last-k")])
def test_cached_and_uncached_training_agree(family, strategy):
    x, y = batch()
    results = []
    for cache in (True, False):
        m = tiny(family, strategy)
        before = engine.outputs(m, x, cfg())
        stats = engine.fit(m, x, y, cfg(cache_features=cache), seed=0)
        assert stats.cached is cache and stats.steps == 9
        results.append((engine.outputs(m, x, cfg()), before, stats.losses))
    (cached, before, loss_c), (uncached, _, loss_u) = results
    assert not torch.allclose(cached, before, atol=1e-4)  # training did change the model
    assert torch.allclose(cached, uncached, atol=1e-4)
    assert torch.equal(cached.argmax(-1), uncached.argmax(-1))
    assert loss_c == pytest.approx(loss_u, abs=1e-5)


def test_frozen_level_per_strategy():
    m = tiny("vit", "last-k", k=3)
    st = stages(m.backbone)
    assert engine.frozen_level(m, cfg()) == st.block(12 - 3)
    assert engine.frozen_level(tiny("vit"), cfg()) == st.pooled
    assert engine.frozen_level(tiny("vit"), cfg(), reads="tokens") == st.tokens
    assert engine.frozen_level(tiny("vit", "lora"), cfg()) == 0  # LoRA trains inside every block
    assert engine.frozen_level(m, cfg(cache_features=False)) == 0
    assert engine.frozen_level(tiny("resnet"), cfg(bn_stats="update")) == 0  # BN statistics would move


def test_last_k_trains_last_blocks_final_norm_and_head():
    m = tiny("vit", "last-k", k=2)
    trained = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks.") else "")
               for n, p in m.net.named_parameters() if p.requires_grad}
    assert trained == {"blocks.10", "blocks.11", "norm", "head"}
    assert final_norms(tiny("efficientnet", "last-k").backbone) == ["bn2"]
    assert set(tiny("resnet", "last-k", k=1).param_report()["breakdown"]) == {"layer4.1", "head"}


@pytest.mark.parametrize("k, message", [(0, "k=0 .* must be >= 1"), (13, r"k=13 .* must lie in 1..12")])
def test_last_k_bad_k(k, message):
    with pytest.raises(PefsError, match=message):
        tiny("vit", "last-k", k=k)


def test_fit_repeats_bit_for_bit_for_a_seed():
    x, y = batch()
    runs = []
    for _ in range(2):
        m = tiny("vit", "lora")
        stats = engine.fit(m, x, y, cfg(), seed=7)
        runs.append((stats.losses, {n: p.detach().clone() for n, p in m.trainable_state().items()}))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][n], runs[1][1][n]) for n in runs[0][1])


def test_cosine_schedule_and_head_learning_rate(monkeypatch):
    """Each optimizer step runs at lr * 0.5 * (1 + cos(pi * step / total)), the head at head_lr on the same
    curve; 3 epochs of 12 images in batches of 4 are 9 steps."""
    seen: list[dict[str, float]] = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        seen.append([g["lr"] for g in self.param_groups])  # [head group, strategy group]
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    m = tiny("vit", "last-k", k=1)
    stats = engine.fit(m, *batch(), cfg(lr=1e-3, head_lr=1e-2), seed=0)
    assert stats.final_loss == stats.losses[-1] and len(stats.losses) == 9 and len(seen) == 9
    for s, lrs in enumerate(seen):
        factor = 0.5 * (1 + math.cos(math.pi * s / 9))
        assert lrs == pytest.approx([1e-2 * factor, 1e-3 * factor])


@pytest.mark.parametrize("steps, images", [(7, 12), (2, 12), (5, 3)])
def test_steps_train_that_many_steps_whatever_the_support_size(monkeypatch, steps, images):
    """``steps`` fixes the optimizer steps (passes repeat, the last one cut short) and the cosine schedule runs
    over exactly those steps: 3 images (one batch per pass) still get 5 steps."""
    seen: list[float] = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    x, y = batch()
    stats = engine.fit(tiny("vit", "last-k", k=1), x[:images], y[:images], cfg(steps=steps), seed=0)
    assert stats.steps == steps == len(stats.losses) == len(seen)
    assert seen == pytest.approx([1e-2 * 0.5 * (1 + math.cos(math.pi * s / steps)) for s in range(steps)])


def test_steps_unset_is_epochs_exactly():
    """Without ``steps`` the run is the epochs' run, bit for bit (the steps loop changes nothing there)."""
    x, y = batch()
    a = engine.fit(tiny("vit", "lora"), x, y, cfg(), seed=3).losses
    b = engine.fit(tiny("vit", "lora"), x, y, cfg(steps=9), seed=3).losses  # 3 epochs x 3 batches = 9 steps
    assert len(a) == 9 and a == b


def test_non_finite_loss_names_the_step():
    x, y = batch()
    x[5] = float("nan")  # second batch of 4 after the seeded shuffle holds it, or a later one
    with pytest.raises(NonFiniteLoss, match=r"training loss became nan at step \d+ \(epoch 1\)"):
        engine.fit(tiny("vit", "last-k"), x, y, cfg(cache_features=False), seed=0)


def test_mixed_precision_switches_within_one_process():
    """Each fit computes its training steps in the precision it asks for, one after another in one process:
    the dtype the trained layer's matmul produced in every step is checked, not only that the loss is finite."""
    dtypes = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    for precision in ("no", "bf16", "fp16", "no"):
        m = tiny("vit", "last-k", k=1)
        seen = []
        m.net.blocks[11].mlp.fc1.register_forward_hook(
            lambda mod, i, out, _s=seen: _s.append(out.dtype) if torch.is_grad_enabled() else None)
        stats = engine.fit(m, *batch(), cfg(mixed_precision=precision, epochs=1, cache_features=False), seed=0)
        assert stats.steps == 3 and all(torch.isfinite(torch.tensor(stats.losses)))
        assert seen == [dtypes[precision]] * 3, precision


@pytest.mark.parametrize("kw, message", [({"epochs": 0}, "epochs must be >= 1"), ({"lr": 0}, "lr must be > 0"),
                                         ({"steps": 0}, r"steps must be a whole number >= 1 .*got 0"),
                                         ({"steps": 2.5}, r"steps must be a whole number >= 1 .*got 2.5"),
                                         ({"mixed_precision": "fp8"}, "mixed_precision must be one of")])
def test_bad_train_config(kw, message):
    with pytest.raises(PefsError, match=message):
        TrainConfig(**kw).validate()


def test_unknown_layout_caches_pooled_features_but_has_no_tokens():
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    m = pefs.wrap(body, "linear", num_classes=2, model_kwargs={"input_size": (3, 16, 16)})
    assert engine.frozen_level(m, cfg()) == stages(m.backbone).pooled == 1
    with pytest.raises(PefsError, match="cannot read its unpooled tokens"):
        engine.level_of(m, "tokens")


@pytest.mark.parametrize("spec, given, expected", [
    ("full", None, 1e-4),  # full fine-tuning's own default (chosen on validation: benchmarks/selection.md)
    ("last-k", None, 1e-3),  # every other strategy keeps 1e-3
    ("full", 1e-3, 1e-3),  # --lr given: honoured whatever the strategy
])
def test_strategy_group_trains_at_the_strategys_default_unless_lr_is_given(monkeypatch, spec, given, expected):
    seen: list[list[float]] = []
    real_init = torch.optim.AdamW.__init__

    def init(self, groups, *args, **kwargs):
        seen.append([g["lr"] for g in groups])
        return real_init(self, groups, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", init)
    m = tiny("vit", spec, **({"k": 1} if spec == "last-k" else {}))
    engine.fit(m, *batch(), cfg(lr=given, head_lr=1e-2, epochs=1), seed=0)
    assert seen == [[1e-2, expected]]  # [head group, strategy group]


def test_default_lr_of_a_composition_is_its_smallest_part():
    from pefs.strategies import default_lr

    assert default_lr("full") == 1e-4 and default_lr("lora") == 1e-3 and default_lr("lora+norm") == 1e-3
    assert default_lr("norm+full") == 1e-4
    with pytest.raises(PefsError, match="unknown strategy 'nope'"):
        default_lr("nope")


def test_decode_workers_are_sized_to_the_machine_unless_given(monkeypatch):
    """Workers decode beside a GPU (half the cores, at most 8) and not beside a CPU's own compute; a given
    --workers wins; decoded batches are pinned only for a GPU."""
    import os

    from pefs.config import TrainConfig

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(hardware, "default_device", lambda: cpu)
    assert hardware.decode_workers(TrainConfig()) == 0 and not hardware.pin_memory()
    assert hardware.decode_workers(TrainConfig(num_workers=3)) == 3
    monkeypatch.setattr(hardware, "default_device", lambda: gpu)
    assert hardware.decode_workers(TrainConfig()) == min(8, (os.cpu_count() or 2) // 2) and hardware.pin_memory()
    assert hardware.decode_workers(TrainConfig(num_workers=0)) == 0


def test_a_training_set_too_big_for_the_device_goes_over_batch_by_batch_with_the_same_result(monkeypatch):
    """A support set moves to the device once; a larger one (``--final`` on a big split) stays on the host and is
    copied per batch: the same batches, the same trained weights."""
    x, y = batch()
    weights = []
    for limit in (engine.SUPPORT_ON_DEVICE_BYTES, 0):
        monkeypatch.setattr(engine, "SUPPORT_ON_DEVICE_BYTES", limit)
        torch.manual_seed(0)
        m = tiny("resnet", "lora")
        stats = engine.fit(m, x, y, cfg(cache_features=False), seed=3)
        weights.append((stats.losses, {n: p.detach().cpu().clone() for n, p in m.trainable_state().items()}))
    assert weights[0][0] == weights[1][0]
    assert all(torch.equal(weights[0][1][n], weights[1][1][n]) for n in weights[0][1])
