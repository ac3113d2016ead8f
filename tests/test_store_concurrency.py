"""Stores many writers share: torn lines never swallow rows, two sweeps split the cells and finish a killed
one's, and a cell's key follows the content of its data and checkpoint, not their paths."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pefs.errors import PefsError
from pefs.results import claims, store
from pefs.results.aggregate import aggregate, current_rows
from pefs.results.report.markdown import build_report
from pefs.sweep import run as sweep
from tests.conftest import fake_tune, subprocess_env

SWEEP = ["sweep", "--models", "resnet18", "--no-pretrained", "--strategies", "linear", "--shots", "1",
         "--img-size", "32", "--epochs", "1", "-q"]


def _writer(path: str, tag: str, n: int) -> None:
    for i in range(n):
        store.append(path, store.make_row(f"{tag}{i:04d}", {"seed": i}, "ok", {"pad": "x" * (i % 50)}))


def test_two_writer_processes_and_a_torn_line_lose_no_row(tmp_path):
    st = tmp_path / "results.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(st), tag, 150)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    time.sleep(0.05)
    with open(st, "ab") as f:  # a third writer killed in the middle of its line
        f.write(b'{"pefs_row":1,"hash":"torn","status":"o')
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    contents = store.load(st)
    assert len(contents.rows) == 300 and "torn" not in contents.rows
    assert len(contents.problems) == 1 and "torn" in contents.problems[0]


def test_a_row_glued_onto_a_torn_line_is_recovered(tmp_path):
    st = tmp_path / "results.jsonl"
    good = json.dumps(store.make_row("whole", {}, "ok", {}), separators=(",", ":"))
    st.write_text('{"pefs_row":1,"hash":"first","status":"ok","cell":{}}\n{"pefs_row":1,"hash":"cut","sta'
                  + good + "\n")  # what a writer that did not start on a fresh line left
    contents = store.load(st)
    assert set(contents.rows) == {"first", "whole"}
    assert "line 2" in contents.problems[0] and "whole row after it" in contents.problems[0]


def test_stale_claims_are_taken_over_live_ones_respected(tmp_path):
    st = tmp_path / "s.jsonl"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = claims.claims_dir(st) / "cell.claim"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"host": os.uname().nodename, "pid": sleeper.pid}))
        assert claims.try_claim(st, "cell") is None  # a live process holds it
    finally:
        sleeper.kill()
        sleeper.wait()
    with claims.try_claim(st, "cell") as claim:  # its process is gone: stale, taken over
        assert claim is not None and json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def _start(store_path: Path, out: Path, seeds: str) -> subprocess.Popen:
    env = subprocess_env(OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "pefs.cli", *SWEEP, "--seeds", seeds, "--store", str(store_path),
                             "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _rows(st: Path) -> list[dict]:
    return [json.loads(x) for x in st.read_text().splitlines() if x.strip()] if st.exists() else []


def test_two_sweeps_on_one_store_split_the_cells(tmp_path):
    st = tmp_path / "results.jsonl"
    a = _start(st, tmp_path / "rec", "0-3")
    b = _start(st, tmp_path / "rec", "0-3")
    outs = [p.communicate(timeout=400) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    hashes = [r["hash"] for r in _rows(st)]
    assert len(hashes) == 4 and len(set(hashes)) == 4  # every cell once: none run twice
    ran = [int(out.split("this process ran ")[1].split(",")[0]) for out, _ in outs]
    assert sum(ran) == 4, outs  # between them, each cell ran exactly once


def _claimers(st: Path) -> list[int]:
    pids = []
    for c in claims.claims_dir(st).glob("*.claim"):
        try:
            pids.append(json.loads(c.read_text())["pid"])
        except (OSError, ValueError, KeyError):  # released or being written this instant
            pass
    return pids


def test_a_sweep_finishes_the_cells_of_one_killed_beside_it(tmp_path):
    st = tmp_path / "results.jsonl"
    a = _start(st, tmp_path / "rec", "0-4")
    b = _start(st, tmp_path / "rec", "0-4")
    t0 = time.time()
    while not _rows(st):
        assert time.time() - t0 < 300 and a.poll() is None
        time.sleep(0.1)
    while a.pid not in _claimers(st):  # kill it while it holds a cell
        assert time.time() - t0 < 300 and a.poll() is None
        time.sleep(0.05)
    a.send_signal(signal.SIGKILL)  # no cleanup at all: its claim stays behind
    a.wait()
    out, err = b.communicate(timeout=400)
    assert b.returncode == 0, err
    hashes = [r["hash"] for r in _rows(st)]
    assert len(set(hashes)) == 5 and len(hashes) == 5, out
    assert not list(claims.claims_dir(st).glob("*.claim"))




def test_changed_data_or_checkpoint_under_the_same_path_reruns(tmp_path, image_folder):
    ckpt = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(2)}, ckpt)
    settings = {"models": "resnet18", "strategies": "linear", "shots": "1", "seeds": "0-1",
                "data": str(image_folder), "checkpoint": str(ckpt)}
    st, calls = tmp_path / "results.jsonl", []
    cells = sweep.plan(sweep.spec_from_settings(settings))
    assert all(c.fingerprints["data"].startswith("folder:18 files:") for c in cells)
    sweep.run_sweep(cells, st, runner=fake_tune(calls))
    assert sweep.run_sweep(sweep.plan(sweep.spec_from_settings(settings)), st, runner=fake_tune(calls)).skipped == 2

    img = image_folder / "cat" / "0.png"  # same path, other pixels
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(img)
    summary = sweep.run_sweep(sweep.plan(sweep.spec_from_settings(settings)), st, runner=fake_tune(calls))
    assert summary.ran == 2 and summary.skipped == 0

    torch.save({"w": torch.ones(2)}, ckpt)  # same checkpoint path, other weights
    summary = sweep.run_sweep(sweep.plan(sweep.spec_from_settings(settings)), st, runner=fake_tune(calls))
    assert summary.ran == 2 and len(calls) == 6
    rows = _rows(st)
    assert len({r["cell"]["fingerprints"]["checkpoint"] for r in rows}) == 2

    _, problems = build_report(st, tmp_path / "rep", ("md",))
    assert any("2 stored result(s) left out" in p for p in problems)  # same data, older checkpoint
    md = (tmp_path / "rep" / "report.md").read_text()
    assert ": 4 finished cells" in md  # each data version's two seeds, under its own identity, never pooled
    old_data, new_data = aggregate(current_rows(list(store.load(st).rows.values()))[0])
    assert {old_data.data, new_data.data} == {r["cell"]["fingerprints"]["data"] for r in rows}
    assert sorted([old_data.accuracies, new_data.accuracies]) == [[0.51, 0.52], [0.55, 0.56]]


def test_rows_that_are_json_but_not_rows_are_reported(tmp_path):
    st = tmp_path / "results.jsonl"
    st.write_text('[1, 2]\n"text"\n{"hash": 5}\n')
    contents = store.load(st)
    assert contents.rows == {} and len(contents.problems) == 3


def test_refresh_reads_only_what_others_appended(tmp_path):
    st = tmp_path / "results.jsonl"
    _writer(str(st), "a", 3)
    contents = store.load(st)
    with open(st, "ab") as f:
        f.write(b'{"pefs_row":1,"hash":"half')  # another writer, killed mid-line
    _writer(str(st.with_name("results.1.jsonl")), "s", 2)  # a new shard appears
    _writer(str(st), "b", 2)  # and a live writer goes on, on a fresh line
    store.refresh(contents, st)
    assert set(contents.rows) == {"a0000", "a0001", "a0002", "s0000", "s0001", "b0000", "b0001"}
    assert contents.offsets[st] == st.stat().st_size and contents.duplicates == 0
    assert any("torn or corrupt line" in p for p in contents.problems)


def test_a_claim_left_empty_by_a_kill_is_stale_after_seconds(tmp_path):
    st = tmp_path / "s.jsonl"
    path = claims.claims_dir(st) / "cell.claim"
    path.parent.mkdir(parents=True)
    path.write_text("")  # killed between O_EXCL create and write
    assert claims.try_claim(st, "cell") is None  # it may be being written this instant
    old = time.time() - claims.UNWRITTEN_S - 1
    os.utime(path, (old, old))
    claim = claims.try_claim(st, "cell")
    assert claim is not None
    claim.release()


def test_ok_and_failed_rows_and_the_better_row_per_cell(tmp_path):
    """Per cell the store keeps a success over a failure, else the later row; ``ok()`` / ``failed()`` list the
    kept rows by status, and every extra row of a cell counts as a duplicate."""
    st = tmp_path / "results.jsonl"
    for cell, status in [("a", "failed"), ("a", "ok"), ("b", "ok"), ("b", "failed"), ("c", "failed")]:
        store.append(st, store.make_row(cell, {"seed": 0}, status, {"acc": 0.5} if status == "ok" else None))
    contents = store.load(st)
    assert sorted(r["hash"] for r in contents.ok()) == ["a", "b"]
    assert [r["hash"] for r in contents.failed()] == ["c"] and contents.duplicates == 2
    with pytest.raises(ValueError, match=r"status must be one of \('ok', 'failed'\), got 'done'"):
        store.make_row("d", {}, "done", None)


def test_shard_path_is_the_store_alone_and_a_numbered_file_per_rank(tmp_path):
    """One process writes the store itself; rank r of several writes ``<stem>.<r>.jsonl``; reading lists the store
    first, then its shards by rank number (2 before 10), ignoring other files."""
    st = tmp_path / "results.jsonl"
    assert store.shard_path(st) == st and store.shard_path(st, 0, 1) == st
    assert store.shard_path(st, 2, 3) == tmp_path / "results.2.jsonl"
    for name in ("results.10.jsonl", "results.2.jsonl", "results.jsonl", "results.x.jsonl", "other.1.jsonl"):
        (tmp_path / name).write_text("")
    assert [p.name for p in store.store_files(st)] == ["results.jsonl", "results.2.jsonl", "results.10.jsonl"]


def test_a_store_path_must_be_a_jsonl_file(tmp_path):
    """A store that is not a ``.jsonl`` path, or is a folder, is refused in one line naming it and what to give."""
    with pytest.raises(PefsError, match=r"store '.*results\.json' must be a \.jsonl file path"):
        store.check_store_path(tmp_path / "results.json")
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(PefsError, match=r"store '.*d\.jsonl' is a folder; give a file path such as"):
        store.check_store_path(tmp_path / "d.jsonl")
    assert store.check_store_path(tmp_path / "r.jsonl") == tmp_path / "r.jsonl"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open descriptors through /proc")
def test_append_leaves_no_file_descriptor_open(tmp_path):
    """Appending closes its file: a sweep writing thousands of rows never runs out of descriptors."""
    before = len(os.listdir("/proc/self/fd"))
    _writer(str(tmp_path / "results.jsonl"), "a", 20)
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_long_torn_fragment_is_shown_cut_at_60_characters(tmp_path):
    """A damaged line's report quotes its first 60 characters then "...", names the line and keeps the rows before."""
    st = tmp_path / "results.jsonl"
    _writer(str(st), "a", 2)
    with open(st, "ab") as f:
        f.write(b"x" * 59 + b"yz\n")
    _writer(str(st), "b", 1)
    contents = store.load(st)
    assert set(contents.rows) == {"a0000", "a0001", "b0000"}
    assert contents.problems == [f"{st} line 3: torn or corrupt line, dropped: '{'x' * 59}y'...; "
                                 "the 2 results before it are kept"]


def test_a_claim_file_is_world_readable_and_a_released_claim_stops_its_heartbeat(tmp_path):
    """A claim file is created rw-r--r-- (less the umask) holding this host and pid; releasing it removes the file
    and stops its heartbeat thread at once."""
    claim = claims.try_claim(tmp_path / "s.jsonl", "cell")
    umask = os.umask(0)
    os.umask(umask)
    assert claim.path.stat().st_mode & 0o777 == 0o644 & ~umask
    assert claims.holder(claim.path)["pid"] == os.getpid()
    claim.release()
    claim._beat.join(timeout=5)
    assert not claim.path.exists() and not claim._beat.is_alive()


def test_claims_that_cannot_be_written_are_one_clear_error(tmp_path):
    """A claims folder that cannot be made (a file in the way) or a claim name the system refuses is one PefsError
    naming the folder and the system's reason, not a traceback."""
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the store's folder should be")
    with pytest.raises(PefsError, match=r"cannot create the claims folder '.*blocked/\.s\.jsonl\.claims' beside "
                                        r"the store: Not a directory$"):
        claims.try_claim(blocker / "s.jsonl", "cell")
    with pytest.raises(PefsError, match=r"cannot write a claim file in '.*\.s\.jsonl\.claims': File name too long$"):
        claims.try_claim(tmp_path / "s.jsonl", "c" * 300)


def test_a_claim_from_another_host_is_stale_after_ten_minutes_of_silence(tmp_path):
    """README: a claim from another host (whose pid cannot be checked here) is respected while its heartbeat is
    under 10 minutes old and taken over once it is older."""
    st = tmp_path / "s.jsonl"
    path = claims.claims_dir(st) / "cell.claim"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": "another-host.invalid", "pid": os.getpid()}))
    assert claims.STALE_S == 600
    now = time.time()
    os.utime(path, (now - 540, now - 540))  # 9 minutes since its last heartbeat: still held
    assert claims.try_claim(st, "cell") is None and path.exists()
    os.utime(path, (now - 660, now - 660))  # 11 minutes: its process is presumed gone
    with claims.try_claim(st, "cell") as claim:
        assert claim is not None and json.loads(path.read_text())["host"] == socket.gethostname()


def test_torn_and_untrusted_rows_are_placed_by_line_or_byte(tmp_path):
    """A whole read names a damaged or untrusted line by number; a refresh (reading on from an offset) names it by
    its byte in the file; a row whose keys a reader cannot trust stops the read with the fix."""
    st = tmp_path / "results.jsonl"
    _writer(str(st), "a", 2)
    contents = store.load(st)
    start = st.stat().st_size
    _writer(str(st), "b", 1)
    row_len = st.stat().st_size - start
    with open(st, "ab") as f:
        f.write(b"garbage\n")
    store.refresh(contents, st)
    assert contents.problems == [f"{st} byte {start + row_len}: torn or corrupt line, dropped: 'garbage'; the 1 "
                                 "results before it are kept"]
    bad = tmp_path / "bad.jsonl"
    _writer(str(bad), "c", 1)
    store.append(bad, {**store.make_row("d", {"seed": 0}, "failed", None), "error": 5})
    with pytest.raises(PefsError, match=rf"^{re.escape(str(bad))} line 2: error is .*not a message; fix or delete "
                                        "that line"):
        store.load(bad)


def test_a_claim_held_by_a_gone_or_group_pid_is_stale_and_a_full_disk_leaves_no_claim(tmp_path, monkeypatch):
    """A claim of this host whose pid no longer runs, or names no single process (0), is stale; this process's own
    is held. A claim that cannot be written (a full disk) is one PefsError and leaves no claim file behind."""
    d = claims.claims_dir(tmp_path / "s.jsonl")
    d.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for pid, held in [(gone.pid, False), (0, False), (os.getpid(), True)]:
        path = d / f"{pid}.claim"
        path.write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))
        assert (claims.holder(path) is not None) == held, pid

    class FullDisk:
        def __init__(self, fd, mode):
            os.close(fd)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(claims.os, "fdopen", FullDisk)
    with pytest.raises(PefsError, match=r"cannot write a claim file in .*: No space left on device; the store is "
                                        "unchanged$"):
        claims.try_claim(tmp_path / "s.jsonl", "cell")
    assert not (d / "cell.claim").exists()
