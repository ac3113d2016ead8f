"""``pefs`` command line: the top-level parser, dispatch to the command modules, one-line errors and signals.

User errors (:class:`~pefs.errors.PefsError`) print one line and exit 2, never a traceback; SIGTERM unwinds like
Ctrl-C (exit 130). Each command lives in its own module (see :mod:`pefs.cli` for the contract).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Protocol

from pefs.cli import explain, export, models, predict, report, strategies, sweep, tune
from pefs.cli.flags import EPILOG
from pefs.errors import PefsError


class Command(Protocol):
    """What a command module provides (a module satisfies this protocol by its two functions)."""

    def add_parser(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser: ...

    def run(self, args: argparse.Namespace) -> int: ...


#: command name -> its module, in the order ``pefs --help`` lists them. Other code may add a command here
#: before :func:`main` runs: an object whose ``add_parser`` adds a subcommand of this name.
COMMANDS: dict[str, Command] = {
    "tune": tune, "models": models, "strategies": strategies, "sweep": sweep, "report": report,
    "predict": predict, "export": export}
COMMANDS["explain"] = explain


def build_parser() -> argparse.ArgumentParser:
    """The ``pefs`` parser with every command of :data:`COMMANDS` (building it imports no torch)."""
    p = argparse.ArgumentParser(prog="pefs", description="Parameter-efficient fine-tuning for few-shot image "
                                "classification.", epilog=EPILOG)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS.values():
        command.add_parser(sub)
    return p


def _sigterm_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _reader_gone() -> int:
    """The reader of stdout went away (``pefs strategies | head``): stop quietly, the shell's way (exit 141,
    128 + SIGPIPE), with stdout pointed at devnull so Python's own flush at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, ValueError, OSError):  # a stdout without a file descriptor (captured in-process)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (open for the rest of the process)
    finally:
        os.close(devnull)
    return 141


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threading.current_thread() is threading.main_thread():  # SIGTERM unwinds like Ctrl-C: atomic writes finish
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        code = COMMANDS[args.command].run(args)
        sys.stdout.flush()  # a reader gone (``| head``) shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except PefsError as e:
        print(f"pefs {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pefs {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
