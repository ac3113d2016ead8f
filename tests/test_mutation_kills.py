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


@pytest.mark.parametrize("fmt, default", [("merged", "model.safetensors"), ("peft", "peft_adapter"),
                                          ("onnx", "model.onnx")])
def test_export_without_out_writes_into_the_model_directory(fmt, default, tmp_path, monkeypatch, capsys):
    """``pefs export DIR`` without --out writes the export inside DIR under the format's usual name, and says so."""
    from types import SimpleNamespace

    from pefs.export import formats, peft_format
    from pefs.model.wrap import PefsModel

    model = SimpleNamespace(num_classes=3, preprocessing={"input_size": [3, 32, 32]},
                            backbone=SimpleNamespace(name="hf:tiny"))
    written = []
    monkeypatch.setattr(PefsModel, "load", classmethod(lambda cls, d, **kw: model))
    monkeypatch.setattr(formats, "timm_name", lambda m: "vit_tiny")
    monkeypatch.setattr(formats, "export_merged", lambda m, out: written.append(out) or out)
    monkeypatch.setattr(peft_format, "save_peft_adapter", lambda m, out: written.append(out) or out)
    monkeypatch.setattr(formats, "export_onnx", lambda m, out: (written.append(out) or out, 0.0))
    assert formats.export_command(str(tmp_path), fmt) == 0
    assert written == [tmp_path / default] and str(tmp_path / default) in capsys.readouterr().out
