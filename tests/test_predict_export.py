"""From a tuned model to use: ``pefs tune --final`` -> ``pefs predict`` -> ``pefs export``, offline on the embedded
Fashion-MNIST images (4 classes written as an image folder), and every bad input a user is likely to give."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pefs.cli.main import main
from pefs.data import load_default
from pefs.errors import PefsError
from pefs.model.wrap import PefsModel, wrap
from tests.strategy_battery import tiny_backbone

CLASSES = (1, 2, 3, 4)  # Trouser, Pullover, Dress, Coat: names that are valid folder names


@pytest.fixture(scope="module")
def final(tmp_path_factory):
    """An image folder (train/test) from the embedded data, and a model directory tuned on all of its train split."""
    root = tmp_path_factory.mktemp("final")
    data = load_default()
    for split, images, per_class in (("train", data.train, 8), ("test", data.test, 6)):
        for c in CLASSES:
            d = root / "data" / split / images.classes[c]
            d.mkdir(parents=True)
            for j, i in enumerate(np.flatnonzero(images.labels == c)[:per_class]):
                images.image(int(i)).save(d / f"{j}.png")
    code = main(["tune", "--final", str(root / "model"), "--data", str(root / "data"), "--strategy", "lora",
                 "--img-size", "32", "--epochs", "3", "--output", str(root / "runs"), "-q"])
    assert code == 0
    record = json.loads(next((root / "runs").glob("*.json")).read_text())
    return root, record


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_final_then_predict_scores_what_tune_scored(final, capsys):
    root, record = final
    assert record["final"] and record["trained_on"] == 32 and record["test_images"] == 24
    out = root / "pred.csv"
    assert main(["predict", str(root / "model"), str(root / "data" / "test"), "--labels", "--out", str(out),
                 "--top-k", "2", "-q"]) == 0
    rows = _rows(out)
    assert len(rows) == 24 and set(rows[0]) == {"path", "class_1", "prob_1", "class_2", "prob_2", "label"}
    correct = sum(r["class_1"] == r["label"] for r in rows)
    assert correct == round(record["runs"][0]["accuracy"] * record["test_images"])  # counts, compared as integers
    accuracy = correct / len(rows)
    printed = capsys.readouterr().out
    assert f"accuracy: {100 * accuracy:.2f}%" in printed and "confusion matrix" in printed
    config = json.loads((root / "model" / "pefs_config.json").read_text())
    assert config["class_names"] == ["Coat", "Dress", "Pullover", "Trouser"]  # folder order
    assert config["preprocessing"]["input_size"] == [3, 32, 32] and config["tune_config"]["strategy"] == "lora"


def test_library_predict_gives_class_names_and_probabilities(final):
    root, _ = final
    model = PefsModel.load(root / "model")
    paths = sorted((root / "data" / "test" / "Dress").glob("*.png"))[:3]
    pred = model.predict([Image.open(p) for p in paths])
    assert pred.probs.shape == (3, 4) and torch.allclose(pred.probs.sum(-1), torch.ones(3))
    assert set(pred.labels) <= set(model.class_names)
    assert pred.labels == model.predict(paths).labels
    assert pred.top(2)[0][0][1] >= pred.top(2)[0][1][1]


def test_merged_export_loads_in_timm_alone(final):
    import timm
    from safetensors.torch import load_file

    root, _ = final
    assert main(["export", str(root / "model"), "--format", "merged", "--out", str(root / "merged.safetensors")]) == 0
    plain = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=4).eval()
    plain.load_state_dict(load_file(str(root / "merged.safetensors")), strict=True)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(plain(x), PefsModel.load(root / "model").eval()(x), atol=1e-5)


def test_onnx_export_runs_in_onnxruntime(final):
    import onnxruntime

    root, _ = final
    assert main(["export", str(root / "model"), "--format", "onnx", "--out", str(root / "model.onnx")]) == 0
    session = onnxruntime.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = PefsModel.load(root / "model").eval()(x)
    got = torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-3)


def test_unmergeable_strategy_says_why_and_still_exports_to_onnx(tmp_path):
    from pefs.export.formats import export_merged, export_onnx

    model = wrap(tiny_backbone("vit"), "vpt", num_classes=3)
    with pytest.raises(PefsError, match=r"cannot export 'vpt' as a merged checkpoint: vpt adds computation"):
        export_merged(model, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()
    path, worst = export_onnx(model, tmp_path / "vpt.onnx")
    assert path.is_file() and worst < 1e-3


def test_merged_export_refuses_tensors_timm_does_not_have(tmp_path):
    from pefs.export.formats import export_merged

    model = wrap("efficientnet_lite0.offline", "ssf", num_classes=3)
    with pytest.raises(PefsError, match=r"does not have the tensors of timm's tf_efficientnet_lite0: \d+ extra"):
        export_merged(model, tmp_path / "m.safetensors")


def _tamper(d, what):
    config = json.loads((d / "pefs_config.json").read_text())
    if what == "older":
        config["format"] = 1
    elif what == "weights":
        config["backbone"]["fingerprint"] = "0" * 32
    elif what == "missing":
        (d / "adapter.safetensors").unlink()
    elif what == "truncated":
        data = (d / "adapter.safetensors").read_bytes()
        (d / "adapter.safetensors").write_bytes(data[:100])
    elif what == "config":
        (d / "pefs_config.json").write_text('{"format": 2, "spec": ')
        return
    (d / "pefs_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("what, message", [
    ("older", r"saved in model-directory format 1; this pefs reads format 2"),
    ("weights", r"different weights .*--allow-different-base"),
    ("missing", r"incomplete: adapter.safetensors is missing"),
    ("truncated", r"adapter.safetensors.* is damaged"),
    ("config", r"pefs_config.json.* is damaged"),
])
def test_predict_refuses_a_bad_model_directory(final, tmp_path, capsys, what, message):
    root, _ = final
    d = tmp_path / "model"
    shutil.copytree(root / "model", d)
    _tamper(d, what)
    image = next((root / "data" / "test" / "Coat").glob("*.png"))
    assert main(["predict", str(d), str(image), "--out", str(tmp_path / "p.csv"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


@pytest.mark.parametrize("args, message", [
    ([], "no images given"),
    (["EMPTY_DIR"], "holds no images"),
    (["EMPTY_LIST"], "names no images"),
    (["nope.png"], "does not exist"),
])
def test_predict_refuses_empty_or_missing_inputs(final, tmp_path, capsys, args, message):
    root, _ = final
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("not an image")
    (tmp_path / "list.txt").write_text("# nothing here\n\n")
    subst = {"EMPTY_DIR": str(tmp_path / "empty"), "EMPTY_LIST": str(tmp_path / "list.txt"),
             "nope.png": str(tmp_path / "nope.png")}
    code = main(["predict", str(root / "model"), *[subst.get(a, a) for a in args], "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_corrupt_images_are_listed_and_the_good_ones_still_predicted(final, tmp_path, capsys):
    root, _ = final
    folder = tmp_path / "mixed"
    shutil.copytree(root / "data" / "test" / "Trouser", folder)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = (folder / "0.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    listing = tmp_path / "list.txt"
    listing.write_text("mixed/0.png\nmixed/corrupt.png\n")
    out = tmp_path / "p.jsonl"
    code = main(["predict", str(root / "model"), str(folder), str(listing), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 + 1 and all(r["top"][0]["class"] in {"Coat", "Dress", "Pullover", "Trouser"} for r in rows)
    assert "3 image(s) could not be decoded" in err
    assert str(folder / "corrupt.png") in err and str(folder / "truncated.png") in err


@pytest.mark.parametrize("extra, message", [
    (["--ways", "3"], "does not run episodes"),
    (["--head", "prototype"], "needs a head that predicts by itself"),
    (["--seeds", "0,1"], "give one seed"),
])
def test_final_refuses_what_cannot_give_one_model(tmp_path, capsys, extra, message):
    code = main(["tune", "--final", str(tmp_path / "m"), "--output", str(tmp_path / "runs"), "-q", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and not (tmp_path / "m" / "pefs_config.json").exists()


def test_final_without_a_test_split_reports_training_accuracy_as_such(image_folder, tmp_path, capsys):
    """A folder with no test split: every image trains; the record has no test accuracy, only a labelled
    training accuracy, which predict --labels on the same folder reproduces."""
    code = main(["tune", "--final", str(tmp_path / "m"), "--data", str(image_folder), "--strategy", "linear",
                 "--img-size", "32", "--epochs", "2", "--output", str(tmp_path / "runs"), "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "no test split: accuracy on the training images" in out
    record = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    assert record["accuracy_mean"] is None and record["trained_on"] == 18
    assert main(["predict", str(tmp_path / "m"), str(image_folder), "--labels", "--out", str(tmp_path / "p.csv"),
                 "-q"]) == 0
    rows = _rows(tmp_path / "p.csv")
    assert sum(r["class_1"] == r["label"] for r in rows) / 18 == pytest.approx(record["runs"][0]["train_accuracy"])
