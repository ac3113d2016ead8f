"""Shared fixtures: everything offline, small random-weight models for family tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# before torch loads OpenMP: spinning threads on a shared, loaded CPU made the suite ~8x slower (250 s vs 30 s)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: flags that keep a CLI run small: no progress bars, 32 px images, 2 epochs
FAST = ["-q", "--img-size", "32", "--epochs", "2"]


def subprocess_env(*, repo: bool = True, **extra: str) -> dict[str, str]:
    """The environment for a python subprocess a test starts: ``os.environ`` plus ``extra``, with the repository
    root PREPENDED to whatever PYTHONPATH holds (entries already there, such as carried wheels on a GPU machine,
    stay); ``repo=False`` takes the root off PYTHONPATH instead, keeping the other entries."""
    env = dict(os.environ, **extra)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
    if repo:
        parts.insert(0, str(ROOT))
    if parts:
        env["PYTHONPATH"] = os.pathsep.join(parts)
    else:
        env.pop("PYTHONPATH", None)
    return env


def cli(*args: str, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m pefs.cli ARGS`` in a subprocess (one OpenMP thread), capturing its output."""
    env = subprocess_env(OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pefs.cli", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env=env, **kw)


def assert_user_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user error as the CLI must report it: exit 2, one line on stderr, no traceback, naming ``fragments``."""
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for f in fragments:
        assert f in r.stderr, r.stderr

#: small timm models, one per family, with the kwargs that keep them fast on a CPU
TINY_MODELS = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 32}),
    "convnext": ("convnext_atto", {}),
    "resnet": ("resnet18", {}),
    "efficientnet": ("efficientnet_lite0", {}),
}


def colour_images(root, counts: dict[str, int], side: int = 20, seed: int = 0, spread: int = 60, lift: int = 150,
                  classes: tuple[str, ...] = ("cat", "dog", "fox"), name: str = "{i}.png"):
    """Class folders of small random RGB images, each class lifted in its own colour channel (so classes are easy
    to tell apart): ``counts`` maps a split ("train", "test"; "" for none) to images per class. Returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for c, cls in enumerate(classes):
            d = root / split / cls if split else root / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, spread, (side, side, 3), dtype=np.uint8)
                arr[..., c] += lift
                Image.fromarray(arr).save(d / name.format(split=split, i=i))
    return root


@pytest.fixture
def image_folder(tmp_path):
    """A 3-class image folder with 6 small RGB images per class (distinct colours per class)."""
    return colour_images(tmp_path / "imgs", {"": 6})


def tiny(family: str, strategy: str = "linear", classes: int = 3, **options):
    """A small random-weight model of ``family`` (see TINY_MODELS) wrapped with ``strategy``, seeded."""
    import pefs
    from pefs.runtime import hardware

    name, kwargs = TINY_MODELS[family]
    hardware.seed_everything(0)
    return pefs.wrap(name, strategy, num_classes=classes, pretrained=False, model_kwargs=kwargs, **options)


def batch(n: int = 12, classes: int = 3, size: int = 32):
    """``n`` seeded random images (n, 3, size, size) and labels cycling through ``classes``."""
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % classes


def cfg(**kw):
    """A short TrainConfig with fp32 no-grad passes unless asked: these tests compare paths that must agree to
    1e-4, and "auto" would run the cached prefix in bf16 on a CPU that has it (test_speed_options covers that).
    Where CUDA is available it is also ``deterministic`` (fp32 throughout, no TF32, deterministic kernels), so the
    same comparisons hold there; on a CPU that setting changes no number, and it is left unset."""
    from pefs.config import TrainConfig

    gpu = {"deterministic": True} if on_cuda() else {}
    return TrainConfig(**{"epochs": 3, "batch_size": 4, "progress": False, "inference_precision": "no", **gpu, **kw})


def on_cuda() -> bool:
    """Whether pefs' engine would move models to a CUDA GPU here (and leave them there after ``fit``)."""
    import torch

    return torch.cuda.is_available()


#: tolerance of comparisons that may have one side computed on a CUDA GPU under TF32 / bf16 autocast
GPU_ATOL = GPU_RTOL = 2e-2


def close(a, b, atol: float = 0.0, rtol: float = 0.0) -> bool:
    """``a`` and ``b`` (tensors, on any device; compared as CPU copies) agree: on a CPU exactly as asked (the
    default 0, 0 is bit for bit), where CUDA is available within at least GPU_ATOL / GPU_RTOL (TF32 matmuls and
    bf16 autocast, pefs' GPU defaults, change low bits). Never looser than asked on a CPU."""
    import torch

    a, b = a.detach().cpu(), b.detach().cpu()
    if on_cuda():
        return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=max(atol, GPU_ATOL),
                                                     rtol=max(rtol, GPU_RTOL))
    if atol == rtol == 0:
        return torch.equal(a, b)
    return torch.allclose(a, b, atol=atol, rtol=rtol)


def same(a, b) -> bool:
    """Bit-for-bit equality of two tensors wherever each lives (weights pefs' engine left on the GPU against CPU
    copies taken before): for values that are copied or restored, never recomputed."""
    import torch

    return torch.equal(a.detach().cpu(), b.detach().cpu())


def decode(images, transform):
    """Every image of an ImageSet through ``transform``, stacked, and its labels (the plain way, for comparisons)."""
    import torch

    if len(images) == 0:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    x = torch.stack([transform(images.image(i)) for i in range(len(images))])
    return x, torch.as_tensor(np.asarray(images.labels), dtype=torch.long)


def fake_tune(calls: list[str]):
    """A stand-in for ``tune`` in sweep tests: records each cell's config hash and returns a small record whose
    accuracy grows with each call (so which row a report keeps is visible)."""
    def run(cfg):
        calls.append(cfg.hash())
        acc = 0.5 + len(calls) / 100
        return {"config": cfg.to_dict(), "accuracy_mean": acc, "accuracies": [acc], "wall_s": 0.1,
                "dataset": {"name": "imgs", "classes": 3}, "backbone": {"params": 10},
                "params": {"trainable": 1, "percent_of_backbone": 10.0, "backbone_params": 10, "head": 1}}
    return run
