"""What every benchmark shares: how a script starts, what it records about the machine and the run, its one render
flag, and how it writes its page.

Benchmarks run as modules from the repository root, ``.venv/bin/python -m benchmarks.speed --tiny``, and import
each other as ``benchmarks.X``. A script started as a file (``python benchmarks/speed.py``) re-executes itself
that way (:func:`run_as_module`), so no script touches ``sys.path``. Standard library only at import time: the
parent processes of speed.py and memory.py only orchestrate and never import torch.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

#: the interpreter every recorded command names, as a reader at the repository root retypes it
PYTHON = ".venv/bin/python"
#: environment variables that change a benchmark's numbers: recorded in front of its command when set
RECORDED_ENV = ("OMP_NUM_THREADS", "BENCH_THREADS")


# ----------------------------------------------------------------------------------------------- starting a script


def module_name(script: str | Path) -> str:
    """``benchmarks.speed`` for ``benchmarks/speed.py``: the name the script runs under with ``python -m``."""
    path = Path(script).resolve()
    return f"{path.parent.name}.{path.stem}"


def module_command(script: str | Path) -> list[str]:
    """The argv that runs ``script`` as a module of its package in this interpreter (``-P`` on Python 3.11+: the
    package comes from PYTHONPATH, never from a ``benchmarks`` folder that happens to be in the working folder)."""
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *safe_path, "-m", module_name(script)]


def module_env(script: str | Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the folder holding ``script``'s package first on PYTHONPATH, so
    ``benchmarks.X`` imports from the same copy as ``script``."""
    out = dict(os.environ if env is None else env)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(script).resolve().parents[1]), out.get("PYTHONPATH")]))
    return out


def run_as_module(script: str | Path) -> NoReturn:
    """Re-execute ``script``, started as ``python benchmarks/X.py``, as ``python -m benchmarks.X`` with the same
    arguments and working folder: a file run puts the script's folder on ``sys.path``, not the repository, so
    ``benchmarks.common`` would not import. Every script calls it first thing when started as a file."""
    sys.stdout.flush()
    os.execve(sys.executable, [*module_command(script), *sys.argv[1:]], module_env(script))


# ------------------------------------------------------------------------------------------- the render flag


def parser(doc: str, data: str, **kwargs: Any) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of ``doc``, with the render flag every benchmark has:
    ``--render [DATA]`` measures nothing and writes the report from DATA, by default ``data``."""
    p = argparse.ArgumentParser(description=doc.strip().split("\n\n")[0], **kwargs)
    p.add_argument("--render", nargs="?", const=True, default=False, type=Path, metavar="DATA",
                   help=f"measure nothing: write the report from DATA, an earlier run's raw data (default: {data})")
    return p


def render_source(args: argparse.Namespace, default: str | Path) -> Path | None:
    """The data ``--render`` renders from (``default`` when the flag names none), or None: measure."""
    if args.render is False:
        return None
    return Path(default) if args.render is True else args.render


# --------------------------------------------------------------------------------------- machine and load


def machine() -> dict[str, Any]:
    """Where the numbers come from: Python, torch, platform, CPU model and count, torch threads, CUDA and its
    device (torch is imported here, not at the top, so that orchestrating parents stay light)."""
    import platform

    import torch

    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu": cpu_model(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "cuda": cuda,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu"}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module reports."""
    import platform

    fallback = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), fallback)
    except OSError:
        return fallback


def load() -> list[float] | None:
    """The 1/5/15-minute load average now (None where the OS keeps none): other work on a shared machine slows a
    benchmark, so runs record it at their start and end."""
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def load_text(reading: list[float] | str | None) -> str:
    """A load reading as ``1.04/1.32/1.07``; older records stored that text itself, which is returned as is."""
    if reading is None:
        return "not recorded"
    if isinstance(reading, str):
        return reading
    return "/".join(f"{x:.2f}" for x in reading)


def machine_load(data: dict[str, Any]) -> str:
    """One sentence on where a run's numbers come from, from its data alone: the machine it recorded and the load
    average at its start and end (``load_start`` / ``load_end``; data from before runs recorded load says so)."""
    m = {"cpus": data.get("nproc", "not recorded"), **(data.get("machine") or {})}  # old records: nproc
    m = {k: m.get(k, "not recorded") for k in ("cpus", "threads", "python", "torch")}
    start, end = data.get("load_start"), data.get("load_end")
    load = ("the load average was not recorded by this run" if start is None and end is None else
            f"load average {load_text(start)} at the start, {load_text(end)} at the end")
    return (f"Machine: {m['cpus']} CPUs, {m['threads']} torch thread(s), Python {m['python']}, torch "
            f"{m['torch']}; {load}. Seconds depend on the load; accuracies do not.")


# ------------------------------------------------------------------------------------------------ numbers


def pm(summary: Any, sign: bool = False) -> str:
    """``mean ± half-width`` to one decimal of a :class:`pefs.results.stats.Summary` (``+`` on the mean with
    ``sign``); one value has no interval, and says so."""
    mean = f"{summary.mean:+.1f}" if sign else f"{summary.mean:.1f}"
    return mean + (" (one seed, no CI)" if summary.half_width is None else f" ± {summary.half_width:.1f}")


# ------------------------------------------------------------------------------------------------ provenance


def git_commit() -> str:
    """The commit the benchmark ran on (``+dirty`` when tracked files differ from it), or why it is unknown."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({type(e).__name__})"
    return head + ("+dirty" if dirty else "")


def args_without_note(argv: list[str]) -> list[str]:
    """The arguments as given, without the free-text ``--note`` (it is recorded beside the command)."""
    out, skip = [], False
    for arg in argv:
        if skip or arg == "--note":
            skip = not skip
            continue
        if not arg.startswith("--note="):
            out.append(arg)
    return out


def command_line(script: str | Path, argv: list[str] | None = None) -> str:
    """The command that ran ``script`` with ``argv`` (default: this process's arguments), as a reader at the
    repository root retypes it: the recorded environment variables that are set, ``.venv/bin/python -m
    benchmarks.X`` and the arguments without ``--note``."""
    env = [f"{k}={os.environ[k]}" for k in RECORDED_ENV if k in os.environ]
    args = args_without_note(sys.argv[1:] if argv is None else argv)
    return " ".join(shlex.quote(x) for x in [*env, PYTHON, "-m", module_name(script), *args])


def now() -> str:
    """The time now, UTC, as the records write it."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def provenance(script: str | Path, argv: list[str] | None = None) -> dict[str, str]:
    """How a run came about: its command line, the commit it ran on and when (the keys every record shares)."""
    return {"command": command_line(script, argv), "git_commit": git_commit(), "measured_at": now()}


def provenance_section(data: dict[str, Any], measure: str, render: str) -> list[str]:
    """A page's "Provenance" section, from its data alone: the commit, every command that made the data, the
    machine and load, the date; each as the run recorded it, else "not recorded by the run" beside what was
    recovered later (``data["recovered"]``: the commit and date the data were committed in, from ``git log``,
    labelled as such; never presented as the run's own). ``measure`` / ``render``: the commands that measure
    again and that re-render the page."""
    rec = data.get("recovered") or {}
    source = f" ({rec['source']})" if rec.get("source") else ""
    commit = data.get("git_commit")
    commit_text = (f"`{commit}` (the run's own)" if commit else "not recorded by the run" +
                   (f"; the data were committed in `{rec['data_commit']}`{source}" if rec.get("data_commit") else ""))
    commands = data.get("commands_run") or ([data["command"]] if data.get("command") else [])
    command_text = ("; ".join(f"`{c}`" for c in commands) + (f" ({len(commands)} commands)" if len(commands) > 1
                                                              else "") if commands else "not recorded by the run")
    when = data.get("measured_at") or data.get("finished_at")
    date_text = (f"{when} (the run's own)" if when else "not recorded by the run" +
                 (f"; the data were committed {rec['data_committed_at']}{source}" if rec.get("data_committed_at")
                  else ""))
    return ["## Provenance", "",
            f"- Commit: {commit_text}.",
            f"- Command(s) that produced the data: {command_text}.",
            f"- {machine_load(data)}",
            f"- Date: {date_text}.",
            f"- To measure again: `{measure}`; to re-render this page from its data: `{render}`.", ""]


# ------------------------------------------------------------------------------------------------ the pages


def replace_generated(path: str | Path, body: str, script: str) -> bool:
    """Replace the part of page ``path`` between ``<!-- SCRIPT: begin (generated) -->`` and ``<!-- SCRIPT: end -->``
    with ``body`` (the hand-written prose outside them is kept); False, writing nothing, when the markers are
    missing."""
    path = Path(path)
    begin, end = f"<!-- {script}: begin (generated) -->", f"<!-- {script}: end -->"
    text = path.read_text() if path.exists() else ""
    if not (begin in text and end in text.split(begin, 1)[1]):
        return False
    pre, rest = text.split(begin, 1)
    path.write_text(f"{pre}{begin}\n{body.rstrip(chr(10))}\n{end}{rest.split(end, 1)[1]}")
    return True


def write_report(path: str | Path, body: str, script: str) -> None:
    """Write ``body`` to ``path``: between the script's markers when the page has them (:func:`replace_generated`),
    else as the whole file."""
    if not replace_generated(path, body, script):
        Path(path).write_text(body)


def write_section(path: str | Path, body: str, script: str) -> None:
    """Write ``body`` between the script's markers of page ``path``; exit, writing nothing, when it lacks them
    (a page that is only a section of a hand-written page must not be replaced whole)."""
    if not replace_generated(path, body, script):
        sys.exit(f"{script}: {path} lacks the markers <!-- {script}: begin (generated) --> ... "
                 f"<!-- {script}: end -->")


def run_sweep(settings: dict[str, Any], who: str) -> dict[str, Any]:
    """One sweep (what ``pefs sweep`` runs for these ``settings``), its progress on stderr prefixed by ``who``:
    its cells, seconds and the machine's load around it."""
    from pefs.sweep.run import plan, spec_from_settings
    from pefs.sweep.run import run_sweep as sweep

    spec = spec_from_settings(settings)
    cells = plan(spec)
    start, t0 = load(), time.perf_counter()
    summary = sweep(cells, spec.store, on_event=lambda kind, cell, info: print(
        f"{who}: {kind} {cell.label() if cell else ''} {info.get('position', '')}", file=sys.stderr, flush=True))
    return {"settings": settings, "cells": len(cells), "ran": summary.ran, "wall_s": round(time.perf_counter() - t0, 1),
            "load_start": start, "load_end": load()}
