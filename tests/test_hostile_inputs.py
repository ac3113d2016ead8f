"""Hostile inputs (issue #29, parts 5 and 6): content identity that cannot go stale, every input file (results
stores, model configs, recipes) validated before use with one line naming the file, row or key and problem, and
no raw traceback from a closed pipe or a full disk during claims. Each case's docstring or id is the promise."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pefs.cli.main import main
from pefs.config import identity
from pefs.errors import PefsError
from pefs.results import store
from pefs.results.report.markdown import build_report
from pefs.sweep import run as sweep
from tests.conftest import colour_images, fake_tune, subprocess_env, tiny

ROOT = Path(__file__).resolve().parents[1]
GOOD_ROW = json.loads((ROOT / "benchmarks/strategies/results.jsonl").read_text().splitlines()[0])


@pytest.fixture(autouse=True)
def digest_cache(tmp_path, monkeypatch):
    """Each test's own digest cache folder, outside every data folder."""
    monkeypatch.setenv("PEFS_DIGEST_CACHE", str(tmp_path / "digest-cache"))
    return tmp_path / "digest-cache"


def _same_stats_other_bytes(folder: Path) -> None:
    """Change one byte of one file, keeping its name, size and mtime (what the issue's stale scenario does)."""
    f = folder / "cat" / "0.png"
    st, data = f.stat(), bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


# --- 5. content identity ---------------------------------------------------------------------------------------

def test_same_names_sizes_and_mtimes_but_other_bytes_are_other_data(tmp_path):
    """Promise: two versions of a folder with the same names, sizes and mtimes but different bytes have different
    fingerprints, and the old bytes restored with their mtimes are the old data again."""
    folder = colour_images(tmp_path / "imgs", {"": 2})
    f = folder / "cat" / "0.png"
    v1, st = f.read_bytes(), f.stat()
    first = identity.tree_digest(folder)
    _same_stats_other_bytes(folder)
    second = identity.tree_digest(folder)
    f.write_bytes(v1)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert second != first and identity.tree_digest(folder) == first


def test_touching_files_keeps_the_identity(tmp_path):
    """Promise: the identity is the content: new mtimes on the same bytes are the same data (no needless rerun)."""
    folder = colour_images(tmp_path / "imgs", {"": 2})
    before = identity.tree_digest(folder)
    for p in folder.rglob("*.png"):
        os.utime(p, (1, 1))
    assert identity.tree_digest(folder) == before


def test_the_cache_lives_outside_the_data_and_spares_rereading(tmp_path, monkeypatch, digest_cache):
    """Promise: the content hashes are cached in the user's cache folder (never in the data folder), and a second
    fingerprint of an unchanged folder reads no file's bytes."""
    folder = colour_images(tmp_path / "imgs", {"": 2})
    listing = sorted(p.name for p in folder.rglob("*"))
    monkeypatch.setattr(identity, "RACY_S", 0.0)
    first = identity.tree_digest(folder)
    assert len(list(digest_cache.glob("*.json"))) == 1 and sorted(p.name for p in folder.rglob("*")) == listing
    monkeypatch.setattr(identity, "sha256_file", lambda p: pytest.fail(f"{p} was read again"))
    assert identity.tree_digest(folder) == first


def test_a_file_changed_just_after_hashing_is_never_cached(tmp_path, digest_cache):
    """Promise: a file written within the file system's clock tick of being hashed is hashed again next time
    (its stat could repeat with other bytes), so the cache cannot hide a fast rewrite."""
    folder = colour_images(tmp_path / "imgs", {"": 1})
    identity.tree_digest(folder)
    cached = [json.loads(p.read_text())["files"] for p in digest_cache.glob("*.json")]
    assert cached in ([], [{}])


@pytest.mark.parametrize("damage", ["not json {", "[]", '{"version": 1}', '{"version": 99, "files": {}}',
                                    "wrong-root", "bad-entry", "stale-entry"])
def test_a_damaged_or_foreign_cache_is_ignored_and_rewritten(tmp_path, monkeypatch, digest_cache, damage):
    """Promise: a damaged, foreign or out-of-date digest cache never changes a fingerprint: it is ignored,
    the bytes are hashed, and the cache is rewritten whole."""
    folder = colour_images(tmp_path / "imgs", {"": 2})
    monkeypatch.setattr(identity, "RACY_S", 0.0)
    want = identity.tree_digest(folder)
    (cache,) = digest_cache.glob("*.json")
    good = json.loads(cache.read_text())
    if damage == "wrong-root":
        good["root"] = "/elsewhere"
    elif damage in ("bad-entry", "stale-entry"):
        rel = sorted(good["files"])[0]
        good["files"][rel] = ["x"] if damage == "bad-entry" else [*good["files"][rel][:4], "0" * 64]
        good["files"][rel][0] = good["files"][rel][0] if damage == "bad-entry" else 1  # another size: a miss
    cache.write_text(json.dumps(good) if damage in ("wrong-root", "bad-entry", "stale-entry") else damage)
    assert identity.tree_digest(folder) == want
    assert json.loads(cache.read_text())["version"] == identity.DIGEST_CACHE_VERSION


def test_a_checkpoint_rewritten_with_the_same_size_and_mtime_is_a_new_file(tmp_path):
    """Promise: a file's digest within one process (checkpoints, split files) follows its bytes: rewriting it
    with the same size and mtime gives a new digest, never the cached old one."""
    f = tmp_path / "w.pth"
    f.write_bytes(b"a" * 64)
    st = f.stat()
    first = identity.file_digest(f)
    f.write_bytes(b"b" * 64)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert identity.file_digest(f) != first


def test_an_unwritable_cache_folder_still_fingerprints(tmp_path, monkeypatch):
    """Promise: a cache that cannot be written (its folder is a file) costs speed, never a run."""
    (tmp_path / "blocker").write_text("x")
    monkeypatch.setenv("PEFS_DIGEST_CACHE", str(tmp_path / "blocker" / "sub"))
    folder = colour_images(tmp_path / "imgs", {"": 1})
    assert identity.tree_digest(folder).startswith("3 files:")




def _sweep(folder: Path, st: Path, calls: list) -> sweep.SweepSummary:
    settings = {"models": "resnet18", "strategies": "linear", "shots": "1", "seeds": "0-1", "data": str(folder)}
    return sweep.run_sweep(sweep.plan(sweep.spec_from_settings(settings)), st, runner=fake_tune(calls))


def _sections(md: str) -> dict[str, str]:
    return {s.split("\n", 1)[0]: s for s in md.split("\n## ")[1:]}


def test_data_restored_with_its_mtimes_reports_its_own_numbers(tmp_path):
    """Promise (the issue's stale scenario): sweep on data v1, change the bytes keeping names, sizes and mtimes,
    sweep again (it reruns), restore v1 with its mtimes and sweep (v1's cells are stored): the report shows v1's
    numbers under v1's identity and v2's under v2's, never v2's numbers as v1's, and says which data each came from."""
    folder = colour_images(tmp_path / "imgs", {"": 2})
    f, st, calls = folder / "cat" / "0.png", tmp_path / "results.jsonl", []
    v1, stat = f.read_bytes(), f.stat()
    assert _sweep(folder, st, calls).ran == 2
    _same_stats_other_bytes(folder)
    assert _sweep(folder, st, calls).ran == 2
    f.write_bytes(v1)
    os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _sweep(folder, st, calls).skipped == 2 and len(calls) == 4
    rows = [json.loads(x) for x in st.read_text().splitlines()]
    v1_id, v2_id = rows[0]["cell"]["fingerprints"]["data"], rows[2]["cell"]["fingerprints"]["data"]
    _, problems = build_report(st, tmp_path / "rep", ("md",))
    sections = list(_sections((tmp_path / "rep" / "report.md").read_text()).values())
    assert len(sections) == 2 and v1_id != v2_id and not any("left out" in p for p in problems)
    table = {i: next(ln for ln in s.splitlines() if ln.startswith("| resnet18 | 10"))
             for s in sections for i in (v1_id, v2_id) if f"`{i}`" in s}
    assert "| 51.5 ±" in table[v1_id] and "| 53.5 ±" in table[v2_id]  # seeds 0.51, 0.52 vs 0.53, 0.54


def test_two_folders_of_one_name_never_pool(tmp_path):
    """Promise: report groups are keyed by data identity, not a folder's name: two different folders both
    called ``imgs`` give two groups, each naming its data."""
    st, calls = tmp_path / "results.jsonl", []
    _sweep(colour_images(tmp_path / "a" / "imgs", {"": 2}, seed=1), st, calls)
    _sweep(colour_images(tmp_path / "b" / "imgs", {"": 2}, seed=2), st, calls)
    build_report(st, tmp_path / "rep", ("md",))
    sections = _sections((tmp_path / "rep" / "report.md").read_text())
    assert len(sections) == 2 and all("(data folder:" in h for h in sections)


# --- 6. results stores: every row's types and ranges ---------------------------------------------------------

NAN = float("nan")
#: (dotted key, value: None = delete the key) -> the key the one-line refusal names
TAMPERED_ROWS = [
    ("record.accuracies.0", None, "record.accuracies[0]"), ("record.accuracies.0", "0.5", "record.accuracies[0]"),
    ("record.accuracies.0", NAN, "record.accuracies[0]"), ("record.accuracies.0", 1.5, "record.accuracies[0]"),
    ("record.accuracies.0", -0.1, "record.accuracies[0]"), ("record.accuracy_mean", 1.5, "record.accuracy_mean"),
    ("record.accuracy_mean", "high", "record.accuracy_mean"), ("record.accuracy_mean", NAN, "record.accuracy_mean"),
    ("record.accuracies", "0.5", "record.accuracies"), ("record.wall_s", "slow", "record.wall_s"),
    ("record.runs", [5], "record.runs[0]"), ("record.runs.0.accuracy", 2.0, "record.runs[0].accuracy"),
    ("cell.shots", "5", "cell.shots"), ("cell.shots", None, "cell.shots"), ("cell.shots", -1, "cell.shots"),
    ("cell.shots", True, "cell.shots"), ("cell.seed", None, "cell.seed"), ("cell.seed", "0", "cell.seed"),
    ("cell.model", "<del>", "cell.model"), ("cell.strategy", 5, "cell.strategy"), ("cell", "<del>", "cell"),
    ("cell.options", [], "cell.options"), ("record", "<del>", "record"), ("record", "text", "record"),
    ("written_at", "now", "written_at"), ("cell.ways", 1, "cell.ways"),
]


def _tamper(row: dict, dotted: str, value) -> dict:
    row = copy.deepcopy(row)
    *path, last = dotted.split(".")
    target = row
    for k in path:
        target = target[int(k)] if isinstance(target, list) else target[k]
    if value == "<del>":
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return row


def _store_with(tmp_path: Path, dotted: str, value) -> Path:
    bad = _tamper({**GOOD_ROW, "hash": "0" * 16}, dotted, value)
    st = tmp_path / "results.jsonl"
    st.write_text(json.dumps(GOOD_ROW) + "\n" + json.dumps(bad) + "\n")
    return st


@pytest.mark.parametrize("dotted,value,key", TAMPERED_ROWS, ids=[f"{d}={v!r}" for d, v, _ in TAMPERED_ROWS])
def test_a_hand_edited_store_row_is_one_line_naming_file_line_and_key(tmp_path, capsys, dotted, value, key):
    """Promise: pefs report refuses a store row of the wrong type or range (null/string/NaN accuracy, 150%,
    string shots, null seed, a missing key) with one line `<store> line N: <key> <problem>`, no traceback, no
    report written and the store unchanged."""
    st = _store_with(tmp_path, dotted, value)
    before = st.read_bytes()
    assert main(["report", "--store", str(st), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{st} line 2: {key} " in err, err
    assert not (tmp_path / "rep").exists() and st.read_bytes() == before


WRONG_TYPES = [t for t in TAMPERED_ROWS if t[1] != "<del>"][:: 5]


@pytest.mark.parametrize("dotted,value,key", WRONG_TYPES, ids=[d for d, _, _ in WRONG_TYPES])
def test_a_sweep_reading_a_hand_edited_store_names_the_row(tmp_path, capsys, dotted, value, key):
    """Promise: pefs sweep, which reads the store to skip stored cells, refuses a row of the wrong type or range
    the same way before running anything (a missing key the sweep does not read is left to the report)."""
    st = _store_with(tmp_path, dotted, value)
    assert main(["sweep", "--store", str(st), "--models", "efficientnet_lite0.offline", "--strategies", "linear",
                 "--shots", "1", "--seeds", "0", "--dry-run", "-q"]) == 2
    assert f"{st} line 2: {key} " in capsys.readouterr().err


def test_every_committed_store_row_passes_the_row_checks():
    """Promise: the checks refuse nothing pefs wrote: every row of every committed store loads."""
    stores = sorted((ROOT / "benchmarks").glob("*/results.jsonl"))
    assert stores and all(store.load(s).rows for s in stores)


# --- 6. model directories: pefs_config.json checked before anything is built -----------------------------------

@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "m"
    tiny("vit", "lora").save(d)
    return d


TAMPERED_CONFIGS = [
    ("preprocessing.input_size", [3, 60000, 60000], "preprocessing.input_size"),
    ("preprocessing.input_size", "big", "preprocessing.input_size"),
    ("preprocessing.input_size", [3, -1, 32], "preprocessing.input_size"),
    ("preprocessing.input_size", [3, 32], "preprocessing.input_size"),
    ("preprocessing.mean", "grey", "preprocessing.mean"), ("preprocessing.std", [0, 0, 0], "preprocessing.std"),
    ("preprocessing.crop_pct", 5, "preprocessing.crop_pct"),
    ("preprocessing.interpolation", "magic", "preprocessing.interpolation"),
    ("preprocessing.crop_mode", "diagonal", "preprocessing.crop_mode"), ("preprocessing", [], "preprocessing"),
    ("num_classes", "3", "num_classes"), ("num_classes", 0, "num_classes"), ("num_classes", True, "num_classes"),
    ("merged", "no", "merged"), ("spec", 5, "spec"), ("spec", "nope", "spec"), ("options", [], "options"),
    ("options.nope", 1, "options"), ("tune_config", {"head": "nope"}, "tune_config.head"),
    ("tensors.file", "../../outside.safetensors", "tensors.file"), ("tensors.count", "many", "tensors.count"),
    ("class_names", ["a"], "class_names"), ("class_names", "abc", "class_names"),
    ("backbone.params", "many", "backbone.params"), ("backbone.name", 7, "backbone.name"),
    ("load.evil", 1, "load"), ("load", None, "load"),
    ("options.r", float("inf"), "options"),  # JSON Infinity for an int option: int(inf) overflows
    ("base", "x", "base"),  # a random base saved beside the adapter, its entry replaced
]


@pytest.mark.parametrize("dotted,value,key", TAMPERED_CONFIGS, ids=[f"{d}={v!r:.20}" for d, v, _ in TAMPERED_CONFIGS])
def test_a_tampered_model_config_is_refused_before_building(tmp_path, monkeypatch, saved_model, dotted, value, key):
    """Promise: a pefs_config.json with a wrong type, a size beyond the image guard (an input_size of 60000^2
    used to grow to 19 GB first), an unknown strategy or head, or a path out of the folder is one PefsError
    naming the file and the key, before any model is built or tensor read."""
    from pefs import PefsModel

    wrap_module = sys.modules["pefs.model.wrap"]  # the module (``pefs.model.wrap`` is also the function)

    d = tmp_path / "m"
    shutil.copytree(saved_model, d)
    cfg_path = d / "pefs_config.json"
    cfg_path.write_text(json.dumps(_tamper(json.loads(cfg_path.read_text()), dotted, value)))
    monkeypatch.setattr(wrap_module, "wrap", lambda *a, **k: pytest.fail("built a model from a bad config"))
    monkeypatch.setattr(wrap_module.pefs_io, "read_tensors", lambda *a: pytest.fail("read tensors first"))
    with pytest.raises(PefsError) as e:
        PefsModel.load(d)
    assert str(cfg_path) in str(e.value) and key in str(e.value) and "\n" not in str(e.value)


def test_predict_on_a_huge_input_size_is_one_line(tmp_path, saved_model, capsys):
    """Promise: `pefs predict` on a model whose config asks for 60000x60000 inputs says so in one line (exit 2)
    instead of allocating gigabytes."""
    d = tmp_path / "m"
    shutil.copytree(saved_model, d)
    cfg = json.loads((d / "pefs_config.json").read_text())
    cfg["preprocessing"]["input_size"] = [3, 60000, 60000]
    (d / "pefs_config.json").write_text(json.dumps(cfg))
    image = colour_images(tmp_path / "imgs", {"": 1}) / "cat" / "0.png"
    assert main(["predict", str(d), str(image), "--out", str(tmp_path / "p.csv"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "input_size" in err and "--max-image-pixels" in err and not (tmp_path / "p.csv").exists()


def test_a_good_saved_config_passes_the_checks(saved_model):
    """Promise: the checks refuse nothing pefs saves."""
    from pefs.model.directory import read_config

    assert read_config(saved_model)["spec"] == "lora"


# --- 6. recipes: the key, the value and the file ---------------------------------------------------------------

BAD_RECIPES = ["shots: -1", "epochs: -1", "lr: -1", "head: nope", "strategies: [{name: nope}]", "models: [5]",
               "batch_size: 0", "lr: fast", "shots: [1, a]", "1: 2", "strategies: [5]", "seeds: [null]"]


@pytest.mark.parametrize("text", BAD_RECIPES)
def test_a_bad_recipe_value_names_the_recipe_file(tmp_path, capsys, text):
    """Promise: a recipe with an unknown key, a wrong type or a bad value is one line that names the recipe file
    (and the key or value), before any cell runs or any file is written."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("models: efficientnet_lite0.offline\nstrategies: linear\nshots: 1\nseeds: 0\n" + text + "\n")
    assert main(["sweep", "--recipe", str(recipe), "--store", str(tmp_path / "s" / "r.jsonl"), "--dry-run", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(recipe) in err and err.count("\n") == 0, err
    assert not (tmp_path / "s").exists()


# --- raw tracebacks: closed pipes, full disks during claims ----------------------------------------------------

class _GonePipe:
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("command", [["strategies"], ["models"], ["report", "--help"]])
def test_a_reader_that_goes_away_ends_quietly(monkeypatch, capsys, command):
    """Promise: `pefs strategies | head` and friends end quietly (exit 141, the shell's SIGPIPE status; --help
    exits 0 through argparse), never a BrokenPipeError traceback, whichever command wrote."""
    monkeypatch.setattr(sys, "stdout", _GonePipe())
    try:
        code = main(command)
    except SystemExit as e:  # --help exits through argparse, which ignores a closed pipe itself
        code = e.code
    except BrokenPipeError:
        pytest.fail("BrokenPipeError escaped")
    assert code == (0 if "--help" in command else 141)


def test_a_closed_pipe_gives_no_traceback_in_a_real_process():
    """Promise: with the reading end of its stdout already closed, `python -m pefs.cli strategies` exits 141
    with nothing on stderr."""
    p = subprocess.Popen([sys.executable, "-m", "pefs.cli", "strategies"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=subprocess_env(), cwd=ROOT)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and "Traceback" not in err, err


def test_a_full_disk_while_claiming_is_one_line_and_leaves_the_store(tmp_path, monkeypatch):
    """Promise: a sweep whose claim file cannot be written (ENOSPC) stops with one PefsError line naming the
    claims folder; the store keeps its bytes and no empty claim is left to block the cell later."""
    import errno

    st, calls = tmp_path / "results.jsonl", []
    st.write_text(json.dumps(GOOD_ROW) + "\n")
    before = st.read_bytes()
    real = os.fdopen

    class Full:
        def __init__(self, fd, *a, **k):
            self.f = real(fd, *a, **k)

        def __enter__(self):
            return self

        def write(self, text):
            return len(text)

        def __exit__(self, *exc):
            self.f.close()
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", Full)
    with pytest.raises(PefsError, match="No space left on device") as e:
        _sweep(colour_images(tmp_path / "imgs", {"": 2}), st, calls)
    assert "claim" in str(e.value) and "\n" not in str(e.value) and not calls
    assert st.read_bytes() == before and not list((tmp_path / ".results.jsonl.claims").glob("*.claim"))
