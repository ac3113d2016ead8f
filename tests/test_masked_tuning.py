"""MAE-style masked views through a tuned trunk (issue #27 item 3): support views drop patch tokens inside the
model's own forward, so every strategy that trains in a timm or ``transformers`` ViT trains on the shorter
sequence; complementary masks; query scores averaged over masked views."""

from __future__ import annotations

import pytest
import torch

from pefs.backbones.token_mask import token_grid, view_masks
from pefs.config import TrainConfig, TuneConfig
from pefs.data import kshot_split, load_dataset
from pefs.data.loading import decoded_batches
from pefs.errors import PefsError
from pefs.protocols.run import tune
from pefs.runtime import engine
from pefs.runtime.task import QUERY_MASK_SEED, TaskRunner
from tests.conftest import batch, tiny
from tests.hf_models import REGISTERS, hf_backbone


def config(image_folder, tmp_path, **kw) -> TuneConfig:
    """LoRA on a random ViT-Tiny at 32 px (a 2x2 grid: 4 patch tokens), 2 shots, clean + 2 views masked at 50%."""
    base = dict(model="vit_tiny_patch16_224", strategy="lora", pretrained=False, img_size=32,
                data=str(image_folder), shots=2, seeds=(0,), views=3, mask_ratio=0.5, head="linear",
                output=str(tmp_path), train=TrainConfig(epochs=1, batch_size=4, progress=False))
    return TuneConfig(**{**base, **kw})


def lengths_entering(block: torch.nn.Module) -> dict[int, int]:
    """Images seen per token-sequence length at ``block``'s input while the model trains (a forward pre-hook)."""
    seen: dict[int, int] = {}

    def hook(module, args):
        if module.training:
            seen[args[0].shape[1]] = seen.get(args[0].shape[1], 0) + args[0].shape[0]
    block.register_forward_pre_hook(hook)
    return seen


def task(image_folder, shots: int = 2):
    split = kshot_split(load_dataset(str(image_folder)), shots, seed=0)
    return split.support, split.query


def lora_grads(model: torch.nn.Module) -> list[float]:
    return [float(p.grad.abs().sum()) for n, p in model.named_parameters() if "lora_B" in n and p.grad is not None]


def test_lora_trains_on_masked_views_whose_tokens_are_dropped_before_the_blocks(image_folder, tmp_path):
    """With LoRA on a timm ViT, each masked view enters the blocks as 1 class token + its kept patches (2 of 4),
    each clean view with all 4, in every training step, and the record says how the views were made."""
    cfg = config(image_folder, tmp_path)
    runner = TaskRunner(cfg, 3)
    assert runner.token_masks and runner.tuned_masks and runner.level == 0
    seen = lengths_entering(runner.model.backbone.blocks[0])
    support, query = task(image_folder)
    result = runner.run(support, query, seed=0)
    assert result.support == 18 and result.steps == 5  # 6 clean + 12 masked views, batches of 4, one epoch
    assert seen == {1 + 4: 6, 1 + 2: 12}
    assert runner.support_keep.sum(1).tolist() == [4] * 6 + [2] * 12
    rec = tune(cfg)
    assert rec["views"]["through"] == "the tuned trunk, every training step" and rec["accuracy_mean"] is not None
    assert "patch tokens dropped" in rec["views"]["masked"] and rec["views"]["query_views"] == 1


def test_gradients_from_masked_views_alone_reach_the_lora_weights():
    """One step on masked views only (each keeping 8 of 16 patches) runs sequences of 1 + 8 tokens and leaves a
    non-zero gradient on every LoRA B matrix, which then moves from its zero start."""
    model = tiny("vit", "lora")
    x, y = batch(6)
    grid = token_grid(model.backbone, (32, 32))
    keep = view_masks(6, 1, grid, 0.5, "random", torch.Generator().manual_seed(0))
    assert grid == (2, 2) and keep.sum(1).tolist() == [2] * 6
    seen = lengths_entering(model.backbone.blocks[0])
    engine.fit(model, x, y, TrainConfig(steps=1, batch_size=6, progress=False), keep=keep)
    assert seen == {1 + 2: 6}
    grads = lora_grads(model)
    assert grads and all(g > 0 for g in grads)
    assert all(float(p.detach().abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("ratio, grid", [(0.25, (4, 4)), (0.5, (3, 3))])
def test_complementary_masks_partition_the_patches(ratio, grid):
    """Each pair of complementary views keeps disjoint patch sets that together cover every patch; pairs differ."""
    n = grid[0] * grid[1]
    keep = view_masks(5, 4, grid, ratio, "complementary", torch.Generator().manual_seed(1))
    assert keep.shape == (4 * 5, n)
    for a, b in ((keep[0:5], keep[5:10]), (keep[10:15], keep[15:20])):
        assert not (a & b).any() and (a | b).all()
        assert a.sum(1).tolist() == [n - round(ratio * n)] * 5 and b.sum(1).tolist() == [round(ratio * n)] * 5
    assert not torch.equal(keep[0:5], keep[10:15])
    again = view_masks(5, 4, grid, ratio, "complementary", torch.Generator().manual_seed(1))
    assert torch.equal(keep, again)


def test_complementary_views_train_a_transformers_vit(image_folder, tmp_path):
    """A transformers ViT and a DINOv2 with registers take the same token-dropping path (no pixel painting): the
    prefix tokens (class, registers) stay, complementary views keep 8 + 8 of 16 patches, and LoRA gets gradients."""
    for kind, prefix in (("vit", 1), ("dinov2-reg", 1 + REGISTERS)):
        cfg = config(image_folder, tmp_path, model=hf_backbone(kind), img_size=None, mask_mode="complementary")
        runner = TaskRunner(cfg, 3)
        assert runner.token_masks and runner.tuned_masks
        seen = lengths_entering(runner.model.backbone.blocks[0])
        runner.run(*task(image_folder), seed=0)
        assert seen == {prefix + 16: 6, prefix + 8: 12}, kind
        keep = runner.support_keep[6:]
        assert not (keep[:6] & keep[6:]).any() and (keep[:6] | keep[6:]).all()
        assert lora_grads(runner.model) and all(g > 0 for g in lora_grads(runner.model))


def test_query_views_average_the_scores_of_masked_views(image_folder, tmp_path):
    """``query_views`` M scores each query as the mean over its clean view and M - 1 masked views; at mask
    ratio 0 it changes no score."""
    plain = dict(strategy="linear", head="prototype", views=1, mask_ratio=0.0)
    support, query = task(image_folder)
    t = dict.fromkeys(("decode_s", "extract_s", "train_s", "eval_s", "decoded", "trunk_images"), 0.0)

    def scores(**kw):
        runner = TaskRunner(config(image_folder, tmp_path, **{**plain, **kw}), 3)
        xs, ys = runner.support(support, 0, t)
        return runner, xs, ys, runner._score(xs, ys, query, t, runner.cfg.train, seed=0)

    _, _, _, clean = scores()
    assert torch.equal(scores(query_views=3)[3], clean)
    runner, xs, ys, averaged = scores(query_views=3, mask_ratio=0.5)  # a frozen trunk: masks of its own
    images = torch.cat([runner.decoder.finish(b) for b in decoded_batches(query, range(len(query)), runner.decoder, 8)])
    keep = view_masks(len(query), 2, (2, 2), 0.5, "random", torch.Generator().manual_seed(QUERY_MASK_SEED))
    feats = engine.outputs(runner.model, images.repeat(2, 1, 1, 1), runner.cfg.train, 0, "pooled", keep=keep)
    masked = runner.head.classify(xs, ys, feats, 3).view(2, len(query), 3)
    assert torch.allclose(averaged, (clean + masked[0] + masked[1]) / 3, atol=1e-5)
    assert not torch.allclose(averaged, clean, atol=1e-4)


def test_masked_view_refusals_are_one_line(image_folder, tmp_path):
    """Masked views refuse, in one line naming the setting, what they cannot do: a head comparing patch tokens,
    mixup with a tuned trunk, complementary masks on a CNN or with an odd number of extra views, averaged query
    views with a transductive head (it reads all queries at once)."""
    cases = [
        (dict(head="patch-match"), "head 'patch-match'"),
        (dict(train=TrainConfig(mixup=0.2, epochs=1, progress=False)), "mixup / cutmix"),
        (dict(model="efficientnet_lite0", mask_mode="complementary"), "mask_mode 'complementary'"),
        (dict(mask_mode="complementary", views=4), "views=4 leaves an odd 3"),
        (dict(mask_mode="complementary", query_views=2), "query_views=2 leaves an odd 1"),
        (dict(query_views=0), "query_views must be a whole number >= 1, got 0"),
        (dict(head="tim", query_views=3), "query_views=3 scores each query view on its own, but head 'tim'"),
    ]
    for kw, message in cases:
        with pytest.raises(PefsError, match=message) as err:
            cfg = config(image_folder, tmp_path, **kw)
            cfg.validate()
            TaskRunner(cfg, 3)
        assert "\n" not in str(err.value)


STRATEGIES = ("adapter", "bias", "full", "last-k", "lora", "norm", "self-prompt", "ssf", "vpt", "vpt.mode=pixel",
              "peft:ia3", "lora+bias")


@pytest.mark.parametrize("family", ["timm", "hf"])
@pytest.mark.parametrize("spec", STRATEGIES)
def test_every_strategy_trains_on_views_with_dropped_tokens(spec, family):
    """Every strategy that trains inside a timm or transformers ViT takes masked views: each view enters the first
    block shorter by exactly its dropped patches (prompt tokens, if any, still added), and one step leaves a non-zero
    gradient on the strategy's own parameters."""
    from pefs.model.wrap import wrap

    name, _, option = spec.partition(".")
    options = dict([option.split("=")]) if option else {}
    model = tiny("vit", name, **options) if family == "timm" else wrap(hf_backbone("vit"), name, num_classes=3,
                                                                       **options)
    x, y = batch(6)
    grid = token_grid(model.backbone, (32, 32))
    n = grid[0] * grid[1]
    keep = view_masks(6, 1, grid, 0.5, "random", torch.Generator().manual_seed(0))
    seen = lengths_entering(model.backbone.blocks[0])
    model.train()
    with torch.no_grad():
        model(x[:1])
    full = next(iter(seen))
    seen.clear()
    engine.fit(model, x, y, TrainConfig(steps=1, batch_size=6, progress=False), keep=keep)
    assert seen == {full - n // 2: 6}
    head = model.backbone.head_name
    grads = [p.grad for k, p in model.named_parameters()
             if p.requires_grad and not k.startswith(("head.", f"net.{head}.")) and p.grad is not None]
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_dropping_inside_the_forward_equals_the_family_masked_forward(image_folder, tmp_path):
    """On a timm ViT, a view's pooled features with tokens dropped inside the model's own forward equal those of
    the family's hand-run masked forward (the frozen path before this change), clean rows included; a frozen
    transformers ViT drops tokens too instead of painting pixels."""
    from pefs.backbones.token_mask import masked_pooled, run_kept

    model = tiny("vit").eval()
    x, _ = batch(4)
    keep = view_masks(4, 1, (2, 2), 0.5, "block", torch.Generator().manual_seed(2))
    keep[0] = True  # a clean view in the same batch
    with torch.no_grad():
        hooked = run_kept(model.backbone, model.features, x, keep)
        idx = torch.nonzero(keep[1:])[:, 1].view(3, 2)
        assert torch.allclose(hooked[1:], masked_pooled(model.backbone, x[1:], idx), atol=1e-5)
        assert torch.allclose(hooked[:1], model.features(x[:1]), atol=1e-5)
    frozen = TaskRunner(config(image_folder, tmp_path, model=hf_backbone("vit"), img_size=None, strategy="linear"), 3)
    assert frozen.token_masks and not frozen.tuned_masks


def test_masked_views_through_a_tuned_trunk_are_refused_under_a_multi_process_launch(image_folder, tmp_path,
                                                                                      monkeypatch):
    """Masked views through a tuned trunk run one forward per kept-token count in a step, which DDP cannot
    synchronise: under a two-process launch the run refuses in one line before any work, naming the way out."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PefsError, match="run this on one process") as err:
        TaskRunner(config(image_folder, tmp_path), 3)
    assert "\n" not in str(err.value)
