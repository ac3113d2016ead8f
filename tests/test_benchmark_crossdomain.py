"""Cross-domain sources on fixtures in their exact layouts: BSCD-FSL's EuroSAT, ISIC 2018, ChestX and
CropDisease as its loaders read them (IBM/cdfsl-benchmark), and the Meta-Dataset-style multi-source folder reader.
Every class is novel (episodes only), labels are as the files say, bad layouts are one clear error, and
``pefs tune`` runs episodes end to end on each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pefs.cli.main import main
from pefs.data import episodes, load_dataset
from pefs.data.benchmarks import BENCHMARKS, bscd
from pefs.errors import PefsError
from tests.test_benchmark_sources import png

RUN = ["--model", "resnet18", "--no-pretrained", "--img-size", "32", "--epochs", "1", "-q"]
EPISODES = ["--ways", "2", "--shots", "1", "--queries", "1", "--episodes", "2"]
ISIC = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
CHESTX_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                 "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


def make_folders(root: Path, sub: str, classes: list[str], per: int = 3) -> Path:
    for c, name in enumerate(classes):
        for i in range(per):
            png(root / sub / name / f"{name}_{i}.jpg", c, "JPEG")
    return root


def make_eurosat(root: Path) -> Path:
    return make_folders(root / "EuroSAT", "2750", ["AnnualCrop", "Forest", "River"])


def make_cropdisease(root: Path) -> Path:
    return make_folders(root / "CropDiseases", "dataset/train", ["Apple___Apple_scab", "Apple___healthy",
                                                                 "Tomato___Late_blight"])


def make_isic(root: Path, per: int = 2) -> Path:
    """ISIC2018_Task3_Training_GroundTruth/...csv (one-hot floats) + ISIC2018_Task3_Training_Input/*.jpg."""
    root = root / "ISIC"
    rows, n = ["image," + ",".join(ISIC)], 24306
    for c in range(len(ISIC)):
        for _ in range(per):
            name = f"ISIC_{n:07d}"
            png(root / bscd.ISIC_IMAGES / f"{name}.jpg", c, "JPEG")
            rows.append(name + "," + ",".join("1.0" if k == c else "0.0" for k in range(len(ISIC))))
            n += 1
    (root / bscd.ISIC_CSV).parent.mkdir(parents=True)
    (root / bscd.ISIC_CSV).write_text("\n".join(rows) + "\n")
    return root


def make_chestx(root: Path, per: int = 2) -> Path:
    """Data_Entry_2017.csv + images/: single-finding rows of the 7 labels, plus rows BSCD-FSL leaves out."""
    root = root / "chestX"
    rows, n = [CHESTX_HEADER], 0
    findings = [label for label in bscd.CHESTX_LABELS for _ in range(per)]
    findings += ["No Finding", "Pneumonia", "Cardiomegaly|Emphysema", "Hernia"]
    for finding in findings:
        n += 1
        name = f"{n:08d}_000.png"
        if "|" not in finding and finding in bscd.CHESTX_LABELS:  # the left-out rows have no image: never read
            png(root / "images" / name, bscd.CHESTX_LABELS.index(finding))
        rows.append(f"{name},{finding},0,{n},58,M,PA,2682,2749,0.143,0.143")
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    return root


def make_metadataset(root: Path) -> Path:
    """<root>/<source>/{train,val,test}/<class>/: omniglot with three splits, traffic_sign with test only."""
    md = root / "meta-dataset"
    for split in ("train", "val", "test"):
        make_folders(md / "omniglot", split, [f"{split}_char{c}" for c in range(3)])
    make_folders(md / "traffic_sign", "test", [f"sign{c:02d}" for c in range(3)])
    return md


# --- BSCD-FSL -------------------------------------------------------------------------------------------------------

def test_bscd_sets_read_as_their_loaders(tmp_path):
    """Each set's classes and labels are what BSCD-FSL's loader reads; every class is novel (no base split)."""
    euro = load_dataset(f"bscd-eurosat:{make_eurosat(tmp_path)}")
    assert euro.classes == ["AnnualCrop", "Forest", "River"] and len(euro.train) == 9 and euro.test is None
    assert set(euro.splits) == {"novel"} and euro.base is None and euro.benchmark == "bscd-eurosat"
    crop = load_dataset(f"bscd-cropdisease:{make_cropdisease(tmp_path)}")
    assert crop.classes[0] == "Apple___Apple_scab" and set(crop.split_files) == {"dataset/train/ (listing)"}
    root = make_isic(tmp_path)
    isic = load_dataset(f"bscd-isic:{root}")
    rows = [r.split(",") for r in (root / bscd.ISIC_CSV).read_text().splitlines()[1:]]
    assert isic.classes == ISIC and isic.train.names == [str(root / bscd.ISIC_IMAGES / f"{r[0]}.jpg") for r in rows]
    assert [isic.classes[v] for v in isic.train.labels] == [ISIC[r[1:].index("1.0")] for r in rows]
    chest = load_dataset(f"bscd-chestx:{make_chestx(tmp_path)}")
    assert chest.classes == list(bscd.CHESTX_LABELS) and len(chest.train) == 14  # 2 each; 4 rows left out
    assert [chest.classes[v] for v in chest.train.labels] == [c for c in bscd.CHESTX_LABELS for _ in range(2)]
    assert set(chest.split_files) == {"Data_Entry_2017.csv"}


@pytest.mark.parametrize("make, spec, damage, fragment", [
    (make_eurosat, "bscd-eurosat", lambda r: (r / "2750").rename(r / "EuroSAT_RGB"),
     "bscd-eurosat class folder"),
    (make_cropdisease, "bscd-cropdisease",
     lambda r: [p.unlink() for p in (r / "dataset/train/Apple___healthy").iterdir()],
     "Apple___healthy' has no images"),
    (make_isic, "bscd-isic", lambda r: (r / bscd.ISIC_CSV).write_text(
        (r / bscd.ISIC_CSV).read_text().replace("ISIC_0024307,1.0,0.0", "ISIC_0024307,1.0,1.0")),
     "ISIC2018_Task3_Training_GroundTruth.csv:3: malformed row"),
    (make_isic, "bscd-isic", lambda r: (r / bscd.ISIC_IMAGES / "ISIC_0024310.jpg").unlink(),
     "ISIC2018_Task3_Training_GroundTruth.csv:6: no image 'ISIC_0024310.jpg'"),
    (make_isic, "bscd-isic", lambda r: (r / bscd.ISIC_CSV).unlink(), "no ISIC2018_Task3_Training_GroundTruth.csv"),
    (make_chestx, "bscd-chestx", lambda r: (r / "images").rename(r / "images_001"), "ChestX image folder"),
    (make_chestx, "bscd-chestx", lambda r: (r / "Data_Entry_2017.csv").write_text("\n".join(
        line for line in (r / "Data_Entry_2017.csv").read_text().splitlines() if ",Mass," not in line)),
     "bscd-chestx: class 'Mass' has no images"),
])
def test_bscd_bad_layouts_are_one_clear_error(tmp_path, make, spec, damage, fragment):
    """A missing folder or label file, a malformed row (file and line), a listed image that is not there and a
    class without images each stop the load with one line saying what is wrong and where to get the data."""
    root = make(tmp_path)
    damage(root)
    with pytest.raises(PefsError) as e:
        load_dataset(f"{spec}:{root}")
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)
    if "folder" in fragment or "no ISIC" in fragment:
        assert "get it from http" in str(e.value)


def test_bscd_missing_root(tmp_path):
    """A root that is not there names the expected layout and where to download the set."""
    with pytest.raises(PefsError, match=r"bscd-chestx root .* does not exist; expected <root>/Data_Entry_2017.csv"
                                        r".*kaggle.com/nih-chest-xrays"):
        load_dataset(f"bscd-chestx:{tmp_path / 'chestX'}")


# --- Meta-Dataset-style folders -------------------------------------------------------------------------------------

def test_metadataset_one_source_at_a_time(tmp_path):
    """A source's episodes come from its test classes only; train/ is its base split; the record names the
    source and every source under the root; a root without a source named is refused, listing them."""
    md = make_metadataset(tmp_path)
    ds = load_dataset(f"metadataset:{md / 'omniglot'}")
    assert ds.classes == ["test_char0", "test_char1", "test_char2"] and ds.base.classes[0] == "train_char0"
    assert set(ds.splits) == {"base", "val", "novel"}
    assert ds.provenance()["source"] == "omniglot" and ds.provenance()["sources"] == ["omniglot", "traffic_sign"]
    for ep in episodes(ds.train, 2, 1, 1, 5, seed=0):
        assert all("/omniglot/test/" in n for n in ep.support.names + ep.query.names)
    sign = load_dataset(f"metadataset:{md / 'traffic_sign'}")
    assert set(sign.splits) == {"novel"} and sign.base is None
    with pytest.raises(PefsError, match="multi-source root; .* one of omniglot, traffic_sign"):
        load_dataset(f"metadataset:{md}")


def test_metadataset_bad_layouts(tmp_path):
    """A source without test/, a class in two splits, and a split with two spellings are one error each."""
    md = make_metadataset(tmp_path)
    (md / "traffic_sign" / "test").rename(md / "traffic_sign" / "eval")
    with pytest.raises(PefsError, match="has no test/ split"):
        load_dataset(f"metadataset:{md / 'traffic_sign'}")
    (md / "omniglot" / "test" / "test_char0").rename(md / "omniglot" / "test" / "train_char0")
    with pytest.raises(PefsError, match="splits 'base' and 'novel' share 1 classes"):
        load_dataset(f"metadataset:{md / 'omniglot'}")
    (md / "omniglot" / "val").rename(md / "omniglot" / "valid")
    make_folders(md / "omniglot", "val", ["v0"])
    with pytest.raises(PefsError, match="has both val and valid/"):
        load_dataset(f"metadataset:{md / 'omniglot'}")


# --- end to end -----------------------------------------------------------------------------------------------------

def _record(out: Path) -> dict:
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("spec, make", [("bscd-eurosat", make_eurosat), ("bscd-isic", make_isic),
                                        ("bscd-chestx", make_chestx), ("bscd-cropdisease", make_cropdisease),
                                        ("metadataset", lambda t: make_metadataset(t) / "omniglot")])
def test_cli_tune_episodes_on_cross_domain_sets(tmp_path, spec, make):
    """pefs tune runs 2-way 1-shot episodes on each set, drawn from its (novel) classes, and the record names the
    benchmark; a K-shot run on it is refused in one line before any weights load."""
    root = make(tmp_path)
    out = tmp_path / "out"
    assert main(["tune", "--data", f"{spec}:{root}", *RUN, *EPISODES, "--output", str(out)]) == 0
    rec = _record(out)
    ds = load_dataset(f"{spec}:{root}")
    drawn = {ds.classes[c] for r in rec["runs"] for c in r["info"]["classes"]}
    assert len(rec["runs"]) == 2 and drawn <= set(ds.split("novel").classes)
    assert rec["benchmark"]["benchmark"] == spec and rec["benchmark"]["roles"] == {"train": "novel"}
    assert main(["tune", "--data", f"{spec}:{root}", *RUN, "--shots", "1", "--output", str(tmp_path / "k")]) == 2
    assert not (tmp_path / "k").exists() or not list((tmp_path / "k").glob("*.json"))


def test_cross_domain_k_shot_refusal_is_one_line(tmp_path, capsys):
    """The refusal says the set is scored on episodes and what to give instead."""
    assert main(["tune", "--data", f"bscd-eurosat:{make_eurosat(tmp_path)}", *RUN, "--shots", "1",
                 "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "scored on episodes only" in err and "--ways N" in err, err


def test_registry_lists_the_new_sources():
    """Every new source is a --data NAME: spelling with its layout."""
    assert {"coop", "bscd-eurosat", "bscd-isic", "bscd-chestx", "bscd-cropdisease", "metadataset"} <= set(BENCHMARKS)
    assert all(b.layout and b.usage for b in BENCHMARKS.values())
