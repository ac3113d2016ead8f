"""README claims, each checked where a user meets it: through ``pefs`` (in process) or the public API, with the
flag shown to change what runs (the dtype, layout and batch size the layers see; the merge; the cache),
not only to parse. Tiny random models at 32 px, one epoch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import pefs.runtime.task
from pefs.cli.main import main
from pefs.model.directory import weights_fingerprint
from pefs.runtime import engine, hardware
from pefs.runtime.start import changeable
from tests.conftest import colour_images

RUN = ["--model", "resnet18", "--no-pretrained", "--img-size", "32", "--epochs", "1", "-q"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Behaviour, not speed: one thread avoids OpenMP spin-waits on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def folder(tmp_path) -> Path:
    """3 classes x 30 images (no test split: pefs holds out 9 per class), distinct colours per class."""
    return colour_images(tmp_path / "imgs", {"": 30})


class LayerSpy:
    """Wraps ``pefs.runtime.task.build_model`` so every Conv2d/Linear of the model a run builds reports each call:
    grad enabled (training) or not, the dtype it computed in, channels-last input, batch size."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[dict] = []
        self.models: list[nn.Module] = []
        real = pefs.runtime.task.build_model

        def build(cfg, num_classes):
            model = real(cfg, num_classes)
            self.models.append(model)
            for mod in model.modules():
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    mod.register_forward_hook(self._hook)
            return model

        monkeypatch.setattr(pefs.runtime.task, "build_model", build)

    def _hook(self, mod, inputs, out) -> None:
        x = inputs[0]
        self.calls.append({"grad": torch.is_grad_enabled(), "dtype": out.dtype, "n": x.shape[0],
                           "channels_last": x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last),
                           "spatial": x.ndim == 4 and x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1,
                           "conv": isinstance(mod, nn.Conv2d), "module": mod})

    def dtypes(self, grad: bool) -> set[torch.dtype]:
        return {c["dtype"] for c in self.calls if c["grad"] is grad}

    def clear(self) -> None:
        self.calls.clear()


def tune(tmp_path: Path, folder: Path, *args: str) -> dict:
    """Run ``pefs tune`` in process on ``folder``; the record it wrote."""
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    assert main(["tune", "--data", str(folder), "--shots", "2", *RUN, "--output", str(out), *args]) == 0
    (record,) = out.glob("*.json")
    return json.loads(record.read_text())


# -- Offline models ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["efficientnet_lite1.offline", "efficientnet_lite2.offline"])
def test_lite1_and_lite2_load_offline_and_classify_real_photos(name):
    """README: Lite1 (240 px) and Lite2 (260 px) ship as offline models; like Lite0 they know a cat and espresso."""
    from skimage import data

    from pefs.backbones import load
    from pefs.data import eval_transform

    bb = load(name)
    assert bb.source == "offline"
    side = {"efficientnet_lite1.offline": 240, "efficientnet_lite2.offline": 260}[name]
    assert bb.data_config["input_size"] == (3, side, side)
    top = []
    for img in (data.chelsea(), data.coffee()):
        x = eval_transform(bb.data_config)(Image.fromarray(img)).unsqueeze(0)
        with torch.no_grad():
            top.append(bb.model.eval()(x).argmax(-1).item())
    assert top[0] in {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top[1] == 967  # espresso


# -- Using pefs ---------------------------------------------------------------------------------------------------

def test_tune_prints_accuracy_parameters_wall_time_and_the_record_path(tmp_path, folder, capsys):
    """README: tune prints accuracy, trainable parameters (count and % of the backbone), wall time, and the path
    of a JSON result record."""
    out = tmp_path / "records"
    assert main(["tune", "--data", str(folder), "--shots", "2", *RUN, "--output", str(out)]) == 0
    text = capsys.readouterr().out
    path = Path(re.search(r"^result record: (.+)$", text, re.M).group(1))
    assert path.parent == out and path.is_file()
    record = json.loads(path.read_text())
    assert record["strategy"] == "linear" and record["shots"] == 2
    wall = float(re.search(r"^wall time: (\d+\.\d) s \(", text, re.M).group(1))
    assert wall == pytest.approx(record["wall_s"], abs=0.05 + 1e-9)
    p = record["params"]
    assert f"trainable parameters: {p['trainable']:,} ({p['percent_of_backbone']:.3f}% of the backbone" in text
    # one seed has no interval, and says so instead of printing "± 0.00"
    assert f"accuracy: {100 * record['accuracy_mean']:.2f}% (one seed: no confidence interval" in text
    assert record["accuracy_ci95"] is None


def test_seeds_0_4_through_the_cli_run_five_seeds_from_the_same_start(tmp_path, folder, capsys, monkeypatch):
    """README: ``--seeds 0-4`` gives 5 seeds and mean ± 95% CI; every K-shot seed tunes from the same start
    (LoRA changes weights inside the model, so a state not restored would show in the next seed's fingerprint)."""
    spy = LayerSpy(monkeypatch)
    record = tune(tmp_path, folder, "--strategy", "lora", "--seeds", "0-4")
    assert [r["seed"] for r in record["runs"]] == [0, 1, 2, 3, 4] and len(record["accuracies"]) == 5
    assert record["accuracy_ci95"] is not None and "95% CI over 5 seeds" in capsys.readouterr().out
    starts = {r["start_state"] for r in record["runs"]}
    assert len(starts) == 1  # every seed started from identical weights
    (model,) = spy.models
    assert weights_fingerprint(list(changeable(model).items())) != starts.pop()  # ... although training moved them


def test_kshot_seed_starts_from_the_loaded_weights_even_after_training(tmp_path, folder, monkeypatch):
    """README: the model loads once and its state is restored per task: the second seed's start equals the
    freshly loaded model's fingerprint, not the trained state the first seed left behind."""
    spy = LayerSpy(monkeypatch)
    seen: list[str] = []
    real = pefs.runtime.task.TaskRunner.run

    def run(self, support, query, seed, train=None):
        result = real(self, support, query, seed, train)
        seen.append(weights_fingerprint(list(changeable(self.model).items())))  # the state this task left behind
        return result

    monkeypatch.setattr(pefs.runtime.task.TaskRunner, "run", run)
    record = tune(tmp_path, folder, "--strategy", "full", "--seeds", "0,1")
    assert len(spy.models) == 1  # loaded once for both seeds
    start = record["runs"][0]["start_state"]
    assert record["runs"][1]["start_state"] == start != seen[0]


def test_lora_targets_option_through_the_cli(tmp_path, folder):
    """README: ``pefs tune --strategy lora -o r=4 -o targets=conv_pw`` adapts only the named layers, at rank 4."""
    data = ["--model", "efficientnet_lite0", "--no-pretrained", "--img-size", "32", "--epochs", "1", "-q"]
    out = tmp_path / "o"
    assert main(["tune", "--data", str(folder), "--shots", "2", *data, "--output", str(out), "--strategy", "lora",
                 "-o", "r=4", "-o", "targets=conv_pw", "--save-adapter", str(tmp_path / "ad")]) == 0
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["config"]["options"] == {"r": "4", "targets": "conv_pw"} or \
        record["config"]["options"] == {"r": 4, "targets": "conv_pw"}
    model = pefs.PefsModel.load(tmp_path / "ad" / "seed0", backbone=pefs.load("efficientnet_lite0",
                                                                             pretrained=False),
                                allow_different_base=True)  # other random base weights: the structure is checked
    lora = {n.rsplit(".lora_", 1)[0] for n, p in model.named_parameters() if ".lora_" in n}
    assert lora and all(n.endswith("conv_pw") for n in lora)
    conv_pw = [n for n, m in model.net.named_modules() if n.endswith("conv_pw")]
    assert len(lora) == len(conv_pw)  # every conv_pw, nothing else
    ranks = {p.shape[0] for n, p in model.named_parameters() if ".lora_A" in n}
    assert ranks == {4}


def test_each_strategy_trains_at_its_default_learning_rate_unless_lr_is_given(tmp_path, folder):
    """README: without ``--lr`` full fine-tuning trains at 1e-4 and the others at 1e-3; ``--lr`` wins; the record's
    resolved config and each run entry say the rate used."""
    full = tune(tmp_path, folder, "--strategy", "full")
    assert full["config"]["train"]["lr"] is None and full["resolved"]["train"]["lr"] == 1e-4
    assert [r["lr"] for r in full["runs"]] == [1e-4]
    bias = tune(tmp_path, folder, "--strategy", "bias")
    assert bias["resolved"]["train"]["lr"] == 1e-3 and bias["runs"][0]["lr"] == 1e-3
    given = tune(tmp_path, folder, "--strategy", "full", "--lr", "3e-4")
    assert given["resolved"]["train"]["lr"] == 3e-4 and given["runs"][0]["lr"] == 3e-4
    assert given["config_hash"] != full["config_hash"]
    # the AdamW linear probe trains its head only: no strategy rate to report (the default logistic head fits)
    probe = tune(tmp_path, folder, "--head", "linear")
    assert probe["runs"][0]["lr"] is None and probe["runs"][0]["head_lr"] == pytest.approx(1e-2, rel=1e-9)


@pytest.mark.parametrize("head, rate", [("linear", 1e-2), ("linear-proto", 1e-3)])
def test_the_head_trains_at_its_documented_default_rate(tmp_path, folder, head, rate):
    """The head's default learning rate is 1e-2 (``--head-lr``), a tenth of it for the prototype-initialised head
    (benchmarks/episodic.md's settings): the resolved config and the run entry give those values."""
    rec = tune(tmp_path, folder, "--strategy", "bias", "--head", head)
    assert rec["resolved"]["train"]["head_lr"] == 1e-2
    assert rec["runs"][0]["head_lr"] == pytest.approx(rate, rel=1e-9)


def test_stratified_hold_out_keeps_30_percent_of_every_class(tmp_path):
    """README: without a test split pefs holds out a seeded, stratified 30% per class; no image is on both sides."""
    from pefs.data import Dataset, from_arrays, kshot_split

    counts = {0: 10, 1: 20, 2: 7}  # unbalanced, so a non-stratified 30% would not give 3/6/2
    labels = [c for c, n in counts.items() for _ in range(n)]
    rng = np.random.default_rng(0)
    ds = Dataset("unbalanced", from_arrays(rng.integers(0, 255, (len(labels), 8, 8, 3), dtype=np.uint8), labels))
    assert ds.test is None
    for seed in (0, 1):
        split = kshot_split(ds, shots=1, seed=seed)
        test_counts = np.bincount(split.query.labels, minlength=3).tolist()
        assert test_counts == [round(0.3 * n) for n in counts.values()] == [3, 6, 2]
        assert not set(split.query.names) & set(split.support.names)
        again = kshot_split(ds, shots=1, seed=seed)
        assert again.query.names == split.query.names  # seeded: the same hold-out every time


# -- Speed and memory defaults ------------------------------------------------------------------------------------

def test_channels_last_and_eval_batch_16_by_default(tmp_path, folder, monkeypatch):
    """README: on by default, channels-last layout for CNNs and an evaluation batch of 16 (27 held-out images
    are scored in batches of 16 and 11)."""
    spy = LayerSpy(monkeypatch)
    tune(tmp_path, folder, "--strategy", "lora", "--inference-precision", "no")
    convs = [c for c in spy.calls if c["conv"] and c["spatial"]]  # where the two layouts differ
    assert len(convs) > 20 and all(c["channels_last"] for c in convs)
    first = next(m for m in spy.models[0].modules() if isinstance(m, nn.Conv2d))
    eval_batches = [c["n"] for c in spy.calls if c["module"] is first and not c["grad"]]
    assert eval_batches == [6, 16, 11]  # the support's 6 (head init), then 27 held-out images (9 per class)
    spy.clear()
    tune(tmp_path, folder, "--strategy", "lora", "--inference-precision", "no", "--eval-batch-size", "64")
    first = next(m for m in spy.models[1].modules() if isinstance(m, nn.Conv2d))
    assert [c["n"] for c in spy.calls if c["module"] is first and not c["grad"]] == [6, 27]


def test_inference_precision_flag_sets_the_dtype_of_no_grad_passes(tmp_path, folder, monkeypatch):
    """README: no-grad passes run in bf16 where the hardware has it (here made to claim it); ``--inference-precision
    no`` runs fp32 everywhere; training stays fp32 unless ``--mixed-precision``."""
    monkeypatch.setattr(hardware, "native_bf16", lambda device_type: True)
    spy = LayerSpy(monkeypatch)
    record = tune(tmp_path, folder, "--strategy", "lora")
    assert record["machine"]["inference_precision"] == "bf16"
    assert spy.dtypes(grad=False) == {torch.bfloat16} and spy.dtypes(grad=True) == {torch.float32}
    spy.clear()
    record = tune(tmp_path, folder, "--strategy", "lora", "--inference-precision", "no")
    assert record["machine"]["inference_precision"] == "no"
    assert spy.dtypes(grad=False) == spy.dtypes(grad=True) == {torch.float32}
    spy.clear()
    tune(tmp_path, folder, "--strategy", "lora", "--inference-precision", "no", "--mixed-precision", "bf16")
    assert spy.dtypes(grad=True) == {torch.bfloat16} and spy.dtypes(grad=False) == {torch.float32}


def test_auto_precision_is_fp32_where_bf16_is_not_native(tmp_path, folder, monkeypatch):
    """README: bf16 only "where the hardware computes bf16 natively"; elsewhere everything stays fp32."""
    monkeypatch.setattr(hardware, "native_bf16", lambda device_type: False)
    spy = LayerSpy(monkeypatch)
    record = tune(tmp_path, folder, "--strategy", "lora")
    assert record["machine"]["inference_precision"] == "no"
    assert spy.dtypes(grad=False) == spy.dtypes(grad=True) == {torch.float32}


def test_no_merge_for_eval_evaluates_with_the_lora_branch_running(tmp_path, folder, monkeypatch):
    """README: LoRA is evaluated merged by default (the peft layers report ``merged`` while the queries run);
    ``--no-merge-for-eval`` keeps the low-rank branch running. Same accuracy either way."""
    states: list[set[bool]] = []
    real = engine.no_grad_pass

    def no_grad_pass(model, cfg, *args, **kwargs):  # every no-grad batch (the query pass streams through it)
        run = real(model, cfg, *args, **kwargs)

        def each(xb):
            states.append({m.merged for m in model.modules() if hasattr(m, "merged_adapters")})
            return run(xb)
        return each

    monkeypatch.setattr(engine, "no_grad_pass", no_grad_pass)
    merged = tune(tmp_path, folder, "--strategy", "lora", "--inference-precision", "no")
    assert states[-1] == {True}  # the query pass ran on merged weights
    states.clear()
    plain = tune(tmp_path, folder, "--strategy", "lora", "--inference-precision", "no", "--no-merge-for-eval")
    assert states and all(s == {False} for s in states)
    assert merged["accuracies"] == pytest.approx(plain["accuracies"], abs=1e-9)


def test_grad_checkpointing_flag_turns_checkpointing_on_during_training(tmp_path, folder, monkeypatch):
    """README: ``--grad-checkpointing`` recomputes each block in the backward pass: the blocks' layers run again
    under grad during backward (more forward calls than without), and the loss is the same."""
    spy = LayerSpy(monkeypatch)
    plain = tune(tmp_path, folder, "--strategy", "lora", "--inference-precision", "no")
    without = sum(c["grad"] for c in spy.calls)
    assert spy.models[0].net.grad_checkpointing is False
    spy.clear()
    ckpt = tune(tmp_path, folder, "--strategy", "lora", "--inference-precision", "no", "--grad-checkpointing")
    with_ckpt = sum(c["grad"] for c in spy.calls)
    assert with_ckpt > without  # recomputation in the backward pass
    assert spy.models[1].net.grad_checkpointing is False  # off again after training
    assert ckpt["runs"][0]["final_loss"] == pytest.approx(plain["runs"][0]["final_loss"], abs=1e-5)
    assert ckpt["accuracies"] == pytest.approx(plain["accuracies"], abs=1e-9)


def test_no_cache_trains_through_the_whole_network_with_the_same_predictions(tmp_path, folder, monkeypatch):
    """README: the frozen part runs once per image and is cached; ``--no-cache`` runs every step through the
    whole network, and gives the same predictions."""
    spy = LayerSpy(monkeypatch)
    # a trained head (--head linear): the default logistic head fits on features and never trains the network
    cached = tune(tmp_path, folder, "--strategy", "linear", "--head", "linear", "--inference-precision", "no")
    convs_cached = sum(c["conv"] and c["grad"] for c in spy.calls)
    spy.clear()
    plain = tune(tmp_path, folder, "--strategy", "linear", "--head", "linear", "--inference-precision", "no",
                 "--no-cache")
    convs_plain = sum(c["conv"] and c["grad"] for c in spy.calls)
    assert cached["runs"][0]["cached"] and cached["frozen_level"] > 0 and convs_cached == 0
    assert not plain["runs"][0]["cached"] and plain["frozen_level"] == 0 and convs_plain > 0
    assert cached["accuracies"] == pytest.approx(plain["accuracies"], abs=1e-9)


# -- Sweeps ---------------------------------------------------------------------------------------------------------

def test_retry_failed_through_the_cli_runs_the_failed_cell_again(tmp_path, folder, capsys):
    """README: a diverging cell is stored as failed with its message; rerunning skips it; ``--retry-failed`` runs
    it again (a second row for the same cell)."""
    st = tmp_path / "results.jsonl"
    args = ["sweep", "--models", "resnet18", "--strategies", "lora", "--shots", "1", "--data", str(folder),
            "--no-pretrained", "--img-size", "32", "--epochs", "2", "-q", "--lr", "1e9", "--head-lr", "1e9",
            "--store", str(st)]

    def rows() -> list[dict]:
        return [json.loads(x) for x in st.read_text().splitlines()]

    assert main(args) == 0
    assert "1 failed (rerun with --retry-failed" in capsys.readouterr().out
    (row,) = rows()
    assert row["status"] == "failed" and "training loss became" in row["error"]
    assert main(args) == 0
    assert "ran 0, skipped 1" in capsys.readouterr().out and len(rows()) == 1
    assert main([*args, "--retry-failed"]) == 0
    assert "ran 0, skipped 0 already in the store, 1 failed" in capsys.readouterr().out
    assert [r["hash"] for r in rows()] == [row["hash"]] * 2  # it really ran again


def test_dry_run_lists_cells_and_what_is_stored(tmp_path, folder, capsys):
    """README: ``--dry-run`` lists the cells and which are already stored, and runs none."""
    st = tmp_path / "results.jsonl"
    grid = ["sweep", "--models", "resnet18", "--strategies", "linear", "--shots", "1,2", "--data", str(folder),
            "--no-pretrained", "--img-size", "32", "--epochs", "1", "-q", "--store", str(st)]
    assert main([*grid, "--shots", "1"]) == 0
    capsys.readouterr()
    assert main([*grid, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\[1/2\] .*: ok", out) and re.search(r"\[2/2\] .*: to run", out)
    assert "2 cells, 1 already in" in out and len(st.read_text().splitlines()) == 1


def test_makefile_demo_is_the_documented_command():
    """README: ``make demo`` runs ``pefs tune --strategy lora --shots 5`` on the embedded defaults."""
    text = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    demo = text.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "pefs tune --strategy lora --shots 5" in demo and "--model" not in demo and "--data" not in demo


def test_embedded_data_is_the_documented_fashion_mnist_subset():
    """README: 1,000 Fashion-MNIST images, 10 classes, 60 train + 40 test per class."""
    from pefs.data import load_dataset

    ds = load_dataset(None)
    assert len(ds.classes) == 10
    assert ds.train.counts().tolist() == [60] * 10 and ds.test.counts().tolist() == [40] * 10


def test_ways_switch_to_episodes_with_15_queries_per_class(tmp_path, folder, capsys):
    """README: ``pefs tune --ways N --shots K --episodes E`` runs E N-way K-shot episodes, 15 queries per class by
    default, mean ± CI over the episodes."""
    record = tune(tmp_path, folder, "--ways", "3", "--shots", "1", "--episodes", "2", "--strategy", "linear")
    assert record["protocol"] == "episodic" and len(record["accuracies"]) == 2
    assert all(r["query"] == 3 * 15 and r["support"] == 3 for r in record["runs"])
    assert "95% CI over 2 episodes" in capsys.readouterr().out
