"""``pefs`` with a window onto its training, for the data-parallel tests (tests/test_distributed.py).

``python -m tests.ddp_worker OUT ARGS...`` (under ``torchrun`` or ``accelerate launch``, or alone) runs
``pefs ARGS...`` and writes, per process, ``OUT/rank{R}.pt``: the training-image indices each optimizer step of
this process took (:func:`pefs.runtime.distributed.share`'s answers, in order) and the trainable weights of the
model right after its fit. Nothing in pefs changes: the two functions are wrapped, not replaced.
"""

from __future__ import annotations

import sys
from pathlib import Path


def run(out: str | Path, args: list[str]) -> int:
    """Run ``pefs args`` in this process, recording what :mod:`tests.ddp_worker` says; the exit status."""
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
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save({"seen": seen, "trained": trained, "world": distributed.world_size()},
               Path(out) / f"rank{distributed.rank()}.pt")
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2:]))
