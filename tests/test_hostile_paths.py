"""Hostile paths and unusable outputs (issue 29): outputs inside inputs, split-folder layouts, manifests read
against their own folder, sweep's --search, exploded losses, --final records and hints, a random base that
predict must rebuild, --save-adapter per seed, user modules reloaded the documented way. Each case states the
promise a user relies on; every refusal is one line, and leaves nothing behind."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import pefs
from pefs.cli.main import main
from pefs.config import TrainConfig, TuneConfig
from pefs.config.files import check_outside
from pefs.data import load_dataset
from pefs.data.sources import local_path
from pefs.errors import PefsError
from pefs.model.predict import collect_images
from pefs.model.wrap import PefsModel
from pefs.protocols.run import RunDiverged, tune
from pefs.runtime import engine
from tests.conftest import FAST, colour_images

RN = ["--model", "resnet18", "--no-pretrained"]


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders): what a refusal must leave as it was."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _no_model(monkeypatch) -> None:
    """Building a model fails the test: a refusal must come before any weights load."""
    def no_model(*_a, **_k):
        raise AssertionError("a model was built before the refusal")

    monkeypatch.setattr("pefs.protocols.run.build_model", no_model)
    monkeypatch.setattr("pefs.runtime.task.build_model", no_model)


def _refused(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(f in err for f in fragments), err
    return err


# --- outputs never inside inputs, and nothing created before the inputs are read ----------------------------

@pytest.mark.parametrize("flag, target", [
    (None, None),                   # cd photos && pefs tune --data . : the default runs/ would land inside
    ("--output", "runs"),
    ("--final", "model"),
    ("--save-adapter", "adapters"),
    ("--final", "."),               # the data folder itself as the model directory
])
def test_tune_refuses_an_output_inside_its_data_folder(tmp_path, monkeypatch, capsys, flag, target):
    """Promise: a record folder or model directory inside the data folder is refused in one line before any
    compute, and the data folder is left exactly as it was (no runs/ that would be read as a class)."""
    data = colour_images(tmp_path / "photos", {"": 3})
    before = _tree(data)
    monkeypatch.chdir(data)
    _no_model(monkeypatch)
    args = ["tune", "--data", ".", *RN, "--shots", "1", *FAST]
    if flag is not None:
        args += [flag, target] + (["--output", str(tmp_path / "records")] if flag != "--output" else [])
    err = _refused(capsys, main(args), "lies inside the data folder", flag or "--output")
    assert "has no images" not in err
    assert _tree(data) == before and not (tmp_path / "records").exists()


def test_tune_refuses_an_output_inside_a_benchmark_root(tmp_path, monkeypatch):
    """Promise: a NAME:PATH data spec's PATH is an input like any folder: no output may sit inside it."""
    from pefs.data.sources import SPEC_LOADERS

    monkeypatch.setitem(SPEC_LOADERS, "bench", lambda *_a: None)
    (tmp_path / "root").mkdir()
    assert local_path(f"bench:{tmp_path / 'root'}") == tmp_path / "root"
    with pytest.raises(PefsError, match="lies inside the data folder"):
        tune(TuneConfig(data=f"bench:{tmp_path / 'root'}", output=str(tmp_path / "root" / "runs")))
    assert list((tmp_path / "root").iterdir()) == []


def test_an_output_beside_the_data_is_not_refused(tmp_path):
    """Promise: only true containment is refused: photos2/ beside photos/ (a shared name prefix) and the data
    folder's parent are valid outputs."""
    data = tmp_path / "photos"
    data.mkdir()
    for out in (tmp_path / "photos2", tmp_path, tmp_path / "photos-runs" / "x"):
        check_outside(out, "--output", [(data, "data folder")])


def test_an_output_equal_to_the_checkpoint_is_refused(tmp_path, capsys):
    """Promise: --final naming the checkpoint file the run reads is refused; the checkpoint keeps its bytes."""
    ckpt = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(1)}, ckpt)
    before = ckpt.read_bytes()
    code = main(["tune", *RN, "--checkpoint", str(ckpt), *FAST, "--final", str(ckpt),
                 "--output", str(tmp_path / "out")])
    _refused(capsys, code, "--final", "checkpoint")
    assert ckpt.read_bytes() == before and not (tmp_path / "out").exists()


def test_a_refused_run_creates_no_output_folder(tmp_path, capsys):
    """Promise: outputs are created only after the inputs are read: a run refused for its data (a missing
    folder) leaves no empty --output or --final folder behind."""
    code = main(["tune", "--data", str(tmp_path / "nope"), *RN, *FAST, "--output", str(tmp_path / "a" / "runs")])
    _refused(capsys, code, "no such folder")
    code = main(["tune", "--data", str(tmp_path / "nope"), *RN, *FAST, "--final", str(tmp_path / "m"),
                 "--output", str(tmp_path / "b")])
    _refused(capsys, code)
    assert list(tmp_path.iterdir()) == []


def test_an_output_under_a_file_is_refused_by_name(tmp_path, capsys):
    """Promise: --output under a file (not a folder) is one line naming it, before any compute."""
    (tmp_path / "notes").write_text("mine")
    code = main(["tune", *RN, *FAST, "--output", str(tmp_path / "notes" / "runs")])
    _refused(capsys, code, "output folder", "not writable", "--output")
    assert (tmp_path / "notes").read_text() == "mine"


@pytest.mark.parametrize("flag", ["--store", "--output"])
def test_sweep_refuses_a_store_or_records_inside_its_data(tmp_path, monkeypatch, capsys, flag):
    """Promise: a sweep's store (and its claims folder) or record folder inside the data folder is refused
    before any cell runs; the data folder is unchanged."""
    data = colour_images(tmp_path / "photos", {"": 3})
    before = _tree(data)
    _no_model(monkeypatch)
    inside = str(data / ("s.jsonl" if flag == "--store" else "recs"))
    other = {"--store": str(tmp_path / "s.jsonl"), "--output": str(tmp_path / "recs")}
    other[flag] = inside
    code = main(["sweep", "--data", str(data), "--models", "resnet18", "--no-pretrained", "--shots", "1", *FAST,
                 "--store", other["--store"], "--output", other["--output"]])
    _refused(capsys, code, "lies inside the data folder", flag)
    assert _tree(data) == before


def test_predict_refuses_an_output_inside_the_images_it_reads(tmp_path, capsys):
    """Promise: pefs predict --out inside a folder of images being predicted is refused before the model
    loads (the CSV would sit among the inputs); nothing is written."""
    data = colour_images(tmp_path / "photos", {"": 2})
    before = _tree(data)
    code = main(["predict", str(tmp_path / "no-model"), str(data), "--out", str(data / "preds.csv"), "-q"])
    _refused(capsys, code, "lies inside the image folder")
    assert _tree(data) == before


# --- split folders: train/ with val/, train/ alone ---------------------------------------------------------

@pytest.mark.parametrize("held_out", ["test", "val", "valid", "validation"])
def test_a_train_folder_beside_a_held_out_split_reads_as_splits(tmp_path, held_out):
    """Promise: train/ with test/ (or val/, valid/, validation/, as timm and torchvision lay them out) is a
    train and a held-out split, never classes named 'train' and 'val'."""
    root = colour_images(tmp_path / "d", {"train": 4, held_out: 2})
    ds = load_dataset(str(root))
    assert ds.classes == ["cat", "dog", "fox"] and len(ds.train) == 12 and len(ds.test) == 6
    assert all(f"/{held_out}/" in n for n in ds.test.names)


def test_test_is_scored_when_val_is_there_too(tmp_path):
    """Promise: with train/, val/ and test/, test/ is the held-out split scored (val/ is not read)."""
    root = colour_images(tmp_path / "d", {"train": 3, "val": 1, "test": 2})
    ds = load_dataset(str(root))
    assert len(ds.test) == 6 and all("/test/" in n for n in ds.test.names)


def test_a_train_folder_alone_is_the_training_split(tmp_path):
    """Promise: train/ alone is read as the training split (no held-out split), not as a class 'train'."""
    ds = load_dataset(str(colour_images(tmp_path / "d", {"train": 4})))
    assert ds.classes == ["cat", "dog", "fox"] and len(ds.train) == 12 and ds.test is None


def test_a_train_folder_beside_class_folders_is_refused(tmp_path):
    """Promise: train/ beside folders that are not split names is ambiguous and refused, naming them and the
    two layouts pefs reads."""
    root = colour_images(tmp_path / "d", {"train": 2})
    colour_images(root, {"": 1}, classes=("extra",))
    with pytest.raises(PefsError, match=r"train/ split folder beside other folders \(extra\).*class folders only"):
        load_dataset(str(root))


def test_a_val_split_with_other_classes_is_refused(tmp_path):
    """Promise: a held-out split whose class folders differ from train/'s is refused, naming both lists."""
    root = colour_images(tmp_path / "d", {"train": 2})
    colour_images(root, {"val": 1}, classes=("cat", "dog", "owl"))
    with pytest.raises(PefsError, match="differ from the train split's"):
        load_dataset(str(root))


# --- manifests: paths read against the manifest's folder ---------------------------------------------------

def _manifest(tmp_path: Path, absolute: bool = False) -> Path:
    root = tmp_path / "set"
    colour_images(root / "imgs", {"": 2})
    rows = [f"{(root / 'imgs' / c / f'{i}.png') if absolute else f'imgs/{c}/{i}.png'},{c}"
            for c in ("cat", "dog", "fox") for i in range(2)]
    (root / "train.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("absolute", [False, True])
def test_manifest_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch, absolute):
    """Promise: a table of image paths and labels reads its relative paths from the table's own folder
    (absolute ones as they are), whatever the working directory: the pixels are those files'."""
    pytest.importorskip("datasets")
    root = _manifest(tmp_path, absolute)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ds = load_dataset(str(root))
    assert ds.classes == ["cat", "dog", "fox"] and len(ds.train) == 6
    from PIL import Image

    want = np.asarray(Image.open(root / "imgs" / "dog" / "1.png").convert("RGB"))
    assert np.array_equal(np.asarray(ds.train.image(3)), want)


def test_a_manifest_beside_its_images_is_read_not_refused(tmp_path, monkeypatch):
    """Promise: train.csv and test.csv naming the class folders' images beside them are read as the splits they
    name (not refused as ambiguous, not read as class folders), from any working directory."""
    pytest.importorskip("datasets")
    root = colour_images(tmp_path / "photos", {"": 3})
    for split, idx in (("train", (0, 1)), ("test", (2,))):
        rows = [f"{c}/{i}.png,{c}" for c in ("cat", "dog", "fox") for i in idx]
        (root / f"{split}.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    ds = load_dataset(str(root))
    assert ds.classes == ["cat", "dog", "fox"] and (len(ds.train), len(ds.test)) == (6, 3)
    assert np.asarray(ds.test.image(0)).shape == (20, 20, 3)


def test_a_table_beside_class_folders_that_names_no_image_is_still_ambiguous(tmp_path):
    """Promise: a stray table (it names no image beside it) next to class folders is refused as ambiguous,
    never silently read instead of the images."""
    root = colour_images(tmp_path / "photos", {"": 2})
    (root / "notes.csv").write_text("what,when\nshoot,monday\n")
    with pytest.raises(PefsError, match="ambiguous"):
        load_dataset(str(root))


def test_an_image_list_resolves_against_its_own_folder(tmp_path, monkeypatch):
    """Promise: pefs predict's .txt list of images reads relative paths from the list's folder."""
    colour_images(tmp_path / "imgs", {"": 1})
    (tmp_path / "list.txt").write_text("# mine\nimgs/cat/0.png\nimgs/fox/0.png\n")
    monkeypatch.chdir(colour_images(tmp_path / "other", {"": 1}))  # same relative names exist here too
    assert collect_images([str(tmp_path / "list.txt")]) == [tmp_path / "imgs/cat/0.png", tmp_path / "imgs/fox/0.png"]


# --- sweep --search from the flags -------------------------------------------------------------------------

def test_sweep_search_from_the_flags_plans_the_cells(tmp_path, capsys):
    """Promise: pefs sweep --search lr=... (documented in --help) plans its cells instead of failing."""
    code = main(["sweep", "--models", "resnet18", "--no-pretrained", "--shots", "2", "--search", "lr=1e-3,1e-2",
                 "--dry-run", "--store", str(tmp_path / "s.jsonl")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "1 cells, 0 already in" in out.out and "must be dict" not in out.err


def test_sweep_search_of_an_unknown_setting_is_one_line(tmp_path, capsys):
    """Promise: a --search axis that is not a setting is refused in one line naming it."""
    code = main(["sweep", "--models", "resnet18", "--no-pretrained", "--search", "colour=1,2", "--dry-run",
                 "--store", str(tmp_path / "s.jsonl")])
    _refused(capsys, code, "colour")


# --- divergence: a finite loss that explodes is not "ok" ---------------------------------------------------

@pytest.mark.parametrize("losses, classes, diverged", [
    ([2.3, 2.1, 1.7, 1.2], 10, False),        # a sound run falls from about chance
    ([0.25, 0.9, 0.4], 10, False),            # a spike well under the bound
    ([0.7, 3.0, 3.4], 2, False),              # binary: under 5 x max(first, ln 2, 1)
    ([0.25, 14.29], 10, True),                # --lr 1e9 with full fine-tuning, as measured
    ([2.3, 1e6], 10, True),
    ([0.7, 5.5], 2, True),
])
def test_an_exploded_finite_loss_is_a_divergence(losses, classes, diverged):
    """Promise: a training loss that grows past 5 x the larger of its first value, chance's (ln C) and 1 stops
    the run as diverged; a falling or briefly rising loss does not."""
    stats = engine.FitStats()
    reader = engine._LossReader(stats, TrainConfig(progress=False), len(losses), 1, classes)
    try:
        for v in losses:
            reader.add(torch.tensor(v), 1)
    except engine.NonFiniteLoss as e:
        assert diverged and "exploded" in str(e) and "lower the learning rate" in str(e)
    else:
        assert not diverged and stats.losses == pytest.approx(losses)
    finally:
        reader.bar.close()


def test_an_absurd_learning_rate_is_recorded_as_diverged(tmp_path):
    """Promise: --lr 1e9 --epochs 2 (full fine-tuning) is recorded 'diverged' with the reason, never 'ok' at
    chance accuracy."""
    cfg = TuneConfig(model="efficientnet_lite0.offline", strategy="full", shots=2, img_size=32,
                     output=str(tmp_path), train=TrainConfig(epochs=2, lr=1e9, progress=False))
    with pytest.raises(RunDiverged) as e:
        tune(cfg)
    record = json.loads(Path(e.value.record["path"]).read_text())
    assert record["status"] == "diverged" and ("exploded" in record["error"] or "nan" in record["error"])


# --- --final: its record, its hint, a random base that predict rebuilds ------------------------------------

@pytest.fixture(scope="module")
def final_run(tmp_path_factory):
    """One --no-pretrained --final run on train/ + val/ into a folder whose name needs shell quoting: its
    folder, data, model directory and what the CLI printed."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("final")
    data = colour_images(root / "photos", {"train": 4, "val": 2})
    model_dir = root / "my model (v1)"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["tune", "--data", str(data), *RN, *FAST, "--final", str(model_dir),
                     "--output", str(root / "records")])
    assert code == 0
    return root, data, model_dir, printed.getvalue()


def test_final_record_says_it_trained_on_every_image(final_run):
    """Promise: a --final record says protocol 'final', no K shots, how many images it trained on and scored
    (val/ as the held-out split); its file name says final, not '5shot'."""
    root, data, model_dir, out = final_run
    path = Path(out.split("result record: ")[1].split()[0])
    rec = json.loads(path.read_text())
    assert rec["protocol"] == "final" and rec["shots"] is None and rec["final"] is True
    assert rec["trained_on"] == 12 and rec["test_images"] == 6 and "-final-" in path.name and "shot" not in path.name
    # the next command printed is one a shell runs as is: the quoted directory splits back to the path
    hint = out.split("next: ")[1].split(" IMAGES...)")[0]
    assert shlex.split(hint) == ["pefs", "predict", str(model_dir)]


def test_a_random_base_model_directory_predicts_as_tune_scored(final_run, capsys):
    """Promise: the --no-pretrained --final model directory loads in pefs predict (no --allow-different-base):
    it keeps its random base, and predict's accuracy on the held-out images is the one tune recorded."""
    root, data, model_dir, out = final_run
    want = json.loads(Path(out.split("result record: ")[1].split()[0]).read_text())["runs"][0]["accuracy"]
    code = main(["predict", str(model_dir), str(data / "val"), "--labels", "--out", str(root / "p.csv"), "-q"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"accuracy: {100 * want:.2f}%" in out.out
    assert json.loads((model_dir / "pefs_config.json").read_text())["backbone"]["base_saved"] is True


def test_a_random_base_is_saved_whole_and_checked(tmp_path):
    """Promise: PefsModel.load rebuilds a random-base model exactly (same logits), without being told; the
    adapter file still holds exactly what trained (the base sits beside it in base.safetensors), and a base
    file that does not match its checksum is refused."""
    from safetensors.torch import load_file

    torch.manual_seed(3)
    m = pefs.wrap("resnet18", "linear", num_classes=3, pretrained=False)
    m.eval()
    x = torch.randn(2, 3, 32, 32)
    m.save(tmp_path / "m")
    loaded = PefsModel.load(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.equal(m(x), loaded(x))
    trained = {n for n, p in m.net.named_parameters() if p.requires_grad} | {n for n, _ in m.net.named_buffers()}
    adapter = load_file(str(tmp_path / "m" / "adapter.safetensors"))
    base = load_file(str(tmp_path / "m" / "base.safetensors"))
    assert set(adapter) == trained and set(base) == set(m.net.state_dict()) - trained
    raw = bytearray((tmp_path / "m" / "base.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (tmp_path / "m" / "base.safetensors").write_bytes(bytes(raw))
    with pytest.raises(PefsError, match="base.safetensors.*checksum"):
        PefsModel.load(tmp_path / "m")


def test_a_base_file_that_does_not_complete_the_model_is_refused(tmp_path):
    """Promise: a base.safetensors that lacks a tensor of the model (its checksum rewritten to match) is refused
    by name, never loaded partially over the random init."""
    from safetensors.torch import load_file, save_file

    from pefs.config.identity import sha256_file

    torch.manual_seed(3)
    pefs.wrap("resnet18", "linear", num_classes=3, pretrained=False).save(tmp_path / "m")
    base_path = tmp_path / "m" / "base.safetensors"
    base = load_file(str(base_path))
    dropped = sorted(base)[0]
    del base[dropped]
    save_file(base, str(base_path))
    cfg_path = tmp_path / "m" / "pefs_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base"]["sha256"] = sha256_file(base_path)
    cfg_path.write_text(json.dumps(cfg))
    refusal = rf"base.safetensors .* does not complete the model: 1 missing \(e.g. {dropped}"
    with pytest.raises(PefsError, match=refusal):
        PefsModel.load(tmp_path / "m")


# --- --save-adapter: per seed, never over the user's files, never silently nothing -------------------------

def test_episodic_save_adapter_is_refused_before_running(tmp_path, monkeypatch, capsys):
    """Promise: --save-adapter with episodes (whose models are not saved) is one line before any compute,
    never a run that silently saves nothing; no folder is created."""
    _no_model(monkeypatch)
    code = main(["tune", *RN, "--ways", "3", "--shots", "1", *FAST, "--save-adapter", str(tmp_path / "ad"),
                 "--output", str(tmp_path / "out")])
    _refused(capsys, code, "--save-adapter", "episode", "--ways")
    assert list(tmp_path.iterdir()) == []


def test_a_seed_folder_of_other_files_is_refused_up_front(tmp_path, monkeypatch, capsys):
    """Promise: --save-adapter DIR whose DIR/seed1 holds the user's files is refused before any compute (a
    save replaces that folder whole); the files keep their bytes, and no DIR/seed0 is written."""
    (tmp_path / "ad" / "seed1").mkdir(parents=True)
    (tmp_path / "ad" / "seed1" / "notes.txt").write_text("mine")
    _no_model(monkeypatch)
    code = main(["tune", *RN, "--seeds", "0,1", "--shots", "1", *FAST, "--save-adapter", str(tmp_path / "ad"),
                 "--output", str(tmp_path / "out")])
    _refused(capsys, code, "seed1", "notes.txt")
    assert _tree(tmp_path / "ad") == {"seed1": None, "seed1/notes.txt": b"mine"}


def test_a_seed_folder_filled_during_the_run_is_refused_at_save_time(tmp_path):
    """Promise: the save itself checks again: a seed folder that gained other files after the run started is
    refused at save time, its files untouched."""
    m = pefs.wrap("resnet18", "linear", num_classes=3, pretrained=False)
    (tmp_path / "seed0").mkdir()
    (tmp_path / "seed0" / "late.txt").write_text("arrived later")
    with pytest.raises(PefsError, match="holds files that are not a pefs model"):
        m.save(tmp_path / "seed0")
    assert _tree(tmp_path / "seed0") == {"late.txt": b"arrived later"}


def test_kshot_save_adapter_writes_one_loadable_model_per_seed(tmp_path, capsys):
    """Promise: --save-adapter DIR on K-shot seeds 0 and 1 saves DIR/seed0 and DIR/seed1, each loadable."""
    code = main(["tune", *RN, "--seeds", "0,1", "--shots", "1", *FAST, "--save-adapter", str(tmp_path / "ad"),
                 "--output", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == ["seed0", "seed1"]
    assert PefsModel.load(tmp_path / "ad" / "seed1").num_classes == 10


# --- a user's module wrapped with head_name= reloads the documented way ------------------------------------

class _Net(nn.Module):
    """A user's module whose head has a name pefs does not guess (``out``), beside another Linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(8, 8)
        self.out = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.proj(self.body(x)))


def test_a_module_wrapped_with_head_name_reloads_with_backbone(tmp_path):
    """Promise: PefsModel.load(dir, backbone=<the same module>) rebuilds a model wrapped with head_name=
    exactly (same head, same logits), without repeating head_name=."""
    m = pefs.wrap(_Net(), "linear", num_classes=3, model_kwargs={"head_name": "out"})
    with torch.no_grad():
        for p in m.head.parameters():
            p.add_(0.5)  # as if trained
    m.save(tmp_path / "m")
    loaded = PefsModel.load(tmp_path / "m", backbone=_Net())
    x = torch.randn(2, 3, 16, 16)
    assert loaded.backbone.head_name == "out"
    with torch.no_grad():
        assert torch.equal(m.eval()(x), loaded.eval()(x))


def test_a_module_without_the_saved_head_is_refused(tmp_path):
    """Promise: reloading onto a module that lacks the saved head_name is one clear line naming it."""
    pefs.wrap(_Net(), "linear", num_classes=3, model_kwargs={"head_name": "out"}).save(tmp_path / "m")
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with pytest.raises(PefsError, match="head_name 'out'"):
        PefsModel.load(tmp_path / "m", backbone=other)


# --- never code from a checkpoint ----------------------------------------------------------------------------

class _Payload:
    """An object whose unpickling would create a file: what a malicious .pth runs on a plain torch.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_checkpoint_runs_no_code(tmp_path, capsys):
    """Promise: a --checkpoint whose pickle would run code is refused in one line and runs nothing (weights are
    read with weights_only=True; model directories hold only safetensors and JSON)."""
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload(marker)}, tmp_path / "evil.pth")
    code = main(["tune", *RN, "--checkpoint", str(tmp_path / "evil.pth"), *FAST, "--output", str(tmp_path / "o")])
    _refused(capsys, code, "evil.pth", "could run code")
    assert not marker.exists()
