"""The start every task of a run tunes from: kept once, put back before each task.

Only what a task can change is kept and restored: the trainable parameters and every buffer (BatchNorm
statistics move when they are set to update). Frozen weights are never handed to the optimizer, and a merged
view puts them back bit for bit, so restoring costs what the strategy trains, not the size of the model; the
whole model is fingerprinted once per run. Tensors are found by name at each restore, because moving a model
to a device replaces its buffers.
"""

from __future__ import annotations

import torch
from torch import nn

from pefs.model.directory import weights_fingerprint


def changeable(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> tensor of everything training can change in ``model``: trainable parameters and every buffer."""
    out = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out.update(model.named_buffers())
    return out


class StartState:
    """A copy of the tensors a task can change in ``model``, and the run's fingerprint of the whole model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.saved = {n: t.detach().clone() for n, t in changeable(model).items()}
        #: the whole model at the start of the run (once per run: every tensor, frozen ones included)
        self.model_fingerprint = weights_fingerprint(list(model.state_dict().items()))

    @torch.no_grad()
    def restore(self) -> str:
        """Put the start back; the fingerprint of the restored tensors as they now are in the model (equal for every
        task of a run: a task that started elsewhere would show)."""
        live = changeable(self.model)
        if live.keys() != self.saved.keys():
            odd = sorted(live.keys() ^ self.saved.keys())[:3]
            raise RuntimeError(f"the model's trainable tensors changed during the run ({odd}); a strategy must not "
                               "add or remove parameters after wrap()")
        for name, t in live.items():
            saved = self.saved[name]
            if saved.device != t.device:  # the engine moved the model: keep the copy beside it from now on
                saved = self.saved[name] = saved.to(t.device)
            t.copy_(saved)
        return weights_fingerprint(list(live.items()))
