"""The strategy contract's smaller promises, each checked directly: option types and ranges, target patterns,
which strategies merge, keep the trunk frozen or start as the backbone, what last-k trains, and the wording of
the refusals (several written for mutants that survived, tests/MUTATION.md)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pefs.errors import PefsError
from pefs.model.wrap import wrap
from pefs.strategies import build
from pefs.strategies.last_k import final_norms
from tests.strategy_battery import tiny_backbone
from tests.test_strategies import user_backbone


def test_option_strings_cast_to_the_declared_types():
    """CLI option strings become the option's declared type: a comma list a tuple (empty items dropped), a Literal
    the value itself, a bool from true/false/1/0/yes/no, None from "none" for an Optional; a bad one is refused
    naming the option, the value and what it must be."""
    from typing import Literal

    from pefs.strategies.base import cast_option

    assert cast_option("s", "targets", "qkv,,proj,", tuple[str, ...]) == ("qkv", "proj")
    assert cast_option("s", "blocks", "0,-1", tuple[int, ...]) == (0, -1)
    assert cast_option("s", "mode", "deep", Literal["shallow", "deep"]) == "deep"
    assert [cast_option("s", "attn", v, bool) for v in ("true", "No", "1", "0")] == [True, False, True, False]
    assert cast_option("s", "r", "none", int | None) is None and cast_option("s", "r", "4", int | None) == 4
    with pytest.raises(PefsError, match=r"^option mode='wide' of strategy 's' must be 'shallow' or 'deep'$"):
        cast_option("s", "mode", "wide", Literal["shallow", "deep"])
    with pytest.raises(PefsError, match=r"^option attn='maybe' of strategy 's' must be bool$"):
        cast_option("s", "attn", "maybe", bool)


def test_match_targets_keeps_order_and_honours_exclusions():
    """``--targets`` patterns match a name exactly, as a dotted suffix or by ``re:``; a ``!pattern`` drops what it
    matches; names keep the model's order."""
    from pefs.strategies.common import match_targets

    names = ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv", "head", "xqkv"]
    assert match_targets(names, ["qkv"]) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert match_targets(names, ["qkv", "!blocks.1.attn.qkv"]) == ["blocks.0.attn.qkv"]
    assert match_targets(names, [r"re:blocks\.\d\.attn\.proj", "head"]) == ["blocks.0.attn.proj", "head"]
    assert match_targets(names, ["!head"]) == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv", "xqkv"]


def test_lora_targets_that_match_nothing_list_twenty_module_names():
    """LoRA targets that match no layer are refused naming them and the first twenty layer names to choose from."""

    class Many(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.ModuleDict({f"l{i:02d}": nn.Linear(3, 3) for i in range(25)})
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.body["l00"](x.mean((2, 3))))

    listed = ", ".join(f"l{i:02d}" for i in range(20))
    with pytest.raises(PefsError, match=rf"^LoRA targets nope match no Linear/Conv2d in the blocks of Many; module "
                                        rf"names there: {listed}$"):
        wrap(Many(), "lora", num_classes=2, targets="nope", model_kwargs={"input_size": (3, 8, 8)})


def test_applicable_options_and_the_default_rate_of_a_composition():
    """Sweep-wide options keep what a spec's parts take (``part.key`` for a named part, a bare key some part takes)
    and drop the rest without an error; a composition's default learning rate is the smallest of its parts'."""
    from pefs.strategies.spec import applicable, default_lr

    given = {"lora.r": 4, "types": "layer", "bogus": 1, "ssf.targets": "x", "r": 8}
    assert applicable("lora+norm", given) == {"lora.r": 4, "types": "layer", "r": 8}
    assert (default_lr("lora+norm"), default_lr("full"), default_lr("bias+full")) == (1e-3, 1e-4, 1e-4)


def test_a_peft_refusal_names_the_layer_count_and_an_example():
    """When peft refuses an injection the message names the strategy, the model, how many layers and the first."""
    from types import SimpleNamespace

    lora = build("lora")[0]
    assert lora.describe_refusal(SimpleNamespace(name="m"), ["blocks.0.attn.qkv"], "no") == \
        "peft refused lora on m (1 layers, e.g. blocks.0.attn.qkv): no"


def test_only_a_linear_probe_leaves_the_whole_trunk_frozen():
    """A linear probe is the one strategy whose trunk stays frozen, so its features are computed once and a
    prototype head on it fits nothing; any strategy that trains inside the trunk is not."""
    from pefs.heads.registry import build as head

    frozen = {spec: wrap(tiny_backbone("vit"), spec, num_classes=3).frozen_prefix
              for spec in ("linear", "lora", "bias")}
    assert frozen == {"linear": True, "lora": False, "bias": False}
    assert not head("prototype").trains(frozen["linear"]) and head("prototype").trains(frozen["lora"])


@pytest.mark.parametrize("options, message", [
    ({"r": "0"}, r"^option r=0 of strategy 'lora' must be >= 1$"),
    ({"dropout": "1.0"}, r"^option dropout=1.0 of strategy 'lora' must lie in \[0, 1\)$"),
    ({"dropout": "-0.1"}, r"^option dropout=-0.1 of strategy 'lora' must lie in \[0, 1\)$"),
])
def test_lora_options_out_of_range_are_refused(options, message):
    """LoRA's rank must be >= 1 and its dropout in [0, 1): anything else is one PefsError naming option and range."""
    with pytest.raises(PefsError, match=message):
        build("lora", **options)
    assert build("lora", r="1", dropout="0.0")[0].config.r == 1


def test_merge_folds_what_can_fold_and_the_refusal_lists_the_mergeable_strategies():
    """Strategies that train the backbone's own weights (full, last-k, linear, bias, norm) merge as a no-op; a
    strategy that adds computation (adapter) is refused naming it and every mergeable strategy."""
    for spec in ("full", "last-k", "linear", "bias", "norm"):
        model = wrap(tiny_backbone("vit"), spec, num_classes=3)
        model.merge()
        assert model.merged
    with pytest.raises(PefsError, match=r"^cannot merge adapter: .*; mergeable ones: adalora, bias, full, last-k, "
                                        r"linear, lora, norm, peft, ssf$"):
        wrap(tiny_backbone("vit"), "adapter", num_classes=3).merge()


@pytest.mark.parametrize("family, final_norm", [("vit", ["norm"]), ("resnet", []), ("user", [])])
def test_last_k_one_trains_the_last_block_its_final_norm_and_the_head_only(family, final_norm):
    """last-k with k=1 trains exactly the last block, the norms after it (outside the head) and the head; nothing
    of the blocks before it, even a norm block just before the last (a user's conv-BN-conv net)."""
    bb = user_backbone() if family == "user" else tiny_backbone(family)
    last = bb.block_names[-1]
    model = wrap(bb, "last-k", num_classes=3, k=1)
    named = dict(model.backbone.model.named_parameters())
    trained = {n for n, p in named.items() if p.requires_grad}
    expected = {n for n in named if n.startswith((last + ".", model.backbone.head_name + "."))}
    assert final_norms(model.backbone) == final_norm  # the ViT's norm after its blocks; none on the CNNs
    expected |= {f"{m}.{n}" for m in final_norm for n, _ in model.backbone.model.get_submodule(m).named_parameters()}
    assert trained == expected and len(trained) > len(list(model.backbone.head.parameters()))


def test_every_strategy_but_token_prompts_promises_to_start_as_the_backbone():
    """Every strategy except token-prompt VPT declares ``identity_at_init`` (zero-init updates), so the battery's
    check that features equal the untouched backbone's runs for all of them."""
    specs = ["linear", "full", "lora", "bias", "norm", "ssf", "last-k", "adapter", "self-prompt", "peft:loha",
             "peft:ia3", "lora+norm"]
    assert {spec: all(s.identity_at_init for s in build(spec)) for spec in specs} == dict.fromkeys(specs, True)
    assert build("vpt", mode="pixel")[0].identity_at_init and not build("vpt", mode="deep")[0].identity_at_init


def test_ssf_without_layers_names_the_first_five_blocks():
    """When ssf finds nothing to follow, the refusal names the model's first five blocks (then stops) and says to
    pass targets=."""

    class Gain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.g = nn.Parameter(torch.ones(1))

    class Gains(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(Gain() for _ in range(7))
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.mean((2, 3)) * self.blocks[0].g)

    with pytest.raises(PefsError, match=r"inside the blocks of Gains \(blocks: blocks\.0, blocks\.1, blocks\.2, "
                                        r"blocks\.3, blocks\.4\); pass targets= naming layers to follow$"):
        wrap(Gains(), "ssf", num_classes=2, model_kwargs={"input_size": (3, 8, 8)})
