"""``pefs`` with a window onto its training, for the data-parallel tests (tests/test_distributed.py).

``python -m tests.ddp_worker OUT ARGS... [++ ARGS...]`` (under ``torchrun`` or ``accelerate launch``, or alone)
runs ``pefs ARGS...`` (then each further ``++``-separated command, in the same processes) and writes, per
process, ``OUT/rank{R}.pt``: per command, its exit status, the training-image indices each optimizer step of this
process took (:func:`pefs.runtime.distributed.share`'s answers, in order) and the trainable weights of the model
right after its fit. Nothing in pefs changes: the two functions are wrapped, not replaced.
"""

from __future__ import annotations

import sys
from pathlib import Path


def run(out: str | Path, args: list[str]) -> int:
    """Run the ``++``-separated ``pefs`` commands of ``args`` in this process, recording what
    :mod:`tests.ddp_worker` says; the first command's exit status."""
    import torch

    from pefs.runtime import distributed

    commands = [[]]
    for a in args:
        commands.append([]) if a == "++" else commands[-1].append(a)
    runs = [_run_one(c) for c in commands]
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save({"runs": runs, "world": distributed.world_size()}, Path(out) / f"rank{distributed.rank()}.pt")
    return runs[0]["code"]


def _run_one(args: list[str]) -> dict:
    """One ``pefs args``: its exit status, the shares its steps took, its trainable weights after the fit."""
    import torch

    from pefs.cli.main import main
    from pefs.runtime import distributed, engine

    seen: list[list[int]] = []
    trained: dict[str, torch.Tensor] = {}
    share, fit = distributed.share, engine.fit

    def logged_share(idx):
        mine, weight = share(idx)
        seen.append(mine.tolist())
        return mine, weight

    def logged_fit(model, *a, **kw):
        stats = fit(model, *a, **kw)
        trained.update({n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad})
        return stats

    distributed.share, engine.fit = logged_share, logged_fit
    try:
        code = main(args)
    finally:
        distributed.share, engine.fit = share, fit
    return {"code": code, "seen": seen, "trained": trained}


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2:]))
