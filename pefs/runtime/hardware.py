"""Where a process's work runs and how: its Accelerator (the device), how many processes a launcher started and
which one this is, precision, the GPU settings of the fast and the exact (``deterministic``) modes, and how many
processes decode images beside it."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import torch

from pefs.config import TrainConfig
from pefs.errors import PefsError

_ACCELERATORS: dict[str, Any] = {}

#: the environment variables a launcher sets to the number of processes (torchrun / accelerate, MPI)
WORLD_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK")


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise PefsError(f"{name}={value!r} is not a whole number; a launcher (torchrun, accelerate "
                                "launch) sets it") from None
    return default


def world_size() -> int:
    """How many processes the launcher started (1 without a launcher), read from the environment: nothing is
    started, so checks can ask before any weights load."""
    return max(_env_int(WORLD_VARS, 1), 1)


def rank() -> int:
    """This process's index among :func:`world_size` processes (0 without a launcher)."""
    return _env_int(RANK_VARS, 0) if world_size() > 1 else 0


def is_main() -> bool:
    """Whether this process writes what the run writes once (model directory, record, printed summary)."""
    return rank() == 0


def accelerator():
    """The process's Accelerator: which device this process owns (one GPU per process under
    ``accelerate launch``, where sweeps spread cells over processes). Accelerate's state is global and fixes
    its precision once, so precision is set per call by :func:`autocast` instead.

    Models and batches are moved with ``.to(acc.device)`` rather than ``acc.prepare``: a few-shot task is a
    handful of batches, data-parallel wrapping only adds cost, and ``prepare``/``free_memory`` keep references
    and run ``gc.collect()`` (benchmarks/speed.md times it). The one exception is a run launched as several
    processes to split one large task (:mod:`pefs.runtime.distributed`): there this Accelerator starts the
    process group (gloo on CPUs: Accelerate ignores CPU ranks unless told ``cpu``) and wraps the trained module
    in DDP."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if "acc" not in _ACCELERATORS:
        cpu = world_size() > 1 and not torch.cuda.is_available()
        ddp = DistributedDataParallelKwargs(static_graph=True)  # one forward graph per run: unused parameters OK
        _ACCELERATORS["acc"] = Accelerator(cpu=cpu, kwargs_handlers=[ddp])
    return _ACCELERATORS["acc"]


def autocast(device: torch.device, mixed_precision: str):
    """Autocast to bf16/fp16 on ``device`` (a no-op for "no"); several precisions may run in one process."""
    if mixed_precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if mixed_precision == "bf16" else torch.float16)


@functools.cache
def native_bf16(device_type: str) -> bool:
    """True when ``device_type`` computes bf16 in hardware: a CUDA GPU with bf16, or a CPU with AVX-512 BF16 or
    AMX (read from /proc/cpuinfo; elsewhere False). Without it, bf16 autocast on a CPU is emulated and slow."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def training_precision(cfg: TrainConfig, device: torch.device) -> str:
    """The autocast ("no", "bf16", "fp16") of training steps on ``device`` under ``cfg``: "auto" is bf16 on a CUDA
    GPU that computes it natively (what timm's train script and Accelerate users choose there), else fp32 ("no":
    a CPU emulates bf16 training slowly); ``deterministic`` keeps fp32."""
    if cfg.mixed_precision == "auto":
        return "bf16" if device.type == "cuda" and native_bf16("cuda") and not cfg.deterministic else "no"
    return cfg.mixed_precision


def inference_precision(cfg: TrainConfig, device: torch.device) -> str:
    """The autocast ("no", "bf16", "fp16") of no-grad passes on ``device`` under ``cfg``: "auto" is bf16 where the
    hardware computes it natively, else as training; ``deterministic`` keeps fp32."""
    if cfg.inference_precision == "auto":
        if cfg.deterministic:
            return "no"
        return "bf16" if native_bf16(device.type) else training_precision(cfg, device)
    return cfg.inference_precision


def default_device() -> torch.device:
    """The device :func:`accelerator` will place this process's work on, without creating it (resolving a config
    needs no Accelerator): this process's CUDA device where there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def decode_workers(cfg: TrainConfig) -> int:
    """DataLoader worker processes for decoding: ``cfg.num_workers``, or by default half the machine's cores (at
    most 8) when a CUDA GPU does the compute, none on a CPU alone (the cores are the compute there)."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    return min(8, (os.cpu_count() or 2) // 2) if default_device().type == "cuda" else 0


def pin_memory() -> bool:
    """Whether decoded batches go to page-locked memory (copies to a CUDA GPU then overlap compute)."""
    return default_device().type == "cuda"


def configure_backends(cfg: TrainConfig, device: torch.device) -> None:
    """The GPU settings a practitioner would choose, or the strict ones of ``deterministic``. On CUDA: TF32
    matmuls and convolutions and cuDNN's autotuner by default; deterministic: fp32 throughout, deterministic
    algorithms, no autotuning (the same numbers run after run, and as a plain fp32 loop's). A CPU has nothing to
    set: its fp32 is exact and its kernels repeat."""
    if device.type != "cuda":
        return
    strict = bool(cfg.deterministic)
    if strict:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' deterministic workspace
    torch.backends.cuda.matmul.allow_tf32 = not strict
    torch.backends.cudnn.allow_tf32 = not strict
    torch.backends.cudnn.benchmark = not strict
    torch.backends.cudnn.deterministic = strict
    torch.use_deterministic_algorithms(strict, warn_only=True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a CPU run repeats bit for bit."""
    from accelerate.utils import set_seed

    set_seed(seed)
