"""benchmarks/memory.py on its tiny setting: every strategy measured in its own process, ratios to full."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_memory_run_reports_every_strategy(tmp_path):
    out_md, out_json = tmp_path / "memory.md", tmp_path / "memory.json"
    env = subprocess_env(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--tiny", "--markdown",
                           str(out_md), "--json", str(out_json)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    result = json.loads(out_json.read_text())
    rows = result["results"]["vit_tiny_patch16_224"]
    assert list(rows) == ["full", "linear", "lora", "lora@ckpt"]
    for spec, m in rows.items():
        assert "error" not in m, (spec, m)
        assert m["peak_mb"] > 0 and m["s_per_step"] > 0
    assert rows["linear"]["cached"] and not rows["lora"]["cached"]  # the linear probe trains on cached features
    assert rows["full"]["trainable"] > rows["lora"]["trainable"] == rows["lora@ckpt"]["trainable"]
    # the ratios it promises, on live tensor memory (counted storages: no timing involved): training on cached
    # features needs almost nothing, LoRA less than full fine-tuning, checkpointing less than plain LoRA
    peak = {spec: m["peak_mb"] for spec, m in rows.items()}
    assert peak["linear"] < 0.1 * peak["full"]
    assert peak["lora@ckpt"] < peak["lora"] < peak["full"]
    md = out_md.read_text()
    assert md in proc.stdout
    for spec in ("linear", "lora", "lora@ckpt"):  # each row shows its own ratio and the verdict against 0.5x
        ratio = peak[spec] / peak["full"]
        cells = f"| {spec} | {rows[spec]['trainable']:,} | {peak[spec]:.0f} | {ratio:.2f}× | "
        assert cells + ("yes" if ratio <= 0.5 else "no") + " |" in md, (spec, md)
    assert f"| full | {rows['full']['trainable']:,} | {peak['full']:.0f} | – | – |" in md
    # the report is a function of the data alone: --render of the written JSON writes the same page
    again = tmp_path / "again.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--render", str(out_json),
                           "--markdown", str(again)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert again.read_text() == md
