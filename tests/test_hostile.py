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
from pefs.config import TrainConfig
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
