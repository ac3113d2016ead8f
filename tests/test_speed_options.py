"""The speed options of issue 6: bf16 no-grad passes where the hardware has it, merged evaluation of peft
tuners (exactly undone), gradient checkpointing (same training, refused where the model cannot)."""

from __future__ import annotations

import pytest
import torch

from pefs.config import TrainConfig
from pefs.errors import PefsError
from pefs.runtime import engine, hardware
from tests.conftest import batch, cfg, same, tiny

CPU = torch.device("cpu")


@pytest.mark.parametrize("native, setting, mixed, expected", [
    (True, "auto", "no", "bf16"), (False, "auto", "no", "no"), (False, "auto", "bf16", "bf16"),
    (True, "no", "no", "no"), (False, "bf16", "no", "bf16"), (True, "fp16", "bf16", "fp16")])
def test_inference_precision_resolves_by_hardware(monkeypatch, native, setting, mixed, expected):
    monkeypatch.setattr(hardware, "native_bf16", lambda device_type: native)
    c = TrainConfig(inference_precision=setting, mixed_precision=mixed)
    assert hardware.inference_precision(c, CPU) == expected


def test_native_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open
    for flags, expected in (("fpu avx512f avx512_bf16 sse", True), ("fpu amx_bf16", True), ("fpu avx2 sse", False)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda p, *a, _i=info, **k: real_open(_i if p == "/proc/cpuinfo" else p,
                                                                                   *a, **k))
        hardware.native_bf16.cache_clear()
        try:
            assert hardware.native_bf16("cpu") is expected, flags
        finally:
            monkeypatch.setattr(builtins, "open", real_open)
            hardware.native_bf16.cache_clear()
    assert hardware.native_bf16("mps") is False


def test_bf16_inference_is_bf16_and_close_to_fp32():
    m = tiny("efficientnet")
    x, _ = batch(8)
    fp32 = engine.outputs(m, x, cfg(inference_precision="no"), stop="pooled")
    bf16 = engine.outputs(m, x, cfg(inference_precision="bf16"), stop="pooled")
    assert fp32.dtype == bf16.dtype == torch.float32  # callers always get float32 back
    assert not torch.equal(fp32, bf16)  # it really ran in bf16
    assert torch.nn.functional.cosine_similarity(fp32, bf16).min() > 0.99


def test_bad_inference_precision_lists_the_choices():
    with pytest.raises(PefsError, match="inference_precision must be one of auto, no, bf16, fp16; got 'fp8'"):
        TrainConfig(inference_precision="fp8").validate()


@pytest.mark.parametrize("family, strategy", [("efficientnet", "lora"), ("vit", "lora"),
                                              ("efficientnet", "peft:ia3"), ("vit", "lora+adapter")])
def test_merged_view_gives_the_same_outputs_and_restores_weights_exactly(family, strategy):
    m = tiny(family, strategy)
    x, y = batch()
    engine.fit(m, x, y, cfg(inference_precision="no", lr=1e-2), seed=0)  # non-zero updates to merge
    state = {k: v.clone() for k, v in m.state_dict().items()}
    c = cfg(inference_precision="no")
    unmerged = engine.outputs(m, x, c)
    tuner = [mod for mod in m.modules() if hasattr(mod, "merged_adapters")]
    assert tuner, "the strategy should have injected peft layers"
    with m.merged_view():
        assert all(mod.merged for mod in tuner)
        merged = engine.outputs(m, x, c)
    assert not any(mod.merged for mod in tuner)
    assert torch.allclose(merged, unmerged, atol=1e-4)
    after = m.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items()), "base weights must come back bit for bit"
    assert torch.equal(engine.outputs(m, x, c), unmerged)


def test_merged_view_leaves_a_merged_model_and_non_peft_strategies_alone():
    m = tiny("efficientnet", "adapter")
    x, _ = batch(4)
    before = engine.outputs(m, x, cfg(inference_precision="no"))
    with m.merged_view():
        assert torch.equal(engine.outputs(m, x, cfg(inference_precision="no")), before)
    lora = tiny("efficientnet", "lora").merge()
    weights = {k: v.clone() for k, v in lora.state_dict().items()}
    merged = engine.outputs(lora, x, cfg(inference_precision="no"))
    with lora.merged_view():  # already folded for good: nothing left to merge, nothing to undo afterwards
        assert torch.equal(engine.outputs(lora, x, cfg(inference_precision="no")), merged)
    assert all(same(v, weights[k]) for k, v in lora.state_dict().items())


def test_fewshot_evaluation_merges_peft_tuners(monkeypatch):
    """TaskRunner evaluates inside merged_view by default, and not with merge_for_eval=False."""
    import numpy as np

    from pefs.config import TuneConfig
    from pefs.data import from_arrays
    from pefs.runtime.task import TaskRunner

    rng = np.random.default_rng(0)
    ds = from_arrays(rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8), [i % 3 for i in range(12)])
    support, query = ds.subset(range(6)), ds.subset(range(6, 12))
    seen = []
    for merge in (True, False):
        c = TuneConfig(model="efficientnet_lite0", strategy="lora", pretrained=False, img_size=32,
                       train=TrainConfig(epochs=1, progress=False, merge_for_eval=merge, inference_precision="no"))
        runner = TaskRunner(c, 3)
        calls = []
        real = type(runner.model).merged_view
        monkeypatch.setattr(type(runner.model), "merged_view",
                            lambda self, _c=calls, _r=real: (_c.append(1), _r(self))[1])
        seen.append((runner.run(support, query, seed=0).accuracy, len(calls)))
        monkeypatch.undo()
    (acc_merged, n_merged), (acc_plain, n_plain) = seen
    assert (n_merged, n_plain) == (1, 0)
    assert acc_merged == pytest.approx(acc_plain, abs=1e-9)


@pytest.mark.parametrize("family, strategy", [("efficientnet", "lora"), ("vit", "lora"), ("vit", "vpt"),
                                              ("vit", "self-prompt"), ("efficientnet", "adapter")])
def test_grad_checkpointing_trains_the_same_and_switches_off_after(family, strategy):
    x, y = batch()
    runs = []
    for ckpt in (False, True):
        m = tiny(family, strategy)
        stats = engine.fit(m, x, y, cfg(grad_checkpointing=ckpt, inference_precision="no"), seed=0)
        runs.append((stats.losses, engine.outputs(m, x, cfg(inference_precision="no"))))
        assert m.net.grad_checkpointing is False and not getattr(m.net.blocks, "use_checkpoint", False)
    (loss_a, out_a), (loss_b, out_b) = runs
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    assert torch.allclose(out_a, out_b, atol=1e-4)


@pytest.mark.parametrize("strategy", ["lora", "vpt"])
def test_grad_checkpointing_keeps_fewer_activations(strategy):
    m = tiny("vit", strategy, classes=3)
    x, y = batch()
    sizes = []
    for ckpt in (False, True):
        saved = []
        with engine.grad_checkpointing(m, ckpt), torch.autograd.graph.saved_tensors_hooks(
                lambda t, _s=saved: (_s.append(t.numel()), t)[1], lambda t: t):
            torch.nn.functional.cross_entropy(m(x), y)
        sizes.append(sum(saved))
    assert sizes[1] < sizes[0] / 2


def test_grad_checkpointing_refused_for_a_model_without_it():
    from pefs.config import TuneConfig
    from pefs.runtime.task import TaskRunner

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 4))
    c = TuneConfig(model=net, strategy="lora", pretrained=False,  # type: ignore[arg-type]
                   train=TrainConfig(grad_checkpointing=True, progress=False))
    with pytest.raises(PefsError, match="grad_checkpointing needs a timm model with set_grad_checkpointing"):
        TaskRunner(c, 3)


def test_config_hash_ignores_checkpointing_but_not_precision():
    """A sweep resumes across --grad-checkpointing (same numbers); another inference precision is another result."""
    from pefs.config import TuneConfig

    base = TuneConfig(train=TrainConfig()).hash()
    assert TuneConfig(train=TrainConfig(grad_checkpointing=True, eval_batch_size=64)).hash() == base
    assert TuneConfig(train=TrainConfig(inference_precision="no")).hash() != base
    assert TuneConfig(train=TrainConfig(merge_for_eval=False)).hash() != base
