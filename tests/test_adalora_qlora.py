"""AdaLoRA (``adalora``: counts by formula, the rank budget reallocated while training through the strategy
contract's fit and step hooks, saved and loaded, the battery) and QLoRA (``lora -o quantize=``: refused without
a CUDA GPU before any model is built)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pefs.cli.main import main
from pefs.config import TrainConfig
from pefs.errors import PefsError
from pefs.model.wrap import PefsModel, wrap
from pefs.runtime import engine
from pefs.strategies import build
from tests.conftest import batch
from tests.strategy_battery import FAMILIES, check_strategy, modules_in_blocks, one_thread, tiny_backbone, under


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def adapted(original) -> list[str]:
    """lora's default targets, worked out from the model: a ViT's qkv; a CNN's Linear and non-grouped Conv2d
    layers in its blocks."""
    if original.kind == "transformer":
        return [n for n in modules_in_blocks(original, (nn.Linear,)) if n.endswith(".qkv")]
    mods = dict(original.model.named_modules())
    return [n for n in modules_in_blocks(original, (nn.Linear, nn.Conv2d))
            if not isinstance(mods[n], nn.Conv2d) or mods[n].groups == 1]


@pytest.mark.parametrize("family", FAMILIES)
def test_adalora_battery(family, tmp_path):
    """adalora trains exactly lora_A / lora_B / lora_E under each default target, starts as the backbone, saves,
    loads and merges back to the original module tree."""
    model = check_strategy("adalora", family, lambda m, o: under(m, adapted(o), "lora_"), tmp_path)
    assert model.merged


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_adalora_counts_at_init_by_formula(family):
    """At init each adapted layer trains init_r x (in + out + 1): A (r x in·kh·kw), B (out x r), E (r x 1)."""
    original = tiny_backbone(family)
    mods = dict(original.model.named_modules())

    def per_layer(m: nn.Module, r: int) -> int:
        if isinstance(m, nn.Linear):
            return r * (m.in_features + m.out_features + 1)
        return r * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels + 1)

    counts = {}
    for r in (12, 4):
        model = wrap(copy.deepcopy(original), "adalora", num_classes=3, init_r=r, target_r=min(r, 8))
        counts[r] = sum(p.numel() for n, p in model.net.named_parameters() if p.requires_grad and ".lora_" in n)
        assert counts[r] == sum(per_layer(mods[n], r) for n in adapted(original))
    if family == "vit":  # 12 blocks, qkv 192 -> 576
        assert counts[12] == 12 * 12 * (192 + 576 + 1) == 110_736


def test_adalora_prunes_to_its_budget_each_fit_and_reloads(tmp_path):
    """A fit ends with exactly target_r x layers singular values left (the engine gave the schedule its steps and
    stepped it); a second fit starts a fresh budget; the pruned model saves and reloads to the same outputs."""
    original = tiny_backbone("vit")
    model = wrap(copy.deepcopy(original), "adalora", num_classes=3, init_r=6, target_r=2)
    strategy, x, y = model.strategies[0], *batch(12)
    layers = len(adapted(original))
    for _ in range(2):
        stats = engine.fit(model, x, y, TrainConfig(steps=8, batch_size=4, progress=False), seed=0)
        ranks = strategy.ranks(model.backbone)
        assert stats.steps == 8 and len(ranks) == layers
        assert sum(ranks.values()) == 2 * layers and max(ranks.values()) <= 6
    model.save(tmp_path / "m")
    loaded = PefsModel.load(tmp_path / "m", backbone=copy.deepcopy(original)).eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.strategies[0].ranks(loaded.backbone) == strategy.ranks(model.backbone)


def test_adalora_penalty_is_peft_orthogonality_term():
    """The loss term is orth_reg x the mean of ||A A^T - I||_F and ||B^T B - I||_F over the adapted layers."""
    model = wrap(tiny_backbone("vit"), "adalora", num_classes=3, init_r=4, target_r=2, orth_reg=0.25)
    terms = []
    for n, p in model.net.named_parameters():
        if ".lora_A." in n:
            terms.append(torch.linalg.matrix_norm(p @ p.T - torch.eye(4)))
        elif ".lora_B." in n:
            terms.append(torch.linalg.matrix_norm(p.T @ p - torch.eye(4)))
    got = model.strategies[0].regularizer(model.backbone)
    assert len(terms) == 24 and torch.allclose(got, 0.25 * torch.stack(terms).mean())
    none = wrap(tiny_backbone("vit"), "adalora", num_classes=3, orth_reg=0)
    assert none.strategies[0].regularizer(none.backbone) is None


@pytest.mark.parametrize("options, message", [
    ({"init_r": 4, "target_r": 8}, "options init_r=4, target_r=8 of strategy 'adalora' must satisfy 1 <= target_r"),
    ({"delta_t": 0}, "delta_t=0 >= 1"),
    ({"orth_reg": -1}, "option orth_reg=-1.0 of strategy 'adalora' must be >= 0"),
])
def test_adalora_bad_options_refused(options, message):
    """Out-of-range AdaLoRA options are refused by name when the strategy is built."""
    with pytest.raises(PefsError, match=message):
        build("adalora", **options)


def test_adalora_schedule_longer_than_the_fit_is_refused_before_a_step():
    """tinit + tfinal that leave no step to reallocate in a fit are refused before it trains (weights unchanged)."""
    model = wrap(tiny_backbone("vit"), "adalora", num_classes=3, tinit=3, tfinal=2)
    before = {n: p.detach().clone() for n, p in model.net.named_parameters()}
    with pytest.raises(PefsError, match=r"adalora's tinit=3 and tfinal=2 leave no step .* this fit's 5 optimizer"):
        engine.fit(model, *batch(8), TrainConfig(steps=5, batch_size=4, progress=False))
    assert all(torch.equal(p, before[n]) for n, p in model.net.named_parameters())


def test_peft_adalora_points_to_the_strategy():
    """peft:adalora is refused, naming the adalora strategy."""
    with pytest.raises(PefsError, match="AdaLoRA the 'adalora' strategy"):
        build("peft:adalora")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a CUDA GPU")
def test_qlora_refused_without_cuda_before_anything_is_built(tmp_path, capsys, monkeypatch):
    """lora -o quantize=4bit|8bit on a machine without CUDA is one line naming the option and the way out, from
    wrap before any weight loads and from pefs tune before any record is written."""
    from pefs import backbones

    monkeypatch.setattr(backbones, "load", lambda *a, **k: pytest.fail("weights loaded before the refusal"))
    for q in ("4bit", "8bit"):
        with pytest.raises(PefsError, match=f"option quantize={q} of strategy 'lora' holds the base weights in "
                           ".* through bitsandbytes, which runs on a CUDA GPU only; this machine has none"):
            wrap("vit_tiny_patch16_224", "lora", num_classes=3, quantize=q)
    out = tmp_path / "out"
    assert main(["tune", "--strategy", "lora", "-o", "quantize=4bit", "-q", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "drop -o quantize=4bit" in err[0]
    assert not list(out.glob("*.json"))
    with pytest.raises(PefsError, match=r"option quantize='2bit' of strategy 'lora' must be 'none' or '4bit'"):
        build("lora", quantize="2bit")


def test_strategies_lists_adalora_and_quantize(capsys):
    """pefs strategies lists adalora with its options and lora's quantize option."""
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert "adalora" in out and "init_r=12" in out and "target_r=8" in out and "quantize='none'" in out
