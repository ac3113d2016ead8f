"""Data-parallel ``pefs tune --final`` (pefs.runtime.distributed): two CPU processes (gloo) split each batch, end
with the same weights, write one model directory and one record, and match one process with the same batch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pefs.errors import PefsError
from pefs.runtime import distributed
from tests import ddp_worker
from tests.conftest import ROOT, colour_images, subprocess_env

#: 27 images in batches of 8: batches of 8, 8, 8 and 3, so the last batch splits unequally (2 and 1 images)
BATCH, IMAGES, EPOCHS = 8, 27, 2
#: the weights of two processes and of one agree to float rounding, not bit for bit: each step's gradient is the
#: average of two halves' gradients (a different order of sums), and each half runs as its own smaller batch.
#: Measured: 3.2e-6 at most (LoRA on efficientnet_lite0, one thread per process); AdamW's first steps divide
#: by the gradient's size, so near-zero gradients amplify rounding (one process on 2 threads vs 1: 4.7e-4)
TOLERANCE = 1e-4


def _two(monkeypatch, rank: int) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))


def test_share_splits_a_batch_into_disjoint_parts_weighted_to_the_whole_batch_mean(monkeypatch):
    """Each process takes a disjoint part of a step's batch, the parts cover it, and the processes' weighted mean
    losses average to the whole batch's mean loss, also when the parts differ in size."""
    idx = torch.tensor([5, 2, 9, 0, 7])
    losses = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
    parts, weighted = [], []
    for r in (0, 1):
        _two(monkeypatch, r)
        mine, weight = distributed.share(idx)
        parts.append(mine.tolist())
        weighted.append(losses[mine].mean() * weight)
    assert parts == [[5, 9, 7], [2, 0]]
    assert torch.allclose(torch.stack(weighted).mean(), losses[idx].mean())
    monkeypatch.delenv("WORLD_SIZE")
    mine, weight = distributed.share(idx)
    assert mine is idx and weight == 1.0  # one process: the whole batch, unweighted


def test_batches_processes_cannot_share_are_refused_with_the_choices(monkeypatch):
    """A --batch-size that two processes cannot split equally, or mixup shares that are odd, are refused with
    the value and what to choose; one process takes any batch size."""
    distributed.check_batches(9, 27, even=True)  # one process: no constraint here
    _two(monkeypatch, 0)
    with pytest.raises(PefsError, match=r"--batch-size 9 .* 2 processes .* multiple of 2"):
        distributed.check_batches(9, 27)
    distributed.check_batches(8, 27)
    with pytest.raises(PefsError, match=r"mixup / cutmix .* batch of 6; .* multiple of 4"):
        distributed.check_batches(6, 24, even=True)
    distributed.check_batches(8, 24, even=True)


def test_kshot_tune_launched_as_two_processes_is_refused_before_any_work(monkeypatch, tmp_path, capsys):
    """pefs tune without --final under a two-process launch is refused in one line naming pefs sweep and --final,
    before any model loads or record is written."""
    from pefs.cli.main import main

    _two(monkeypatch, 0)
    code = main(["tune", "-q", "--img-size", "32", "--epochs", "1", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "2 processes" in err and "pefs sweep" in err and "--final" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _final_args(data, model_dir, out, *more: str) -> list[str]:
    return ["tune", "--data", str(data), "-q", "--img-size", "32", "--epochs", str(EPOCHS), "--batch-size",
            str(BATCH), "--strategy", "lora", "--mixed-precision", "no", "--inference-precision", "no",
            "--final", str(model_dir), "--output", str(out), *more]


def test_final_on_two_processes_syncs_shards_saves_once_and_matches_one_process(tmp_path):
    """``torchrun --nproc_per_node 2 pefs tune --final``: both processes end with identical trainable weights;
    each epoch, each process trained on a disjoint part of the images and together on all of them; one model
    directory (loadable, holding those weights) and one record; the weights, loss and accuracy equal a
    one-process run with the same batch within TOLERANCE. A run that diverges (a second command in the same
    processes) stops every process at the same step, with one record saying so and no model directory; a last
    batch of one image leaves one process an empty share, and the weights still agree."""
    from pefs.model import PefsModel

    data = colour_images(tmp_path / "imgs", {"train": IMAGES // 3, "test": 3})
    data33 = colour_images(tmp_path / "imgs33", {"train": 11, "test": 1})  # batches of 8, 8, 8, 8 and 1
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "tests.ddp_worker",
           str(two / "probe"), *_final_args(data, two / "model", two / "out"),
           "++", *_final_args(data, two / "diverged", two / "diverged-out", "--strategy", "full", "--lr", "1e9"),
           "++", *_final_args(data33, two / "model33", two / "out33")]
    r = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    probes = [torch.load(two / "probe" / f"rank{i}.pt") for i in (0, 1)]
    assert [p["world"] for p in probes] == [2, 2]
    ranks = [p["runs"][0] for p in probes]
    # (a) gradient sync: the same trainable weights in both processes
    assert ranks[0]["trained"].keys() == ranks[1]["trained"].keys() and ranks[0]["trained"]
    assert all(torch.equal(ranks[0]["trained"][k], ranks[1]["trained"][k]) for k in ranks[0]["trained"])
    # (b) per epoch, disjoint parts that together are every training image once
    steps = -(-IMAGES // BATCH)
    assert [len(p["seen"]) for p in ranks] == [steps * EPOCHS] * 2
    for e in range(EPOCHS):
        mine = [sum(p["seen"][e * steps:(e + 1) * steps], []) for p in ranks]
        assert not set(mine[0]) & set(mine[1])
        assert sorted(mine[0] + mine[1]) == list(range(IMAGES))
        assert sorted(map(len, mine)) == [IMAGES // 2, IMAGES - IMAGES // 2]
    # (c) one model directory, loadable, with rank 0's weights; one record
    records = list((two / "out").iterdir())
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["model_dir"] == str(two / "model") and rec["trained_on"] == IMAGES and rec["processes"] == 2
    loaded = dict(PefsModel.load(two / "model").named_parameters())
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in ranks[0]["trained"].items())
    assert r.stdout.count("result record:") == 2  # once per finished command (two), not once per process
    # a diverged run: every process refused at the same step (none left waiting), one record, no model
    diverged = [p["runs"][1] for p in probes]
    assert [d["code"] for d in diverged] == [2, 2] and len(diverged[0]["seen"]) == len(diverged[1]["seen"])
    (record,) = (two / "diverged-out").iterdir()
    assert json.loads(record.read_text())["status"] == "diverged" and not (two / "diverged").exists()
    # an empty share (the last batch's one image went to the other process) steps in sync all the same
    uneven = [p["runs"][2] for p in probes]
    assert [len(s) for s in uneven[1]["seen"]] == [4, 4, 4, 4, 0] * EPOCHS
    assert all(torch.equal(v, uneven[1]["trained"][k]) for k, v in uneven[0]["trained"].items())
    # (d) one process, the same total batch: the same steps and, to rounding, the same weights and results
    one, threads = tmp_path / "one", torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two processes: 2 threads alone move LoRA's weights by 4.7e-4 here
    try:
        assert ddp_worker.run(one / "probe", _final_args(data, one / "model", one / "out")) == 0
    finally:
        torch.set_num_threads(threads)
    single = torch.load(one / "probe" / "rank0.pt")["runs"][0]
    assert len(single["seen"]) == steps * EPOCHS and all(len(s) == min(BATCH, IMAGES - i % steps * BATCH)
                                                         for i, s in enumerate(single["seen"]))
    worst = max(float((single["trained"][k] - v).abs().max() / (1 + v.abs().max()))
                for k, v in ranks[0]["trained"].items())
    assert worst < TOLERANCE
    one_rec = json.loads(next((one / "out").iterdir()).read_text())
    assert "processes" not in one_rec
    assert one_rec["key"] == rec["key"]  # --batch-size means the step's whole batch: the same run
    assert one_rec["runs"][0]["steps"] == rec["runs"][0]["steps"] == steps * EPOCHS
    assert abs(one_rec["runs"][0]["final_loss"] - rec["runs"][0]["final_loss"]) < TOLERANCE
    assert one_rec["runs"][0]["accuracy"] == rec["runs"][0]["accuracy"]


def test_pretrain_on_two_processes_syncs_weights_and_writes_one_checkpoint(tmp_path):
    """``torchrun --nproc_per_node 2 pefs pretrain``: both processes end with the same trunk weights and read the
    same loss at every step, the steps are those of one process with the same total batch, one checkpoint is
    written (rank 0's weights) and says it ran on 2 processes; a batch the processes cannot share is one line."""
    from safetensors.torch import load_file

    from tests.conftest import TINY_MODELS

    vit = TINY_MODELS["vit"][0]
    data = colour_images(tmp_path / "imgs", {"train": 8, "test": 1})  # 24 training images: 3 steps per epoch
    args = ["pretrain", "-q", "--model", vit, "--no-pretrained", "--img-size", "32", "--data", str(data),
            "--objective", "supervised", "--epochs", "2", "--lr", "1e-3", "--mixed-precision", "no"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "tests.ddp_worker",
           str(tmp_path / "probe"), *args, "--batch-size", "8", "--out", str(tmp_path / "ckpt"),
           "++", *args, "--batch-size", "7", "--out", str(tmp_path / "odd")]
    r = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = [torch.load(tmp_path / "probe" / f"rank{i}.pt")["runs"] for i in (0, 1)]
    first = [p[0] for p in runs]
    assert first[0]["trained"] and first[0]["trained"].keys() == first[1]["trained"].keys()
    assert all(torch.equal(first[0]["trained"][k], first[1]["trained"][k]) for k in first[0]["trained"])
    assert len(first[0]["losses"]) == 2 * (24 // 8) and first[0]["losses"] == first[1]["losses"]
    identity = json.loads((tmp_path / "ckpt" / "pefs_pretrain.json").read_text())
    assert identity["processes"] == 2 and identity["steps"] == 6 and identity["batch_size"] == 8
    saved = load_file(str(tmp_path / "ckpt" / identity["weights"]["file"]))
    assert all(torch.equal(saved[k], first[0]["trained"][k]) for k in saved)
    assert [p[1]["code"] for p in runs] == [2, 2] and not (tmp_path / "odd").exists()
    assert "--batch-size 7 is the batch of one step over all 2 processes" in r.stderr + r.stdout
