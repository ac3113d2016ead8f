"""Data parallelism for a run whose one task is large (``pefs tune --final``; any command that trains one model on
many images can use it): under ``accelerate launch --num_processes N`` or ``torchrun --nproc_per_node N`` every
process holds the same model, takes a disjoint share of each batch, and DistributedDataParallel averages the
gradients, so all processes take the same steps and end with the same weights.

``--batch-size`` stays the batch of one optimizer step (the total over processes): each process takes every
N-th image of the step's batch, and its loss is weighted (:func:`share`) so the averaged gradient is the whole
batch's mean. The steps per epoch, the schedule and the result are those of one process with the same batch, up
to the order of float sums (tests/test_distributed.py measures it). What one process decides for all (writing a
model directory, a record) runs on the main process while the others wait (:func:`on_main`).

Without a multi-process launch every function here is a pass-through (world size 1), so the single-process path
is unchanged bit for bit. Commands that run many small tasks (K-shot seeds, episodes, sweep cells) do not split
one task: ``pefs sweep`` spreads its cells over the processes (:func:`pefs.sweep.run.process_slot`), and
``pefs tune`` without ``--final`` refuses a multi-process launch (:func:`check_launch`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

from pefs.errors import PefsError
from pefs.runtime.hardware import accelerator, is_main, rank, world_size

__all__ = ["check_batches", "check_launch", "data_parallel", "gather_rows", "is_main", "mean", "on_main", "rank",
           "shard_indices", "share", "world_size"]

T = TypeVar("T")


def check_launch(final: bool, command: str = "pefs tune") -> None:
    """Refuse a multi-process launch of a run of many small tasks: each process would run every task and write
    its own record. Those runs spread over processes as ``pefs sweep`` cells; one large task splits its batches."""
    n = world_size()
    if n > 1 and not final:
        raise PefsError(f"{command} was launched as {n} processes, but K-shot seeds and episodes are many small "
                        "tasks that do not split across processes: spread them with pefs sweep (each process "
                        "takes its own cells), run one process, or train one model on every image with --final DIR "
                        "(its batches split across the processes)")


def check_batches(batch_size: int, n: int, even: bool = False) -> None:
    """Refuse, before any work, a ``batch_size`` the processes cannot share equally, or (``even``: mixup /
    cutmix pair images within a process's share) a batch of ``n`` images whose shares are not all even."""
    world = world_size()
    if world == 1:
        return
    if batch_size % world:
        raise PefsError(f"--batch-size {batch_size} is the batch of one step over all {world} processes and must "
                        f"split equally: choose a multiple of {world}")
    if not even:
        return
    sizes = {min(batch_size, n)} | ({n % batch_size} if n > batch_size and n % batch_size else set())
    odd = sorted(s for s in sizes if any(len(range(r, s, world)) % 2 or s < 2 * world for r in range(world)))
    if odd:
        raise PefsError(f"mixup / cutmix pair the images of each process's share of a batch, so each share must be "
                        f"even: {n} images in batches of {batch_size} over {world} processes make a batch of "
                        f"{odd[0]}; choose a --batch-size that is a multiple of {2 * world} and leaves such a "
                        "remainder")


def share(idx: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This process's part of one step's batch ``idx`` (every world-size-th index from its rank: the parts are
    disjoint and cover the batch) and the weight of its mean loss: parts of unequal size (a last, smaller batch)
    weigh by their size, so the processes' averaged gradient is the whole batch's mean."""
    world = world_size()
    if world == 1:
        return idx, 1.0
    mine = idx[rank()::world]
    return mine, len(mine) * world / max(len(idx), 1)


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` (a scalar such as a step's weighted loss; detached, except with one process, where
    it is ``value`` itself) over the processes: every process then reads the same loss, so all of them stop at
    the same step when it is NaN or exploded."""
    if world_size() == 1:
        return value
    return accelerator().reduce(value.detach().clone(), reduction="mean")


@contextlib.contextmanager
def data_parallel(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` wrapped by ``accelerator.prepare`` in DistributedDataParallel (its parameters broadcast from
    the main process, gradients averaged at each backward) under a multi-process launch, else ``module`` itself.
    Frozen parameters are outside DDP's buckets; DDP's ``static_graph`` (set on the Accelerator: a run's forward
    is the same at every step) lets a strategy train parameters a forward does not reach, and gradient
    checkpointing rerun blocks, without a graph search per step. The references the Accelerator keeps are
    released afterwards; ``module`` keeps the trained weights."""
    if world_size() == 1:
        yield module
        return
    acc = accelerator()
    try:
        yield acc.prepare_model(module, device_placement=False)
    finally:
        acc.free_memory()


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on the main process only (a write that must happen once) while the others wait; every process
    returns the main process's result. A failure on the main process raises on every process (none is left
    waiting)."""
    if world_size() == 1:
        return fn()
    from torch.distributed import broadcast_object_list
    acc = accelerator()
    box: list[Any] = [None]
    error: BaseException | None = None
    if acc.is_main_process:
        try:
            box[0] = ("ok", fn())
        except BaseException as e:  # noqa: BLE001 - told to every process, then raised here
            box[0], error = ("error", f"{e}"), e
    broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    status, value = box[0]
    if status == "error":
        raise PefsError(f"the main process failed: {value}")
    return value


def gather_rows(part: torch.Tensor, n: int) -> torch.Tensor:
    """The rows of every process's ``part`` in the order of the ``n`` items they came from: process ``r`` held
    items ``r, r + N, ...`` (:func:`shard_indices`). The result is on the CPU, as ``part`` is."""
    world = world_size()
    if world == 1:
        return part
    acc = accelerator()
    rows = -(-n // world)
    padded = torch.zeros((rows, *part.shape[1:]), dtype=part.dtype)
    padded[:len(part)] = part
    gathered = acc.gather(padded.to(acc.device)).cpu().reshape(world, rows, *part.shape[1:])
    out = torch.empty((n, *part.shape[1:]), dtype=part.dtype)
    for r in range(world):
        out[r::world] = gathered[r, :len(range(r, n, world))]
    return out


def shard_indices(n: int) -> list[int]:
    """The items of ``n`` this process takes when work is split (:func:`gather_rows` puts them back)."""
    return list(range(rank(), n, world_size()))
