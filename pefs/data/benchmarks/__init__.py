"""The field's benchmarks read from their community layouts under a local root: the registry of ``--data``
spellings ``NAME:PATH`` (one module per benchmark family: :mod:`.vtab`, :mod:`.episodic`, :mod:`.coop`, :mod:`.bscd`,
:mod:`.metadataset`).

Importing this package registers every name with :func:`pefs.data.sources.load_dataset` (``pefs.data`` imports
it), so ``--data vtab1k:/data/vtab-1k/caltech101`` works wherever a data spec does. The data fingerprint of a
benchmark spec covers its split files' bytes (SHA-256) and its image tree, so an edited split file is a new run
key; :func:`provenance` is what a run record says about the benchmark.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from pefs.config.identity import sha256_file, tree_digest
from pefs.data import sources
from pefs.data.benchmarks import bscd, coop, episodic, metadataset, vtab
from pefs.data.benchmarks.common import BenchmarkDataset


class Benchmark(NamedTuple):
    """One ``--data NAME:PATH`` spelling: its loader, the split files its fingerprint hashes, and help text."""

    load: Callable[[str, str], BenchmarkDataset]
    split_files: Callable[[str], list[Path]]
    usage: str
    layout: str


BENCHMARKS: dict[str, Benchmark] = {
    "vtab1k": Benchmark(vtab.load, vtab.split_files, "vtab1k:<root>/<task> (train800val200 / test)", vtab.LAYOUT),
    "vtab1k-val": Benchmark(vtab.load, vtab.split_files, "vtab1k-val:<root>/<task> (train800 / val200)",
                            vtab.LAYOUT),
    "miniimagenet": Benchmark(episodic.load_mini, episodic.mini_split_files,
                              "miniimagenet:<root> (episodes from test.csv's classes)", episodic.MINI_LAYOUT),
    "fewshot": Benchmark(episodic.load_folders, lambda rest: [], "fewshot:<root> (episodes from novel/)",
                         episodic.FOLDER_LAYOUT),
    "coop": Benchmark(coop.load, coop.split_files, "coop:<root>/<dataset> (CoOp's train / test, its K-shot draws)",
                      coop.LAYOUT),
    **{name: Benchmark(bscd.load, lambda rest, _n=name: bscd.split_files(_n, rest),
                       f"{name}:<root> (BSCD-FSL; episodes, every class novel)", layout)
       for name, (layout, _) in bscd.SETS.items()},
    "metadataset": Benchmark(metadataset.load, lambda rest: [], "metadataset:<root>/<source> (episodes from test/)",
                             metadataset.LAYOUT),
}
sources.SPEC_LOADERS.update({name: b.load for name, b in BENCHMARKS.items()})


def parse(spec: Any) -> tuple[str, str] | None:
    """(benchmark name, path) of a ``NAME:PATH`` spec, or None when ``spec`` names no benchmark (every loader
    in ``SPEC_LOADERS`` is one of :data:`BENCHMARKS`)."""
    return sources.benchmark_spec(spec)


def fingerprint(spec: Any) -> str | None:
    """The data fingerprint of a benchmark spec (None for any other spec): the split files' SHA-256 and the
    root's :func:`~pefs.config.identity.tree_digest` (paths and file contents)."""
    parsed = parse(spec)
    if parsed is None:
        return None
    name, rest = parsed
    root = Path(rest).expanduser()
    files = BENCHMARKS[name].split_files(rest)
    h = hashlib.sha256("\n".join(f"{p.name}\0{sha256_file(p)}" for p in files).encode())
    tree = tree_digest(root) if root.is_dir() else "missing"
    return f"{name}:{len(files)} split files:{h.hexdigest()[:16]}:{tree}"


def provenance(dataset: Any) -> dict[str, Any]:
    """``{"benchmark": {...}}`` for a run record when ``dataset`` came from a benchmark layout, else {}."""
    return {"benchmark": dataset.provenance()} if isinstance(dataset, BenchmarkDataset) else {}


__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkDataset", "fingerprint", "parse", "provenance"]
