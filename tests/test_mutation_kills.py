"""Tests written for surviving mutants (tests/MUTATION.md) whose owning test file other work is changing now:
the ONNX export's write failures."""

from __future__ import annotations

import errno

import pytest
import torch

from pefs.errors import PefsError
from pefs.export.formats import export_onnx
from pefs.model.wrap import wrap
from tests.strategy_battery import tiny_backbone


def test_a_full_disk_while_tracing_to_onnx_is_a_write_failure_and_leaves_nothing(tmp_path, monkeypatch):
    """An OSError while the ONNX graph is written (a full disk) is reported as a failed write of the export, not as
    a tracing failure, and leaves no file at the output path."""

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", full_disk)
    model = wrap(tiny_backbone("vit"), "lora", num_classes=3)
    out = tmp_path / "model.onnx"
    with pytest.raises(PefsError, match=r"^cannot write the ONNX export '.*model\.onnx': No space left on device$"):
        export_onnx(model, out)
    assert list(tmp_path.iterdir()) == []
