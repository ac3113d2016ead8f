"""The checks the README promises, each provoked: a model directory whose tensor file does not match its checksum,
an ONNX graph whose logits disagree with PyTorch, and a merged checkpoint that does not reload to the same logits
are refused, and nothing is written or kept. Each test fails if its check is skipped (hand mutations tried:
"never verify the checksum", "write the ONNX graph in place", "skip the merged reload check")."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from pefs.errors import PefsError
from pefs.model.wrap import PefsModel, wrap
from tests.strategy_battery import perturb, tiny_backbone


def test_a_tensor_file_that_does_not_match_its_checksum_is_refused(tmp_path):
    """A model directory whose tensor file still parses but holds other values than those saved (one weight
    changed) is refused on load by its checksum, naming the file."""
    original = tiny_backbone("vit")
    model = wrap(copy.deepcopy(original), "lora", num_classes=3)
    perturb(model)
    model.save(tmp_path / "m")
    path = tmp_path / "m" / "adapter.safetensors"
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0  # a valid safetensors file: only the checksum can tell
    save_file(tensors, str(path))
    with pytest.raises(PefsError, match=r"adapter\.safetensors.* is damaged: its checksum differs"):
        PefsModel.load(tmp_path / "m", backbone=copy.deepcopy(original))


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_onnx_graph_with_other_logits_is_refused_and_not_kept(tmp_path, monkeypatch):
    """An ONNX graph whose logits under onnxruntime differ from PyTorch's beyond the tolerance is refused, and
    neither the graph nor a temporary file is left; an earlier file at ``--out`` is kept unchanged."""
    import onnxruntime

    from pefs.export.formats import export_onnx

    real = onnxruntime.InferenceSession

    class Off(real):
        def run(self, names, feeds, *args, **kwargs):  # the graph computes something else
            return [out + 0.5 for out in super().run(names, feeds, *args, **kwargs)]

    monkeypatch.setattr(onnxruntime, "InferenceSession", Off)
    model = wrap(tiny_backbone("vit"), "lora", num_classes=3)
    with pytest.raises(PefsError, match=r"gives different logits from PyTorch under onnxruntime .*nothing written"):
        export_onnx(model, tmp_path / "model.onnx")
    assert _files(tmp_path) == []
    (tmp_path / "model.onnx").write_bytes(b"earlier export")
    with pytest.raises(PefsError, match=r"different logits"):
        export_onnx(model, tmp_path / "model.onnx")
    assert _files(tmp_path) == ["model.onnx"] and (tmp_path / "model.onnx").read_bytes() == b"earlier export"


def test_merged_checkpoint_that_reloads_to_other_logits_is_refused(tmp_path, monkeypatch):
    """The merged export reloads its own file into a plain timm model and compares logits: tensors that load but
    compute something else are refused, and no file is written."""
    from pefs.export import formats

    real = formats.merged_state

    def off(model):
        name, state = real(model)
        key = next(k for k in sorted(state) if k.endswith("weight") and state[k].ndim == 2)
        return name, {**state, key: state[key] + 0.5}  # the right names and shapes, other values

    model = wrap(tiny_backbone("resnet"), "lora", num_classes=3)
    perturb(model)
    assert formats.export_merged(model, tmp_path / "good.safetensors").is_file()  # the real tensors pass
    monkeypatch.setattr(formats, "merged_state", off)
    with pytest.raises(PefsError, match=r"loaded from the merged tensors gives different logits .*nothing written"):
        formats.export_merged(model, tmp_path / "bad.safetensors")
    assert _files(tmp_path) == ["good.safetensors"]
    with torch.no_grad():  # the refusal changed nothing of the caller's model
        assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
