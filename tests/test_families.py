"""The family registry: every registered family's capabilities on a tiny random model of that family."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pefs.backbones
from pefs.backbones.families import FAMILIES, Family, family_for, family_of
from pefs.backbones.split import stages, supports_blocks

#: (timm model, kwargs, family, runs in pieces, token masks); every registered timm family has at least one
TIMM_CASES = [
    ("vit_tiny_patch16_224", {"img_size": 32}, "vit", True, True),
    ("convnext_atto", {}, "convnext", True, False),
    ("resnet18", {}, "resnet", True, False),
    ("efficientnet_lite0", {}, "efficientnet", True, False),
    ("mobilenetv3_small_050", {}, "efficientnet", False, False),  # its head conv sits in forward_head
    ("test_byobnet", {}, "cnn", False, False),
]


class UserNet(nn.Module):
    """A user's module that no timm family matches (blocks: the children with parameters, head aside)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.conv(x)))


def test_every_registered_family_is_exercised_here_and_names_are_unique():
    names = [f.name for f in FAMILIES]
    assert names == ["vit", "convnext", "resnet", "efficientnet", "cnn", "custom"]  # match order
    assert all(isinstance(f, Family) for f in FAMILIES)
    assert {c[2] for c in TIMM_CASES} | {"custom"} == set(names)


@pytest.mark.parametrize("name, kwargs, family, splits, masks", TIMM_CASES, ids=[c[0] for c in TIMM_CASES])
def test_family_capabilities_on_a_tiny_random_model(name, kwargs, family, splits, masks):
    torch.manual_seed(0)
    bb = pefs.backbones.load(name, pretrained=False, **kwargs)
    fam = family_of(bb)
    assert bb.family == family and fam is family_for(bb.model) and fam.name == family
    assert bb.kind == fam.kind(bb.model) == ("transformer" if family == "vit" else "cnn")
    assert bb.block_names == fam.block_names(bb.model) and bb.block_names
    assert (bb.tokens is not None) == (family == "vit")
    assert fam.splits(bb.model) == supports_blocks(bb) == splits
    assert fam.token_masks(bb.model) == masks
    side = bb.input_size[1] if kwargs else 64
    x = torch.randn(2, 3, side, side)
    model = bb.model.eval()
    st = stages(bb)
    with torch.no_grad():
        features = model.forward_features(x)
        if splits:  # stem -> every block -> neck is exactly the model's own forward_features
            assert st.n_blocks == len(bb.block_names)
            assert torch.equal(st.run(x, 0, st.tokens), features)
        else:
            assert st.n_blocks == 0 and st.tokens is None
        assert torch.equal(st.run(x, 0, st.pooled), model.forward_head(features, pre_logits=True))


def test_the_custom_family_takes_any_other_module():
    bb = pefs.backbones.load(UserNet())
    fam = family_of(bb)
    assert bb.family == "custom" and fam is family_for(UserNet()) and fam is FAMILIES[-1]
    assert bb.block_names == ["conv"] and bb.kind == "cnn" and not fam.token_masks(bb.model)
    assert not supports_blocks(bb) and stages(bb).n_blocks == 0


def test_transformers_families_are_not_in_the_registry():
    bb = pefs.backbones.load(UserNet())
    bb.family = "hf-vit"
    assert family_of(bb) is None and not supports_blocks(bb)
