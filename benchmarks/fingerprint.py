"""How long a sweep cell's data fingerprint takes on a large image folder (pefs.config.identity.tree_digest).

    .venv/bin/python -m benchmarks.fingerprint                 # writes benchmarks/fingerprint.json and .md
    .venv/bin/python -m benchmarks.fingerprint --files 2000 --out -   # a quick look, printed
    .venv/bin/python -m benchmarks.fingerprint --render        # re-renders fingerprint.md from fingerprint.json

Builds a folder of ``--classes`` class folders holding ``--files`` files of ``--file-kib`` KiB of random bytes
(the fingerprint is the SHA-256 of every file's bytes, so their size matters), waits until every file is older
than the digest cache's freshness window, then times ``data_fingerprint``: the first call with an empty digest
cache (every byte read; page cache warm, as when a sweep starts right after the data was copied) and
``--repeats`` calls that find the cache (stat only). The folder and the cache live in a temporary directory
removed afterwards.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # started as a file: rerun as `python -m benchmarks.fingerprint`
    import common

    common.run_as_module(__file__)

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import load, machine, parser, provenance, render_source
from pefs.config.identity import RACY_S
from pefs.data.fingerprint import data_fingerprint


def build(root: Path, files: int, classes: int, kib: int) -> None:
    """``files`` files of ``kib`` KiB of random bytes spread over ``classes`` class folders under ``root``."""
    for i in range(files):
        d = root / f"class{i % classes:03d}"
        if i < classes:
            d.mkdir(parents=True)
        (d / f"{i:07d}.jpg").write_bytes(os.urandom(kib * 1024))


def measure(files: int, classes: int, repeats: int, kib: int) -> dict:
    """Build the folder, fingerprint it once with an empty cache and ``repeats`` times with it; the record."""
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "data", Path(tmp) / "cache"
        os.environ["PEFS_DIGEST_CACHE"] = str(cache)  # this run's own, empty digest cache
        t0 = time.perf_counter()
        build(root, files, classes, kib)
        build_s = time.perf_counter() - t0
        time.sleep(RACY_S + 0.5)  # files younger than the freshness window are never cached
        prints = set()
        t0 = time.perf_counter()
        prints.add(data_fingerprint(str(root)))
        first_s = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            prints.add(data_fingerprint(str(root)))
            times.append(time.perf_counter() - t0)
    return {"files": files, "classes": classes, "file_kib": kib, "repeats": repeats, "build_s": build_s,
            "first_s": first_s, "seconds": times, "median_s": statistics.median(times), "max_s": max(times),
            "min_s": min(times), "fingerprints_equal": len(prints) == 1, "machine": machine(), "load_end": load(),
            **provenance(__file__)}


def shown_command(r: dict) -> str:
    """The record's command; records before benchmarks/common.py stored the script and arguments only."""
    return r["command"] if r["command"].startswith(".venv/") else f"python {r['command']}"


def load_after(r: dict) -> float:
    """The 1-minute load average when the run finished (older records kept it in their machine entry)."""
    return r["load_end"][0] if "load_end" in r else r["machine"]["load_average_1min_after"]


def markdown(r: dict) -> str:
    """The page, from the record alone."""
    head = ["# Data fingerprint time (sweep cell keys)", "",
            f"`{shown_command(r)}` at commit `{r.get('git_commit', 'not recorded')}` "
            "(raw numbers: `benchmarks/fingerprint.json`).", ""]
    if "first_s" not in r:  # a record of the stat-only fingerprint (pefs 0.2.0 and before)
        return "\n".join(head + [
            f"A folder of {r['files']:,} files in {r['classes']} class folders; this record times the fingerprint "
            "of pefs 0.2.0 and before, which stats every file (relative path, size, modification time) and reads "
            "none.", "", "| files | median s | max s | repeats | same fingerprint each time |",
            "|---:|---:|---:|---:|---|",
            f"| {r['files']:,} | {r['median_s']:.3f} | {r['max_s']:.3f} | {r['repeats']} | "
            f"{r['fingerprints_equal']} |", ""])
    size_mb = r["files"] * r["file_kib"] / 1024
    return "\n".join(head + [
        f"A folder of {r['files']:,} files of {r['file_kib']} KiB of random bytes ({size_mb:,.0f} MiB) in "
        f"{r['classes']} class folders. `pefs.data.fingerprint.data_fingerprint` is the SHA-256 of every file's "
        "bytes with its relative path; a file's stats (size, modification and change time, inode) only find its "
        "hash in a digest cache kept outside the data folder. The first call finds an empty cache and reads every "
        "byte (page cache warm: the files were just written); the repeats find the cache and read no file.", "",
        "| files | MiB | first call, empty cache (s) | cached: median s | min s | max s | repeats | "
        "same fingerprint each time |", "|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {r['files']:,} | {size_mb:,.0f} | {r['first_s']:.3f} | {r['median_s']:.3f} | {r['min_s']:.3f} | "
        f"{r['max_s']:.3f} | {r['repeats']} | {r['fingerprints_equal']} |",
        "", f"Machine: {r['machine']['cpus']} CPUs, Python {r['machine']['python']}; 1-minute load average "
        f"{load_after(r):.1f} when it finished (other work on the machine only adds time); every repeat's seconds "
        "are in the JSON. A sweep computes it once per distinct data path when it plans the grid, and each tune "
        "run once more for its record.", ""])


def main() -> None:
    p = parser(__doc__, "OUT.json")
    p.add_argument("--files", type=int, default=20_000)
    p.add_argument("--file-kib", type=int, default=32, help="size of each file (a small JPEG is 10-50 KiB)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).with_suffix("")), help="output stem, or - to print")
    a = p.parse_args()
    data = render_source(a, a.out + ".json")
    if data is not None:
        if not data.exists():
            sys.exit(f"fingerprint.py: --render needs the raw data {data} (run without --render first)")
        md = markdown(json.loads(data.read_text()))
        if a.out == "-":
            print(md)
        else:
            Path(a.out + ".md").write_text(md)
        return
    r = measure(a.files, a.classes, a.repeats, a.file_kib)
    if a.out == "-":
        print(json.dumps(r, indent=2))
        return
    Path(a.out + ".json").write_text(json.dumps(r, indent=2) + "\n")
    Path(a.out + ".md").write_text(markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
