"""Configs as data: one definition, stable hashes (the architecture rules: tests/test_architecture.py)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

from pefs.config import (
    TrainConfig,
    TuneConfig,
    config_hash,
    resolved,
    setting,
)
from pefs.errors import PefsError

PACKAGE = Path(__file__).resolve().parents[1] / "pefs"


def test_head_names_are_the_registry_and_each_names_its_class():
    from pefs.config import choices
    from pefs.heads.registry import HEADS, head_class

    assert choices(TuneConfig, "head") == tuple(HEADS)
    assert all(head_class(name).name == name for name in HEADS)
    with pytest.raises(PefsError, match="unknown head 'knn'; valid choices: bd-cspn, dn4, linear, linear-proto"):
        TuneConfig(head="knn").validate()


def test_hash_covers_what_changes_numbers_and_nothing_else():
    base = TuneConfig()
    assert base.hash() == config_hash(TuneConfig()) and len(base.hash()) == 16
    neutral = TuneConfig(output="elsewhere", save_adapter="x",
                         train=TrainConfig(progress=False, eval_batch_size=64, grad_checkpointing=True))
    assert neutral.hash() == base.hash()
    for changed in (TuneConfig(shots=1), TuneConfig(train=TrainConfig(lr=0.5)), TuneConfig(options={"r": 4}),
                    TuneConfig(img_size=128), TuneConfig(train=TrainConfig(inference_precision="no"))):
        assert changed.hash() != base.hash()


def test_adding_a_field_added_later_changes_no_existing_hash():
    """A field added later (``added_later``) is hashed only when it leaves its default, which by
    contract reproduces the behaviour from before it existed."""

    @dataclasses.dataclass
    class Later(TrainConfig):
        new_knob: int = setting(0, "a knob added later", added_later=True)

    assert config_hash(TuneConfig(train=Later())) == TuneConfig().hash()
    assert config_hash(TuneConfig(train=Later(new_knob=3))) != TuneConfig().hash()


def test_resolved_copy_leaves_the_callers_config_alone():
    cfg = TuneConfig(options={"r": 8})
    before = copy.deepcopy(cfg)
    run = resolved(cfg, img_size=128, train={"inference_precision": "no"})
    run.options["r"] = 4
    assert cfg == before and (run.img_size, run.train.inference_precision) == (128, "no")
    assert run.hash() == TuneConfig(options={"r": 4}, img_size=128,
                                    train=TrainConfig(inference_precision="no")).hash()


def test_tune_records_the_callers_config_and_the_resolved_one(tmp_path):
    from pefs.protocols.run import tune

    cfg = TuneConfig(model="resnet18", pretrained=False, head="prototype", shots=1, output=str(tmp_path),
                     train=TrainConfig(progress=False, inference_precision="no"))
    before = copy.deepcopy(cfg)
    rec = tune(cfg)
    assert cfg == before  # img_size stays None: the resolved 128 lives in the record only
    assert rec["config"] == cfg.to_dict() and rec["resolved"]["img_size"] == 128
    # the strategy's default learning rate is resolved too: linear's 1e-3, the value lr held before defaults
    # became per strategy, so results stored before still resume
    assert cfg.train.lr is None and rec["resolved"]["train"]["lr"] == 1e-3
    # and so is mixed_precision "auto": fp32 ("no") on a CPU, the value it held before "auto" existed; bf16 on a
    # CUDA GPU that computes it natively

    from pefs.runtime import hardware

    mp = "bf16" if hardware.native_bf16("cuda") else "no"
    assert rec["resolved"]["train"]["mixed_precision"] == mp
    assert rec["config_hash"] == resolved(cfg, img_size=128, train={"lr": 1e-3, "mixed_precision": mp}).hash() \
        == TuneConfig(**{**before.__dict__, "img_size": 128, "train": TrainConfig(
            progress=False, inference_precision="no", mixed_precision=mp, lr=1e-3)}).hash()


@pytest.mark.parametrize("kw, message", [({"seeds": (0, 0)}, "repeat 0"),
                                         ({"seeds": (-1,)}, "seeds must be whole numbers in 0.."),
                                         ({"train": TrainConfig(weight_decay=float("nan"))}, "weight_decay"),
                                         ({"train": TrainConfig(head_lr=float("inf"))}, "head_lr must be > 0")])
def test_bad_values_are_refused_by_the_config(kw, message):
    from pefs.errors import PefsError

    with pytest.raises(PefsError, match=message):
        TuneConfig(**kw).validate()


def test_resolve_fills_in_the_strategys_default_learning_rate():
    """A run's identity holds the rate it trains at: linear's default hashes as lr=1e-3 did before defaults became
    per strategy (stored results resume); full's 1e-4 is a new cell; a searched strategy resolves per candidate."""
    from pefs.protocols.run import resolve

    def lr_of(**kw):
        return resolve(TuneConfig(**kw), None)

    assert lr_of(strategy="full").train.lr == 1e-4 and lr_of(strategy="lora+norm").train.lr == 1e-3
    assert lr_of(strategy="linear").hash() == lr_of(strategy="linear", train=TrainConfig(lr=1e-3)).hash()
    assert lr_of(strategy="full").hash() != lr_of(strategy="full", train=TrainConfig(lr=1e-3)).hash()
    assert lr_of(strategy="full", train=TrainConfig(lr=1e-3)).train.lr == 1e-3  # given: kept
    assert lr_of(search={"strategy": "linear,full"}).train.lr is None
