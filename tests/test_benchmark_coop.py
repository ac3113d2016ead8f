"""The CoOp few-shot FGVC source (``coop:<root>/<dataset>``) on fixtures in CoOp's own layout: split_zhou JSON
(written as Dassl's write_json writes it) and FGVC-Aircraft's text files; K-shot subsets equal to what Dassl's
``generate_fewshot_dataset`` draws and saves as ``split_fewshot/shot_K-seed_S.pkl``; those pickles read without
running code; bad layouts one clear error; ``pefs tune`` end to end."""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import sys
import types
from collections import defaultdict
from pathlib import Path

import pytest

from pefs.cli.main import main
from pefs.data import kshot_split, load_dataset
from pefs.data.benchmarks import coop
from pefs.data.fingerprint import data_fingerprint
from pefs.errors import PefsError
from tests.test_benchmark_sources import png

RUN = ["--model", "resnet18", "--no-pretrained", "--img-size", "32", "--epochs", "1", "-q"]
BREEDS = ["abyssinian", "beagle", "bombay"]
#: the train list's label order is not sorted, so "first appearance" order matters
TRAIN_ORDER = [2, 0, 2, 1, 0, 2, 1, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1]


def make_pets(root: Path) -> Path:
    """``oxford_pets/images/<Breed>_<n>.jpg`` + split_zhou_OxfordPets.json: 6 train, 3 val, 2 test per class."""
    folder = root / "oxford_pets"
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    count: dict[int, int] = defaultdict(int)

    def add(s: str, label: int) -> None:
        count[label] += 1
        name = f"{BREEDS[label].capitalize()}_{count[label]}.jpg"
        png(folder / "images" / name, label, "JPEG")
        split[s].append([name, label, BREEDS[label]])

    for label in TRAIN_ORDER:
        add("train", label)
    for s, per in (("val", 3), ("test", 2)):
        for label in range(3):
            for _ in range(per):
                add(s, label)
    (folder / "split_zhou_OxfordPets.json").write_text(json.dumps(split, indent=4, separators=(",", ": ")))
    return folder


def make_aircraft(root: Path) -> Path:
    """fgvc-aircraft-2013b's data/ renamed fgvc_aircraft/: images/<id>.jpg, variants.txt, images_variant_*.txt."""
    folder = root / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Cessna 172"]
    (folder / "variants.txt").parent.mkdir(parents=True)
    (folder / "variants.txt").write_text("\n".join(variants) + "\n")
    n = 1000000
    for split, per in (("train", 3), ("val", 2), ("test", 2)):
        lines = []
        for c, v in enumerate(variants):
            for _ in range(per):
                n += 1
                png(folder / "images" / f"{n}.jpg", c, "JPEG")
                lines.append(f"{n} {v}")
        (folder / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


class Datum:
    """Dassl's Datum as pickled (module dassl.data.datasets.base_dataset): the attributes CoOp saves."""

    def __init__(self, impath: str, label: int, classname: str) -> None:
        self._impath, self._label, self._domain, self._classname = impath, label, 0, classname


def dassl_fewshot(items: list[Datum], num_shots: int) -> list[Datum]:
    """Dassl's generate_fewshot_dataset (repeat=False), transcribed: per label in first-seen order, sample."""
    tracker: dict[int, list[Datum]] = defaultdict(list)
    for item in items:
        tracker[item._label].append(item)
    out: list[Datum] = []
    for items_of in tracker.values():
        out.extend(random.sample(items_of, num_shots) if len(items_of) >= num_shots else items_of)
    return out


@pytest.fixture
def dassl_module(monkeypatch):
    """Datum importable as dassl.data.datasets.base_dataset.Datum, so pickles name it as CoOp's do."""
    mod = types.ModuleType("dassl.data.datasets.base_dataset")
    mod.Datum = Datum
    Datum.__module__ = mod.__name__
    for name in ("dassl", "dassl.data", "dassl.data.datasets"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod


def coop_pickle(folder: Path, shots: int, seed: int, elsewhere: str = "/home/someone/DATA") -> Path:
    """What CoOp's dataset class saves: random.seed(seed), K-shot train then min(K, 4)-shot val, pickled with
    the absolute image paths of the machine that drew it."""
    split = json.loads((folder / "split_zhou_OxfordPets.json").read_text())
    items = {s: [Datum(f"{elsewhere}/oxford_pets/images/{p}", lab, c) for p, lab, c in split[s]] for s in split}
    random.seed(seed)
    data = {"train": dassl_fewshot(items["train"], shots), "val": dassl_fewshot(items["val"], min(shots, 4))}
    path = folder / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def tails(names: list[str]) -> list[str]:
    return [Path(n).name for n in names]


# --- loading --------------------------------------------------------------------------------------------------------

def test_coop_splits_are_exactly_the_json(tmp_path):
    """Train, val and test are CoOp's split JSON entry for entry (path, label, class name), disjoint."""
    folder = make_pets(tmp_path)
    ds = load_dataset(f"coop:{folder}")
    split = json.loads((folder / "split_zhou_OxfordPets.json").read_text())
    assert ds.benchmark == "coop" and ds.name == "oxford_pets" and ds.classes == BREEDS
    for s in ("train", "val", "test"):
        part = ds.split(s)
        assert part.names == [str(folder / "images" / p) for p, _, _ in split[s]]
        assert list(part.labels) == [lab for _, lab, _ in split[s]]
        assert [part.classes[v] for v in part.labels] == [c for _, _, c in split[s]]
    assert ds.train.names == ds.split("train").names and ds.test.names == ds.split("test").names
    tr, va, te = (set(ds.split(s).names) for s in ("train", "val", "test"))
    assert not tr & va and not tr & te and not va & te
    digest = hashlib.sha256((folder / "split_zhou_OxfordPets.json").read_bytes()).hexdigest()
    assert ds.split_files == {"split_zhou_OxfordPets.json": digest}


def test_fgvc_aircraft_reads_its_text_files(tmp_path):
    """FGVC-Aircraft: images_variant_<split>.txt rows '<id> <variant>' (spaces kept), labels by variants.txt."""
    folder = make_aircraft(tmp_path)
    ds = load_dataset(f"coop:{folder}")
    assert ds.classes == ["707-320", "A300B4", "Cessna 172"]
    rows = [line.split(" ", 1) for line in (folder / "images_variant_test.txt").read_text().splitlines()]
    assert ds.test.names == [str(folder / "images" / f"{i}.jpg") for i, _ in rows]
    assert [ds.classes[v] for v in ds.test.labels] == [v for _, v in rows]
    assert (len(ds.train), len(ds.split("val")), len(ds.test)) == (9, 6, 6)
    assert set(ds.split_files) == set(coop.AIRCRAFT_FILES)


# --- K-shot draws ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shots, seed", [(1, 1), (2, 3), (4, 2), (7, 1)])
def test_kshot_draw_is_dassls(tmp_path, dassl_module, shots, seed):
    """pefs' K-shot train and val subsets equal Dassl's generate_fewshot_dataset after random.seed(seed), in its
    order (7 shots > 6 per class: every image, as repeat=False); with CoOp's saved pickle present, the same."""
    folder = make_pets(tmp_path)
    ds = load_dataset(f"coop:{folder}")
    train, val = coop.draw(ds, shots, seed)
    saved = pickle.loads(coop_pickle(folder, shots, seed).read_bytes())  # our own file, written just above
    assert tails(ds.split("train").subset(train).names) == [Path(d._impath).name for d in saved["train"]]
    assert tails(ds.split("val").subset(val).names) == [Path(d._impath).name for d in saved["val"]]
    split = kshot_split(ds, shots, seed=seed)  # what --shots K --seeds S trains on
    assert tails(split.support.names) == [Path(d._impath).name for d in saved["train"]]
    assert split.query.names == ds.test.names
    assert data_fingerprint(f"coop:{folder}").startswith("coop:2 split files:")  # the pickle is in the run key
    again = load_dataset(f"coop:{folder}")  # now read from the pickle
    assert coop.draw(again, shots, seed) == (train, val)
    assert again.split_files[f"split_fewshot/shot_{shots}-seed_{seed}.pkl"] == \
        hashlib.sha256((folder / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl").read_bytes()).hexdigest()


def test_saved_draw_wins_over_pefs_draw(tmp_path, dassl_module):
    """A saved CoOp pickle is what the run trains on, even where it differs from a fresh draw (another seed's)."""
    folder = make_pets(tmp_path)
    other = coop_pickle(folder, 2, 2)
    other.rename(folder / "split_fewshot" / "shot_2-seed_1.pkl")
    ds = load_dataset(f"coop:{folder}")
    fresh = coop.draw(load_dataset(f"coop:{make_pets(tmp_path / 'clean')}"), 2, 1)[0]
    support = kshot_split(ds, 2, seed=1).support
    expected = [Path(d._impath).name for d in pickle.loads(
        (folder / "split_fewshot" / "shot_2-seed_1.pkl").read_bytes())["train"]]
    assert tails(support.names) == expected and support.names != ds.split("train").subset(fresh).names


class Boom:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("payload", ["code", "other-class", "not-a-dict", "garbage"])
def test_pickles_never_run_code(tmp_path, dassl_module, payload):
    """A K-shot pickle that names any callable but Dassl's Datum is refused by name and nothing in it runs;
    wrong shapes and junk bytes are refused too, each one line naming the file."""
    folder = make_pets(tmp_path)
    marker = tmp_path / "ran"
    path = folder / "split_fewshot" / "shot_1-seed_1.pkl"
    path.parent.mkdir()
    data = {"code": {"train": [Boom(marker)], "val": []}, "other-class": {"train": [types.SimpleNamespace()],
            "val": []}, "not-a-dict": [1, 2]}.get(payload)
    path.write_bytes(b"\x80\x05junk" if data is None else pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
    ds = load_dataset(f"coop:{folder}")
    with pytest.raises(PefsError) as e:
        kshot_split(ds, 1, seed=1)
    msg = str(e.value)
    assert "shot_1-seed_1.pkl" in msg and "\n" not in msg and not marker.exists()
    if payload == "code":
        assert "pathlib" in msg and "only dassl.data.datasets.base_dataset.Datum" in msg
    if payload == "other-class":
        assert "types.SimpleNamespace" in msg


def test_pickle_of_another_folder_is_refused(tmp_path, dassl_module):
    """A saved draw naming an image that is not in this folder's split is refused, not silently dropped."""
    folder = make_pets(tmp_path)
    path = coop_pickle(folder, 1, 1)
    data = pickle.loads(path.read_bytes())
    data["train"][0]._impath = "/x/oxford_pets/images/Persian_9.jpg"
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(PefsError, match=r"train\[0\] image '/x/oxford_pets/images/Persian_9.jpg' is not in"):
        kshot_split(load_dataset(f"coop:{folder}"), 1, seed=1)


# --- bad layouts ----------------------------------------------------------------------------------------------------

def _entry_line(folder: Path, rel: str) -> int:
    lines = (folder / "split_zhou_OxfordPets.json").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if f'"{rel}"' in line) - 1  # the entry's "[" line


@pytest.mark.parametrize("damage, fragment", [
    (lambda f: (f / "split_zhou_OxfordPets.json").unlink(), "lacks split file split_zhou_OxfordPets.json"),
    (lambda f: (f / "split_zhou_OxfordPets.json").write_text('{"train": [\n["a.jpg", 0, "x"],\n]}'),
     "split_zhou_OxfordPets.json:3: not valid JSON"),
    (lambda f: (f / "split_zhou_OxfordPets.json").write_text('{"train": [], "test": []}'),
     'split_zhou_OxfordPets.json:1: expected an object with lists "train", "val", "test"'),
    (lambda f: (f / "images" / "Beagle_8.jpg").unlink(), "no image 'Beagle_8.jpg'"),
    (lambda f: [p.unlink() for p in (f / "images").glob("Bombay_*")], "no image 'Bombay_1.jpg'"),
])
def test_bad_layouts_are_one_clear_error(tmp_path, damage, fragment):
    """A missing or malformed split file, and a class whose images are not there, each stop the load with one
    line naming the file (and the entry's line)."""
    folder = make_pets(tmp_path)
    damage(folder)
    with pytest.raises(PefsError) as e:
        load_dataset(f"coop:{folder}")
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_malformed_entry_names_its_line(tmp_path):
    """An entry that is not [path, whole-number label, class name] is named by file and the entry's line."""
    folder = make_pets(tmp_path)
    line = _entry_line(folder, "Beagle_3.jpg")
    p = folder / "split_zhou_OxfordPets.json"
    split = json.loads(p.read_text())
    i = next(i for i, e in enumerate(split["train"]) if e[0] == "Beagle_3.jpg")
    split["train"][i][1] = "one"
    p.write_text(json.dumps(split, indent=4, separators=(",", ": ")))
    with pytest.raises(PefsError, match=rf"split_zhou_OxfordPets.json:{line}: malformed entry"):
        load_dataset(f"coop:{folder}")
    assert missing_class_error(tmp_path) == "class 'bombay'"


def missing_class_error(tmp_path: Path) -> str:
    """The class an image-less split entry is reported under."""
    folder = make_pets(tmp_path / "b")
    for p in (folder / "images").glob("Bombay_*"):
        p.unlink()
    try:
        load_dataset(f"coop:{folder}")
    except PefsError as e:
        return str(e).rsplit("(", 1)[1].rstrip(")")
    return ""


def test_missing_or_unknown_dataset_folder(tmp_path):
    """A dataset folder that is not there, or a name CoOp does not have, is one error listing the names."""
    with pytest.raises(PefsError, match="CoOp dataset folder for 'dtd' .* does not exist; see https://github.com/"):
        load_dataset(f"coop:{tmp_path / 'dtd'}")
    with pytest.raises(PefsError, match="names no CoOp dataset: .* oxford_pets, oxford_flowers, fgvc_aircraft"):
        load_dataset(f"coop:{tmp_path / 'pets'}")
    folder = make_aircraft(tmp_path)
    (folder / "images_variant_val.txt").write_text("1000004 Boeing 747\n")
    with pytest.raises(PefsError, match=r"images_variant_val.txt:1: variant 'Boeing 747' is not in variants.txt"):
        load_dataset(f"coop:{folder}")


# --- end to end -----------------------------------------------------------------------------------------------------

def _record(out: Path) -> dict:
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


def test_cli_tune_on_coop_trains_on_coops_kshot(tmp_path, dassl_module):
    """pefs tune --data coop:... --shots 2 --seeds 1 trains on CoOp's 2-shot draw for seed 1, scores all of
    CoOp's test split, and names the split file with its SHA-256 in the record."""
    folder = make_pets(tmp_path)
    out = tmp_path / "out"
    assert main(["tune", "--data", f"coop:{folder}", *RUN, "--shots", "2", "--seeds", "1",
                 "--output", str(out)]) == 0
    rec = _record(out)
    assert rec["dataset"]["source"] == "benchmark coop" and rec["dataset"]["classes"] == 3
    assert rec["runs"][0]["support"] == 6 and rec["runs"][0]["query"] == 6
    assert rec["benchmark"]["split_files"]["split_zhou_OxfordPets.json"] == \
        hashlib.sha256((folder / "split_zhou_OxfordPets.json").read_bytes()).hexdigest()
    assert rec["fingerprints"]["data"].startswith("coop:1 split files:")


def test_search_on_coop_scores_coops_val_draw(tmp_path, monkeypatch):
    """--search on a CoOp source scores each setting on CoOp's min(K, 4)-shot val draw for the seed (never on
    test), then trains the chosen one on the K shots and scores test."""
    from pefs.runtime.task import TaskRunner
    calls = []
    real = TaskRunner.run

    def spy(self, support, query, seed, train=None):
        calls.append((list(support.names), list(query.names)))
        return real(self, support, query, seed, train)

    monkeypatch.setattr(TaskRunner, "run", spy)
    folder = make_pets(tmp_path)
    ds = load_dataset(f"coop:{folder}")
    train, val = coop.draw(ds, 2, 1)
    assert main(["tune", "--data", f"coop:{folder}", *RUN, "--shots", "2", "--seeds", "1", "--search",
                 "lr=1e-3,1e-2", "--output", str(tmp_path / "out")]) == 0
    support, val_names = ds.split("train").subset(train).names, ds.split("val").subset(val).names
    assert calls == [(support, val_names), (support, val_names), (support, ds.test.names)]
    assert _record(tmp_path / "out")["selection"]["on"] == "coop's own validation split"
