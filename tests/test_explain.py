"""``pefs explain``: attention rollout / last-block attention for ViTs, Grad-CAM for CNNs, base vs tuned, patch
pairs with ``--support``, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pefs.cli.main import main
from pefs.model import directory as pefs_io
from pefs.model.explain import GRAD_CAM, LAST, ROLLOUT, caught_attention, decode_all, explain, rollout
from pefs.model.explain_match import matched_pairs
from pefs.model.explain_plot import map_png_size
from pefs.model.explain_run import base_model
from pefs.model.wrap import PefsModel
from tests.conftest import colour_images, tiny

CLASSES = ["cat", "dog", "fox"]


def _perturb(model: PefsModel, keep) -> None:
    """Move the trained tensors ``keep(name)`` selects, so the tuned model differs from its base."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.net.named_parameters():
            if p.requires_grad and keep(n):
                p.add_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Images, a tiny random-weight ViT tuned with LoRA (its base in base.safetensors) and the embedded pretrained
    EfficientNet with tuned biases, both saved as model directories."""
    import pefs
    from pefs.runtime import hardware

    root = tmp_path_factory.mktemp("explain")
    colour_images(root / "imgs", {"": 2}, side=40)
    vit = tiny("vit", "lora")
    head = vit.backbone.head_name + "."
    _perturb(vit, lambda n: not n.startswith(head))
    vit.class_names = CLASSES
    vit.save(root / "vit")
    hardware.seed_everything(0)
    cnn = pefs.wrap("efficientnet_lite0.offline", "bias", num_classes=3)
    _perturb(cnn, lambda n: not n.startswith(cnn.backbone.head_name + "."))
    cnn.class_names = CLASSES
    cnn.preprocessing["input_size"] = [3, 64, 64]
    cnn.save(root / "cnn")
    return root


def _images(root):
    return [root / "imgs" / c / "0.png" for c in CLASSES]


def test_rollout_equals_a_hand_computation_on_two_blocks():
    """Rollout is (0.5 mean-head A2 + 0.5 I)(0.5 mean-head A1 + 0.5 I), rows renormalised, later block on the left."""
    g = torch.Generator().manual_seed(0)
    a1, a2 = (torch.rand(1, 2, 3, 3, generator=g).softmax(-1) for _ in range(2))
    hand = []
    for a in (a1, a2):
        m = 0.5 * a[0].numpy().mean(0) + 0.5 * np.eye(3)
        hand.append(m / m.sum(1, keepdims=True))
    assert np.allclose(rollout([a1, a2])[0].numpy(), hand[1] @ hand[0], atol=1e-6)
    assert np.allclose(rollout([a1, a2], residual=False)[0].numpy(), a2[0].mean(0).numpy() @ a1[0].mean(0).numpy(),
                       atol=1e-6)


def test_hooked_attention_equals_timm_unfused_attention():
    """Attention computed from the hooked q/k projections equals timm's own (unfused) attention probabilities."""
    model = tiny("vit").eval()
    theirs = []
    for block in model.backbone.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, a, out: theirs.append(out))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ours = []
    with caught_attention(model.backbone, lambda i, p: ours.append(p)):
        model(x)
    assert len(ours) == len(theirs) == len(model.backbone.blocks)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, theirs))


def test_hooked_attention_equals_transformers_eager_attention():
    """For a transformers ViT, the hooked q/k give the attention its eager implementation returns."""
    pytest.importorskip("transformers")
    from pefs.backbones import load
    from tests.hf_models import build

    hf = build("vit")
    hf.config._attn_implementation = "eager"
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = hf(pixel_values=x, output_attentions=True).attentions
    bb = load(hf, name="tiny-hf-vit")
    ours = []
    with torch.no_grad(), caught_attention(bb, lambda i, p: ours.append(p)):
        bb.model(x)
    assert len(ours) == len(theirs) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_maps_have_the_input_shape_are_non_negative_and_peak_at_one(root, kind):
    """Every map has the model input's height x width, is finite, non-negative, with maximum 1; a class-token
    grid sums to at most 1 (the rest of the attention goes to the class token itself)."""
    model = PefsModel.load(root / kind)
    x = decode_all(model, _images(root))
    maps = explain(model, x)
    assert [e.method for e in maps[0]] == ([ROLLOUT, LAST] if kind == "vit" else [GRAD_CAM])
    for e in (e for per_image in maps for e in per_image):
        assert e.map.shape == tuple(x.shape[-2:])
        assert np.isfinite(e.map).all() and (e.map >= 0).all() and e.map.max() == pytest.approx(1.0)
        assert (e.grid >= 0).all() and (e.method == GRAD_CAM or 0 < e.grid.sum() <= 1 + 1e-6)
        assert e.label == e.target and 0 < e.score <= 1


@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_base_and_tuned_maps_differ(root, kind):
    """The base (pretrained, or the saved random base) gives other maps than the tuned model."""
    tuned = PefsModel.load(root / kind)
    base, why = base_model(tuned, pefs_io.read_config(root / kind))
    assert base is not None, why
    x = decode_all(tuned, _images(root))
    before, after = explain(base, x, 0), explain(tuned, x, 0)
    assert max(np.abs(b.grid - a.grid).max() for bi, ai in zip(before, after) for b, a in zip(bi, ai)) > 1e-3


def test_random_base_is_rebuilt_from_base_safetensors(root):
    """The ViT's base is the same random backbone before LoRA: its maps equal those of an untuned wrap of it."""
    tuned = PefsModel.load(root / "vit")
    base, _ = base_model(tuned, pefs_io.read_config(root / "vit"))
    untuned = tiny("vit")  # the same seed: the same random backbone, no LoRA
    x = decode_all(tuned, _images(root))
    for b, u in zip(explain(base, x), explain(untuned, x)):
        assert all(np.allclose(eb.grid, eu.grid, atol=1e-6) for eb, eu in zip(b, u))


def test_class_flag_draws_grad_cam_for_that_class(root):
    """``target`` makes Grad-CAM's map the named class's, whatever the prediction."""
    model = PefsModel.load(root / "cnn")
    x = decode_all(model, _images(root)[:1])
    maps = [explain(model, x, c)[0][0] for c in range(3)]
    assert [m.target for m in maps] == [0, 1, 2]
    assert len({m.label for m in maps}) == 1
    assert any(np.abs(maps[0].grid - m.grid).max() > 1e-6 for m in maps[1:])


@pytest.mark.parametrize("kind,rows", [("vit", 2), ("cnn", 1)])
def test_cli_writes_one_png_per_image_of_the_documented_size(root, tmp_path, capsys, kind, rows):
    """``pefs explain`` writes <folder>_<stem>.png per image (stems repeat here), of the documented pixel size."""
    out = tmp_path / "out"
    assert main(["explain", str(root / kind), *map(str, _images(root)), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{c}_0.png" for c in CLASSES]
    for p in out.iterdir():
        assert Image.open(p).size == map_png_size(rows, 3)
    assert "wrote 3 PNG(s)" in capsys.readouterr().out


def test_a_base_that_cannot_be_rebuilt_gives_tuned_panels_and_says_why(tmp_path, capsys):
    """Bias tuning on a random base trains tensors whose values before tuning are not saved: no before panel,
    and a note says why."""
    model = tiny("vit", "bias")
    model.save(tmp_path / "m")
    colour_images(tmp_path / "imgs", {"": 1}, side=32)
    out = tmp_path / "out"
    assert main(["explain", str(tmp_path / "m"), str(tmp_path / "imgs" / "cat" / "0.png"), "--out", str(out)]) == 0
    assert Image.open(out / "0.png").size == map_png_size(2, 2)
    assert "no 'before tuning' panels: the strategy trained" in capsys.readouterr().out


def test_support_draws_one_to_one_patch_pairs(root, tmp_path):
    """Hungarian pairs are one-to-one, strongest first, and an image matched against itself pairs each patch with
    itself at cosine 1; ``--support`` writes <image>_matches.png."""
    q = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    pairs = matched_pairs(q, torch.cat([torch.randn(4, 8), q]), 4)
    assert sorted((i, m, p) for i, m, p, _ in pairs) == [(i, 1, i) for i in range(4)]
    assert all(c == pytest.approx(1.0) for *_, c in pairs)
    out = tmp_path / "out"
    img = root / "imgs" / "dog" / "1.png"
    assert main(["explain", str(root / "vit"), str(img), "--out", str(out), "--support", str(root / "imgs"),
                 "--matches", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["1.png", "1_matches.png"]


@pytest.mark.parametrize("args,message", [
    (["MODEL", "missing.png"], "does not exist"),
    (["NOMODEL", "IMG"], "holds no saved pefs model"),
    (["MODEL", "IMG", "--class", "zebra"], "unknown class 'zebra'"),
    (["MODEL", "IMG", "--out", "MODEL/maps"], "lies inside the model directory"),
    (["MODEL", "IMG", "--support", "nowhere"], "--support 'nowhere' is not a folder"),
    (["MODEL", "IMG", "--matches", "0"], "--matches must be >= 1"),
])
def test_bad_inputs_give_one_line_and_write_nothing(root, tmp_path, capsys, monkeypatch, args, message):
    """A missing image, a folder that is no model directory, an unknown class, an output inside the model
    directory, a missing support folder or a bad --matches: one line naming it, exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    subs = {"MODEL": str(root / "vit"), "NOMODEL": "empty", "IMG": str(_images(root)[0])}
    argv = [subs.get(a, a).replace("MODEL/", str(root / "vit") + "/") for a in args]
    if "--out" not in argv:
        argv += ["--out", "out"]
    assert main(["explain", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists() and not (root / "vit" / "maps").exists()


def test_prompted_encoders_give_maps_over_the_patches():
    """With VPT's prompt tokens between the class token and the patches, the maps still cover the patch grid."""
    model = tiny("vit", "vpt")
    maps = explain(model, torch.randn(1, 3, 32, 32))[0]
    assert [e.grid.shape for e in maps] == [(2, 2), (2, 2)] and all(e.map.shape == (32, 32) for e in maps)


def test_missing_matplotlib_is_one_line_before_any_model_loads(root, tmp_path, capsys, monkeypatch):
    """Without matplotlib (the ``explain`` extra) the command says how to install it, exit 2, nothing written."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    out = tmp_path / "out"
    assert main(["explain", str(root / "vit"), str(_images(root)[0]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pip install 'pefs[explain]'" in err
    assert not out.exists()


def test_register_tokens_are_left_out_of_a_transformers_encoders_maps():
    """A transformers DINOv2 with 4 register tokens: the maps cover its 4x4 patch grid, not the prefix tokens."""
    pytest.importorskip("transformers")
    import pefs
    from tests.hf_models import build

    model = pefs.wrap(build("dinov2-reg"), "linear", num_classes=3)
    assert model.backbone.tokens.num_registers == 4
    maps = explain(model, torch.randn(1, 3, 32, 32))[0]
    assert [e.grid.shape for e in maps] == [(4, 4), (4, 4)] and all(0 < e.grid.sum() <= 1 + 1e-6 for e in maps)


def test_an_image_that_cannot_be_decoded_is_listed_and_the_others_drawn(root, tmp_path, capsys):
    """A corrupt image among good ones: the good ones get their PNGs, the bad one is listed by path, exit 1."""
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["explain", str(root / "vit"), str(bad), str(_images(root)[0]), "--out", str(out)]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["0.png"]
    assert "1 image(s) could not be decoded" in capsys.readouterr().err


def test_a_png_never_replaces_an_input_image(root, tmp_path, capsys, monkeypatch):
    """``--out .`` beside photo.png would write ./photo.png over the input: refused in one line, the photo kept."""
    monkeypatch.chdir(tmp_path)
    photo = tmp_path / "photo.png"
    photo.write_bytes(_images(root)[0].read_bytes())
    before = photo.read_bytes()
    assert main(["explain", str(root / "vit"), "photo.png", "--out", "."]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is one of the images or image lists" in err, err
    assert photo.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]
