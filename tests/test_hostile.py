"""Hostile-input battery: inputs a careless or hostile user really gives, each once silently wrong, a raw
traceback or a misleading message. Every case must end in one clear line (exit 2) naming the bad value and
what is valid, before any compute, or in an honest result. Add a case here for each new bug found."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pefs
from pefs.cli.main import main
from pefs.config import TrainConfig, TuneConfig
from pefs.data import load_dataset
from pefs.errors import PefsError
from pefs.results import store
from pefs.runtime import engine
from pefs.runtime.engine import NonFiniteLoss
from tests.conftest import FAST, assert_user_error, cli

RN = ["--model", "resnet18", "--no-pretrained"]


@pytest.mark.parametrize("args, fragments", [
    (["tune", "--seeds", "-1"], ["seeds must be whole numbers in 0..4294967295, got -1"]),
    (["tune", "--seeds", "0,1,0"], ["repeat 0", "count twice"]),
    (["tune", "--seeds", "4294967296"], ["got 4294967296"]),
    (["sweep", "--seeds", "-1", "--dry-run"], ["got -1"]),
    (["tune", "--weight-decay", "nan"], ["weight_decay must be >= 0 and finite, got nan"]),
    (["tune", "--head-lr", "inf"], ["head_lr must be > 0 and finite, got inf"]),
    (["sweep", "--lr", "inf", "--dry-run"], ["lr must be > 0 and finite, got inf"]),
    (["tune", "--ways", "5", "--shots", "1", "--queries", "60"], ["queries=60", "valid queries with shots=1: 1..59"]),
    (["tune", "--max-image-pixels", "0"], ["max image pixels must be a whole number >= 1, got 0"]),
])
def test_bad_values_are_one_line_before_compute(tmp_path, capsys, monkeypatch, args, fragments):
    """In process (the CLI's own main, as a subprocess would run it, without paying torch's import per case).
    "Before any compute": building the model would fail the test, whatever the machine's speed."""
    def no_model(*_a, **_k):
        raise AssertionError("a model was built before the bad value was refused")

    monkeypatch.setattr("pefs.protocols.run.build_model", no_model)
    monkeypatch.setattr("pefs.runtime.task.build_model", no_model)
    extra = ["--store", str(tmp_path / "s.jsonl")] if args[0] == "sweep" else []
    code = main([*args, *FAST, "--output", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(f in err for f in fragments), err
    assert "valid shots: 1..0" not in err
    assert not list(tmp_path.rglob("*.json"))  # nothing ran


def test_checkpoint_folder_is_named_as_a_folder(tmp_path):
    (tmp_path / "ckpt").mkdir()
    torch.save({"w": torch.zeros(1)}, tmp_path / "ckpt" / "model.pth")
    r = cli("tune", *RN, "--checkpoint", str(tmp_path / "ckpt"), *FAST, "--output", str(tmp_path / "out"))
    assert_user_error(r, "is a folder", "model.pth")
    assert "does not exist" not in r.stderr


def test_local_path_typo_is_not_a_hub_error(tmp_path):
    (tmp_path / "data").mkdir()
    r = cli("tune", "--data", "data/imgz", *FAST, "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert_user_error(r, "'data/imgz'", "no such folder", "'data' is a local folder")
    assert "cannot load dataset" not in r.stderr and "onnect" not in r.stderr
    r = cli("tune", "--data", "./imgs/train", *FAST, "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert_user_error(r, "no such folder")


def test_one_class_is_refused_not_scored_100_percent(tmp_path, image_folder):
    for name in ("dog", "fox"):
        for f in (image_folder / name).iterdir():
            f.unlink()
        (image_folder / name).rmdir()
    r = cli("tune", "--data", str(image_folder), *RN, "--shots", "2", *FAST, "--output", str(tmp_path / "out"))
    assert_user_error(r, "has 1 class", "at least 2")
    r = cli("sweep", "--data", str(image_folder), "--models", "resnet18", "--no-pretrained", "--shots", "2",
            "--dry-run", "--store", str(tmp_path / "s.jsonl"))
    assert_user_error(r, "has 1 class")


def test_one_seed_has_no_interval_and_a_prototype_head_trains_nothing(tmp_path):
    r = cli("tune", "--head", "prototype", *FAST, "--output", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "± 0.00" not in r.stdout and "one seed: no confidence interval" in r.stdout
    assert "trainable parameters: 0 (the prototype head trains nothing" in r.stdout
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["accuracy_ci95"] is None and record["params"]["trainable"] == 0


def test_help_shows_single_percent_signs():
    for command in ("tune", "report"):
        r = cli(command, "--help")
        assert r.returncode == 0 and "95% CI" in r.stdout and "%%" not in r.stdout


def test_unwritable_store_fails_before_any_cell_runs(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = cli("sweep", "--models", "resnet18", "--no-pretrained", *FAST, "--store", str(blocker / "s.jsonl"),
            "--output", str(tmp_path / "records"))
    assert_user_error(r, "results store", str(blocker / "s.jsonl"), "not writable", "--store")
    assert not (tmp_path / "records").exists() or not list((tmp_path / "records").glob("*.json"))


def test_report_with_a_non_utf8_name_is_written_whole(tmp_path):
    st = tmp_path / "results.jsonl"
    for seed in (0, 1):
        cfg = {"model": "m\udce9", "strategy": "linear", "shots": 1, "seeds": [seed], "train": {}}
        record = {"config": cfg, "accuracy_mean": 0.5, "accuracies": [0.5 + seed / 10], "wall_s": 1.0,
                  "dataset": {"name": "caf\udce9", "classes": 2},  # a folder name in Latin-1, read by Python
                  "backbone": {"params": 10, "pretrained": "offline"},
                  "params": {"trainable": 1, "backbone_params": 10, "percent_of_backbone": 10.0, "head": 1}}
        cell = {"model": "m\udce9", "strategy": "linear", "options": {}, "shots": 1, "seed": seed, "ways": None,
                "config": cfg}
        store.append(st, store.make_row(f"h{seed}", cell, "ok", record))
    r = cli("report", "--store", str(st), "--out", str(tmp_path / "rep"))  # md, csv and png
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    assert "caf\\udce9" in md and "| m\\udce9 |" in md and (tmp_path / "rep" / "accuracy_vs_shots.png").stat().st_size
    assert not list((tmp_path / "rep").glob(".*.tmp"))


def test_integer_labels_without_a_classlabel_are_mapped_to_classes(tmp_path):
    datasets = pytest.importorskip("datasets")
    imgs = [Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)) for i in range(6)]
    ds = datasets.Dataset.from_dict({"image": imgs, "label": [3, 7, 3, 7, 3, 7]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("int64")}))
    ds.save_to_disk(str(tmp_path / "t"))
    loaded = load_dataset(str(tmp_path / "t"))
    assert loaded.classes == ["3", "7"] and loaded.train.labels.tolist() == [0, 1, 0, 1, 0, 1]


def test_missing_image_column_names_no_flag_that_does_not_exist(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"pixels": [[1, 2]], "label": [0]})
    ds.save_to_disk(str(tmp_path / "t"))
    r = cli("tune", "--data", str(tmp_path / "t"), *FAST, "--output", str(tmp_path / "out"))
    assert_user_error(r, "cannot find the image column", "pixels", "rename")
    assert "--image-column" not in r.stderr


class _PoisonedAdamW(torch.optim.AdamW):
    """AdamW whose every step leaves a NaN in the head: only a check after the last step can see it."""

    head: torch.nn.Parameter

    def step(self, closure=None):
        out = super().step(closure)
        with torch.no_grad():
            self.head.fill_(float("nan"))
        return out


def test_divergence_after_the_last_step_is_caught(monkeypatch):
    model = pefs.wrap("resnet18", "linear", num_classes=3, pretrained=False)
    real = engine._optimizer

    def poisoned(m, cfg):
        opt = real(m, cfg)
        opt.__class__ = _PoisonedAdamW
        opt.head = next(iter(m.head.parameters()))
        return opt

    monkeypatch.setattr(engine, "_optimizer", poisoned)
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(NonFiniteLoss, match="after the last step"):
        engine.fit(model, x, y, TrainConfig(epochs=1, batch_size=16, progress=False))


def test_an_absurd_learning_rate_is_a_divergence_not_a_traceback():
    model = pefs.wrap("resnet18", "linear", num_classes=3, pretrained=False)
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(NonFiniteLoss, match="overflowed"):
        engine.fit(model, x, y, TrainConfig(epochs=1, batch_size=16, head_lr=1e38, progress=False))


def test_float_image_with_nan_is_named(tmp_path):
    from pefs.data import from_arrays

    images = from_arrays(np.full((1, 4, 4), np.nan, np.float32), [0])
    with pytest.raises(PefsError, match=r"array\[0\].*NaN"):
        images.image(0)


def test_claims_beside_a_store_in_an_unwritable_place_fail_clearly(tmp_path):
    from pefs.results import claims

    (tmp_path / ".s.jsonl.claims").write_text("a file where the claims folder goes")
    with pytest.raises(PefsError, match="claims folder"):
        claims.try_claim(Path(tmp_path / "s.jsonl"), "abc")


def test_a_descending_seed_range_is_named(capsys):
    with pytest.raises(SystemExit) as e:
        main(["tune", "--seeds", "3-1"])
    assert e.value.code == 2 and "seed range '3-1' is empty" in capsys.readouterr().err


# -- #29 "never wrong, never lossy": labels read against the right names --------------------------------------------

def _hf_splits(root, train_names, train_labels, test_names, test_labels, column="label", extra=None):
    """A saved DatasetDict whose train and test splits each carry their OWN ClassLabel (as when each split was
    class-encoded on its own); image i's pixels encode its true class name, so a label can be checked by value."""
    datasets = pytest.importorskip("datasets")
    splits = {}
    for split, names, labels in (("train", train_names, train_labels), ("test", test_names, test_labels)):
        colour = {n: 30 * i for i, n in enumerate(sorted(set(train_names) | set(test_names)))}
        imgs = [Image.fromarray(np.full((8, 8, 3), colour[names[y]], np.uint8)) for y in labels]
        feats = {"image": datasets.Image(), column: datasets.ClassLabel(names=list(names))}
        data = {"image": imgs, column: list(labels)}
        for col, (col_names, col_labels) in (extra or {}).items():
            feats[col], data[col] = datasets.ClassLabel(names=col_names), col_labels[split]
        splits[split] = datasets.Dataset.from_dict(data, features=datasets.Features(feats))
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return str(root)


def _names(images):
    return [images.classes[y] for y in images.labels]


def test_a_test_split_encoded_on_its_own_is_read_by_class_name(tmp_path):
    """Promise: a test split whose ClassLabel orders the names differently is scored against the RIGHT classes
    (it was read by integer: every test label pointed at another class, "accuracy: 0.00%", status ok)."""
    path = _hf_splits(tmp_path / "t", ["cat", "dog", "fox"], [0, 1, 2] * 3, ["fox", "cat", "dog"], [0, 1, 2, 0])
    ds = load_dataset(path)
    assert ds.classes == ["cat", "dog", "fox"]  # train's order
    assert _names(ds.test) == ["fox", "cat", "dog", "fox"]  # each test image's own ClassLabel name
    assert ds.test.classes == ds.train.classes


def test_a_test_class_the_train_split_lacks_is_refused_by_name(tmp_path):
    """Promise: test names that differ from train's are one PefsError naming them, never a silent misreading."""
    path = _hf_splits(tmp_path / "t", ["cat", "dog"], [0, 1] * 3, ["cat", "dog", "owl"], [0, 1, 2])
    with pytest.raises(PefsError, match=r"split 'test' .* 1 class\(es\) the train split has no image of \(owl\)"):
        load_dataset(path)


def test_a_dataset_filtered_to_some_classes_keeps_only_those(tmp_path, capsys):
    """Promise: a dataset filtered to a subset of its ClassLabel's classes works ("valid shots: 1..0" before):
    the classes with no training image are dropped from the class list, with a note naming them; a class with
    test images but no training image is refused."""
    from pefs.data import kshot_split

    names = ["a", "b", "c", "d", "e"]
    path = _hf_splits(tmp_path / "t", names, [0, 2, 4] * 3, names, [4, 2, 0])
    ds = load_dataset(path)
    assert ds.classes == ["a", "c", "e"] and _names(ds.test) == ["e", "c", "a"]
    assert ds.train.counts().tolist() == [3, 3, 3]
    assert "2 of the 5 classes" in capsys.readouterr().err
    assert kshot_split(ds, 2, seed=0).support.counts().tolist() == [2, 2, 2]
    path = _hf_splits(tmp_path / "u", names, [0, 2] * 3, names, [0, 2, 3])
    with pytest.raises(PefsError, match=r"the train split has no image of \(d\)"):
        load_dataset(path)


def test_several_label_columns_are_refused_unless_one_is_named(tmp_path, capsys, monkeypatch):
    """Promise: with a fine and a coarse ClassLabel, pefs does not pick one silently: tune refuses in one line
    listing both and naming --label-column; --label-column picks the column the run classifies by."""
    coarse = {"coarse": (["animal", "thing"], {"train": [0, 1] * 3, "test": [1, 0]})}
    path = _hf_splits(tmp_path / "t", ["cat", "cup"], [0, 1] * 3, ["cat", "cup"], [1, 0], column="fine",
                      extra=coarse)
    capsys.readouterr()  # datasets' own progress bars while saving
    with pytest.raises(PefsError, match=r"several label columns \(fine, coarse\).*--label-column"):
        load_dataset(path)
    ds = load_dataset(path, label_column="coarse")
    assert ds.classes == ["animal", "thing"] and _names(ds.test) == ["thing", "animal"]

    def loaded(*_a, **_k):
        raise PefsError("stop: the data loaded")  # the run got past loading: no model needs to train

    monkeypatch.setattr("pefs.protocols.run.resolve", loaded)
    for extra, message in (([], "several label columns (fine, coarse)"), (["--label-column", "coarse"], "stop: "),
                           (["--label-column", "nope"], "has no column 'nope'")):
        assert main(["tune", "--data", path, *extra, *FAST, "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert main(["tune", "--label-column", "coarse", *FAST, "--output", str(tmp_path / "out")]) == 2
    assert "--label-column coarse names a column of a Hugging Face dataset" in capsys.readouterr().err
    assert TuneConfig(label_column="coarse").hash() != TuneConfig().hash()  # it changes results: in the hash


# -- one prediction path ---------------------------------------------------------------------------------------------

def _tied_model_dir(tmp_path):
    """A model directory whose head scores every image exactly [0, 1, 1, 0, 1, 0]: a three-way tie, which
    torch.topk (what pefs predict ranked with) breaks towards class 2 and torch.argmax (tune) towards class 1."""
    model = pefs.wrap("resnet18", "linear", num_classes=6, pretrained=False)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0]))
    model.class_names = ["ant", "bee", "cow", "dog", "eel", "fox"]
    model.preprocessing = pefs.model.directory.preprocessing(model.backbone.data_config, 32)
    model.save(tmp_path / "m")
    image = tmp_path / "x.png"
    Image.fromarray(np.full((12, 12, 3), 90, np.uint8)).save(image)
    return model, tmp_path / "m", image


def test_an_exact_tie_gets_the_same_label_in_tune_predict_and_the_library(tmp_path, capsys):
    """Promise: one scoring rule (pefs.model.inference.top_classes): the lowest class index wins a tie, as
    torch.argmax, in tune's evaluation, PefsModel.predict().labels and pefs predict, at any --precision."""
    from pefs.model import inference
    from pefs.runtime import task

    model, d, image = _tied_model_dir(tmp_path)
    for precision in ([], ["--precision", "no"], ["--precision", "bf16"]):
        out = tmp_path / "p.csv"
        assert main(["predict", str(d), str(image), "--out", str(out), "--top-k", "3", "--allow-different-base",
                     "-q", *precision]) == 0
        row = out.read_text().splitlines()[1].split(",")
        assert row[1::2][:3] == ["bee", "cow", "eel"], row  # topk said cow
    assert model.predict([image]).labels == ["bee"] and model.predict([image]).top(2)[0][0][0] == "bee"
    scores = torch.randint(0, 3, (500, 7)).float()  # many ties
    assert torch.equal(inference.predicted(scores), scores.argmax(-1))
    assert task.predicted is inference.predicted  # tune's evaluation ranks with the same function
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["predict", str(d), str(image), "--precision", "fp64", "-q"])
    assert "invalid choice: 'fp64' (choose from 'auto', 'no', 'bf16', 'fp16')" in capsys.readouterr().err


# -- refusals leave the caller's objects as they were ----------------------------------------------------------------

def _state(module):
    return ({k: v.clone() for k, v in module.state_dict().items()},
            {n: p.requires_grad for n, p in module.named_parameters()}, [type(m) for m in module.modules()])


def _assert_unchanged(module, before):
    state, flags, kinds = _state(module)
    assert state.keys() == before[0].keys() and all(torch.equal(state[k], before[0][k]) for k in state)
    assert flags == before[1] and kinds == before[2]


@pytest.mark.parametrize("spec, options, message", [
    ("vpt", {"mode": "deep"}, "needs a transformer backbone"),  # refused by the kind check: before anything changes
    ("vpt", {"mode": "pixel", "pad": 150}, "leaves no image inside the frame"),  # refused inside apply: undone
    ("lora+full", {}, "strategies conflict"),  # refused after both applied: undone
])
def test_a_refused_wrap_leaves_the_callers_module_unchanged(spec, options, message):
    """Promise: a refused pefs.wrap(module, ...) changes nothing of the caller's module: the same head, the same
    weights, the same requires_grad flags (fc was replaced and every parameter frozen before)."""
    import timm

    module = timm.create_model("resnet18", pretrained=False, num_classes=5)
    before, fc = _state(module), module.fc
    with pytest.raises(PefsError, match=message):
        pefs.wrap(module, spec, num_classes=3, **options)
    _assert_unchanged(module, before)
    assert module.fc is fc and not hasattr(module, "pefs_wrapped")


def test_a_refused_load_leaves_the_callers_module_unchanged(tmp_path):
    """Promise: PefsModel.load(dir, backbone=m) refused (m already wrapped; m of other weights) leaves m as it
    was: its head was re-initialised before."""
    import copy

    from pefs.model.wrap import PefsModel
    from tests.strategy_battery import tiny_backbone

    original = tiny_backbone("vit")
    model = pefs.wrap(copy.deepcopy(original), "lora", num_classes=3)
    model.save(tmp_path / "m")
    before = _state(model.net)
    with pytest.raises(PefsError, match="already wrapped by pefs.wrap"):
        PefsModel.load(tmp_path / "m", backbone=model.net)
    _assert_unchanged(model.net, before)
    other = copy.deepcopy(original)
    with torch.no_grad():
        next(other.model.parameters()).add_(1.0)
    before = _state(other.model)
    with pytest.raises(PefsError, match="different weights"):
        PefsModel.load(tmp_path / "m", backbone=other)
    _assert_unchanged(other.model, before)
    assert PefsModel.load(tmp_path / "m", backbone=copy.deepcopy(original)).spec == "lora"


# -- no file lost -----------------------------------------------------------------------------------------------------

def _outputs(d):
    from pefs.model.wrap import PefsModel

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return PefsModel.load(d, backbone=_base()).eval()(x)


def _base():
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=0)


def _model(seed, by_name=False):
    model = pefs.wrap("resnet18" if by_name else _base(), "linear", num_classes=3, pretrained=False)
    with torch.no_grad():
        model.head.bias.fill_(float(seed))
    return model


def _enospc(*_a, **_k):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["tensors", "fsync", "config", "rename-in"])
def test_a_failed_resave_leaves_the_previous_model_loadable(tmp_path, monkeypatch, where):
    """Promise: re-saving into an existing model directory replaces it whole or not at all: a failure while
    writing the tensors, syncing them, writing the config after them (which used to leave new tensors beside
    the old config: neither model loadable) or renaming the new folder in leaves the previous model exactly
    loadable and no temporary folder behind; one PefsError line says what failed."""
    import os

    d = tmp_path / "m"
    _model(1).save(d)
    want = _outputs(d)
    if where == "tensors":
        monkeypatch.setattr("safetensors.torch.save_file", _enospc)
    elif where == "fsync":
        monkeypatch.setattr(os, "fsync", _enospc)
    elif where == "config":
        real_fsync, synced = os.fsync, []

        def config_fails(fd):  # the tensor file syncs, the config after it does not
            synced.append(fd)
            if len(synced) == 2:
                _enospc()
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", config_fails)
    else:
        real, calls = os.rename, []

        def second_fails(a, b):  # the old folder is renamed away, then the new one fails to go in
            calls.append(a)
            if len(calls) == 2:
                _enospc()
            real(a, b)

        monkeypatch.setattr(os, "rename", second_fails)
    with pytest.raises(PefsError, match="No space left on device") as e:
        _model(2).save(d)
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert torch.equal(_outputs(d), want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    _model(2).save(d)  # and a save that succeeds replaces it
    assert not torch.equal(_outputs(d), want) and sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_save_never_replaces_a_folder_of_other_files(tmp_path, capsys):
    """Promise: a save replaces its folder whole, so a folder holding files that are not a pefs model is refused
    (tune --final before any compute), its files untouched."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("years of work")
    with pytest.raises(PefsError, match="holds files that are not a pefs model"):
        _model(1).save(tmp_path / "docs")
    assert main(["tune", "--final", str(tmp_path / "docs"), *FAST, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--final folder" in err and "thesis.tex" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in (tmp_path / "docs").iterdir()] == ["thesis.tex"] and not list(tmp_path.rglob("*.json"))


@pytest.mark.parametrize("fmt, failure", [("onnx", "trace"), ("onnx", "enospc"), ("merged", "enospc")])
def test_a_failed_export_keeps_the_existing_file(tmp_path, monkeypatch, capsys, fmt, failure):
    """Promise: a failed export (the graph does not trace; the disk is full) leaves a file already at --out as
    it was, writes no 0-byte or temporary file, and says so in one line (no traceback)."""
    import os

    _model(1, by_name=True).save(tmp_path / "m")
    out = tmp_path / f"old.{fmt}"
    out.write_bytes(b"the previous export")
    if failure == "trace":
        def no_trace(*_a, **_k):
            raise RuntimeError("unsupported operator")

        monkeypatch.setattr(torch.onnx, "export", no_trace)
    else:
        monkeypatch.setattr(os, "fsync", _enospc)
    code = main(["export", str(tmp_path / "m"), "--format", fmt, "--out", str(out), "--allow-different-base"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert ("does not trace" if failure == "trace" else "No space left on device") in err
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", out.name]


def test_export_refuses_to_overwrite_the_model_it_exports(tmp_path, capsys):
    """Promise: export --out naming the model directory's own tensor file is refused, the model intact."""
    _model(1, by_name=True).save(tmp_path / "m")
    before = (tmp_path / "m" / "adapter.safetensors").read_bytes()
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "m" / "adapter.safetensors")]) == 2
    assert "would overwrite the model directory" in capsys.readouterr().err
    assert (tmp_path / "m" / "adapter.safetensors").read_bytes() == before


@pytest.mark.parametrize("where", ["model_dir", "inside", "image", "list"])
def test_predict_refuses_an_output_that_is_one_of_its_inputs(tmp_path, capsys, where):
    """Promise: pefs predict --out equal to an image (or image list) or inside MODEL_DIR is refused in one line
    before anything is written: every input keeps its bytes."""
    _, d, image = _tied_model_dir(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{image}\n")
    out = {"model_dir": d, "inside": d / "pefs_config.json", "image": image, "list": listing}[where]
    files = {p: p.read_bytes() for p in [*d.iterdir(), image, listing]}
    code = main(["predict", str(d), str(image), str(listing), "--out", str(out), "--allow-different-base", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert ("inside the model directory" if where in ("model_dir", "inside") else "one of the images") in err
    assert {p: p.read_bytes() for p in files} == files and sorted(d.iterdir()) == sorted(p for p in files
                                                                                        if p.parent == d)
