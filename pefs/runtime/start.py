"""The start every task of a run tunes from: kept once, put back before each task.

Only what a task can change is kept and restored: the trainable parameters and every buffer (BatchNorm
statistics move when they are set to update). Frozen weights are never handed to the optimizer, and a merged
view puts them back bit for bit, so restoring costs what the strategy trains, not the size of the model; the
whole model is fingerprinted once per run. Tensors are found by name at each restore, because moving a model
to a device replaces its buffers.

Per task, nothing is hashed: the kept copy is hashed once, and each restore proves that the live tensors hold
exactly the kept bits by comparing them on their own device (bitwise, so a NaN compares equal to itself). A
comparison reads memory at the device's bandwidth, where a hash runs on one host core after a device-to-host
copy, so full fine-tuning of a large model no longer pays a hash of every weight per task.
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


_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` viewed as integers of its width, so equality is bitwise (NaN equals the same NaN; -0.0 is not 0.0)."""
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.is_floating_point():
        return t.view(_SAME_WIDTH_INT[t.element_size()])
    return t


def _differing(live: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> list[str]:
    """Names whose live tensor is not bitwise the kept one. On an accelerator the comparisons queue and the host
    waits once, not once per tensor."""
    differ = [n for n, t in live.items() if t.dtype != saved[n].dtype or t.shape != saved[n].shape]
    same = {n: (_bits(t) == _bits(saved[n])).all() if t.device.type != "cpu" else torch.equal(_bits(t), _bits(saved[n]))
            for n, t in live.items() if n not in differ}
    queued = [n for n, v in same.items() if isinstance(v, torch.Tensor)]
    if queued:
        for n, ok in zip(queued, torch.stack([same[n] for n in queued]).tolist()):
            same[n] = ok
    return differ + [n for n, ok in same.items() if not ok]


class StartState:
    """A copy of the tensors a task can change in ``model``, and the run's fingerprint of the whole model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.saved = {n: t.detach().clone() for n, t in changeable(model).items()}
        #: the whole model at the start of the run (once per run: every tensor, frozen ones included)
        self.model_fingerprint = weights_fingerprint(list(model.state_dict().items()))
        #: the kept copy's fingerprint (once per run): what every restore returns once it has proved the live
        #: tensors equal to the copy, bit for bit
        self.fingerprint = weights_fingerprint(list(self.saved.items()))
        self._versions = {n: t._version for n, t in self.saved.items()}  # an in-place change to the copy shows here

    @torch.no_grad()
    def restore(self) -> str:
        """Put the start back and prove it: every live tensor is compared with the kept copy bit for bit (a
        restore that left any tensor elsewhere raises); returns the kept copy's fingerprint, so it is the same
        for every task of a run."""
        live = changeable(self.model)
        if live.keys() != self.saved.keys():
            odd = sorted(live.keys() ^ self.saved.keys())[:3]
            raise RuntimeError(f"the model's trainable tensors changed during the run ({odd}); a strategy must not "
                               "add or remove parameters after wrap()")
        for name, t in live.items():
            saved = self.saved[name]
            if self._versions[name] != saved._version:
                raise RuntimeError(f"the kept start of {name!r} was changed in place; the run's start is lost")
            if saved.device != t.device:  # the engine moved the model: keep the copy beside it from now on
                saved = self.saved[name] = saved.to(t.device)
                self._versions[name] = saved._version
            t.copy_(saved)
        differ = _differing(live, self.saved)
        if differ:
            raise RuntimeError(f"restoring the run's start left {len(differ)} tensor(s) different from the kept copy "
                               f"({differ[:3]}); the task cannot start from the run's start")
        return self.fingerprint
