"""benchmarks/gpu_check.sh (issue #23's GPU check in one command) parses and runs every step, each under its own
time limit within the 8-minute budget; subprocesses of tests keep whatever PYTHONPATH the run was given."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.conftest import ROOT, subprocess_env

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_gpu_check_parses_and_names_every_step():
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    text = SCRIPT.read_text()
    steps = {m.group(1): (int(m.group(2)), m.group(3)) for m in re.finditer(r"^ *step (\S+) (\d+) (.*)$", text, re.M)}
    assert set(steps) == {"wheels", "environment", "tests", "speed", "speed-deterministic", "memory", "tune-lora",
                          "tune-full", "protocol-lora-100"}
    assert sum(limit for limit, _ in steps.values()) <= 8 * 60
    assert "pytest -n 14" in steps["tests"][1]
    assert "benchmarks.speed" in steps["speed"][1] and "--deterministic" in steps["speed-deterministic"][1]
    speed = re.search(r"^SPEED=\((.*?)\)$", text, re.M | re.S).group(1)
    assert "vit_base_patch16_224" in speed and "--img-size 224" in speed and "linear,lora,full" in speed
    assert "vit_base_patch16_224,vit_large_patch16_224" in text and "benchmarks.memory" in steps["memory"][1]
    assert "pefs.cli tune -q --strategy lora" in steps["tune-lora"][1]
    assert "--strategy full" in steps["tune-full"][1]
    assert "--strategy lora --ways 5 --shots 1 --episodes 100" in steps["protocol-lora-100"][1]
    assert "--no-index --no-deps --target /tmp/site .whl/*.whl" in steps["wheels"][1]
    assert text.startswith("#!/usr/bin/env bash") and "\nset -u\n" in text and "timeout " in text


def test_gpu_check_without_an_outdir_says_how_to_call_it(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert r.returncode == 2 and "usage: bash benchmarks/gpu_check.sh OUTDIR | --fetch-wheels" in r.stderr


def test_subprocess_env_prepends_the_repository_to_pythonpath(monkeypatch):
    other = str(Path("/tmp/site"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([other, str(ROOT)]))
    env = subprocess_env(OMP_NUM_THREADS="1")
    assert env["PYTHONPATH"] == os.pathsep.join([str(ROOT), other]) and env["OMP_NUM_THREADS"] == "1"
    assert subprocess_env(repo=False)["PYTHONPATH"] == other  # the root taken off, the rest kept
    monkeypatch.delenv("PYTHONPATH")
    assert subprocess_env()["PYTHONPATH"] == str(ROOT) and "PYTHONPATH" not in subprocess_env(repo=False)
