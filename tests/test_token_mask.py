"""MAE-style masked views on ViTs: masked patch tokens are dropped before the blocks; CNNs keep pixel masks."""

from __future__ import annotations

import pytest
import torch

from pefs.backbones.token_mask import keep_indices, masked_pooled, masked_tokens
from pefs.config import TrainConfig, TuneConfig
from pefs.errors import PefsError
from pefs.protocols.run import tune
from pefs.runtime import hardware
from pefs.runtime.task import TaskRunner


def vit64():
    """A random-weight ViT-Tiny at 64 px: a 4x4 grid of 16 patch tokens plus the class token."""
    import pefs

    hardware.seed_everything(0)
    return pefs.wrap("vit_tiny_patch16_224", "linear", num_classes=3, pretrained=False,
                     model_kwargs={"img_size": 64}).eval()


@pytest.mark.parametrize("mode", ["random", "block"])
def test_keep_indices_keep_the_right_count_deterministically(mode):
    keep = keep_indices(5, (4, 4), 0.75, mode, torch.Generator().manual_seed(3))
    assert keep.shape == (5, 4)  # round(0.75 * 16) = 12 of 16 patches dropped
    assert all(len(set(k.tolist())) == 4 and k.tolist() == sorted(k.tolist()) for k in keep)
    assert torch.equal(keep, keep_indices(5, (4, 4), 0.75, mode, torch.Generator().manual_seed(3)))
    assert not torch.equal(keep, keep_indices(5, (4, 4), 0.75, mode, torch.Generator().manual_seed(4)))


def test_block_masks_drop_neighbouring_patches():
    def touching(keep: torch.Tensor) -> float:  # dropped patches with a dropped right/lower neighbour, per mask
        total = 0
        for k in keep:
            d = torch.ones(8 * 8, dtype=torch.bool)
            d[k] = False
            d = d.view(8, 8)
            total += int((d[:, 1:] & d[:, :-1]).sum() + (d[1:] & d[:-1]).sum())
        return total / len(keep)

    g = torch.Generator().manual_seed(0)
    assert touching(keep_indices(50, (8, 8), 0.4, "block", g)) > touching(keep_indices(50, (8, 8), 0.4, "random", g))


def test_no_mask_equals_the_unmasked_forward_and_masking_shortens_the_sequence():
    model = vit64()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    bb = model.backbone
    with torch.no_grad():
        full = masked_tokens(bb, x, keep_indices(2, (4, 4), 0.0, "random", torch.Generator()))
        assert torch.allclose(full, bb.model.forward_features(x), atol=1e-5)
        assert torch.allclose(masked_pooled(bb, x, torch.arange(16).expand(2, -1)), model.features(x), atol=1e-5)
        keep = keep_indices(2, (4, 4), 0.5, "random", torch.Generator().manual_seed(1))
        assert masked_tokens(bb, x, keep).shape == (2, 1 + 8, 192)  # class token + the 8 kept patches


def test_dropped_patches_have_no_influence_painted_ones_would():
    bb = vit64().backbone
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    keep = torch.tensor([[0, 5, 10, 15]])
    y = x.clone()
    y[..., 0:16, 16:32] += 5.0  # patch 1 (row 0, column 1) is dropped: changing it changes nothing
    with torch.no_grad():
        assert torch.allclose(masked_pooled(bb, x, keep), masked_pooled(bb, y, keep), atol=1e-6)
        z = x.clone()
        z[..., 16:32, 16:32] += 5.0  # patch 5 is kept: it does
        assert not torch.allclose(masked_pooled(bb, x, keep), masked_pooled(bb, z, keep), atol=1e-3)


def test_masked_views_of_a_vit_train(image_folder, tmp_path):
    cfg = TuneConfig(model="vit_tiny_patch16_224", pretrained=False, img_size=32, data=str(image_folder), shots=3,
                     views=3, mask_ratio=0.5, mask_mode="block", output=str(tmp_path), head="linear",  # trains
                     train=TrainConfig(epochs=3, progress=False))
    runner = TaskRunner(cfg, 3)
    assert runner.token_masks
    from pefs.data import kshot_split, load_dataset

    split = kshot_split(load_dataset(str(image_folder)), 3, seed=0)
    t = dict.fromkeys(("decode_s", "extract_s", "decoded", "trunk_images"), 0.0)
    xs, ys = runner.support(split.support, 0, t)
    assert xs.shape == (27, 192) and ys.tolist() == split.support.labels.tolist() * 3
    assert not torch.allclose(xs[9:18], xs[:9], atol=1e-4)  # a masked view is not a copy of the clean one
    rec = tune(cfg)
    assert rec["runs"][0]["support"] == 27 and rec["runs"][0]["steps"] > 0 and rec["accuracy_mean"] is not None


def test_cnns_keep_pixel_masks_and_vits_drop_tokens_inside_a_training_trunk(image_folder, tmp_path):
    """A CNN's masked views are painted in pixels; a ViT tuned with LoRA drops tokens in its trunk (no refusal)."""
    base = {"pretrained": False, "img_size": 32, "data": str(image_folder), "views": 2, "mask_ratio": 0.5,
            "output": str(tmp_path), "train": TrainConfig(epochs=1, progress=False)}
    assert not TaskRunner(TuneConfig(model="efficientnet_lite0", **base), 3).token_masks
    lora = TaskRunner(TuneConfig(model="vit_tiny_patch16_224", strategy="lora", **base), 3)
    assert lora.token_masks and lora.tuned_masks and lora.level == 0
    with pytest.raises(PefsError, match="mask_mode must be one of random, block, complementary; got 'grid'"):
        TuneConfig(mask_mode="grid", **base).validate()
