"""The on-disk feature store: a second run reads it, any change of image, weights, transform or precision is
a miss, and an interrupted write leaves no entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pefs.config import TrainConfig, TuneConfig
from pefs.errors import PefsError
from pefs.protocols.run import tune
from pefs.runtime import feature_store as features
from pefs.runtime.feature_store import FeatureStore, trunk_fingerprint
from tests.conftest import colour_images

TINY = "vit_tiny_patch16_224"


@pytest.fixture
def data(tmp_path):
    """3 classes with train (4 each) and test (5 each) splits of 12x12 RGB images."""
    return colour_images(tmp_path / "data", {"train": 4, "test": 5}, side=12, seed=2, spread=90, lift=140,
                         classes=("c0", "c1", "c2"))


def config(data, tmp_path, **kw) -> TuneConfig:
    train = TrainConfig(progress=False, inference_precision=kw.pop("precision", "no"))
    return TuneConfig(**{"model": TINY, "pretrained": False, "img_size": 32, "data": str(data), "shots": 2,
                         "seeds": (0, 1, 2), "head": "prototype", "output": str(tmp_path / "runs"),
                         "feature_cache": str(tmp_path / "store"), "train": train, **kw})


def trunk_passes(rec) -> int:
    return sum(r["trunk_images"] for r in rec["runs"])


def test_second_run_starts_from_the_store(data, tmp_path, monkeypatch):
    from pefs.runtime import caches

    monkeypatch.setattr(caches, "STORE_SHARD", 4)  # shards of 4 images: the 15 test images make 4 shards
    cfg = config(data, tmp_path)
    cfg.train.eval_batch_size = 4
    first = tune(cfg)
    assert first["feature_store"]["written"] == trunk_passes(first) >= 15 + 6  # the test split + 2 shots x 3
    assert len(list((tmp_path / "store").glob("*/*.npz"))) >= 4 + 3
    second = tune(config(data, tmp_path, strategy="linear", head="linear"))  # another frozen-prefix cell
    assert trunk_passes(second) == 0 and second["feature_store"]["hits"] == first["feature_store"]["written"]
    again = tune(config(data, tmp_path))
    assert again["accuracies"] == first["accuracies"] and trunk_passes(again) == 0
    without = tune(config(data, tmp_path, feature_cache=None))
    assert without["accuracies"] == first["accuracies"] and without["feature_store"] is None
    assert trunk_passes(without) == trunk_passes(first)


def test_a_changed_image_file_is_a_miss(data, tmp_path):
    first = tune(config(data, tmp_path))
    img = data / "test" / "c1" / "2.png"
    arr = np.asarray(Image.open(img)).copy()
    arr[0, 0] = 255 - arr[0, 0]
    Image.fromarray(arr).save(img)  # same name, new content
    second = tune(config(data, tmp_path))
    assert trunk_passes(second) == 1 and second["feature_store"]["hits"] == first["feature_store"]["written"] - 1


@pytest.mark.parametrize("change", [{"img_size": 48}, {"precision": "bf16"}, {"pretrained": True,
                                                                              "model": "efficientnet_lite0.offline"}])
def test_a_changed_transform_precision_or_model_is_a_miss(data, tmp_path, change):
    first = tune(config(data, tmp_path))
    other = tune(config(data, tmp_path, **change))
    assert other["feature_store"]["hits"] == 0 and trunk_passes(other) == trunk_passes(first)
    assert other["feature_store"]["dir"] != first["feature_store"]["dir"]


def test_a_changed_checkpoint_is_a_miss(data, tmp_path):
    from timm import create_model

    ckpt = tmp_path / "weights.pth"
    net = create_model(TINY, pretrained=False, img_size=32)
    torch.save(net.state_dict(), ckpt)
    first = tune(config(data, tmp_path, checkpoint=str(ckpt)))
    assert tune(config(data, tmp_path, checkpoint=str(ckpt)))["feature_store"]["hits"] > 0
    sd = net.state_dict()
    sd["blocks.0.mlp.fc1.weight"] += 0.01  # the same file name, other weights
    torch.save(sd, ckpt)
    changed = tune(config(data, tmp_path, checkpoint=str(ckpt)))
    assert changed["feature_store"]["hits"] == 0 and trunk_passes(changed) == trunk_passes(first)


def test_fingerprint_ignores_the_head_but_not_the_trunk():
    from timm import create_model

    a, b = create_model(TINY, pretrained=False, num_classes=3), create_model(TINY, pretrained=False, num_classes=3)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.head.weight.add_(1.0)
        assert trunk_fingerprint(a) == trunk_fingerprint(b)
        b.blocks[0].norm1.weight.add_(1e-3)
    assert trunk_fingerprint(a) != trunk_fingerprint(b)


def test_an_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
    store = FeatureStore(tmp_path / "fc", {"trunk": "x"})
    real = features.os.replace

    def killed(src, dst):  # the process dies after writing the temporary file, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(features.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.put(["k1", "k2"], torch.ones(2, 4))
    monkeypatch.setattr(features.os, "replace", real)
    assert [p.name for p in store.dir.iterdir()] == ["facts.json"]
    fresh = FeatureStore(tmp_path / "fc", {"trunk": "x"})
    assert fresh.get(["k1", "k2"]) == {}
    (fresh.dir / ".dead.npz.123.tmp").write_bytes(b"PK\x03\x04 half a zip")  # a SIGKILL mid-write
    (fresh.dir / "truncated.npz").write_bytes(b"PK\x03\x04 not a whole zip")  # a corrupt shard
    with pytest.warns(UserWarning, match="ignoring unreadable feature-cache shard"):
        assert FeatureStore(tmp_path / "fc", {"trunk": "x"}).get(["k1"]) == {}
    (fresh.dir / "truncated.npz").unlink()
    fresh.put(["k1"], torch.full((1, 4), 2.0))
    assert torch.equal(FeatureStore(tmp_path / "fc", {"trunk": "x"}).get(["k1"])["k1"], torch.full((4,), 2.0))
    assert features.clear(tmp_path / "fc") == 1 and not any((tmp_path / "fc").iterdir())


def test_cache_dir_from_flag_or_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(features.ENV, raising=False)
    assert features.cache_dir(None) is None
    monkeypatch.setenv(features.ENV, str(tmp_path / "env"))
    assert features.cache_dir(None) == tmp_path / "env" and features.cache_dir(str(tmp_path)) == tmp_path
    (tmp_path / "file").write_text("")
    with pytest.raises(PefsError, match="feature cache .* is not writable"):
        FeatureStore(tmp_path / "file", {})


def test_cli_flags_reach_the_config(tmp_path):
    from pefs.cli.flags import config_from_args
    from pefs.cli.main import build_parser

    a = build_parser().parse_args(["tune", "--feature-cache", str(tmp_path), "--workers", "2", "--cache-mb", "64"])
    cfg = config_from_args(a)
    assert cfg.feature_cache == str(tmp_path) and cfg.train.num_workers == 2 and cfg.train.cache_mb == 64
    base = config_from_args(build_parser().parse_args(["tune"]))
    assert cfg.hash() == base.hash()  # where inputs come from does not change a result


def test_an_unwritable_cache_folder_is_one_line_with_the_reason(tmp_path):
    """A feature cache whose folder cannot be made is one PefsError naming it, the system's reason and the way out."""
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    with pytest.raises(PefsError, match=r"^feature cache '.*file/cache' is not writable: Not a directory; choose "
                                        r"another with --feature-cache DIR \(or \$PEFS_FEATURE_CACHE\)$"):
        FeatureStore(blocker / "cache", {"model": "m"})


@pytest.mark.parametrize("change", [{"img_size": 48}, {"precision": "bf16"}])
def test_a_cnn_store_is_keyed_by_transform_and_precision(data, tmp_path, change):
    """On a CNN, whose weights (and so the trunk fingerprint) do not change with the image size or the precision,
    a run at another image size or inference precision still misses the store and runs the trunk itself: the
    namespace is keyed by the evaluation transform and the precision, not only by the weights."""
    import json

    cnn = {"model": "resnet18", "seeds": (0,)}
    first = tune(config(data, tmp_path, **cnn))
    other = tune(config(data, tmp_path, **cnn, **change))
    facts = [json.loads((tmp_path / "store" / Path(run["feature_store"]["dir"]).name / "facts.json")
                        .read_text()) for run in (first, other)]
    assert facts[0]["trunk"] == facts[1]["trunk"]  # the same weights: only the transform or precision differs
    assert other["feature_store"]["hits"] == 0 and trunk_passes(other) == trunk_passes(first) > 0
