"""Real-size data: evaluation streams, the decoded-image cache is bounded, workers decode the same pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pefs.backbones.describe import IMAGENET_DATA_CONFIG
from pefs.config import TrainConfig, TuneConfig
from pefs.data import Dataset, from_arrays, load_dataset, loading
from pefs.data.loading import ByteCache, Decoder, decoded_batches
from pefs.errors import PefsError
from pefs.protocols.run import tune
from pefs.runtime.task import TaskRunner
from tests.conftest import close, colour_images, on_cuda

TINY = "vit_tiny_patch16_224"


@pytest.fixture
def split_folder(tmp_path):
    """3 classes with train (5 each) and test (8 each) splits of 14x14 RGB images."""
    return colour_images(tmp_path / "data", {"train": 5, "test": 8}, side=14, seed=1, spread=90, lift=140,
                         classes=("c0", "c1", "c2"), name="{split}{i}.png")


def config(data, tmp_path, **kw) -> TuneConfig:
    train = kw.pop("train", {})
    return TuneConfig(**{"model": TINY, "pretrained": False, "img_size": 32, "data": str(data), "shots": 2,
                         "seeds": (0, 1), "output": str(tmp_path / "runs"),
                         "train": TrainConfig(epochs=2, batch_size=4, eval_batch_size=5, progress=False, **train),
                         **kw})


def test_decoder_uint8_batches_equal_the_transform_bit_for_bit(split_folder):
    from pefs.data import eval_transform

    ds = load_dataset(str(split_folder))
    tf = eval_transform(dict(IMAGENET_DATA_CONFIG), 32)
    dec = Decoder(tf)
    assert dec.uint8
    raw = torch.stack([dec.item(ds.test.image(i)) for i in range(6)])
    assert raw.dtype == torch.uint8 and raw.shape == (6, 3, 32, 32)
    assert torch.equal(dec.finish(raw), torch.stack([tf(ds.test.image(i)) for i in range(6)]))
    whole = Decoder(lambda img: torch.zeros(2))  # a transform pefs cannot split is applied whole
    assert not whole.uint8 and whole.finish(torch.stack([whole.item(None)])).dtype == torch.float32


@pytest.mark.parametrize("strategy, head", [("lora", "linear"), ("last-k", "linear"), ("linear", "prototype")])
def test_run_over_the_cache_budget_equals_an_unbounded_run(split_folder, tmp_path, strategy, head):
    """A test split larger than --cache-mb is re-decoded each task instead of kept: the same numbers."""
    unbounded = tune(config(split_folder, tmp_path, strategy=strategy, head=head))
    image = 3 * 32 * 32  # one uint8 image
    bounded = tune(config(split_folder, tmp_path, strategy=strategy, head=head,
                          train={"cache_mb": 10 * image / 2**20}))  # room for 10 of the 30 images
    assert bounded["accuracies"] == unbounded["accuracies"]
    assert [r["final_loss"] for r in bounded["runs"]] == [r["final_loss"] for r in unbounded["runs"]]
    if strategy == "lora":  # nothing before the logits is frozen: images are what the run keeps
        assert bounded["cache"]["cache_mb"] <= 10 * image / 2**20 and bounded["cache"]["refused"] > 0
        assert sum(r["decoded"] for r in bounded["runs"]) > sum(r["decoded"] for r in unbounded["runs"])
        assert unbounded["runs"][1]["decoded"] <= 6  # at most the second seed's new support: no test image
    if head == "prototype":  # pooled features are kept for every image whatever the budget
        assert bounded["runs"][1]["trunk_images"] == unbounded["runs"][1]["trunk_images"] < 24


def test_workers_decode_the_same_inputs_and_name_a_bad_file(split_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "MIN_PARALLEL", 0)  # worker processes even for this small set
    ds = load_dataset(str(split_folder))
    outs = []
    for workers in (0, 2):
        runner = TaskRunner(config(split_folder, tmp_path, strategy="lora", train={"num_workers": workers}), 3)
        t = dict.fromkeys(("decode_s", "extract_s", "decoded", "trunk_images"), 0.0)
        outs.append(runner.stream(ds.test, "logits", t))
        assert t["decoded"] == t["trunk_images"] == len(ds.test)
    assert close(outs[0], outs[1])
    seen = []
    real = loading.DataLoader
    monkeypatch.setattr(loading, "DataLoader", lambda *a, **kw: seen.append(kw["num_workers"]) or real(*a, **kw))
    list(decoded_batches(ds.test, range(4), runner.decoder, 4, num_workers=2))
    monkeypatch.setattr(loading, "MIN_PARALLEL", 5)
    list(decoded_batches(ds.test, range(4), runner.decoder, 4, num_workers=2))
    assert seen == [2, 0]  # a set under MIN_PARALLEL images decodes in this process
    bad = split_folder / "test" / "c1" / "test3.png"
    bad.write_bytes(b"not a png")
    ds = load_dataset(str(split_folder))
    with pytest.raises(PefsError, match=r"cannot decode image '.*c1/test3.png'"):
        list(decoded_batches(ds.test, range(len(ds.test)), runner.decoder, 4, num_workers=2))


def test_a_set_naming_one_image_twice_streams_in_order(split_folder, tmp_path):
    from pefs.data import ImageSet

    ds = load_dataset(str(split_folder))
    runner = TaskRunner(config(split_folder, tmp_path, strategy="lora"), 3)  # nothing cached yet
    idx = [0, 1, 0, 2, 1]
    twice = ImageSet(ds.test.classes, ds.test.labels[idx], [ds.test.names[i] for i in idx],
                     lambda j: ds.test.loader(idx[j]))
    t = dict.fromkeys(("decode_s", "extract_s", "decoded", "trunk_images"), 0.0)
    got = runner.stream(twice, "logits", t)
    assert t["decoded"] == 5
    once = runner.stream(ds.test.subset([0, 1, 2]), "logits", dict(t))
    assert close(got, once[idx], atol=1e-5)


def test_byte_cache_keeps_the_first_entries_within_budget():
    cache = ByteCache(3 * 100)
    for i in range(5):
        cache.put(str(i), torch.zeros(100, dtype=torch.uint8))
    assert len(cache) == 3 and cache.used == 300 and cache.refused == 2 and "0" in cache and "4" not in cache


def test_bad_loader_settings_are_clear_errors():
    with pytest.raises(PefsError, match="num_workers must be a whole number >= 0, got -1"):
        TrainConfig(num_workers=-1).validate()
    with pytest.raises(PefsError, match="cache_mb must be a number of MiB >= 0"):
        TrainConfig(cache_mb=-5).validate()


def _generated(n_test: int, size: int = 32) -> Dataset:
    rng = np.random.default_rng(0)
    classes = [str(c) for c in range(4)]

    def arrays(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 4
        images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
        return images, labels

    tr, te = arrays(8), arrays(n_test)
    return Dataset(f"generated-{n_test}", from_arrays(*tr, classes, "train"), from_arrays(*te, classes, "test"))


def test_peak_memory_does_not_grow_with_the_test_split(tmp_path):
    """A frozen-prefix run keeps pooled features (5 KB per image), never the decoded split: 12x the test images
    costs well under the 96 px float images it used to keep (1,200 x 108 KB = 127 MB). Figures: benchmarks/scale.md.
    Each run's peak is its own (reset when it starts); the first run also pays one-off costs, so it is a warm-up."""
    peak = {}
    for n in (100, 100, 1200):
        cfg = TuneConfig(model="efficientnet_lite0.offline", pretrained=False, strategy="linear", head="prototype",
                         shots=1, img_size=96, data=_generated(n), output=str(tmp_path),  # type: ignore[arg-type]
                         train=TrainConfig(progress=False, eval_batch_size=16))
        rec = tune(cfg)
        measure = "cuda max_memory_allocated since the run" if on_cuda() else "peak RSS since the run"
        assert rec["runs"][0]["query"] == n and rec["peak_memory_measure"].startswith(measure)
        peak[n] = rec["peak_memory_mb"]
    assert peak[1200] < peak[100] + 40, peak
