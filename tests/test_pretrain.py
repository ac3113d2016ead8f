"""``pefs pretrain``: each objective trains on base classes only, MAE's encoder sees only visible tokens and its
loss counts only masked patches, meta-training draws base-class episodes, the checkpoint directory loads into
``pefs tune --checkpoint`` with its identity (a changed file is refused), and bad inputs are one line."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from tests.conftest import TINY_MODELS, colour_images

VIT, VIT_KW = TINY_MODELS["vit"]
CNN = "efficientnet_lite0.offline"
BASE = ("cat", "dog", "fox")


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """A ``fewshot:`` root whose base classes are small colour images and whose novel images are not images at
    all: reading any novel image is an error, so a run that finishes never read one."""
    root = tmp_path_factory.mktemp("fewshot")
    colour_images(root / "base", {"": 8}, side=32, classes=BASE)
    for cls in ("owl", "yak"):
        (root / "novel" / cls).mkdir(parents=True)
        for i in range(4):
            (root / "novel" / cls / f"{i}.png").write_bytes(b"poison: not an image")
    return root


def run(out, **kw):
    from pefs.config.pretrain import PretrainConfig
    from pefs.pretrain import pretrain

    values = {"model": VIT, "pretrained": False, "img_size": 32, "batch_size": 8, "steps": 6, "lr": 1e-3,
              "progress": False, "out": str(out), **kw}
    return pretrain(PretrainConfig(**values))


@pytest.fixture(scope="module")
def supervised_dir(poisoned, tmp_path_factory):
    """``pefs pretrain`` (the command, in this process): supervised, the tiny ViT, the poisoned root's base classes.
    Returns the directory, its identity and what the command printed."""
    import contextlib
    import io

    from pefs.cli.main import main

    out, printed = tmp_path_factory.mktemp("pre") / "sup", io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["pretrain", "-q", "--model", VIT, "--no-pretrained", "--img-size", "32", "--data",
                     f"fewshot:{poisoned}", "--objective", "supervised", "--steps", "8", "--batch-size", "8",
                     "--lr", "1e-3", "--out", str(out)])
    assert code == 0
    return out, json.loads((out / "pefs_pretrain.json").read_text()), printed.getvalue()


def start_weights(model: str, pretrained: bool, **kw) -> dict[str, torch.Tensor]:
    from pefs import backbones
    from pefs.runtime import hardware

    hardware.seed_everything(0)
    bb = backbones.load(model, pretrained=pretrained, **kw)
    bb.reset_head(0)
    return {k: v.clone() for k, v in bb.model.state_dict().items()}


def saved_weights(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "backbone.safetensors"))


@pytest.mark.parametrize("objective,model", [("supervised", VIT), ("supervised", CNN), ("contrastive", VIT),
                                             ("contrastive", CNN), ("mae", VIT)])
def test_each_objective_trains_the_trunk_with_finite_losses(objective, model, image_folder, tmp_path):
    """Every objective runs its steps with finite losses and changes the saved trunk's weights; the supervised
    loss falls on classes told apart by colour."""
    pretrained = model == CNN
    kw = {"img_size": 32} if model == VIT else {}
    info = run(tmp_path / "out", model=model, pretrained=pretrained, objective=objective, data=str(image_folder),
               batch_size=18, steps=12 if objective == "supervised" else 4)
    assert info["objective"] == objective and info["steps"] == len(info["losses"])
    assert all(math.isfinite(v) for v in info["losses"])
    before, after = start_weights(model, pretrained, **kw), saved_weights(tmp_path / "out")
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    if objective == "supervised":  # every step sees all 18 images (augmented): the loss falls steadily
        assert sum(info["losses"][-3:]) < sum(info["losses"][:3]) and info["final_loss"] < info["first_loss"]


def test_mae_encoder_sees_only_visible_tokens_and_loss_counts_only_masked_patches():
    """MAE drops 75% of the patch tokens before the first block (a hook counts what enters it) and its loss is the
    error on masked patches only: changing a visible patch's prediction changes nothing, a masked one's does."""
    from pefs import backbones
    from pefs.backbones.token_mask import keep_indices
    from pefs.config.pretrain import PretrainConfig
    from pefs.pretrain.mae import MaskedAutoencoder, masked_loss

    bb = backbones.load(VIT, pretrained=False, img_size=64)  # a 4 x 4 grid of 16 patches
    mae = MaskedAutoencoder(bb, 3, PretrainConfig(out="x"))
    seen = []
    bb.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    x = torch.randn(2, 3, 64, 64)
    keep = keep_indices(2, (4, 4), 0.75, "random", torch.Generator().manual_seed(0))
    pred, target, masked = mae.reconstruct(x, keep)
    assert seen == [1 + 4]  # the class token and the 4 kept patches: 12 of 16 never enter the encoder
    assert masked.sum(dim=1).tolist() == [12.0, 12.0] and all(masked[i, keep[i]].sum() == 0 for i in range(2))
    loss = masked_loss(pred, target, masked)
    moved = pred.detach().clone()
    moved[0, keep[0, 0]] += 5.0  # a visible patch
    assert torch.equal(masked_loss(moved, target, masked), loss.detach())
    moved[0, int(masked[0].nonzero()[0])] += 5.0  # a masked patch
    assert not torch.equal(masked_loss(moved, target, masked), loss.detach())
    assert torch.isfinite(mae(x)) and mae(x).requires_grad


def test_novel_classes_never_reach_the_loss(supervised_dir):
    """Pretraining on a few-shot root reads its base classes only: the run finishes although every novel image
    is unreadable, its classifier had the base classes, and the checkpoint says which split it used."""
    out, info, printed = supervised_dir
    assert info["data"]["split"] == "base" and info["data"]["class_names"] == list(BASE)
    assert info["data"]["images"] == 8 * len(BASE) and not info["data"]["note"]
    assert "8 steps on 24 images of 3 base classes" in printed and f"--checkpoint {out}" in printed


def test_meta_train_draws_episodes_from_base_classes_only_on_top_of_a_pretrained_checkpoint(supervised_dir, tmp_path):
    """--meta-train runs ProtoNet episodes of base classes (the novel images are poison) starting from an earlier
    pretraining's checkpoint, whose identity it records as its start."""
    out, first, _ = supervised_dir
    info = run(tmp_path / "meta", data=first["data"]["spec"], meta_train=True, checkpoint=str(out), ways=2, shots=2,
               queries=2, steps=3)
    assert info["objective"] == "protonet" and info["episodes"]["count"] == 3 == len(info["losses"])
    assert set(info["episodes"]["classes_seen"]) <= set(BASE) and info["episodes"]["classes_seen"]
    assert info["start"]["checkpoint"]["objective"] == "supervised"
    assert info["start"]["checkpoint"]["weights_fingerprint"] == first["weights"]["fingerprint"]


def test_tune_checkpoint_loads_the_pretrained_trunk_and_records_its_identity(supervised_dir, tmp_path, capsys):
    """pefs tune --checkpoint DIR runs end to end on the pretrained trunk, and its record names the pretraining:
    objective, data identity, steps and the weights fingerprint."""
    from pefs.cli.main import main

    out, info, _ = supervised_dir
    data = colour_images(tmp_path / "novel", {"train": 3, "test": 2}, side=32, classes=("owl", "yak"))
    assert main(["tune", "-q", "--model", VIT, "--checkpoint", str(out), "--img-size", "32", "--data", str(data),
                 "--shots", "1", "--strategy", "bias", "--epochs", "1", "--output", str(tmp_path / "runs")]) == 0
    path = capsys.readouterr().out.split("result record: ")[1].strip()
    rec = json.loads(open(path).read())
    p = rec["pretraining"]
    assert p["objective"] == "supervised" and p["steps"] == 8 and p["data"]["split"] == "base"
    assert p["weights_fingerprint"] == info["weights"]["fingerprint"] and p["data"]["fingerprint"]
    assert rec["fingerprints"]["checkpoint"] and rec["backbone"]["pretrained"] == f"checkpoint:{out}"


def test_a_changed_checkpoint_is_refused(supervised_dir, tmp_path):
    """A weight file changed after pretraining is refused by its SHA-256; one whose recorded SHA-256 was rewritten
    to match is still refused by the tensors' fingerprint."""
    from pefs import backbones
    from pefs.config.identity import sha256_file
    from pefs.errors import PefsError
    from pefs.pretrain.checkpoint import verify

    src = supervised_dir[0]
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    weights = bad / "backbone.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(PefsError, match="changed after pefs pretrain wrote it"):
        backbones.load(VIT, checkpoint=str(bad), img_size=32)
    ident = json.loads((bad / "pefs_pretrain.json").read_text())
    ident["weights"]["sha256"] = sha256_file(weights)
    (bad / "pefs_pretrain.json").write_text(json.dumps(ident))
    with pytest.raises(PefsError, match="fingerprint differs"):
        verify(bad)


def test_a_checkpoint_loads_only_into_its_model_at_its_size(supervised_dir, tmp_path, capsys):
    """A pretrain directory names the --model and --img-size it fits when given others (pefs tune says so in one
    line before it reads any data)."""
    from pefs import backbones
    from pefs.cli.main import main
    from pefs.errors import PefsError

    out = supervised_dir[0]
    assert main(["tune", "-q", "--checkpoint", str(out), "--output", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"give --model {VIT}" in err[0] and not (tmp_path / "runs").exists(), err
    with pytest.raises(PefsError, match=f"give --model {VIT}"):
        backbones.load("vit_small_patch16_224", checkpoint=str(out), img_size=32)
    with pytest.raises(PefsError, match="give --img-size 32"):
        backbones.load(VIT, checkpoint=str(out), img_size=64)
    with pytest.raises(PefsError, match="not the model default: give --img-size 32"):
        backbones.load(VIT, checkpoint=str(out))


@pytest.mark.parametrize("args,fragments", [
    (["--model", CNN, "--objective", "mae"], ["--objective mae", "supervised or contrastive"]),
    (["--objective", "byol"], ["unknown objective 'byol'", "contrastive"]),
    (["--objective", "mae", "--meta-train"], ["--meta-train", "drop --objective mae"]),
    (["--steps", "0"], ["steps must be a whole number >= 1"]),
    (["--objective", "contrastive", "--batch-size", "1"], ["batch_size must be >= 2", "got 1"]),
])
def test_bad_inputs_are_one_line(args, fragments, tmp_path, capsys):
    """A bad objective, MAE on a CNN or a bad number is one line on stderr (exit 2), and nothing is written."""
    from pefs.cli.main import main

    out = tmp_path / "out"
    assert main(["pretrain", "-q", "--img-size", "32", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(f in err[0] for f in fragments), err
    assert not out.exists()


def test_out_inside_the_input_or_over_other_files_is_refused(image_folder, tmp_path, capsys):
    """--out inside the data folder, or a folder of the user's other files, is refused before anything is written;
    the user's files stay as they were."""
    from pefs.cli.main import main

    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    for out, fragment in ((image_folder / "pre", "lies inside the data folder"), (keep, "not a pefs pretrain")):
        assert main(["pretrain", "-q", "--data", str(image_folder), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
    assert not (image_folder / "pre").exists() and (keep / "notes.txt").read_text() == "mine"


def test_protonet_logits_are_minus_squared_distances_to_class_means_and_refuse_an_empty_class():
    """Meta-training's logits: each query against each class's mean support feature (heads.base.prototypes), and an
    episode whose support misses a class is refused rather than given a zero prototype."""
    import torch

    from pefs.errors import PefsError
    from pefs.pretrain.protonet import prototype_logits

    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 1])
    query = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    logits = prototype_logits(support, labels, query, 2)  # class means (1, 0) and (0, 4)
    assert torch.allclose(logits, torch.tensor([[0.0, -17.0], [-10.0, -1.0]]))
    with pytest.raises(PefsError, match=r"classes \[2\] have no support example"):
        prototype_logits(support, labels, query, 3)
