"""``pefs`` end to end on the embedded model and data, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pefs.cli.flags import config_from_args
from pefs.cli.main import build_parser, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pefs.cli", *args], capture_output=True, text=True, timeout=600)


def test_tune_linear_end_to_end(tmp_path, capsys):
    assert main(["tune", "--strategy", "linear", "--shots", "2", "-q", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "accuracy:" in out and "trainable parameters: 12,810" in out
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["strategy"] == "linear" and record["shots"] == 2
    assert record["accuracy_mean"] > 0.3  # chance is 0.1 on 10 classes
    assert record["params"]["trainable"] == 12_810 and record["runs"][0]["cached"]


def test_tune_lora_end_to_end(tmp_path, capsys):
    assert main(["tune", "--strategy", "lora", "--shots", "1", "--epochs", "2", "-q",
                 "--output", str(tmp_path)]) == 0
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["params"]["trainable"] > record["params"]["head"] > 0
    assert not record["runs"][0]["cached"] and record["runs"][0]["steps"] == 2  # 10 images, batch 16


@pytest.mark.parametrize("args, message", [
    (["--model", "no_such_model"], "unknown model 'no_such_model'"),
    (["--strategy", "nope"], "unknown strategy 'nope'; valid choices:"),
    (["--shots", "0"], "shots must be a whole number >= 1, got 0"),
    (["--shots", "500"], "valid shots: 1..60"),
    (["--checkpoint", "/missing.safetensors"], "checkpoint '/missing.safetensors' does not exist"),
    (["--strategy", "lora", "-o", "rank=4"], "unknown option 'rank'"),
])
def test_bad_input_one_line_no_traceback(tmp_path, args, message):
    r = run_cli("tune", "-q", "--output", str(tmp_path), *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_data_folder_without_images(tmp_path):
    (tmp_path / "data" / "cls").mkdir(parents=True)
    r = run_cli("tune", "-q", "--data", str(tmp_path / "data"), "--output", str(tmp_path))
    assert r.returncode == 2 and "has no images" in r.stderr and "Traceback" not in r.stderr


def test_help_for_every_subcommand():
    for cmd in ([], ["tune"], ["models"], ["strategies"], ["sweep"], ["report"], ["pretrain"]):
        r = run_cli(*cmd, "--help")
        assert r.returncode == 0 and "usage: pefs" in r.stdout and "%%" not in r.stdout


@pytest.mark.parametrize("argv", [["report", "--help"], ["--help"], ["sweep", "--help"], ["tune", "--help"],
                                  ["pretrain", "--help"]])
def test_help_imports_no_torch(argv):
    """Building the parser (every command's flags) stays light: ``pefs report --help`` and the rest import no torch."""
    code = ("import sys\nfrom pefs.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('torch imported:', 'torch' in sys.modules, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=600)
    assert "usage: pefs" in r.stdout and "torch imported: False" in r.stderr, r.stderr[-2000:]


def test_tune_flags_are_generated_from_the_config_fields(capsys):
    """Every CLI-visible config field has its flag, with the help text and default written on the field."""
    import dataclasses

    from pefs.config import TrainConfig, TuneConfig

    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for cls in (TuneConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            if not f.metadata.get("cli", True):
                continue
            flag = (f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),))[0]
            if f.type == "bool" and f.default is True and not f.metadata.get("flags"):
                flag = "--no-" + f.name.replace("_", "-")
            assert flag in out, flag
            assert " ".join(f.metadata["help"].split())[:30] in out, f.name
    a = build_parser().parse_args(["tune", "--lr", "0.5", "--no-merge-for-eval", "-o", "r=4", "--seeds", "0-2"])
    c = config_from_args(a)
    assert (c.train.lr, c.train.merge_for_eval, c.options, c.seeds) == (0.5, False, {"r": "4"}, (0, 1, 2))
    assert config_from_args(build_parser().parse_args(["tune"])) == TuneConfig(train=TrainConfig(progress=True))


def test_models_and_strategies_lists(capsys):
    assert main(["models", "--offline"]) == 0
    assert "efficientnet_lite0.offline" in capsys.readouterr().out
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert "linear" in out and "lora" in out and "r=8" in out
