"""``pefs`` with a window onto its training, for the data-parallel tests (tests/test_distributed.py).

``python -m tests.ddp_worker OUT ARGS... [++ ARGS...]`` (under ``torchrun`` or ``accelerate launch``, or alone)
runs ``pefs ARGS...`` (then each further ``++``-separated command, in the same processes) and writes, per
process, ``OUT/rank{R}.pt``: per command, its exit status, the training-image indices each optimizer step of this
process took (:func:`pefs.runtime.distributed.share`'s answers, in order) and the trainable weights of the model
right after its fit; for ``pefs pretrain``, the trunk's state and the losses every step read. Nothing in pefs
changes: the functions are wrapped, not replaced.
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
    from pefs.pretrain import loop
    from pefs.runtime import distributed, engine

    seen: list[list[int]] = []
    trained: dict[str, torch.Tensor] = {}
    losses: list[float] = []
    share, fit, pretrain = distributed.share, engine.fit, loop.train

    def logged_share(idx):
        mine, weight = share(idx)
        seen.append(mine.tolist())
        return mine, weight

    def logged_fit(model, *a, **kw):
        stats = fit(model, *a, **kw)
        trained.update({n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad})
        return stats

    def logged_pretrain(objective, *a, **kw):
        losses.extend(pretrain(objective, *a, **kw))
        trained.update({n: p.detach().cpu().clone() for n, p in objective.trunk.state_dict().items()})
        return losses

    distributed.share, engine.fit, loop.train = logged_share, logged_fit, logged_pretrain
    try:
        code = main(args)
    finally:
        distributed.share, engine.fit, loop.train = share, fit, pretrain
    return {"code": code, "seen": seen, "trained": trained, "losses": losses}


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2:]))
