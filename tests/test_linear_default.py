"""``--strategy linear`` without a named head is the converged logistic probe; a named head is kept; the default's
run key is new, so no stored cell computed with the old AdamW head answers for it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pefs.cli.main import main
from pefs.config import DEFAULT_HEAD, LINEAR_PROBE_HEAD, TrainConfig, TuneConfig, head_of
from pefs.errors import PefsError
from pefs.protocols.run import resolve, tune

ROOT = Path(__file__).resolve().parents[1]


def test_linear_without_a_head_resolves_to_logistic_and_others_keep_linear_proto():
    """A plain linear run resolves to the logistic head; other strategies, searched strategies and --final keep
    the linear-proto head, as do runs that save a model (it must predict by itself); a named head always wins."""
    assert LINEAR_PROBE_HEAD == "logistic" and DEFAULT_HEAD == "linear-proto"
    assert resolve(TuneConfig(strategy="linear"), None).head == "logistic"
    assert resolve(TuneConfig(strategy="lora"), None).head == "linear-proto"
    assert head_of(TuneConfig(strategy="linear", search={"strategy": "linear,lora"})) == "linear-proto"
    assert head_of(TuneConfig(strategy="linear", final=True, save_adapter="m")) == "linear-proto"
    assert resolve(TuneConfig(strategy="linear", save_adapter="m"), None).head == "linear-proto"
    for head in ("linear", "linear-proto", "prototype"):
        assert resolve(TuneConfig(strategy="linear", head=head), None).head == head


def test_searching_head_lr_on_the_default_probe_is_refused_with_the_way_out():
    """--search head_lr with the default linear probe (which fits without a learning rate) is one PefsError naming
    the value and the trained heads; with a trained head named it is accepted."""
    with pytest.raises(PefsError, match=r"--search head_lr=1e-3,1e-2 .* --head linear or --head linear-proto"):
        TuneConfig(strategy="linear", search={"head_lr": "1e-3,1e-2"}).validate()
    TuneConfig(strategy="linear", head="linear", search={"head_lr": "1e-3,1e-2"}).validate()


def test_default_linear_key_differs_from_the_adamw_cells_and_other_keys_are_unchanged():
    """The resolved hash of a default linear run differs from the same run with the old default head (what stored
    linear cells were computed with); a lora run's hash is the same whether its head is named or defaulted."""
    default = resolve(TuneConfig(strategy="linear"), None)
    old = resolve(TuneConfig(strategy="linear", head="linear-proto"), None)
    assert default.hash() != old.hash()
    lora = resolve(TuneConfig(strategy="lora"), None)
    assert lora.hash() == resolve(TuneConfig(strategy="lora", head="linear-proto"), None).hash()


def test_a_stored_adamw_linear_cell_is_not_reused_for_a_default_run(tmp_path, capsys, monkeypatch):
    """Dropping the recipe's pinned head from a committed store's recipe leaves exactly its linear cells unstored:
    their stored results came from the AdamW head and do not answer a default-logistic run."""
    monkeypatch.chdir(ROOT)
    text = (ROOT / "recipes/offline-strategies.yaml").read_text()
    assert re.search(r"^head: linear-proto$", text, re.M)
    # its linear cells only (the other strategies' heads did not change; test_stored_keys covers them)
    text, n = re.subn(r"^strategies:\n(?:  - .*\n|    .*\n)+", "strategies: [linear]\n", text, flags=re.M)
    assert n == 1
    counts = {}
    for name, body in (("pinned", text), ("default", re.sub(r"^head: linear-proto\n", "", text, flags=re.M))):
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(body)
        assert main(["sweep", "--recipe", str(recipe), "--dry-run", "-q"]) == 0
        out = capsys.readouterr().out
        counts[name] = tuple(map(int, re.search(r"^(\d+) cells, (\d+) already in ", out, re.M).groups()))
    assert counts["pinned"][0] == counts["pinned"][1] > 0, counts  # every pinned linear cell is stored
    assert counts["default"] == (counts["pinned"][0], 0), counts  # and none answers a default run


def test_records_name_the_head_a_run_used(image_folder, tmp_path):
    """A default linear run records the logistic head and fits it without training (0 steps); --head linear
    records linear and trains the AdamW head (steps > 0, trainable = the linear layer)."""
    common = dict(model="vit_tiny_patch16_224", pretrained=False, img_size=32, data=str(image_folder), shots=3,
                  output=str(tmp_path), train=TrainConfig(epochs=1, progress=False, inference_precision="no"))
    rec = tune(TuneConfig(strategy="linear", **common))
    assert rec["head"] == "logistic" and rec["resolved"]["head"] == "logistic" and rec["config"]["head"] is None
    assert rec["runs"][0]["steps"] == 0 and "logistic head fits" in rec["params"]["note"]
    rec = tune(TuneConfig(strategy="linear", head="linear", **common))
    assert rec["head"] == "linear" and rec["runs"][0]["steps"] > 0
    assert rec["params"]["trainable"] == rec["params"]["head"] == 3 * (192 + 1)  # vit_tiny's width, 3 classes


def test_tune_help_names_the_default_head(capsys):
    """``pefs tune --help`` says which head --strategy linear uses by default."""
    try:
        main(["tune", "--help"])
    except SystemExit:
        pass
    out = " ".join(capsys.readouterr().out.split())
    assert "default: logistic (a converged probe) for --strategy linear, else linear-proto" in out
