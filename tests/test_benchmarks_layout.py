"""benchmarks/ is one package sharing one helper module: no script edits ``sys.path``, imports another's private
names, reads the load itself or builds its own argument parser (so every script has the same ``--render``), and a
script started as a file still runs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SOURCES = sorted(BENCH.glob("*.py"))
#: the one module allowed to read the load average and build an argument parser
COMMON = BENCH / "common.py"


def _benchmark_modules(tree: ast.Module) -> dict[str, str]:
    """Local names bound to benchmarks modules by ``import benchmarks.X as Y`` / ``from benchmarks import X``."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("benchmarks.") and a.asname:
                    out[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module == "benchmarks" and not node.level:
            out.update({a.asname or a.name: f"benchmarks.{a.name}" for a in node.names})
    return out


def _private_uses(path: Path) -> list[str]:
    """Private names (``_x``, not dunders) this file takes from another benchmarks module."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("benchmarks")):
            found += [f"from {node.module} import {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    modules = _benchmark_modules(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            found.append(f"{modules[node.value.id]}.{node.attr}")
    return found


def test_benchmarks_is_a_package_with_one_helper_module():
    assert (BENCH / "__init__.py").exists() and COMMON.exists()
    assert not (BENCH / "provenance.py").exists(), "provenance.py was merged into common.py"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_script_edits_sys_path(path):
    """No ``sys.path.insert`` (nor any other use of ``sys.path`` in code): scripts import ``benchmarks.X``."""
    text = path.read_text()
    uses = [n.lineno for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Attribute) and n.attr == "path"
            and isinstance(n.value, ast.Name) and n.value.id == "sys"]
    assert "sys.path.insert" not in text and not uses, f"{path.name}, lines {uses}: import benchmarks.X instead"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_script_imports_another_ones_private_names(path):
    assert _private_uses(path) == [], f"{path.name}: make the name public in the module that owns it"


@pytest.mark.parametrize("path", [p for p in SOURCES if p != COMMON], ids=lambda p: p.name)
def test_machine_load_and_flags_come_from_common(path):
    """The load reading, the argument parser (and with it the one ``--render`` flag) are common.py's."""
    text = path.read_text()
    assert "getloadavg" not in text, f"{path.name}: use benchmarks.common.load()"
    assert "ArgumentParser(" not in text, f"{path.name}: use benchmarks.common.parser() (it adds --render)"
    assert "import platform" not in text, f"{path.name}: use benchmarks.common.machine()"
    for old in ('"--render-only"', '"--from-json"'):
        assert old not in text, f"{path.name}: the render flag is spelled --render"


@pytest.mark.parametrize("path", [p for p in SOURCES if "__main__" in p.read_text()], ids=lambda p: p.name)
def test_every_script_reruns_itself_as_a_module_when_started_as_a_file(path):
    """A script started as ``python benchmarks/X.py`` has benchmarks/, not the repository, on sys.path: its first
    statement after the imports of ``__future__`` hands over to ``common.run_as_module``."""
    tree = ast.parse(path.read_text())
    first = next(n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
                 and not (isinstance(n, ast.ImportFrom) and n.module == "__future__"))
    assert isinstance(first, ast.If) and "run_as_module(__file__)" in ast.unparse(first), path.name


def test_a_script_started_as_a_file_runs(tmp_path):
    """``python benchmarks/strategies_table.py`` from another folder, without the repository on PYTHONPATH: it
    re-executes itself as ``python -m benchmarks.strategies_table`` and prints its table."""
    env = subprocess_env(repo=False)
    r = subprocess.run([sys.executable, str(BENCH / "strategies_table.py")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("| strategy |") and "| linear |" in r.stdout


def test_command_line_is_the_module_command_without_the_note(monkeypatch):
    from benchmarks.common import command_line

    monkeypatch.delenv("BENCH_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    got = command_line(BENCH / "speed.py", ["--tiny", "--note", "other jobs ran", "--markdown", "a b.md", "--note=x"])
    assert got == "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.speed --tiny --markdown 'a b.md'"


def test_load_text_reads_new_and_old_records():
    from benchmarks.common import load, load_text

    reading = load()
    assert reading is None or len(reading) == 3
    assert load_text([1.0, 0.456, 2]) == "1.00/0.46/2.00"
    assert load_text("1.00/0.46/2.00") == "1.00/0.46/2.00"  # records before common.py stored the text
    assert load_text(None) == "not recorded"


def test_render_flag_is_optional_and_takes_a_path():
    from benchmarks.common import parser, render_source

    p = parser("Doc.\n\nMore.", "x.json")
    assert render_source(p.parse_args([]), "x.json") is None
    assert render_source(p.parse_args(["--render"]), "x.json") == Path("x.json")
    assert render_source(p.parse_args(["--render", "y.json"]), "x.json") == Path("y.json")


def test_machine_names_every_fact():
    from benchmarks.common import machine

    m = machine()
    assert {"python", "torch", "platform", "cpu", "cpus", "threads", "cuda", "device"} <= set(m)
    assert m["device"] == "cpu" or m["cuda"]
