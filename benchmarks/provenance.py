"""What a benchmark records about how it was run: the command line, as a reader would retype it."""

from __future__ import annotations


def args_without_note(argv: list[str]) -> list[str]:
    """The command line as run, without the free-text ``--note`` (it is printed beside the command)."""
    out, skip = [], False
    for arg in argv:
        if skip or arg == "--note":
            skip = not skip
            continue
        out.append(arg)
    return out
