"""How long a sweep cell's data fingerprint takes on a large image folder (pefs.config.identity.tree_digest).

    .venv/bin/python benchmarks/fingerprint.py                 # writes benchmarks/fingerprint.json and .md
    .venv/bin/python benchmarks/fingerprint.py --files 2000 --out -   # a quick look, printed
    .venv/bin/python benchmarks/fingerprint.py --render          # re-renders fingerprint.md from fingerprint.json

Builds a folder of ``--classes`` class folders holding ``--files`` small files in all (1 KiB each: the
fingerprint stats files, it never reads them, so their size does not matter), then times ``data_fingerprint``
``--repeats`` times: the first call after building (page cache warm, as when a sweep starts right after the
data was copied) and the rest. The folder lives in a temporary directory removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pefs.data.fingerprint import data_fingerprint  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_commit  # noqa: E402


def build(root: Path, files: int, classes: int) -> None:
    blob = b"x" * 1024
    for i in range(files):
        d = root / f"class{i % classes:03d}"
        if i < classes:
            d.mkdir(parents=True)
        (d / f"{i:07d}.png").write_bytes(blob)


def measure(files: int, classes: int, repeats: int) -> dict:
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
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "load_average_1min_after": os.getloadavg()[0]},
            "command": " ".join(["benchmarks/fingerprint.py", *sys.argv[1:]]), "git_commit": git_commit()}


def markdown(r: dict) -> str:
    return "\n".join([
        "# Data fingerprint time (sweep cell keys)", "",
        f"`python {r['command']}` at commit `{r.get('git_commit', 'not recorded')}` "
        "(raw numbers: `benchmarks/fingerprint.json`).", "",
        f"A folder of {r['files']:,} files in {r['classes']} class folders; `pefs.data.fingerprint.data_fingerprint` "
        "stats every file (relative path, size, modification time) and hashes the sorted list; it reads no file.",
        "", "| files | median s | max s | repeats | same fingerprint each time |", "|---:|---:|---:|---:|---|",
        f"| {r['files']:,} | {r['median_s']:.3f} | {r['max_s']:.3f} | {r['repeats']} | {r['fingerprints_equal']} |",
        "", f"Machine: {r['machine']['cpus']} CPUs, Python {r['machine']['python']}; 1-minute load average "
        f"{r['machine']['load_average_1min_after']:.1f} when it finished (other work on the machine only adds "
        "time); every repeat's seconds are in the JSON. A sweep computes it once per distinct data path when it "
        "plans the grid, and each tune run once more for its record.", ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).with_suffix("")), help="output stem, or - to print")
    p.add_argument("--render", action="store_true", help="measure nothing: write OUT.md from the existing OUT.json")
    a = p.parse_args()
    if a.render:
        data = Path(a.out + ".json")
        if a.out == "-" or not data.exists():
            sys.exit(f"fingerprint.py: --render needs the raw data {data} (run without --render first)")
        Path(a.out + ".md").write_text(markdown(json.loads(data.read_text())))
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
