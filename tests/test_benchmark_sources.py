"""The benchmark sources (pefs.data.benchmarks) on fixtures in the exact community layouts: VTAB-1k task folders
with their four split files, miniImageNet's CSVs, base/val/novel class folders. Every split is as its file says
and disjoint, episodes come from novel classes only, the fingerprint covers split-file bytes, bad layouts are
one clear error, and ``pefs tune`` runs end to end on each."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pefs.cli.main import main
from pefs.data import episodes, load_dataset
from pefs.data.benchmarks import BENCHMARKS, BenchmarkDataset, vtab
from pefs.data.fingerprint import data_fingerprint
from pefs.errors import PefsError
from pefs.sweep.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RUN = ["--model", "resnet18", "--no-pretrained", "--img-size", "32", "--epochs", "1", "--shots", "1", "-q"]


def png(path: Path, value: int, fmt: str = "PNG") -> str:
    """A tiny 8x8 image whose colour encodes ``value`` (so classes differ); returns its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((8, 8, 3), (value * 37) % 256, dtype=np.uint8)
    arr[..., value % 3] = 255
    Image.fromarray(arr).save(path, fmt)
    return path.name


def make_vtab(root: Path, task: str = "caltech101", classes: int = 3) -> Path:
    """``root/<task>/images/...`` and the four split files: train800 2/class, val200 1/class, test 2/class."""
    folder = root / task
    lines: dict[str, list[str]] = {"train800": [], "val200": [], "test": []}
    for split, per in (("train800", 2), ("val200", 1), ("test", 2)):
        for c in range(classes):
            for i in range(per):
                rel = f"images/{split}/{c}_{i}.png"
                png(folder / rel, c)
                lines[split].append(f"{rel} {c}")
    for name, rows in (("train800", lines["train800"]), ("val200", lines["val200"]),
                       ("train800val200", lines["train800"] + lines["val200"]), ("test", lines["test"])):
        (folder / f"{name}.txt").write_text("\n".join(rows) + "\n")
    return folder


def make_mini(root: Path, per: int = 4) -> Path:
    """Ravi & Larochelle's layout: images/*.jpg and train/val/test.csv (3 base, 2 val, 3 novel classes)."""
    wnids = {"train": ["n01532829", "n01558993", "n01704323"], "val": ["n01855672", "n02091244"],
             "test": ["n01930112", "n01981276", "n02099601"]}
    for split, classes in wnids.items():
        rows = ["filename,label"]
        for c, wnid in enumerate(classes):
            for i in range(per):
                name = png(root / "images" / f"{wnid}{i:08d}.jpg", c, "JPEG")
                rows.append(f"{name},{wnid}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def make_folders(root: Path, splits=("base", "val", "novel"), per: int = 4) -> Path:
    """``root/{base,val,novel}/<class>/*.png`` with distinct classes per split."""
    for s, split in enumerate(splits):
        for c in range(3):
            for i in range(per):
                png(root / split / f"{split}_class{c}" / f"{i:04d}.png", c + s)
    return root


# --- VTAB-1k ---------------------------------------------------------------------------------------------------

def test_vtab_names_19_tasks_in_three_groups():
    assert len(vtab.TASKS) == 19
    assert {g: len(t) for g, t in vtab.GROUPS.items()} == {"natural": 7, "specialized": 4, "structured": 8}
    assert vtab.TASKS["eurosat"] == "specialized" and vtab.TASKS["dsprites_ori"] == "structured"


def test_vtab_splits_are_exactly_the_files(tmp_path):
    folder = make_vtab(tmp_path / "vtab-1k")
    ds = load_dataset(f"vtab1k:{folder}")
    assert isinstance(ds, BenchmarkDataset) and ds.benchmark == "vtab1k" and ds.name == "caltech101"
    assert ds.classes == ["0", "1", "2"]
    for name in ("train800", "val200", "train800val200", "test"):
        rows = [line.rsplit(" ", 1) for line in (folder / f"{name}.txt").read_text().split("\n") if line]
        part = ds.split(name)
        assert part.names == [str(folder / p) for p, _ in rows]
        assert list(part.labels) == [int(v) for _, v in rows]
    assert ds.train.names == ds.split("train800val200").names and ds.test.names == ds.split("test").names
    assert not set(ds.train.names) & set(ds.test.names)
    assert not set(ds.split("train800").names) & set(ds.split("val200").names)
    assert ds.split_files == {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in vtab.SPLIT_FILES}
    assert ds.train.image(0).size == (8, 8)
    val = load_dataset(f"vtab1k-val:{folder}")
    assert val.train.names == ds.split("train800").names and val.test.names == ds.split("val200").names


def test_vtab_paths_relative_to_images_folder(tmp_path):
    folder = make_vtab(tmp_path, "dtd")
    for f in folder.glob("*.txt"):
        f.write_text(f.read_text().replace("images/", ""))
    assert len(load_dataset(f"vtab1k:{folder}").test) == 6


def _edit(folder: Path, name: str, old: str, new: str) -> None:
    p = folder / name
    p.write_text(p.read_text().replace(old, new, 1))


@pytest.mark.parametrize("damage, fragments", [
    (lambda f: None, ["no VTAB-1k task", "caltech101"]),  # spec names an unknown task folder (below)
    (lambda f: (f / "val200.txt").unlink(), ["lacks split file val200.txt"]),
    (lambda f: _edit(f, "test.txt", "images/test/0_1.png 0", "images/test/0_1.png"), ["test.txt:2: malformed line"]),
    (lambda f: _edit(f, "test.txt", "images/test/1_0.png 1", "images/test/1_0.png one"), ["test.txt:3: malformed"]),
    (lambda f: (f / "images/test/2_1.png").unlink(), ["test.txt:6: no image 'images/test/2_1.png'"]),
    (lambda f: _edit(f, "test.txt", "images/test/2_1.png 2", "images/test/2_1.png 7"),
     ["test.txt has label 7, outside train800val200's 0..2"]),
])
def test_vtab_bad_layouts_are_one_clear_error(tmp_path, damage, fragments):
    folder = make_vtab(tmp_path / "vtab-1k")
    damage(folder)
    spec = f"vtab1k:{tmp_path / 'vtab-1k' / 'caltech'}" if fragments[0].startswith("no VTAB") else f"vtab1k:{folder}"
    with pytest.raises(PefsError) as e:
        load_dataset(spec)
    assert all(f in str(e.value) for f in fragments), str(e.value)
    assert "\n" not in str(e.value)


def test_vtab_missing_task_folder_and_label_gaps(tmp_path):
    with pytest.raises(PefsError, match="VTAB-1k task folder for 'svhn' .* does not exist"):
        load_dataset(f"vtab1k:{tmp_path / 'svhn'}")
    folder = make_vtab(tmp_path, classes=3)
    for name in ("train800.txt", "val200.txt", "train800val200.txt", "test.txt"):
        p = folder / name
        p.write_text("\n".join(line for line in p.read_text().split("\n") if not line.endswith(" 1")) + "\n")
    with pytest.raises(PefsError, match=r"must be 0\.\.C-1 with every class present; no image of label 1"):
        load_dataset(f"vtab1k:{folder}")


def test_vtab_overlapping_splits_are_refused(tmp_path):
    folder = make_vtab(tmp_path)
    (folder / "test.txt").write_text((folder / "test.txt").read_text() + "images/train800/0_0.png 0\n")
    with pytest.raises(PefsError, match="splits 'train800val200' and 'test' share 1 images"):
        load_dataset(f"vtab1k:{folder}")


def test_fingerprint_covers_split_file_bytes(tmp_path):
    folder = make_vtab(tmp_path)
    before = data_fingerprint(f"vtab1k:{folder}")
    assert before.startswith("vtab1k:4 split files:")
    p = folder / "val200.txt"
    st = p.stat()
    lines = p.read_text().split("\n")
    p.write_text("\n".join([lines[1], lines[0], *lines[2:]]))  # same size; mtime put back below
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert data_fingerprint(f"vtab1k:{folder}") != before
    assert data_fingerprint(f"vtab1k:{folder}") == data_fingerprint(f"vtab1k:{folder}")


# --- episodic: miniImageNet and class folders ----------------------------------------------------------------------

def test_miniimagenet_splits_and_novel_episodes(tmp_path):
    root = make_mini(tmp_path / "mini-imagenet")
    ds = load_dataset(f"miniimagenet:{root}")
    assert ds.benchmark == "miniimagenet" and ds.test is None
    assert ds.base.classes == ["n01532829", "n01558993", "n01704323"] and len(ds.base) == 12
    assert ds.split("val").classes == ["n01855672", "n02091244"]
    assert ds.classes == ds.split("novel").classes == ["n01930112", "n01981276", "n02099601"]
    for split, csv_name in (("base", "train.csv"), ("val", "val.csv"), ("novel", "test.csv")):
        rows = [r.split(",") for r in (root / csv_name).read_text().split("\n")[1:] if r]
        part = ds.split(split)
        assert part.names == [str(root / "images" / f) for f, _ in rows]
        assert [part.classes[v] for v in part.labels] == [w for _, w in rows]
    assert set(ds.split_files) == {"train.csv", "val.csv", "test.csv"}
    novel = set(ds.split("novel").names)
    for ep in episodes(ds.train, 2, 1, 2, 10, seed=0):
        assert set(ep.support.names) <= novel and set(ep.query.names) <= novel
        assert set(ep.support.classes) <= set(ds.split("novel").classes)


@pytest.mark.parametrize("damage, fragment", [
    (lambda r: (r / "val.csv").unlink(), "lacks split file val.csv"),
    (lambda r: _edit(r, "test.csv", ".jpg,n01930112", ".jpg;n01930112"), "test.csv:2: malformed row"),
    (lambda r: (r / "test.csv").write_text((r / "test.csv").read_text() + "n09999999.jpg,n09999999\n"),
     "test.csv:14: no image 'n09999999.jpg'"),
    (lambda r: _edit(r, "val.csv", ",n01855672", ",n01930112"), "splits 'val' and 'novel' share 1 classes"),
    (lambda r: _edit(r, "train.csv", "filename,label", "file,wnid"), "train.csv:1: expected the header"),
])
def test_miniimagenet_bad_layouts(tmp_path, damage, fragment):
    root = make_mini(tmp_path / "mini")
    damage(root)
    with pytest.raises(PefsError) as e:
        load_dataset(f"miniimagenet:{root}")
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_class_folders_layout(tmp_path):
    root = make_folders(tmp_path / "cub")
    ds = load_dataset(f"fewshot:{root}")
    assert ds.benchmark == "fewshot" and ds.name == "cub"
    assert ds.classes == ["novel_class0", "novel_class1", "novel_class2"]
    assert ds.base.classes == ["base_class0", "base_class1", "base_class2"]
    assert set(ds.split_files) == {"base/ (listing)", "val/ (listing)", "novel/ (listing)"}
    assert len(ds.train) == 12 and all("/novel/" in n for n in ds.train.names)
    alias = load_dataset(f"fewshot:{make_folders(tmp_path / 'cifar-fs', ('train', 'test'))}")
    assert set(alias.splits) == {"base", "novel"} and alias.classes[0] == "test_class0"


def test_class_folder_errors(tmp_path):
    root = make_folders(tmp_path / "a")
    for p in (root / "novel" / "novel_class1").iterdir():
        p.unlink()
    with pytest.raises(PefsError, match="novel_class1' has no images"):
        load_dataset(f"fewshot:{root}")
    with pytest.raises(PefsError, match="has no novel split: expected a novel/ or test/ folder"):
        load_dataset(f"fewshot:{make_folders(tmp_path / 'b', ('base',))}")
    shared = make_folders(tmp_path / "c")
    (shared / "novel" / "novel_class0").rename(shared / "novel" / "base_class0")
    with pytest.raises(PefsError, match="splits 'base' and 'novel' share 1 classes"):
        load_dataset(f"fewshot:{shared}")


def test_registry_and_plain_specs_are_untouched(tmp_path):
    assert {"vtab1k", "vtab1k-val", "miniimagenet", "fewshot"} <= set(BENCHMARKS)
    folder = make_folders(tmp_path / "plain", ("x",)) / "x"  # an ordinary image folder still loads as one
    assert load_dataset(str(folder)).source == "image folder"


# --- end to end through the CLI -----------------------------------------------------------------------------------

def _record(out: Path) -> dict:
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


def test_cli_tune_on_vtab(tmp_path):
    folder = make_vtab(tmp_path / "vtab-1k", "eurosat")
    assert main(["tune", "--data", f"vtab1k:{folder}", *RUN, "--output", str(tmp_path / "out")]) == 0
    rec = _record(tmp_path / "out")
    assert rec["dataset"]["source"] == "benchmark vtab1k" and rec["dataset"]["classes"] == 3
    assert rec["benchmark"]["split_files"]["test.txt"] == hashlib.sha256((folder / "test.txt").read_bytes()).hexdigest()
    assert rec["benchmark"]["roles"] == {"train": "train800val200", "test": "test"}
    assert rec["fingerprints"]["data"].startswith("vtab1k:4 split files:")
    assert rec["runs"][0]["query"] == 6 and rec["runs"][0]["support"] == 3  # all of test.txt; 1 shot x 3 classes


@pytest.mark.parametrize("kind", ["miniimagenet", "fewshot"])
def test_cli_tune_episodes_on_novel_classes(tmp_path, kind):
    root = make_mini(tmp_path / "mini") if kind == "miniimagenet" else make_folders(tmp_path / "cub")
    out = tmp_path / "out"
    assert main(["tune", "--data", f"{kind}:{root}", *RUN, "--ways", "2", "--episodes", "2", "--queries", "2",
                 "--output", str(out)]) == 0
    rec = _record(out)
    ds = load_dataset(f"{kind}:{root}")
    drawn = {ds.classes[c] for r in rec["runs"] for c in r["info"]["classes"]}  # indices into the sampled split
    assert len(rec["runs"]) == 2 and drawn <= set(ds.split("novel").classes)
    assert not drawn & set(ds.base.classes) and all(r["query"] == 4 for r in rec["runs"])
    assert rec["benchmark"]["roles"] == {"train": "novel"} and rec["dataset"]["classes"] == 3


def test_cli_bad_layout_is_one_line(tmp_path, capsys):
    folder = make_vtab(tmp_path / "vtab-1k")
    (folder / "train800val200.txt").write_text("images/train800/0_0.png\n")
    assert main(["tune", "--data", f"vtab1k:{folder}", *RUN, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train800val200.txt:1: malformed line" in err, err


@pytest.mark.parametrize("name", ["vtab1k.yaml", "episodic-miniimagenet.yaml", "fewshot-fgvc.yaml",
                                  "cross-domain.yaml"])
def test_benchmark_recipes_parse(name):
    recipe = load_recipe(ROOT / "recipes" / name)
    assert recipe["data"].split(":", 1)[0] in BENCHMARKS
