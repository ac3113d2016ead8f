"""The run's start, put back before every task (pefs.runtime.start.StartState)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pefs.model.directory import weights_fingerprint
from pefs.runtime.start import StartState, changeable


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    m[2].weight.requires_grad_(False)  # frozen: not kept, not restored
    return m


def _train_a_little(m: nn.Module) -> None:
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    m.train()
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(8, 4)).square().mean().backward()
        opt.step()


def test_restore_puts_back_every_changeable_tensor_and_returns_the_start_fingerprint():
    """Promise: after training, a restore gives the task exactly the run's start (trainable weights and BatchNorm
    statistics) and reports the fingerprint of that start, the same for every task."""
    m = _model()
    before = {n: t.detach().clone() for n, t in changeable(m).items()}
    start = StartState(m)
    _train_a_little(m)
    assert not torch.equal(m[1].running_mean, before["1.running_mean"])  # training moved the statistics
    fingerprints = {start.restore() for _ in range(2)}
    assert fingerprints == {weights_fingerprint(list(before.items()))}
    for n, t in changeable(m).items():
        assert torch.equal(t, before[n]), n
    assert set(start.saved) == set(before) and "2.weight" not in start.saved


def test_a_nan_in_the_start_is_restored_not_refused():
    """Promise: the proof is bitwise, so a start holding a NaN (NaN != NaN as a float) restores without a refusal."""
    m = _model()
    with torch.no_grad():
        m[0].bias[0] = float("nan")
    start = StartState(m)
    _train_a_little(m)
    assert start.restore() == start.fingerprint
    assert torch.isnan(m[0].bias[0])


def test_a_restore_that_does_not_copy_is_refused(monkeypatch):
    """Promise: a restore that left a tensor at its trained value raises, naming the tensor, instead of letting
    the task start from the previous task's weights."""
    m = _model()
    start = StartState(m)
    _train_a_little(m)
    monkeypatch.setattr(torch.Tensor, "copy_", lambda self, src, non_blocking=False: self)
    with pytest.raises(RuntimeError, match=r"different from the kept copy.*0\.weight"):
        start.restore()


def test_a_kept_start_changed_in_place_is_refused():
    """Promise: if anything writes into the kept copy, restore refuses rather than report the old fingerprint for
    different weights."""
    m = _model()
    start = StartState(m)
    with torch.no_grad():
        start.saved["0.weight"].add_(1.0)
    with pytest.raises(RuntimeError, match="'0.weight' was changed in place"):
        start.restore()
