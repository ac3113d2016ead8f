"""Strategies: each trains exactly what it says, on every family, composes, merges, and counts as published."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pefs.backbones import Backbone, load
from pefs.cli.main import main
from pefs.errors import PefsError
from pefs.model.wrap import PefsModel, wrap
from pefs.strategies import build
from tests.strategy_battery import (
    FAMILIES,
    check_strategy,
    head_names,
    images,
    modules_in_blocks,
    one_thread,
    param_names,
    tiny_backbone,
    under,
    union,
)

#: peft's own notices (OFT block sizes it adjusts, BOFT's missing CUDA kernel, SHiRA's sparse checks)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:peft.*")
NORMS = (nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield
VIT_SSF = ("qkv", "proj", "fc1", "fc2", "norm1", "norm2")


# -- what each strategy must train, worked out from the model alone ------------------------------------------

def expect_linear(model: PefsModel, original: Backbone) -> set[str]:
    return set()


def expect_full(model: PefsModel, original: Backbone) -> set[str]:
    return param_names(model)


def expect_bias(model: PefsModel, original: Backbone) -> set[str]:
    return {n for n in param_names(model) - head_names(model) if n.endswith(".bias")}


def expect_norm(model: PefsModel, original: Backbone) -> set[str]:
    head = original.head_name
    return {f"{n}.{p}" for n, m in original.model.named_modules() if isinstance(m, NORMS) and n != head
            for p in ("weight", "bias") if getattr(m, p, None) is not None}


def adapted_layers(original: Backbone, vit: tuple[str, ...] = ("qkv",), kernel1: bool = False) -> list[str]:
    """LoRA-style default targets: ViT ``qkv`` (and ``vit`` suffixes); CNNs every Linear and non-grouped
    Conv2d in the blocks (only 1x1 ones when ``kernel1``)."""
    if original.kind == "transformer":
        return [n for n in modules_in_blocks(original, (nn.Linear,)) if n.rsplit(".", 1)[-1] in vit]
    mods = dict(original.model.named_modules())
    return [n for n in modules_in_blocks(original, (nn.Linear, nn.Conv2d)) if not isinstance(mods[n], nn.Conv2d)
            or (mods[n].groups == 1 and (not kernel1 or mods[n].kernel_size == (1, 1)))]


def expect_lora(model: PefsModel, original: Backbone) -> set[str]:
    return under(model, adapted_layers(original), "lora_")


def expect_ssf(model: PefsModel, original: Backbone) -> set[str]:
    if original.kind == "transformer":
        layers = [n for n, _ in original.model.named_modules()
                  if any(n.startswith(b + ".") for b in original.block_names) and n.rsplit(".", 1)[-1] in VIT_SSF]
        layers += ["patch_embed.proj", "norm"]
    else:
        layers = modules_in_blocks(original, (nn.Linear, nn.Conv2d))
    return under(model, layers, ".ssf.")


#: the norm after the last block, per family, written down by hand (ResNet has none)
FINAL_NORM = {"vit": ["norm"], "convnext": ["head.norm"], "resnet": [], "efficientnet": ["bn2"]}


def expect_last_k(model: PefsModel, original: Backbone) -> set[str]:
    """``last-k`` (k=2 by default): every parameter of the last 2 blocks and of the final norm."""
    return under(model, [*original.block_names[-2:], *FINAL_NORM[original.family]], "")


def expect_peft(marker: str, vit: tuple[str, ...] = ("qkv",), kernel1: bool = False):
    return lambda model, original: under(model, adapted_layers(original, vit, kernel1), marker)


BATTERY = [
    ("linear", expect_linear, FAMILIES),
    ("full", expect_full, FAMILIES),
    ("lora", expect_lora, FAMILIES),
    ("bias", expect_bias, FAMILIES),
    ("norm", expect_norm, FAMILIES),
    ("ssf", expect_ssf, FAMILIES),
    ("last-k", expect_last_k, FAMILIES),
    ("peft:loha", expect_peft("hada_"), FAMILIES),
    ("peft:ia3", expect_peft("ia3_l", vit=("qkv", "fc2")), FAMILIES),
    ("peft:lokr", expect_peft("lokr_"), ("vit", "resnet")),
    ("peft:oft", expect_peft("oft_R", kernel1=True), ("vit", "efficientnet")),
    # compositions train exactly the union, and merge in the right order (ssf folds before peft rewrites W)
    ("lora+norm", union(expect_lora, expect_norm), ("vit", "resnet")),
    ("bias+ssf", union(expect_bias, expect_ssf), ("convnext", "efficientnet")),
    ("ssf+lora", union(expect_ssf, expect_lora), ("vit", "efficientnet")),
    ("lora+ssf", union(expect_lora, expect_ssf), ("vit", "convnext")),
    ("bias+lora", union(expect_bias, expect_lora), ("vit",)),
]


@pytest.mark.parametrize("spec, expected, family",
                         [(s, e, f) for s, e, fams in BATTERY for f in fams],
                         ids=[f"{s}-{f}" for s, _, fams in BATTERY for f in fams])
def test_battery(spec, expected, family, tmp_path):
    check_strategy(spec, family, expected, tmp_path)


# -- other peft tuners (ViT only: several are slow on big 3x3 convs) --------------------------------------------

OTHER_PEFT = {"boft": "boft_", "hra": "hra_", "hira": "hira_", "delora": "delora_", "miss": "miss_",
              "shira": "shira_", "road": "road_", "fourierft": "fourierft_"}


@pytest.mark.parametrize("method", sorted(OTHER_PEFT))
def test_other_peft_methods_on_vit(method, tmp_path):
    model = check_strategy(f"peft:{method}", "vit", expect_peft(OTHER_PEFT[method]), tmp_path)
    assert model.merged


def test_every_listed_peft_method_is_tested():
    from pefs.strategies.peft_method import METHODS

    tested = {s.split(":", 1)[1] for s, _, _ in BATTERY if s.startswith("peft:")} | set(OTHER_PEFT)
    assert tested == set(METHODS)


# -- a user's own nn.Module ---------------------------------------------------------------------------------

class TinyNet(nn.Module):
    """conv-BN-conv feature extractor with an ``fc`` head: what a user might bring."""

    def __init__(self, bias: bool = True, norm: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(8) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 4, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


def user_backbone(**kw) -> Backbone:
    torch.manual_seed(0)
    bb = load(TinyNet(**kw), input_size=(3, 32, 32))
    bb.model.eval()
    return bb


@pytest.mark.parametrize("spec, expected", [("bias", expect_bias), ("norm", expect_norm), ("ssf", expect_ssf),
                                            ("lora", expect_lora), ("peft:loha", expect_peft("hada_"))])
def test_user_module(spec, expected, tmp_path):
    model = check_strategy(spec, user_backbone(), expected, tmp_path)
    assert model.backbone.family == "custom"


@pytest.mark.parametrize("spec, message", [
    ("bias", "strategy 'bias' found no bias parameters in TinyNet"),
    ("norm", "strategy 'norm' found no norm layer with affine parameters"),
])
def test_user_module_without_targets(spec, message):
    with pytest.raises(PefsError, match=message):
        wrap(user_backbone(bias=False, norm=False), spec, num_classes=2)


def test_ssf_on_a_module_without_layers_to_follow():
    class Scaler(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1))
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.mean((2, 3)) * self.gain)

    with pytest.raises(PefsError, match="ssf found no Linear or Conv layer inside the blocks of Scaler"):
        wrap(Scaler(), "ssf", num_classes=2, model_kwargs={"input_size": (3, 8, 8)})


# -- composition ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["full+lora", "lora+full", "full+peft:loha"])
def test_conflicting_compositions_are_refused_naming_both(spec):
    a, b = spec.split("+")
    with pytest.raises(PefsError, match="strategies conflict") as e:
        wrap(tiny_backbone("vit"), spec, num_classes=2)
    assert f"'{a}'" in str(e.value) and f"'{b}'" in str(e.value) and "drop one" in str(e.value)


def test_composed_options_route_and_round_trip(tmp_path):
    """``lora.r=`` reaches lora alone; a saved composition (options keyed per strategy) loads back exactly."""
    original = tiny_backbone("vit")
    model = wrap(copy.deepcopy(original), "peft:loha+ssf", num_classes=3, **{"peft:loha.r": 2})
    loha = sum(p.numel() for n, p in model.net.named_parameters() if "hada_" in n)
    assert loha == 12 * 2 * 2 * (192 + 576)  # LoHa: two rank-r pairs (out x r, r x in) per qkv
    model.save(tmp_path)
    again = PefsModel.load(tmp_path, backbone=copy.deepcopy(original))
    x = images()
    with torch.no_grad():
        assert torch.equal(again.eval()(x), model.eval()(x))
    assert sum(p.numel() for n, p in again.net.named_parameters() if "hada_" in n) == loha


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_ssf_follows_the_same_layers_inside_wrapping_strategies(family):
    """Adapters wrap layers or whole blocks (keeping them as ``base_layer``): SSF still follows exactly the
    layers it follows on the plain backbone, whichever strategy comes first."""
    def ssf_layers(spec: str) -> list[str]:
        model = wrap(tiny_backbone(family), spec, num_classes=2)
        return sorted(n.replace(".base_layer", "") for n, _ in model.net.named_parameters() if ".ssf." in n)

    plain = ssf_layers("ssf")
    assert ssf_layers("adapter+ssf") == plain == ssf_layers("ssf+adapter")


# -- bad input: one PefsError naming the value and the choices -------------------------------------------------

@pytest.mark.parametrize("spec, options, message", [
    ("peft:nope", {}, r"unknown peft method 'nope'; valid choices: .*loha"),
    ("peft", {}, r"strategy 'peft' needs a method, as 'peft:<method>'; methods: loha"),
    ("peft:ia3", {"r": 4}, r"option r=4 does not apply to peft:ia3"),
    ("peft:loha", {"extra": "bogus=1"}, r"unknown LoHaConfig field 'bogus'"),
    ("peft:loha", {"extra": "module_dropout=abc"}, r"option module_dropout='abc' of strategy 'peft:loha' must be"),
    ("peft:loha", {"extra": "module_dropout"}, r"must be field=value"),
    ("peft:loha", {"r": 0}, r"option r=0 of strategy 'peft:loha' must be >= 1"),
    ("norm", {"types": "layer,weird"}, r"unknown norm kind 'weird'; valid kinds: layer, batch"),
    ("ssf", {"rank": 2}, r"unknown option 'rank' for strategy 'ssf'; valid options: ssf: targets"),
])
def test_bad_options(spec, options, message):
    with pytest.raises(PefsError, match=message):
        build(spec, **options)


@pytest.mark.parametrize("family, spec, options, message", [
    ("resnet", "peft:delora", {}, r"peft:delora adapts Linear layers only through peft, not layer1.0.conv1"),
    ("resnet", "peft:oft", {"targets": "conv1"}, r"peft:oft adapts Linear layers and 1x1 convolutions only"),
    ("vit", "peft:boft", {"extra": "boft_block_size=7"}, r"peft refused peft:boft on vit_tiny_patch16_224 "),
    ("vit", "peft:boft", {"extra": "boft_block_size=7", "targets": "blocks.0.attn.qkv"},
     r"peft refused peft:boft on vit_tiny_patch16_224 \(1 layers, e.g. blocks.0.attn.qkv\): .*; peft:boft adapts "
     r"Linear .*layers, pick others with targets=$"),
    ("vit", "ssf", {"targets": "nothing"}, r"ssf targets nothing match no Linear, Conv or norm layer .* qkv"),
    ("efficientnet", "ssf", {"targets": "bn1"}, r"ssf cannot follow bn1 \(BatchNormAct2d\): an activation follows"),
    ("vit", "lora+ssf+lora", {}, r"names the same strategy twice"),
])
def test_bad_targets(family, spec, options, message):
    with pytest.raises(PefsError, match=message):
        wrap(tiny_backbone(family), spec, num_classes=2, **options)


def test_norm_types_narrow_what_trains():
    """EfficientNet has BatchNorm only: types=batch trains all its norms, types=layer,group finds none."""
    everything = wrap(tiny_backbone("efficientnet"), "norm", num_classes=2).param_report()["trainable"]
    assert wrap(tiny_backbone("efficientnet"), "norm", num_classes=2, types="batch").param_report()["trainable"] \
        == everything
    with pytest.raises(PefsError, match=r"found no norm layer with affine parameters \(layer, group\) in effic"):
        wrap(tiny_backbone("efficientnet"), "norm", num_classes=2, types="layer,group")


def test_strategies_listing(capsys):
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    for name, options in [("bias", None), ("norm", "types=()"), ("ssf", "targets=()"),
                          ("peft", "r=None, alpha=None, targets=(), extra=()")]:
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert "[transformer/cnn/other]" in line
        if options:
            assert options in out.split(line, 1)[1].splitlines()[1]
    assert "loha, lokr, ia3, oft" in out


# -- published parameter counts on ViT-B/16 (random weights, head excluded) ------------------------------------

@pytest.fixture(scope="module")
def vit_b():
    torch.manual_seed(0)
    return load("vit_base_patch16_224", pretrained=False)


def trained_without_head(bb: Backbone, spec: str, **options) -> int:
    return wrap(copy.deepcopy(bb), spec, num_classes=10, **options).param_report()["trainable_without_head"]


D, BLOCKS = 768, 12


def test_bitfit_count_vit_b16(vit_b):
    # every bias: per block qkv 3D + proj D + fc1 4D + fc2 D + two LayerNorms 2D; patch embedding D; final norm D
    assert trained_without_head(vit_b, "bias") == BLOCKS * (3 * D + D + 4 * D + D + 2 * D) + D + D == 102_912


def test_lora_r8_qkv_count_vit_b16(vit_b):
    # A (r x D) + B (3D x r) per qkv: 12 x 8 x (768 + 2304)
    assert trained_without_head(vit_b, "lora", r=8) == BLOCKS * 8 * (D + 3 * D) == 294_912


def test_norm_count_vit_b16(vit_b):
    # weight + bias of two LayerNorms per block and the final norm
    assert trained_without_head(vit_b, "norm") == 2 * D * (2 * BLOCKS + 1) == 38_400


def test_ssf_count_vit_b16(vit_b):
    # scale + shift after patch embedding, final norm, and per block norm1, qkv, proj, norm2, fc1, fc2: 0.21M
    per_block = D + 3 * D + D + D + 4 * D + D
    assert trained_without_head(vit_b, "ssf") == 2 * (D + BLOCKS * per_block + D) == 205_824


def test_ia3_default_count_vit_b16(vit_b):
    # IA3 rescales qkv outputs (3D) and fc2 inputs (4D) per block
    assert trained_without_head(vit_b, "peft:ia3") == BLOCKS * (3 * D + 4 * D) == 64_512


# -- DoRA (lora -o use_dora=true) ------------------------------------------------------------------------------

def test_lora_dora_count_vit_b16(vit_b):
    # LoRA's A (r x D) + B (3D x r) per qkv, plus DoRA's magnitude, one per output channel (3D)
    assert trained_without_head(vit_b, "lora", r=8, use_dora=True) == BLOCKS * (8 * (D + 3 * D) + 3 * D) == 322_560


def dora_targets(model: PefsModel) -> dict[str, nn.Module]:
    return {n: m.base_layer for n, m in model.net.named_modules() if hasattr(m, "lora_magnitude_vector")
            and "default" in m.lora_magnitude_vector}


def test_lora_dora_on_pointwise_convs_counts_trains_and_merges(tmp_path):
    """On a CNN the default targets are pointwise convs: per target r x (in + out) for LoRA's A and B plus a
    magnitude of ``out``; a step changes the magnitudes; the battery's merge check holds (merged == unmerged)."""
    model = wrap(tiny_backbone("efficientnet"), "lora", num_classes=3, use_dora=True)
    targets = dora_targets(model)
    assert targets and all(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in targets.values())
    assert model.param_report()["trainable_without_head"] == sum(
        8 * (m.in_channels + m.out_channels) + m.out_channels for m in targets.values())
    magnitudes = {n: p.detach().clone() for n, p in model.net.named_parameters() if "lora_magnitude_vector" in n}
    assert len(magnitudes) == len(targets) and all(p.requires_grad for n, p in model.net.named_parameters()
                                                   if n in magnitudes)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    nn.functional.cross_entropy(model(images()), torch.tensor([0, 1])).backward()
    opt.step()
    now = dict(model.net.named_parameters())
    assert all(not torch.equal(now[n].detach(), before) for n, before in magnitudes.items())


@pytest.mark.parametrize("family", ["vit", "resnet", "efficientnet"])
def test_lora_dora_battery(family, tmp_path):
    """Trains exactly LoRA's tensors plus the magnitudes, identity at init, a step moves them, saves and loads
    back, merges (peft folds the magnitude into the weight) with the same outputs; resnet's targets include
    3x3 convs."""
    model = check_strategy("lora", family, expect_lora, tmp_path, use_dora=True)
    assert model.merged and not dora_targets(model)
    assert build("lora", use_dora="true")[0].config.use_dora and not build("lora")[0].config.use_dora  # -o
