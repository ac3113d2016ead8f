"""The scale ladder (issue #27): ladder models reachable by name with parameter counts that follow the ViT formula
and span over 30x, their architecture in the run key and the pretrain identity, a checkpoint refused by any other
architecture in one line, and ``benchmarks.scale_ladder --quick`` running every stage into a page."""

from __future__ import annotations

import json

import pytest

from tests.conftest import colour_images

SMALL, MIDDLE, BIG = "vit_ladder_w96_d4", "vit_ladder_w192_d8", "vit_ladder_w384_d12"


def vit_params(width: int, depth: int, patch: int = 4, side: int = 28) -> int:
    """A timm ViT trunk's parameters: per block 12 d^2 + 13 d (qkv, projection, the 4x MLP, two LayerNorms), the
    patch embedding (3 p^2 d + d), the class token, a position embedding per patch and the class token, the last
    LayerNorm."""
    d, tokens = width, (side // patch) ** 2 + 1
    return depth * (12 * d * d + 13 * d) + 3 * patch * patch * d + d + d + tokens * d + 2 * d


def trunk(name: str):
    from pefs import backbones

    bb = backbones.load(name, pretrained=False)
    bb.reset_head(0)
    return bb


@pytest.mark.parametrize("name,width,depth", [(SMALL, 96, 4), (MIDDLE, 192, 8)])
def test_ladder_vit_parameters_follow_the_formula_and_its_shape(name, width, depth):
    """A ladder ViT has exactly the formula's parameter count for its width and depth, and the model built has that
    width, depth, 4-pixel patches and a 28-pixel input."""
    bb = trunk(name)
    assert bb.num_params() == vit_params(width, depth)
    m = bb.model
    assert (m.embed_dim, len(m.blocks), tuple(m.patch_embed.patch_size)) == (width, depth, (4, 4))
    assert bb.input_size == (3, 28, 28)


def test_the_ladders_span_over_30x_in_parameters():
    """The ViT ladder spans over 30x by the formula (0.46M to 21M) and the ResNet ladder over 30x as built, at
28 pixels by default."""
    from pefs.backbones import LADDER_MODELS

    assert vit_params(384, 12) / vit_params(96, 4) > 30
    assert {SMALL, MIDDLE, BIG, "resnet_ladder_w16", "resnet_ladder_w96"} <= set(LADDER_MODELS)
    small = trunk("resnet_ladder_w16")
    assert trunk("resnet_ladder_w96").num_params() / small.num_params() > 30
    assert small.input_size == (3, 28, 28)  # pretrained and tuned at Fashion-MNIST's size unless told otherwise


def test_ladder_names_reach_the_run_key_and_are_listed():
    """Each ladder name is its own run identity (the architecture is in the key) and `pefs models` lists them."""
    from pefs import backbones
    from pefs.config import TuneConfig
    from pefs.config.identity import config_hash

    hashes = {config_hash(TuneConfig(model=m, pretrained=False)) for m in (SMALL, MIDDLE, BIG)}
    assert len(hashes) == 3
    assert {SMALL, MIDDLE, BIG} <= set(backbones.list_models("*ladder*"))
    assert backbones.takes_img_size(SMALL) and not backbones.takes_img_size("resnet_ladder_w16")


def test_a_ladder_model_asked_for_hub_weights_is_refused_in_one_line():
    """A ladder model has no pretrained weights: asking for them names --no-pretrained and pefs pretrain."""
    from pefs import backbones
    from pefs.errors import PefsError

    with pytest.raises(PefsError, match="no pretrained weights.*--no-pretrained") as e:
        backbones.load(SMALL)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """``pefs pretrain`` of the smallest ladder ViT (2 steps, supervised) on tiny base classes."""
    from pefs.config.pretrain import PretrainConfig
    from pefs.pretrain import pretrain

    root = tmp_path_factory.mktemp("ladder")
    colour_images(root / "data" / "base", {"": 4}, side=28)
    colour_images(root / "data" / "novel", {"": 4}, side=28, classes=("owl", "yak"))
    out = root / "ckpt"
    pretrain(PretrainConfig(model=SMALL, pretrained=False, data=f"fewshot:{root / 'data'}", out=str(out),
                            objective="supervised", steps=2, batch_size=4, progress=False))
    return out


def test_pretrain_identity_records_the_architecture(small_ckpt):
    """The checkpoint records the ladder model's name and architecture (timm name, width, depth, heads, patch)."""
    info = json.loads((small_ckpt / "pefs_pretrain.json").read_text())
    assert info["model"] == SMALL
    assert info["architecture"] == {"timm": "vit_tiny_patch16_224", "embed_dim": 96, "depth": 4, "num_heads": 3,
                                    "patch_size": 4, "img_size": 28}


def test_a_checkpoint_of_another_architecture_is_refused_in_one_line(small_ckpt, tmp_path, capsys):
    """pefs tune --checkpoint refuses a ladder checkpoint given another ladder model (naming the one it fits) in
    one line before any output is written; a checkpoint whose recorded architecture differs from what the name
    builds now is refused too."""
    import shutil

    from pefs import backbones
    from pefs.cli.main import main
    from pefs.errors import PefsError

    code = main(["tune", "-q", "--model", MIDDLE, "--checkpoint", str(small_ckpt), "--output", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"give --model {SMALL}" in err[0], err
    assert not (tmp_path / "r").exists()
    moved = tmp_path / "ckpt"
    shutil.copytree(small_ckpt, moved)
    info = json.loads((moved / "pefs_pretrain.json").read_text())
    info["architecture"]["depth"] = 6  # as if the ladder entry had changed since the pretraining
    (moved / "pefs_pretrain.json").write_text(json.dumps(info))
    with pytest.raises(PefsError, match="built as .*'depth': 6.*pretrain it again"):
        backbones.load(SMALL, checkpoint=str(moved))
    assert backbones.load(SMALL, checkpoint=str(small_ckpt)).source.startswith("checkpoint:")
    sized = tmp_path / "sized"  # pretrained with --img-size 28, the ladder ViT's own size: no flag needed to tune it
    shutil.copytree(small_ckpt, sized)
    info = json.loads((sized / "pefs_pretrain.json").read_text())
    (sized / "pefs_pretrain.json").write_text(json.dumps({**info, "model_kwargs": {"img_size": 28}}))
    assert backbones.load(SMALL, checkpoint=str(sized)).input_size == (3, 28, 28)
    with pytest.raises(PefsError, match="give --img-size 28"):
        backbones.load(SMALL, checkpoint=str(sized), img_size=32)


def test_quick_mode_runs_every_stage_into_a_page(tmp_path, monkeypatch):
    """``benchmarks.scale_ladder --quick`` writes the fewshot layout, pretrains each objective, sweeps with and without
    masked views, and renders a page with a table per condition (accuracy and paired difference from the linear
    probe), the objectives' table, the 3-D plot and the answer; the committed page and store are untouched."""
    from benchmarks import fmnist, scale_ladder

    if not fmnist.ROOT.exists():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    committed = {f: f.read_bytes() for f in (scale_ladder.HERE / "scale_ladder.json", scale_ladder.PAGE,
                                              scale_ladder.HERE / "scale_ladder" / "results.jsonl") if f.exists()}
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    assert scale_ladder.main(["--quick", "--work", str(work), "--models", SMALL, "--shots", "1", "--seeds", "2",
                              "--per-class", "6", "--strategies", "linear,bias"]) == 0
    data = json.loads((work / "scale_ladder.json").read_text())
    assert [(p["model"], p["objective"]) for p in data["pretraining"]] == [
        (SMALL, "supervised"), (SMALL, "contrastive"), (SMALL, "mae")]
    assert [s["cells"] for s in data["sweeps"]] == [4, 4, 4, 4]  # unmasked, masked, contrastive, mae
    page = (work / "scale_ladder.md").read_text()
    for heading in (f"## {SMALL}\n", f"## {SMALL}, masked views", f"## Pretraining objective at {SMALL}",
                    "## The answer, from the data above", "## Provenance"):
        assert heading in page
    bias_rows = [line for line in page.splitlines() if line.startswith("| bias | ") and "(n=" in line]
    assert len(bias_rows) == 2 and all(" ± " in row.split(" | ")[2] for row in bias_rows)  # paired intervals
    # what each strategy's transfer was, from its records: the probe fits a logistic head, bias takes AdamW steps
    budget = {line.split(" | ")[0][2:]: line.split(" | ") for line in page.split("## How each strategy")[1]
              .split("\n## ")[0].splitlines() if line.startswith("| ") and "---" not in line and "strategy" not in line}
    assert budget["linear"][1] == "logistic" and budget["linear"][3].startswith("0 / 0")
    assert budget["bias"][1] == "linear-proto" and int(budget["bias"][3].split(" / ")[0]) > 0
    assert "the best tuned strategy, bias," in page
    assert "| mae | " in page and "| contrastive | " in page
    if "3-D plot" in page:
        assert (work / "scale_ladder" / "shots_params_accuracy_3d.png").stat().st_size > 0
    assert {f: f.read_bytes() for f in committed} == committed  # the committed data and page are untouched


def test_the_answer_says_what_budget_the_scales_were_pretrained_with():
    """The answer's first line compares the scales' pretraining from the data: the same steps x batch, and whether
    the biggest fit the base classes less well (a higher final loss) than the smallest within it."""
    from benchmarks.scale_ladder import pretraining_budget

    def run(model, params, final, steps=300):
        return {"model": model, "params": params, "objective": "supervised", "steps": steps, "batch_size": 32,
                "final_loss": final}

    data = {"pretraining": [run("big", 20_000_000, 0.99), run("small", 400_000, 0.86),
                            {**run("small", 400_000, 0.5), "objective": "mae"}]}
    line = pretraining_budget(data)
    assert "the same budget (300 steps x 32 images" in line and "less well than" in line and "0.990 vs 0.860" in line
    data["pretraining"][0].update(final_loss=0.5, steps=900)
    line = pretraining_budget(data)
    assert "a different budget" in line and "at least as well as" in line
    assert pretraining_budget({"pretraining": data["pretraining"][1:]}) == ""  # one supervised scale: nothing to say
