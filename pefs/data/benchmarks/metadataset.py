"""A Meta-Dataset-style multi-source folder reader: ``metadataset:<root>/<source>``.

Meta-Dataset (Triantafillou et al.) ships TFRecords; pefs reads the same sources laid out as class folders, one
folder per source with its class split, ``<root>/<source>/{train,val,test}/<class>/*.jpg`` (``valid/`` is read
as val; sources with test classes only, such as traffic_sign and mscoco, have just ``test/``). Episodes are drawn
within one source at a time, from its test classes only, as Meta-Dataset evaluates (600 episodes per source):
each run names its source, and the record names the source and every source found under ``<root>``. Splits
are named as the other episodic benchmarks name them: ``base`` (train/, for pretraining: ``dataset.base``),
``val``, ``novel`` (test/); their classes are checked disjoint.
"""

from __future__ import annotations

from pathlib import Path

from pefs.data.benchmarks.common import BenchmarkDataset, check_disjoint, require_dir
from pefs.data.benchmarks.episodic import folder_split
from pefs.errors import PefsError

#: split -> folder names read as it
SPLITS = {"base": ("train",), "val": ("val", "valid"), "novel": ("test",)}
#: Meta-Dataset's ten sources, by their usual names (any folder name is read; these are listed in errors)
SOURCES = ("ilsvrc_2012", "omniglot", "aircraft", "cu_birds", "dtd", "quickdraw", "fungi", "vgg_flower",
           "traffic_sign", "mscoco")
LAYOUT = "<root>/<source>/{train,val,test}/<class>/*.jpg (test/ required)"


def sources(root: Path) -> list[str]:
    """The source folders under ``root`` (those holding a test/ split)."""
    return sorted(d.name for d in root.iterdir() if d.is_dir() and (d / "test").is_dir()) if root.is_dir() else []


def load(spec: str, rest: str) -> BenchmarkDataset:
    """One source of a multi-source root; episodes from its test classes."""
    folder = Path(rest).expanduser()
    if folder.is_dir() and not (folder / "test").is_dir():
        found = sources(folder)
        if found:
            raise PefsError(f"metadataset:{rest} is a multi-source root; episodes are drawn within one source at a "
                            f"time: give metadataset:{rest.rstrip('/')}/<source>, one of {', '.join(found)}")
    require_dir(folder, "Meta-Dataset source folder", f"expected {LAYOUT} (sources such as {', '.join(SOURCES)})")
    splits, listings = {}, {}
    for split, names in SPLITS.items():
        present = [folder / n for n in names if (folder / n).is_dir()]
        if len(present) > 1:
            raise PefsError(f"source {str(folder)!r} has both {' and '.join(p.name for p in present)}/: keep one")
        if present:
            splits[split], listings[f"{present[0].name}/ (listing)"] = folder_split(present[0])
    if "novel" not in splits:
        raise PefsError(f"source {str(folder)!r} has no test/ split (its evaluation classes); expected {LAYOUT}")
    check_disjoint(splits, f"Meta-Dataset source {folder.name} ({folder})", by_class=True)
    return BenchmarkDataset(folder.name, splits["novel"], None, source=f"benchmark {spec}", benchmark=spec,
                            root=str(folder), splits=splits, split_files=listings, roles={"train": "novel"},
                            episodic_only=True, extra={"source": folder.name, "sources": sources(folder.parent)},
                            licence=f"Meta-Dataset source {folder.name}: see the source dataset's licence")
