"""adapter, vpt and self-prompt on every family they apply to: the strategy battery (what trains, identity at
init, one step, save/load, merge refusal) plus stricter checks, the refusals, and the formulas on ViT-B/16."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pefs import PefsModel, backbones
from pefs.backbones import Backbone
from pefs.errors import PefsError
from pefs.model.wrap import wrap
from tests.strategy_battery import check_strategy, images, names_with, perturb, tiny_backbone, under

#: the layer each family feeds the image to (where a pixel prompt must sit)
STEMS = {"vit": "patch_embed", "convnext": "stem", "resnet": "conv1", "efficientnet": "conv_stem"}


# -- what each strategy must train, worked out from the model alone ------------------------------------------

def expect_adapter(sublayers: tuple[str, ...] = ("mlp",), blocks: tuple[int, ...] | None = None):
    """Adapter tensors under every chosen block's ``sublayers`` (ViT) or under every chosen block (CNN)."""
    def expected(model: PefsModel, original: Backbone) -> set[str]:
        chosen = [original.block_names[i] for i in (blocks if blocks is not None else range(len(original.block_names)))]
        layers = [f"{b}.{s}" for b in chosen for s in sublayers] if original.kind == "transformer" else chosen
        return under(model, layers, ".adapter.")
    return expected


def expect_vpt_tokens(model: PefsModel, original: Backbone) -> set[str]:
    return {"blocks.prompts"}


def expect_vpt_pixel(model: PefsModel, original: Backbone) -> set[str]:
    stem = STEMS[original.family]
    return {f"{stem}.pad_{side}" for side in ("top", "bottom", "left", "right")}


def expect_self_prompt(source: int | None = None, targets: tuple[int, ...] = ()):
    """ViT: the generator and the gates on the blocks container; CNN: the generator on the source block, a
    FiLM layer and prompt mix on each target block (default source len(blocks) // 4, targets all after it)."""
    def expected(model: PefsModel, original: Backbone) -> set[str]:
        n = len(original.block_names)
        src = source if source is not None else n // 4
        if original.kind == "transformer":
            return names_with(model, "blocks.generator.") | {"blocks.gates"}
        tgt = [original.block_names[i] for i in (targets or range(src + 1, n))]
        return under(model, [original.block_names[src]], ".generator.") | under(model, tgt, ".film.") | {
            f"{t}.mix" for t in tgt}
    return expected


#: (strategy, options, family, expected trainable names besides the head)
CASES = [
    ("adapter", {}, "vit", expect_adapter()),
    ("adapter", {"mode": "sequential", "attn": True, "blocks": (0, -1)}, "vit",
     expect_adapter(("mlp", "attn"), (0, 11))),
    ("adapter", {}, "convnext", expect_adapter()),
    ("adapter", {}, "resnet", expect_adapter()),
    ("adapter", {"mode": "sequential", "blocks": (1, 2)}, "efficientnet", expect_adapter(blocks=(1, 2))),
    ("vpt", {"mode": "deep", "tokens": 3}, "vit", expect_vpt_tokens),
    ("vpt", {"mode": "shallow", "tokens": 2}, "vit", expect_vpt_tokens),
    ("vpt", {"mode": "pixel", "pad": 2}, "vit", expect_vpt_pixel),
    ("vpt", {"mode": "pixel", "pad": 8}, "convnext", expect_vpt_pixel),
    ("vpt", {"mode": "pixel", "pad": 8}, "resnet", expect_vpt_pixel),
    ("vpt", {"mode": "pixel"}, "efficientnet", expect_vpt_pixel),
    ("self-prompt", {"prompts": 3, "dim": 16}, "vit", expect_self_prompt()),
    ("self-prompt", {"prompts": 3, "dim": 16, "source": 1, "targets": (3, 5)}, "convnext",
     expect_self_prompt(1, (3, 5))),
    ("self-prompt", {"prompts": 3, "dim": 16}, "resnet", expect_self_prompt()),
    ("self-prompt", {"prompts": 3, "dim": 16}, "efficientnet", expect_self_prompt()),
]
IDS = [f"{s}-{f}-{','.join(f'{k}={v}' for k, v in o.items())}" for s, o, f, _ in CASES]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a loaded machine spinning threads cost ~5x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("strategy,opts,family,expected", CASES, ids=IDS)
def test_battery(strategy, opts, family, expected, tmp_path):
    check_strategy(strategy, family, expected, tmp_path, **opts)


@pytest.mark.parametrize("strategy,opts,family,expected", CASES, ids=IDS)
def test_backbone_kept_bit_exact_identity_as_promised_and_two_steps_reach_every_tensor(
        strategy, opts, family, expected):
    original = tiny_backbone(family)
    model = wrap(copy.deepcopy(original), strategy, num_classes=3, **opts).eval()
    # every frozen tensor is the backbone's own, by name (wrapped layers add ".base_layer") and value
    trainable = {n: p for n, p in model.net.named_parameters() if p.requires_grad}
    before = dict(original.model.named_parameters())
    frozen = {n.replace(".base_layer.", "."): p for n, p in model.net.named_parameters() if n not in trainable}
    assert frozen.keys() == before.keys() - {n for n in before if n.startswith(original.head_name + ".")}
    assert all(torch.equal(frozen[n], before[n]) for n in frozen)
    # zero-init branches: bit-identical features; token prompts: different (and the strategy says so)
    x = images()
    with torch.no_grad():
        same = torch.equal(model.features(x), original.features(x))
    assert same == model.strategies[0].identity_at_init == (strategy != "vpt" or opts["mode"] == "pixel")
    # a zero-initialised branch passes gradient to its inner weights from the second step on
    opt = torch.optim.SGD(trainable.values(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), torch.tensor([0, 2])).backward()
        opt.step()
    assert [n for n, p in trainable.items() if p.grad is None or not p.grad.any()] == []
    copy.deepcopy(model)  # no autograd state left behind on the modules


@pytest.mark.parametrize("mode", ["shallow", "deep"])
@pytest.mark.parametrize("family", ["convnext", "resnet", "efficientnet"])
def test_token_prompts_on_a_cnn_are_refused_with_the_alternatives(family, mode):
    with pytest.raises(PefsError, match=r"needs a transformer.*mode=pixel.*'adapter'.*'ssf'"):
        wrap(tiny_backbone(family), "vpt", num_classes=5, mode=mode)


@pytest.mark.parametrize("family,mode", [("vit", "deep"), ("convnext", "pixel"), ("resnet", "pixel"),
                                         ("efficientnet", "pixel")])
def test_vpt_without_a_mode_gives_cnns_the_pixel_prompt_and_vits_deep_tokens(family, mode):
    """`--strategy vpt` with no mode works on every family, as the README's table promises: the pixel prompt on a
    CNN (it starts as the backbone), deep prompt tokens (one set per block) on a ViT."""
    model = wrap(tiny_backbone(family), "vpt", num_classes=5)
    vpt = model.strategies[0]
    assert vpt.mode_for(model.backbone) == mode and vpt.identity_at_init == (mode == "pixel")
    trained = {n for n, p in model.backbone.model.named_parameters() if p.requires_grad}
    head = model.backbone.head_name + "."
    if mode == "pixel":
        assert {n.rsplit(".", 1)[-1] for n in trained if not n.startswith(head)} == {
            "pad_top", "pad_bottom", "pad_left", "pad_right"}
    else:
        prompts = [p for n, p in model.backbone.model.named_parameters() if n.endswith("prompts")]
        assert len(prompts) == 1 and prompts[0].shape[0] == len(model.backbone.block_names)


def test_vpt_inserts_prompts_after_prefix_tokens_and_removes_them_before_the_norm():
    bb = backbones.load("vit_tiny_patch16_224", pretrained=False, img_size=32, reg_tokens=2, global_pool="avg")
    model = wrap(bb, "vpt", num_classes=5, mode="deep", tokens=3).eval()
    npt, net = bb.model.num_prefix_tokens, bb.model
    assert npt == 3
    seen = {}
    hooks = [net.blocks.get_submodule(str(i)).register_forward_pre_hook(
        lambda m, a, i=i: seen.__setitem__(i, a[0])) for i in (0, 1)]
    hooks.append(net.norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("norm", a[0])))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    prompts = net.blocks.prompts
    assert prompts.shape == (12, 3, 192)
    assert seen[0].shape[1] == npt + 3 + 4 and seen["norm"].shape[1] == npt + 4
    for i in (0, 1):  # each block sees its own prompt set right after the prefix tokens
        assert torch.equal(seen[i][:, npt:npt + 3], prompts[i].expand(2, -1, -1))


def test_pixel_prompt_is_a_border_frame_resized_to_the_image():
    seen = {}

    def stem_input(model):
        stem = next(m for m in model.net.modules() if hasattr(m, "pad_top"))
        return stem, stem.base_layer.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))

    model = wrap(tiny_backbone("vit"), "vpt", num_classes=5, mode="pixel", pad=4)  # learned at 32 px, used at 32
    stem, hook = stem_input(model)
    with torch.no_grad():
        for name in ("pad_top", "pad_bottom", "pad_left", "pad_right"):
            getattr(stem, name).fill_(1.0)
        x = images()
        model(x)
    hook.remove()
    added = seen["x"] - x
    border = torch.ones(32, 32, dtype=torch.bool)
    border[4:-4, 4:-4] = False
    assert torch.allclose(added[:, :, border], torch.ones(()), atol=1e-6)
    assert not added[:, :, ~border].any()
    # learned at resnet's 224 px, used on 32 px images: the frame shrinks and every learned pixel still counts
    model = wrap(tiny_backbone("resnet"), "vpt", num_classes=5, mode="pixel", pad=30)
    stem, hook = stem_input(model)
    model(images())
    hook.remove()
    (seen["x"] * torch.randn_like(seen["x"])).sum().backward()
    assert all(getattr(stem, n).grad.ne(0).all() for n in ("pad_top", "pad_bottom", "pad_left", "pad_right"))


@pytest.mark.parametrize("family,source,targets", [("vit", 3, (6, 9)), ("convnext", 1, (3, 5))])
def test_self_prompt_reads_the_source_block_and_changes_nothing_before_the_first_target(family, source, targets):
    original = tiny_backbone(family)
    model = wrap(copy.deepcopy(original), "self-prompt", num_classes=3, source=source, targets=targets,
                 prompts=2, dim=8).eval()
    perturb(model, scale=0.5)  # open the zero-init gates / FiLM layers
    names = original.block_names
    generator = (model.net.blocks if family == "vit" else model.net.get_submodule(names[source])).generator
    ins: dict[str, dict[int, torch.Tensor]] = {"orig": {}, "new": {}}  # what each block receives
    seen = {}
    hooks = [m.get_submodule(names[i]).register_forward_pre_hook(lambda _, a, k=k, i=i: ins[k].__setitem__(i, a[0]))
             for k, m in (("orig", original.model), ("new", model.net)) for i in range(targets[0] + 2)]
    hooks.append(original.model.get_submodule(names[source]).register_forward_hook(
        lambda _, a, o: seen.__setitem__("source", o)))
    hooks.append(generator.register_forward_pre_hook(lambda _, a: seen.__setitem__("generator", a[0])))
    x = images()
    with torch.no_grad():
        original.features(x)
        model.features(x)
    for h in hooks:
        h.remove()
    for i in range(targets[0] + 1):
        assert torch.equal(ins["new"][i], ins["orig"][i]), f"block {i} sees a changed input"
    assert not torch.allclose(ins["new"][targets[0] + 1], ins["orig"][targets[0] + 1]), "the first target did nothing"
    src = seen["source"]
    tokens = src if family == "vit" else src.flatten(2).transpose(1, 2)  # CNN: the map's positions as tokens
    assert torch.equal(seen["generator"], tokens)


def test_bad_options_name_the_valid_choices():
    with pytest.raises(PefsError, match=r"blocks=12.*valid indices: 0\.\.11"):
        wrap(tiny_backbone("vit"), "adapter", num_classes=5, blocks="12")
    with pytest.raises(PefsError, match=r"mode='serial'.*'parallel' or 'sequential'"):
        wrap(tiny_backbone("vit"), "adapter", num_classes=5, mode="serial")
    with pytest.raises(PefsError, match=r"attn=true.*transformer"):
        wrap(tiny_backbone("resnet"), "adapter", num_classes=5, attn="true")
    with pytest.raises(PefsError, match=r"pad=16.*valid: 1\.\.15"):
        wrap(tiny_backbone("vit"), "vpt", num_classes=5, mode="pixel", pad=16)
    with pytest.raises(PefsError, match=r"targets=2.*before the prompts exist.*valid targets: 4\.\.11"):
        wrap(tiny_backbone("vit"), "self-prompt", num_classes=5, source=3, targets="2,5")
    with pytest.raises(PefsError, match=r"targets=3,5 .* includes block 3, which runs before the prompts exist"):
        wrap(tiny_backbone("vit"), "self-prompt", num_classes=5, source=3, targets="3,5")  # the source block itself
    with pytest.raises(PefsError, match=r"source=-1.*no block after it.*valid sources: 0\.\.6"):
        wrap(tiny_backbone("resnet"), "self-prompt", num_classes=5, source=-1)


def test_cnn_adapter_refuses_a_block_that_does_not_map_feature_maps():
    """A CNN block whose output is not a (B, C, H, W) map (a pooled vector) is refused in one line naming the block
    and the shape it gave, before any adapter is inserted."""

    class Pool(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x.mean((2, 3)))

    class PooledNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.pool = Pool()
            self.fc = torch.nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pool(self.conv(x)))

    with pytest.raises(PefsError, match=r"needs CNN blocks that map \(B, C, H, W\).*block pool .* gave \(1, 8\)$"):
        wrap(PooledNet(), "adapter", num_classes=2, model_kwargs={"input_size": (3, 8, 8)})


def test_cnn_adapter_width_follows_the_channels():
    """resnet18, parallel: per block, conv1x1 c_in -> h (+bias), conv1x1 h -> c_out (+bias), h = min(64, c_out/4)."""
    model = wrap(tiny_backbone("resnet"), "adapter", num_classes=5)
    blocks = [(64, 64)] * 2 + [(64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    expected = sum(ci * min(64, co // 4) + min(64, co // 4) + min(64, co // 4) * co + co for ci, co in blocks)
    assert model.param_report()["trainable_without_head"] == expected


@pytest.fixture(scope="module")
def vit_b16():
    return backbones.load("vit_base_patch16_224", pretrained=False)


def test_adaptformer_formula_on_vit_b16(vit_b16):
    model = wrap(copy.deepcopy(vit_b16), "adapter", num_classes=10, bottleneck=64)
    assert model.param_report()["trainable_without_head"] == 12 * (768 * 64 + 64 + 64 * 768 + 768)


def test_vpt_deep_formula_on_vit_b16(vit_b16):
    model = wrap(copy.deepcopy(vit_b16), "vpt", num_classes=10, mode="deep", tokens=10)
    assert model.param_report()["trainable_without_head"] == 12 * 10 * 768
