"""Claim files: several sweeps sharing one store split its cells instead of each running all of them.

Before running a cell a process creates ``.<store name>.claims/<cell hash>.claim`` beside the store with
O_EXCL (exactly one process can), holding its host and pid; it removes the file when the cell's row is written.
A claim is *stale*, and taken over, when its process is gone: same host and the pid no longer runs (a
``kill -9``), or, from another host, when the claim's heartbeat (its mtime, touched every
:data:`HEARTBEAT_S` seconds while the cell runs) is older than :data:`STALE_S`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from pefs.errors import PefsError

HEARTBEAT_S = 30.0
STALE_S = 600.0
#: a claim file still empty or unreadable after this long was left by a process killed while writing it
UNWRITTEN_S = 5.0


def claims_dir(store: str | Path) -> Path:
    store = Path(store)
    return store.with_name(f".{store.name}.claims")


def _alive(pid: int) -> bool:
    if pid <= 0:  # never signal a process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder(path: Path) -> dict | None:
    """Who holds the claim at ``path`` (host, pid, since), or None when there is none or it is stale: its
    heartbeat is older than STALE_S, or it is from this host and its pid no longer runs."""
    try:
        age = time.time() - path.stat().st_mtime
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written this very instant (a few microseconds), or left empty by a
        # process killed between creating and writing it: stale once it is a few seconds old
        return {"host": "?", "pid": -1} if age < UNWRITTEN_S else None
    if age > STALE_S:
        return None
    if info.get("host") == socket.gethostname() and not _alive(int(info.get("pid", -1))):
        return None
    return info


class Claim:
    """A held claim on one cell; ``release()`` (or leaving the ``with`` block) removes it."""

    def __init__(self, path: Path, token: str) -> None:
        self.path, self.token = path, token
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        try:
            if json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def try_claim(store: str | Path, cell_hash: str) -> Claim | None:
    """Claim cell ``cell_hash`` of ``store`` for this process; None when a live process holds it."""
    d = claims_dir(store)
    path = d / f"{cell_hash}.claim"
    token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "token": token})
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PefsError(f"cannot create the claims folder {str(d)!r} beside the store: {e.strerror or e}") from e
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if holder(path) is not None:
                return None
            try:  # stale: move it aside (only one taker succeeds), then compete for a fresh claim
                os.rename(path, d / f".{cell_hash}.stale.{os.getpid()}.{time.time_ns()}")
            except FileNotFoundError:
                pass
            for old in d.glob(f".{cell_hash}.stale.{os.getpid()}.*"):
                old.unlink(missing_ok=True)
            continue
        except OSError as e:
            raise PefsError(f"cannot write a claim file in {str(d)!r}: {e.strerror or e}") from e
        try:
            with os.fdopen(fd, "w") as f:
                f.write(body)
        except OSError as e:  # a full disk: no half-written claim is left to block the cell
            path.unlink(missing_ok=True)
            raise PefsError(f"cannot write a claim file in {str(d)!r}: {e.strerror or e}; the store is "
                            "unchanged") from e
        return Claim(path, token)
    return None
