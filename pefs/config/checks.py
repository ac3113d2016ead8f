"""Up-front checks (stdlib only) of user input that several entry points share (tune, sweep, report), each a PefsError
naming the bad value and what would be valid, raised before any weight loads or image decodes."""

from __future__ import annotations

import numbers
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pefs.errors import PefsError

#: NumPy and torch seeds must fit in 32 unsigned bits
MAX_SEED = 2**32 - 1


def check_seeds(seeds: Sequence[int], flag: str = "seeds") -> None:
    """Seeds are whole numbers in 0..2**32-1, each given once (a repeated seed would count twice in a CI)."""
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 0 <= s <= MAX_SEED:
            raise PefsError(f"{flag} must be whole numbers in 0..{MAX_SEED}, got {s!r}")
    dup = sorted(s for s, n in Counter(seeds).items() if n > 1)
    if dup:
        raise PefsError(f"{flag} {list(seeds)} repeat {', '.join(map(str, dup))}: a repeated seed reruns the same "
                        "task and would count twice in the mean and CI; give each seed once (e.g. 0-4)")


def check_classes(n_classes: int, name: str) -> None:
    """Classification needs two classes: with one, every prediction is right and 100% means nothing."""
    if n_classes < 2:
        raise PefsError(f"dataset {name!r} has {n_classes} class; few-shot classification needs at least 2 "
                        "(with one class every prediction is correct and the accuracy means nothing)")


def _probe_existing(path: Path) -> None:
    """Raise the OSError a write in ``path`` would raise, or in the nearest folder above it that exists when it
    does not (nothing is left behind: the folders a run writes to are created only when it writes)."""
    d = path
    while not (d.exists() or d.is_symlink()) and d != d.parent:
        d = d.parent
    if not d.is_dir():
        raise NotADirectoryError(20, f"{str(d)!r} is a file, not a folder")
    probe = d / f".pefs-write-test-{os.getpid()}"
    probe.write_text("")
    probe.unlink()


def check_writable_dir(path: str | Path, what: str, flag: str) -> None:
    """Fail now, naming the folder and the flag that chose it, when files could not be written in ``path``. A
    missing folder is not created here (it is, when the run writes its first file there)."""
    d = Path(path)
    try:
        _probe_existing(d)
    except OSError as e:
        raise PefsError(f"{what} {str(d)!r} is not writable: {e.strerror or e}; choose another with {flag}") from e


def check_writable_file(path: str | Path, what: str, flag: str) -> None:
    """Fail now, naming the path, when ``path`` (a file to append to) could not be created or written; a missing
    folder above it is not created here."""
    path = Path(path)
    try:
        if path.exists():
            if not os.access(path, os.W_OK):
                raise PermissionError(13, "Permission denied")
        else:
            _probe_existing(path.parent)
    except OSError as e:
        raise PefsError(f"{what} {str(path)!r} is not writable: {e.strerror or e}; choose another with {flag}") from e


def check_max_pixels(n: object) -> int:
    """``n`` as an image-size limit in pixels (a whole number >= 1), or a PefsError naming it."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise PefsError(f"max image pixels must be a whole number >= 1, got {n!r}")
    return int(n)


#: ``--budget`` units in seconds
BUDGET_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_budget(text: str) -> float:
    """A time budget such as ``90s``, ``10m``, ``1.5h`` in seconds (> 0); anything else a PefsError naming the
    accepted forms."""
    value = str(text).strip().lower()
    unit = value[-1:] if value[-1:] in BUDGET_UNITS else ""
    try:
        seconds = float(value[:-1]) * BUDGET_UNITS[unit] if unit else float("nan")
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise PefsError(f"--budget {text!r} is not a time budget; give a positive number with a unit: 90s, 10m, "
                        "1h (s, m or h)")
    return seconds
