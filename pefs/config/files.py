"""Writing files so that none is ever half-written (stdlib only): the one atomic writer every pefs output uses.

A file is written under a temporary name in its own folder (unique per process, so two writers never share
one), flushed and fsynced, and renamed over the target only when complete. On any failure the temporary file
is removed and the previous file, if any, is untouched; an OSError (full disk, no permission) becomes one
:class:`~pefs.errors.PefsError` line naming what was being written and where.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from pefs.errors import PefsError


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str = "file") -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (``safetensors.save_file``); it is
    fsynced and renamed to ``path`` when the block ends without an error, removed otherwise."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # the folder is made when its first file is written
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PefsError(f"cannot write the {what} {str(path)!r}: {e.strerror or e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, what: str = "file", binary: bool = False,
                 newline: str | None = None) -> Iterator[IO]:
    """An open file whose content replaces ``path`` whole when the block ends, or not at all. Text is UTF-8;
    characters that are not valid UTF-8 (a folder name in another encoding) are written as backslash escapes
    rather than failing half-way."""
    with atomic_path(path, what) as tmp:
        mode = {"mode": "wb"} if binary else {"mode": "w", "encoding": "utf-8", "errors": "backslashreplace",
                                              "newline": newline}
        with open(tmp, **mode) as f:
            yield f
            f.flush()


@contextlib.contextmanager
def atomic_dir(path: str | Path, what: str = "folder") -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; when the block ends without an error it replaces ``path``
    whole: the old folder is renamed away, the new one renamed in, then the old one removed. Any failure before
    that leaves ``path`` as it was (the new folder is removed; a failed rename-in puts the old one back)."""
    path = Path(path)
    new = path.with_name(f".{path.name}.{os.getpid()}.new")
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    try:
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(parents=True)
        yield new
        _swap(new, path, old)
    except OSError as e:
        raise PefsError(f"cannot write the {what} {str(path)!r}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(new, ignore_errors=True)


def _swap(new: Path, path: Path, old: Path) -> None:
    """Put folder ``new`` at ``path``; an existing ``path`` goes to ``old`` first and is removed last."""
    if not (path.exists() or path.is_symlink()):
        os.rename(new, path)
        return
    shutil.rmtree(old, ignore_errors=True)
    os.rename(path, old)
    try:
        os.rename(new, path)
    except OSError:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_outside(out: str | Path, flag: str, inputs: Iterable[tuple[str | Path | None, str]]) -> None:
    """Refuse (before anything is created) an output ``out`` that is, or would sit inside, one of ``inputs``
    ((path, what it is) pairs; None and paths that do not exist are skipped): writing there would destroy, or be
    read back as part of, what the command reads (a ``runs/`` folder inside the data folder becomes a class).
    ``what`` names a folder in the singular ("data folder") and files in the plural ("images or image lists")."""
    o = Path(out).resolve()
    for path, what in inputs:
        if path is None or not Path(path).exists():
            continue
        i = Path(path).resolve()
        if i in o.parents or (o == i and i.is_dir()):
            raise PefsError(f"{flag} {str(out)!r} lies inside the {what} {str(path)!r}, which this command reads; "
                            "write it outside that folder")
        if o == i:
            raise PefsError(f"{flag} {str(out)!r} is one of the {what} this command reads ({str(path)!r}); writing "
                            "it would destroy it: choose another path")


def write_bytes(path: str | Path, data: bytes, what: str = "file") -> None:
    """``data`` as the whole content of ``path``, atomically."""
    with atomic_write(path, what, binary=True) as f:
        f.write(data)


def write_text(path: str | Path, text: str, what: str = "file") -> None:
    """``text`` as the whole content of ``path``, atomically."""
    with atomic_write(path, what) as f:
        f.write(text)
