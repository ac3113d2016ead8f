"""benchmarks/speed.py on its tiny setting: it runs end to end, reports every column, both sides predict the same
query by query, and every timed cold task is cold on both sides (no timing assertions)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
#: how speed.md says to run it, from the repository root
SCRIPT = [sys.executable, "-m", "benchmarks.speed"]


def _speed_module():
    """benchmarks.speed, imported (its top level is standard library and benchmarks.common only: cheap)."""
    return importlib.import_module("benchmarks.speed")


def _table(md: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main results table (the first table whose header starts with 'strategy')."""
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| strategy | epochs |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return header, rows


def test_tiny_run_reports_every_column(tmp_path):
    mod = _speed_module()
    from benchmarks.speed_report import COLUMNS

    out_md, out_json = tmp_path / "speed.md", tmp_path / "speed.json"
    env = subprocess_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([*SCRIPT, "--tiny", "--markdown", str(out_md), "--json", str(out_json)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    md = out_md.read_text()
    assert md in proc.stdout  # the report is printed too

    header, rows = _table(md)
    assert header == COLUMNS
    result = json.loads(out_json.read_text())
    names = [r["name"] for r in result["rows"]]
    expected = [n for n in mod.TINY if n in names or not any(n in s for s in result["skipped"])]
    assert names == expected and {"linear", "lora", "full"} <= set(names)
    assert [r[0].split(" (pefs: ")[0] for r in rows] == names
    bf16_limit = COLUMNS.index("pefs ÷ bf16 fwd limit")
    native = bool(result["rows"][0].get("limit_bf16_episode_s"))  # measured only where bf16 is native
    for row in rows:
        assert len(row) == len(COLUMNS)
        filled = [c for i, c in enumerate(row) if i >= 3 and (native or i != bf16_limit)]
        assert all(cell and cell != "–" for cell in filled), row  # every measurement is filled in
        assert "NO" not in row[-1], f"reference and pefs disagree: {row}"
        assert row[0].endswith(("(pefs: head linear, fp32 no-grad)", "(pefs: head prototype, fp32 no-grad)")), row
    for r in result["rows"]:
        assert "error" not in r
        for p in ("episode", "kshot"):  # strict: identical predictions but for floating-point ties
            assert r[f"queries_{p}"] > 0 and r[f"agree_{p}"] and r[f"mismatch_{p}"] == r[f"mismatch_tie_{p}"], r
        for t in r["tasks"]["b"]["episode"] + r["tasks"]["b"]["kshot"]:
            assert t["decoded"] == t["images"]  # cold: pefs decoded every image of every timed task itself
        for side in ("ref", "pefs"):
            assert r[f"{side}_episode_s"] > 0 and r[f"{side}_kshot_s"] > 0 and r[f"{side}_peak_mb"] is not None
            assert 0.0 <= r[f"{side}_episode_acc"] <= 1.0
        assert r["limit_episode_s"] > 0 and r["pefs_vs_limit_episode"] > 0
        # the reference runs the CNN in pefs' layout, so both sides sum in the same order (--ref-layout nchw: not)
        assert r["setup_s"]["ref"]["episode"]["channels_last"] is True

    for section in ("### Where the time goes", "### Protocol run: 2 episodes", "### Targets", "### Hardware probes",
                    "### GPU"):
        assert section in md
    proto = next(r for r in result["rows"] if r["name"] == "prototype")
    assert proto["trainable"] == proto["trainable_ref"] == 0  # a prototype head on a frozen trunk trains nothing
    stream = next(r for r in result["rows"] if r["name"] == "linear")
    assert len(stream["tasks"]["a"]["stream"]) == len(stream["tasks"]["b"]["stream"]) == 2
    # pefs decodes an image once per run: the two episodes overlap in a 5-way pool, so fewer than 2 x 100
    assert 100 <= stream["pefs_stream_decoded"] < stream["stream_images"] == 200
    assert "load average" in md and "--tiny" in md
    assert result["settings"]["ref_layout"] == "channels-last" and "reference layout channels-last for a CNN" in md
    assert result["load_start"] and result["load_end"]
    if not result["info"]["cuda"]:
        assert "Skipped: torch.cuda.is_available() is False" in md and "ran on the GPU" not in md
    # the report is a function of the data alone: --render of the written JSON writes the same page
    again = tmp_path / "again.md"
    proc = subprocess.run([*SCRIPT, "--render", str(out_json), "--markdown", str(again)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert again.read_text() == md


def test_agreement_is_judged_on_predictions_and_a_real_disagreement_fails():
    """Strict agreement: identical predictions pass; a differing prediction passes only where the two classes'
    scores tie to floating-point noise on one side; one clear disagreement among many agreeing queries fails (an
    accuracy band would let it through)."""
    agreement = _speed_module().agreement
    same = [{"scores": [[2.0, 0.5, -1.0]] * 99 + [[0.1, 3.0, 0.0]]}]
    assert agreement(same, same, "episode")["agree_episode"]
    tie = [{"scores": [[2.0, 0.5, -1.0]] * 99 + [[1.0, 1.0 + 1e-6, 0.0]]}]
    flipped = [{"scores": [[2.0, 0.5, -1.0]] * 99 + [[1.0 + 1e-6, 1.0, 0.0]]}]
    r = agreement(tie, flipped, "episode")
    assert r["agree_episode"]
    assert (r["mismatch_episode"], r["mismatch_tie_episode"], r["queries_episode"]) == (1, 1, 100)
    wrong = [{"scores": [[2.0, 0.5, -1.0]] * 99 + [[3.0, 0.1, 0.0]]}]
    r = agreement(same, wrong, "episode")
    assert not r["agree_episode"] and (r["mismatch_episode"], r["mismatch_tie_episode"]) == (1, 0)
