"""How long a sweep cell's data fingerprint takes on a large image folder (pefs.config.identity.tree_digest).

    .venv/bin/python -m benchmarks.fingerprint                 # writes benchmarks/fingerprint.json and .md
    .venv/bin/python -m benchmarks.fingerprint --files 2000 --out -   # a quick look, printed
    .venv/bin/python -m benchmarks.fingerprint --render        # re-renders fingerprint.md from fingerprint.json

Builds a folder of ``--classes`` class folders holding ``--files`` small files in all (1 KiB each: the
fingerprint stats files, it never reads them, so their size does not matter), then times ``data_fingerprint``
``--repeats`` times: the first call after building (page cache warm, as when a sweep starts right after the
data was copied) and the rest. The folder lives in a temporary directory removed afterwards.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # started as a file: rerun as `python -m benchmarks.fingerprint`
    import common

    common.run_as_module(__file__)

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import load, machine, parser, provenance, render_source
from pefs.data.fingerprint import data_fingerprint


def build(root: Path, files: int, classes: int) -> None:
    """``files`` 1 KiB files spread over ``classes`` class folders under ``root``."""
    blob = b"x" * 1024
    for i in range(files):
        d = root / f"class{i % classes:03d}"
        if i < classes:
            d.mkdir(parents=True)
        (d / f"{i:07d}.png").write_bytes(blob)


def measure(files: int, classes: int, repeats: int) -> dict:
    """Build the folder, fingerprint it ``repeats`` times; every repeat's seconds and the run's record."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        t0 = time.perf_counter()
        build(root, files, classes)
        build_s = time.perf_counter() - t0
        times, prints = [], set()
        for _ in range(repeats):
            t0 = time.perf_counter()
            prints.add(data_fingerprint(str(root)))
            times.append(time.perf_counter() - t0)
    return {"files": files, "classes": classes, "repeats": repeats, "build_s": build_s, "seconds": times,
            "median_s": statistics.median(times), "max_s": max(times), "fingerprints_equal": len(prints) == 1,
            "machine": machine(), "load_end": load(), **provenance(__file__)}


def shown_command(r: dict) -> str:
    """The record's command; records before benchmarks/common.py stored the script and arguments only."""
    return r["command"] if r["command"].startswith(".venv/") else f"python {r['command']}"


def load_after(r: dict) -> float:
    """The 1-minute load average when the run finished (older records kept it in their machine entry)."""
    return r["load_end"][0] if "load_end" in r else r["machine"]["load_average_1min_after"]


def markdown(r: dict) -> str:
    """The page, from the record alone."""
    return "\n".join([
        "# Data fingerprint time (sweep cell keys)", "",
        f"`{shown_command(r)}` at commit `{r.get('git_commit', 'not recorded')}` "
        "(raw numbers: `benchmarks/fingerprint.json`).", "",
        f"A folder of {r['files']:,} files in {r['classes']} class folders; `pefs.data.fingerprint.data_fingerprint` "
        "stats every file (relative path, size, modification time) and hashes the sorted list; it reads no file.",
        "", "| files | median s | max s | repeats | same fingerprint each time |", "|---:|---:|---:|---:|---|",
        f"| {r['files']:,} | {r['median_s']:.3f} | {r['max_s']:.3f} | {r['repeats']} | {r['fingerprints_equal']} |",
        "", f"Machine: {r['machine']['cpus']} CPUs, Python {r['machine']['python']}; 1-minute load average "
        f"{load_after(r):.1f} when it finished (other work on the machine only adds "
        "time); every repeat's seconds are in the JSON. A sweep computes it once per distinct data path when it "
        "plans the grid, and each tune run once more for its record.", ""])


def main() -> None:
    p = parser(__doc__, "OUT.json")
    p.add_argument("--files", type=int, default=100_000)
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
    r = measure(a.files, a.classes, a.repeats)
    if a.out == "-":
        print(json.dumps(r, indent=2))
        return
    Path(a.out + ".json").write_text(json.dumps(r, indent=2) + "\n")
    Path(a.out + ".md").write_text(markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
