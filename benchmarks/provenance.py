"""What a benchmark records about how it was run: the command line, as a reader would retype it, and the commit."""

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


def git_commit() -> str:
    """The commit the benchmark ran on (``+dirty`` when tracked files differ from it), or why it is unknown."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({type(e).__name__})"
    return head + ("+dirty" if dirty else "")


def replace_generated(path, body: str, script: str) -> bool:
    """Replace the part of page ``path`` between ``<!-- SCRIPT: begin (generated) -->`` and ``<!-- SCRIPT: end -->``
    with ``body`` (the hand-written prose outside them is kept); False, writing nothing, when the markers are
    missing."""
    from pathlib import Path

    path = Path(path)
    begin, end = f"<!-- {script}: begin (generated) -->", f"<!-- {script}: end -->"
    text = path.read_text() if path.exists() else ""
    if not (begin in text and end in text.split(begin, 1)[1]):
        return False
    pre, rest = text.split(begin, 1)
    path.write_text(f"{pre}{begin}\n{body.rstrip(chr(10))}\n{end}{rest.split(end, 1)[1]}")
    return True


def write_report(path, body: str, script: str) -> None:
    """Write ``body`` to ``path``: between the script's markers when the page has them (:func:`replace_generated`),
    else as the whole file."""
    from pathlib import Path

    if not replace_generated(path, body, script):
        Path(path).write_text(body)
