"""Every committed benchmark report is re-rendered from its committed raw data and must match: a report cannot drift
from its data. Reports whose raw data is not in the repository yet are listed by name (MISSING_DATA), and that list
is itself checked, so adding the data (or a report without data) forces this file to be updated."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
#: sweep reports rendered by ``pefs report`` from a committed store: (summary page, report folder)
SWEEP_REPORTS = {"scale_vs_shots.md": "scale_vs_shots", "strategies.md": "strategies"}
#: summary pages whose result tables say they are ``pefs report``'s rows copied unchanged (strategies.md's own
#: table has another layout: it is rendered from the same store by a script, TABLE_REPORTS)
COPIED = {"scale_vs_shots.md"}
#: summary pages whose table (between the script's markers) a script renders from the page's sweep store
TABLE_REPORTS = {"strategies.md": "strategies_table.py"}
#: script reports: the page, and the script whose ``--render DATA`` writes its generated part from ``page.json``
#: (every script runs as ``python -m benchmarks.NAME``, as its page says: :func:`_module`)
SCRIPT_REPORTS = {"speed.md": "speed.py", "speed_repeat.md": "speed.py", "memory.md": "memory.py",
                  "episodic.md": "episodic.py"}
#: reports whose numbers come from runs whose raw data was never committed (it lived in /tmp); they get their
#: ``.json`` when rerun on the final code with ``--markdown``/``--out`` beside the page
MISSING_DATA: set[str] = set()
#: reports whose script re-renders the page in place from the JSON beside it: (script, its render flags)
IN_PLACE_REPORTS = {"scale.md": ("scale.py", "--render"),
                    "transformers_vit.md": ("transformers_vit.py", "--render"),
                    "linear_probe.md": ("linear_probe.py", "--render"),
                    "masked_views.md": ("masked_views.py", "--render"),
                    "sweep_store.md": ("sweep_store.py", "--render"),
                    "selection.md": ("selection.py", "--render"),
                    "fingerprint.md": ("fingerprint.py", "--render"),
                    "restore.md": ("restore.py", "--render"),
                    "linear_default.md": ("linear_default.py", "--render"),
                    "protocols.md": ("protocols.py", "--render"),
                    "scale_ladder.md": ("scale_ladder.py", "--render")}
#: reports with committed data whose script has no render-only mode yet (it renders as it measures)
NO_RENDER_MODE: set[str] = set()


def _module(script: str) -> list[str]:
    """The command that runs benchmark ``script`` (``speed.py``) as its page documents: ``python -m
    benchmarks.speed``, the package found from the working folder."""
    return [sys.executable, "-m", f"benchmarks.{Path(script).stem}"]


def _generated(text: str) -> str:
    """A report with its generation timestamp blanked (the one line that differs between two renders)."""
    return re.sub(r"Generated \d{4}-\d\d-\d\d \d\d:\d\d\.", "Generated <time>.", text)


def test_every_report_is_accounted_for():
    pages = {p.name for p in BENCH.glob("*.md")} - {"README.md"}
    assert pages == set(SWEEP_REPORTS) | set(SCRIPT_REPORTS) | set(IN_PLACE_REPORTS) | NO_RENDER_MODE, \
        "a new report needs its data and a row here"
    assert all((BENCH / page).with_suffix(".json").exists() for page in (*IN_PLACE_REPORTS, *NO_RENDER_MODE))
    missing = {page for page in SCRIPT_REPORTS if not (BENCH / page).with_suffix(".json").exists()}
    assert missing == MISSING_DATA, "update MISSING_DATA: data was added (or lost) for " + str(missing ^ MISSING_DATA)


@pytest.mark.parametrize("page", sorted(SWEEP_REPORTS))
def test_sweep_report_rerenders_from_its_store(page, tmp_path, monkeypatch):
    """``pefs report`` on the committed store gives the committed report.md and results.csv, and every table row
    of the summary page is one of the report's rows, copied unchanged."""
    from pefs.results.report.markdown import build_report

    folder = BENCH / SWEEP_REPORTS[page]
    monkeypatch.chdir(ROOT)  # the report names its store as the command gave it: relative to the repository
    build_report(f"benchmarks/{SWEEP_REPORTS[page]}/results.jsonl", tmp_path, ("md", "csv"))
    assert _generated((tmp_path / "report.md").read_text()) == _generated((folder / "report.md").read_text())
    assert _cells(tmp_path / "results.csv") == _cells(folder / "results.csv")
    if page in COPIED:
        rows = {ln for ln in (tmp_path / "report.md").read_text().splitlines() if ln.startswith("| ")}
        summary = [ln for ln in (BENCH / page).read_text().splitlines() if ln.startswith("| ")]
        numbers = [ln for ln in summary if re.search(r"\d ± \d", ln)]  # result rows
        assert numbers and all(ln in rows for ln in numbers), [ln for ln in numbers if ln not in rows][:3]


#: every ``pefs report`` folder under benchmarks/ (a summary page's, or one a page links to, as selection.md does)
REPORT_FOLDERS = sorted(p.parent.name for p in BENCH.glob("*/report.md"))
#: the paired baseline a folder's report was written with (benchmarks/selection.py names it), else the default
BASELINES = {"selection": "linear (epochs=10, head=linear-proto, search={'head_lr': '1e-3,1e-2,1e-1'})"}


def test_every_report_folder_has_its_store():
    """Every benchmarks/*/report.md has the store it is rendered from beside it (no report without a render
    path): the next test re-renders those that no summary page above covers."""
    assert REPORT_FOLDERS and all((BENCH / f / "results.jsonl").exists() for f in REPORT_FOLDERS), REPORT_FOLDERS


@pytest.mark.parametrize("folder", [f for f in REPORT_FOLDERS if f not in SWEEP_REPORTS.values()])
def test_report_folder_rerenders_from_its_store(folder, tmp_path, monkeypatch):
    """``pefs report`` on a committed store gives the committed report.md and results.csv."""
    from pefs.results.report.markdown import build_report

    monkeypatch.chdir(ROOT)
    build_report(f"benchmarks/{folder}/results.jsonl", tmp_path, ("md", "csv"), baseline=BASELINES.get(folder))
    assert _generated((tmp_path / "report.md").read_text()) == _generated((BENCH / folder / "report.md").read_text())
    assert _cells(tmp_path / "results.csv") == _cells(BENCH / folder / "results.csv")


def _cells(path: Path) -> list[list[object]]:
    """A CSV's cells, numbers rounded to 12 significant digits (the last bit of a float sum may differ)."""
    import csv

    def value(cell: str) -> object:
        try:
            return float(f"{float(cell):.12g}")
        except ValueError:
            return cell

    with open(path, newline="") as f:
        return [[value(c) for c in row] for row in csv.reader(f)]


@pytest.mark.parametrize("page", sorted(SCRIPT_REPORTS))
def test_script_report_rerenders_from_its_data(page, tmp_path):
    data = (BENCH / page).with_suffix(".json")
    if not data.exists():
        assert page in MISSING_DATA
        pytest.skip(f"benchmarks/{data.name} is not committed yet (MISSING_DATA): rerun the benchmark")
    out = tmp_path / "rendered.md"
    flag = "--out" if page == "episodic.md" else "--markdown"
    r = subprocess.run([*_module(SCRIPT_REPORTS[page]), "--render", str(data), flag, str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_text() in (BENCH / page).read_text(), f"benchmarks/{page} differs from its data"


@pytest.mark.parametrize("page", sorted(IN_PLACE_REPORTS))
def test_in_place_report_rerenders_from_its_data(page, tmp_path):
    """The script's render-only mode, run on a copy of benchmarks/ (``python -m benchmarks.NAME`` in the copy's
    parent, so the copy's modules run), writes the committed page from the committed JSON (the copy keeps the
    repository's files untouched)."""
    import shutil

    copy = tmp_path / "benchmarks"
    shutil.copytree(BENCH, copy, ignore=shutil.ignore_patterns("*.png", "__pycache__"))
    (copy / page).unlink()
    script, flag = IN_PLACE_REPORTS[page]
    r = subprocess.run([*_module(script), flag], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=subprocess_env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert _generated((copy / page).read_text()) == _generated((BENCH / page).read_text()), \
        f"benchmarks/{page} differs from its data"


@pytest.mark.parametrize("page", sorted(TABLE_REPORTS))
def test_summary_table_rerenders_from_its_store(page, tmp_path):
    """The generated table of a summary page, blanked in a copy of the page, is written back identically by its
    script from the committed store (the prose around the markers is untouched)."""
    text = (BENCH / page).read_text()
    begin = next(ln for ln in text.splitlines() if ln.startswith("<!-- ") and "begin (generated)" in ln)
    end = next(ln for ln in text.splitlines() if ln.startswith("<!-- ") and ln.endswith(": end -->"))
    assert begin in text and end in text
    pre, rest = text.split(begin, 1)
    copy = tmp_path / page
    copy.write_text(f"{pre}{begin}\n{end}{rest.split(end, 1)[1]}")
    assert "| " not in copy.read_text().split(begin, 1)[1].split(end, 1)[0]
    r = subprocess.run([*_module(TABLE_REPORTS[page]), "--render", "--page", str(copy),
                        "--store", str(BENCH / SWEEP_REPORTS[page] / "results.jsonl")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert copy.read_text() == text, f"benchmarks/{page}'s table differs from its store"


def _run(script: str, args: list[str], cwd: Path = ROOT) -> None:
    """Run benchmark ``script`` as a module with ``args``; it must succeed."""
    env = subprocess_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    r = subprocess.run([*_module(script), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]


def test_prefix_vs_forward_section_rerenders_from_its_data(tmp_path):
    """A short prefix_vs_forward.py run writes its JSON and its section of a copy of speed.md, between the markers
    only; --render of that JSON writes the same page again, and the page names the commit."""
    page, data = tmp_path / "speed.md", tmp_path / "pvf.json"
    original = (BENCH / "speed.md").read_text()
    page.write_text(original)
    _run("prefix_vs_forward.py", ["--episodes", "1", "--json", str(data), "--page", str(page)])
    written = page.read_text()
    begin, end = "<!-- prefix_vs_forward.py: begin (generated) -->", "<!-- prefix_vs_forward.py: end -->"
    assert written.split(begin)[0] == original.split(begin)[0] and written.split(end)[1] == original.split(end)[1]
    assert "| median |" in written and "at commit `" in written and data.exists()
    page.write_text(original)
    _run("prefix_vs_forward.py", ["--render", "--json", str(data), "--page", str(page)])
    assert page.read_text() == written


def test_episodic_short_run_rerenders_from_its_data(tmp_path):
    """A 2-episode episodic.py run writes its page and JSON; --render of the JSON writes the same page."""
    out = tmp_path / "episodic.md"
    _run("episodic.py", ["--episodes", "2", "--shots", "1", "--only", "prototype", "--records",
                         str(tmp_path / "records"), "--out", str(out)])
    md = out.read_text()
    assert "| 5-way 1-shot | prototype (ProtoNet) |" in md and "at commit `" in md
    again = tmp_path / "again.md"
    _run("episodic.py", ["--render", str(tmp_path / "episodic.json"), "--out", str(again)])
    assert again.read_text() == md


def test_episodic_addition_keeps_the_rows_and_compares_on_the_same_episodes(tmp_path):
    """episodic.py --add runs the --only rows and adds them to the data with their own command and commit: the
    rows already there are kept, the added row sits beside the prototype row's accuracy on the same episodes, the
    page re-renders from the data; an addition that would draw other episodes (another --queries) is refused."""
    import json

    out, data = tmp_path / "episodic.md", tmp_path / "episodic.json"
    common = ["--shots", "1", "--records", str(tmp_path / "records"), "--out", str(out)]
    _run("episodic.py", ["--episodes", "2", "--only", "prototype", *common])
    before = json.loads(data.read_text())["rows"]
    _run("episodic.py", ["--add", "--episodes", "2", "--only", "BD-CSPN", *common])
    after = json.loads(data.read_text())
    assert after["rows"][:len(before)] == before and after["rows"][-1]["added"] == 0
    proto = 100 * sum(before[0]["record"]["accuracies"]) / 2
    md = out.read_text()
    assert re.search(rf"\| 5-way 1-shot \| BD-CSPN \(transductive\) \| bd-cspn \| cached \| 2 \| 0 \| [\d.]+ ± [\d.]+ "
                     rf"\| {proto:.2f} ± [\d.]+ \|", md) and "Addition 1: " in md and "--add" in md
    _run("episodic.py", ["--render", str(data), "--out", str(tmp_path / "again.md")])
    assert (tmp_path / "again.md").read_text() == md
    env = subprocess_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    r = subprocess.run([*_module("episodic.py"), "--add", "--queries", "10", "--only", "TIM-GD", *common], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode != 0 and "queries=10 differs from the data's queries=15" in r.stderr
    assert json.loads(data.read_text()) == after


def test_summary_table_refuses_a_store_with_a_cell_twice(tmp_path):
    """A rerun appended beside the old rows would be averaged with them: the table script refuses instead."""
    store = BENCH / "strategies" / "results.jsonl"
    lines = store.read_text().splitlines()
    dup = tmp_path / "results.jsonl"
    dup.write_text("\n".join([*lines, lines[0]]) + "\n")
    r = subprocess.run([*_module("strategies_table.py"), "--store", str(dup)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "twice" in r.stderr and "| linear |" not in r.stdout
