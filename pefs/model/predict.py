"""Classify new images with a saved model directory (``pefs predict``) or a model in hand (``PefsModel.predict``).

Images are decoded by the data package's one decode path (:meth:`pefs.data.ImageSet.image`), a batch at a
time, and each batch's rows are written before the next is decoded. An image that cannot be decoded is
listed by path with the reason; the others still run.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from pefs.config.files import atomic_write, check_outside
from pefs.data import ImageSet
from pefs.data.sources import IMAGE_SUFFIXES
from pefs.errors import PefsError
from pefs.model.inference import PRECISIONS, Predictions, class_names_of, predicted, stream

if TYPE_CHECKING:
    from pefs.model.wrap import PefsModel

LIST_SUFFIXES = (".txt", ".lst")
FORMATS = ("csv", "jsonl")


@dataclass
class PredictSummary:
    """What a ``pefs predict`` run did: images predicted, those that failed (path, reason), and, with labels,
    the accuracy and the confusion matrix (rows: true class, columns: predicted class)."""

    predicted: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    accuracy: float | None = None
    confusion: list[list[int]] | None = None
    class_names: list[str] = field(default_factory=list)


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image paths from files, folders (searched recursively by suffix) and text files of paths (one a line,
    relative ones taken from the list file's folder). Missing paths and empty results are errors, up front."""
    if not inputs:
        raise PefsError("no images given; pass image files, folders of images, or a .txt file listing image paths")
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PefsError(f"folder {str(item)!r} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif item.is_file() and item.suffix.lower() in LIST_SUFFIXES:
            out += _read_list(item)
        elif item.is_file():
            out.append(item)
        else:
            raise PefsError(f"{str(item)!r} does not exist; pass image files, folders, or a .txt list of paths")
    return out


def _read_list(path: Path) -> list[Path]:
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise PefsError(f"cannot read the image list {str(path)!r}: {e}") from e
    paths = [p if p.is_absolute() else path.parent / p for p in map(Path, (x for x in lines if x and
                                                                         not x.startswith("#")))]
    if not paths:
        raise PefsError(f"image list {str(path)!r} names no images")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise PefsError(f"image list {str(path)!r} names {len(missing)} files that do not exist (e.g. {missing[0]!r})")
    return paths


def true_labels(paths: list[Path], class_names: list[str]) -> np.ndarray:
    """The true class of each image from the folder layout (``<root>/<class>/<image>``): its parent folder's name."""
    index = {c: i for i, c in enumerate(class_names)}
    unknown = sorted({p.parent.name for p in paths if p.parent.name not in index})
    if unknown:
        raise PefsError(f"--labels reads the class from each image's folder, but {len(unknown)} folder names are not "
                        f"classes of this model ({', '.join(unknown[:5])}); its classes: {', '.join(class_names)}")
    return np.array([index[p.parent.name] for p in paths], dtype=int)


def run_predict(model: PefsModel, paths: list[Path], out: IO[str], fmt: str = "csv", top_k: int = 1,
                batch_size: int = 16, labels: np.ndarray | None = None, progress: bool = True,
                precision: str | None = None) -> PredictSummary:
    """Predict ``paths`` batch by batch, writing one row per image to ``out`` as it goes (CSV or JSON Lines).
    Classes are ranked as ``pefs tune`` scores (:func:`pefs.model.inference.top_classes`)."""
    if fmt not in FORMATS:
        raise PefsError(f"unknown output format {fmt!r}; valid choices: {', '.join(FORMATS)}")
    names = class_names_of(model)
    k = min(max(top_k, 1), len(names))
    if top_k < 1:
        raise PefsError(f"--top-k must be >= 1, got {top_k}")
    images = ImageSet(names, labels if labels is not None else np.zeros(len(paths), dtype=int),
                      [str(p) for p in paths], lambda i: paths[i])
    summary = PredictSummary(class_names=names)
    confusion = np.zeros((len(names), len(names)), dtype=int)
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(["path"] + [f"{w}_{j}" for j in range(1, k + 1) for w in ("class", "prob")]
                        + (["label"] if labels is not None else []))
    with contextlib.closing(stream(model, images, batch_size, progress, precision)) as batches:  # unmerges on error
        for idx, scores, failed in batches:
            summary.failed += failed
            summary.predicted += len(idx)
            pred = Predictions.from_scores(names, scores)
            for i, top, best in zip(idx, pred.top(k), predicted(scores).tolist()):
                truth = names[labels[i]] if labels is not None else None
                if truth is not None:
                    confusion[labels[i], best] += 1
                _write_row(out, writer, images.names[i], top, truth)
            out.flush()
    if labels is not None and summary.predicted:
        summary.confusion = confusion.tolist()
        summary.accuracy = float(np.trace(confusion) / confusion.sum())
    return summary


def _write_row(out: IO[str], writer: Any, path: str, top: list[tuple[str, float]], truth: str | None) -> None:
    if writer is not None:
        writer.writerow([path] + [v for c, p in top for v in (c, f"{p:.6f}")] + ([truth] if truth is not None else []))
    else:
        row = {"path": path, "top": [{"class": c, "prob": round(p, 6)} for c, p in top]}
        out.write(json.dumps(row | ({"label": truth} if truth is not None else {})) + "\n")


def format_confusion(summary: PredictSummary) -> str:
    """The confusion matrix as a text table (rows: true class, columns: predicted class)."""
    names, m = summary.class_names, summary.confusion or []
    width = max([len(n) for n in names] + [len(str(v)) for row in m for v in row] + [4])
    lines = ["true \\ predicted".ljust(width) + " " + " ".join(n.rjust(width) for n in names)]
    lines += [n.ljust(width) + " " + " ".join(str(v).rjust(width) for v in row) for n, row in zip(names, m)]
    return "\n".join(lines)


def report_failures(summary: PredictSummary, stream_out: IO[str] | None = None) -> None:
    """List every image that could not be decoded, by path, with the reason (on stderr by default)."""
    stream_out = stream_out or sys.stderr
    if summary.failed:
        print(f"{len(summary.failed)} image(s) could not be decoded (the others were predicted):", file=stream_out)
        for _, reason in summary.failed:
            print(f"  {reason}", file=stream_out)


def check_out(out: str, model_dir: str | Path, inputs: Sequence[str | Path], paths: list[Path]) -> None:
    """Refuse, before anything is written, an output that is or sits inside one of the inputs: the model
    directory, an image, a folder of images or a list of images (:func:`pefs.config.files.check_outside`)."""
    files = "images or image lists"
    check_outside(out, "--out", [(model_dir, "model directory"),
                                 *((i, "image folder" if Path(i).is_dir() else files) for i in inputs),
                                 *((p, files) for p in paths)])
    if Path(out).is_dir():
        raise PefsError(f"--out {out!r} is a folder; name a file (or - for stdout)")


def predict_command(model_dir: str, inputs: Sequence[str], out: str = "predictions.csv", fmt: str | None = None,
                    top_k: int = 1, batch_size: int = 16, labels: bool = False, allow_different_base: bool = False,
                    progress: bool = True, precision: str | None = None) -> int:
    """``pefs predict``: check every input and the output, load, write the rows (the output file replaced whole
    when done, :func:`pefs.config.files.atomic_write`), print the summary; 1 if any image failed."""
    from pefs.model.wrap import PefsModel

    fmt = fmt or ("jsonl" if str(out).endswith((".jsonl", ".json")) else "csv")
    if fmt not in FORMATS:
        raise PefsError(f"unknown output format {fmt!r}; valid choices: {', '.join(FORMATS)}")
    if top_k < 1 or batch_size < 1:
        raise PefsError(f"--top-k and --batch-size must be >= 1, got {top_k} and {batch_size}")
    if precision is not None and precision not in PRECISIONS:
        raise PefsError(f"unknown --precision {precision!r}; valid choices: {', '.join(PRECISIONS)}")
    to_stdout = out == "-"
    paths = collect_images(inputs)
    if not to_stdout:
        check_out(out, model_dir, inputs, paths)
    model = PefsModel.load(model_dir, allow_different_base=allow_different_base)
    truth = true_labels(paths, class_names_of(model)) if labels else None
    with contextlib.ExitStack() as stack:
        handle = sys.stdout if to_stdout else stack.enter_context(atomic_write(out, "predictions", newline=""))
        summary = run_predict(model, paths, handle, fmt, top_k, batch_size, truth, progress, precision)
    info = sys.stderr if to_stdout else sys.stdout
    print(f"predicted {summary.predicted} of {len(paths)} images" + ("" if to_stdout else f": {out}"), file=info)
    if summary.accuracy is not None:
        print(f"accuracy: {100 * summary.accuracy:.2f}% ({summary.predicted} labelled images)\n"
              f"confusion matrix (rows: true class, columns: predicted):\n{format_confusion(summary)}", file=info)
    report_failures(summary)
    return 1 if summary.failed else 0
