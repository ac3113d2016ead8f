"""CoOp's saved K-shot draws, ``split_fewshot/shot_K-seed_S.pkl``: ``{"train": [Datum, ...], "val": [...]}``
pickled by Dassl. pefs runs no code from files, so these are read by an unpickler whose ``find_class`` builds
only a plain stand-in for ``dassl.data.datasets.base_dataset.Datum`` (attributes, no methods run) and refuses
every other class or function; each record is then matched to the split by its image path.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path, PurePosixPath
from typing import Any

from pefs.data.sources import ImageSet
from pefs.errors import PefsError

DATUM = ("dassl.data.datasets.base_dataset", "Datum")


class Datum:
    """A stand-in for Dassl's ``Datum``: the pickle's attributes (``_impath``, ``_label``, ...) and nothing else."""


class DatumUnpickler(pickle.Unpickler):
    """An unpickler that can build Dassl ``Datum`` records and plain data, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == DATUM:
            return Datum
        raise pickle.UnpicklingError(f"it refers to {module}.{name}; only {'.'.join(DATUM)} records are read "
                                     "(pefs runs no code from files)")


def load(path: Path) -> dict[str, list[Datum]]:
    """The ``{"train": [...], "val": [...]}`` of a CoOp K-shot pickle, or a PefsError naming the file."""
    try:
        data = DatumUnpickler(io.BytesIO(path.read_bytes())).load()
    except OSError as e:
        raise PefsError(f"cannot read CoOp K-shot file {str(path)!r}: {e}") from e
    except Exception as e:  # noqa: BLE001 - any failure of an untrusted pickle is the file's fault
        raise PefsError(f"CoOp K-shot file {str(path)!r} is refused: {e}") from e
    if not isinstance(data, dict) or any(not isinstance(data.get(s), list) for s in ("train", "val")):
        raise PefsError(f"CoOp K-shot file {str(path)!r} is not {{'train': [Datum...], 'val': [Datum...]}}")
    for split in ("train", "val"):
        for i, d in enumerate(data[split]):
            state = getattr(d, "__dict__", {})
            if (not isinstance(d, Datum) or not isinstance(state.get("_impath"), str)
                    or isinstance(state.get("_label"), bool) or not isinstance(state.get("_label"), int)):
                raise PefsError(f"CoOp K-shot file {str(path)!r}: {split}[{i}] is not a Datum with an image path "
                                "and a whole-number label")
    return data


def read_subset(path: Path, splits: dict[str, ImageSet], root: Path) -> dict[str, list[int]]:
    """split -> indices into ``splits[split]`` of the pickle's records, matched by the image path's tail
    (CoOp stores absolute paths from the machine that drew them) and checked against the label."""
    data = load(path)
    out: dict[str, list[int]] = {}
    for split, images in splits.items():
        table = {Path(n).relative_to(root).parts: i for i, n in enumerate(images.names)}
        found = []
        for k, d in enumerate(data[split]):
            parts = PurePosixPath(d._impath.replace("\\", "/")).parts  # type: ignore[attr-defined]
            i = next((table[parts[j:]] for j in range(len(parts)) if parts[j:] in table), None)
            if i is None:
                raise PefsError(f"CoOp K-shot file {str(path)!r}: {split}[{k}] image {d._impath!r} "  # type: ignore[attr-defined]
                                f"is not in this folder's {split} split")
            if int(images.labels[i]) != d._label:  # type: ignore[attr-defined]
                raise PefsError(f"CoOp K-shot file {str(path)!r}: {split}[{k}] has label {d._label} but the split "  # type: ignore[attr-defined]
                                f"file says {int(images.labels[i])} for {images.names[i]!r}")
            found.append(i)
        out[split] = found
    return out
