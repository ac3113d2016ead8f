"""``pefs`` in a subprocess that holds still at a known point, so a test can kill it there without a timing window.

``python -m tests.held_cli N ARGS...`` runs ``pefs ARGS...``; when tune is called for the N-th time it prints
``HELD <n>`` on stdout and blocks reading stdin (before that cell does any work). A test reads that line (a
readiness signal, no sleeping), then sends its signal: the process is, deterministically, inside cell N with
cells 1..N-1 stored.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start(hold_at: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``pefs args`` held at its ``hold_at``-th tune call; returns once it is held there. ``env``: variables
    to set on top of the test's environment (see tests.conftest.subprocess_env)."""
    # SIGINT as a terminal delivers it: a test run started in the background (``pytest &``) inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler in the child
    from tests.conftest import subprocess_env

    env = subprocess_env(**(env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "tests.held_cli", str(hold_at), *args], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:  # blocks until the child says where it is; EOF means it exited first
        if line.startswith("HELD "):
            return proc
    proc.wait()
    raise AssertionError(f"pefs exited ({proc.returncode}) before reaching tune call {hold_at}: "
                         f"{proc.stderr.read()[-2000:]}")


def _main() -> int:
    import pefs.protocols.run
    from pefs.cli.main import main

    hold_at, args = int(sys.argv[1]), sys.argv[2:]
    real, calls = pefs.protocols.run.tune, [0]

    def tune(cfg):
        calls[0] += 1
        if calls[0] == hold_at:
            print(f"HELD {calls[0]}", flush=True)
            sys.stdin.read()  # until the test kills us (or closes stdin)
        return real(cfg)

    pefs.protocols.run.tune = tune
    return main(args)


if __name__ == "__main__":
    sys.exit(_main())
