"""Load local weight files (.safetensors, .pth/.pt/.bin) onto a model, with a clear account of misfits.

A ``pefs pretrain`` directory (:data:`PRETRAIN_CONFIG` beside :data:`PRETRAIN_WEIGHTS`) is a checkpoint too: its
weight file is read after its SHA-256 is checked against the one the directory records (a changed file is
refused, never loaded). :mod:`pefs.pretrain.checkpoint` writes such directories and checks the rest.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pefs.errors import PefsError

SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
#: the identity file and the weight file of a ``pefs pretrain`` checkpoint directory
PRETRAIN_CONFIG = "pefs_pretrain.json"
PRETRAIN_WEIGHTS = "backbone.safetensors"


def is_pretrain_dir(path: str | Path | None) -> bool:
    """Whether ``path`` is a ``pefs pretrain`` checkpoint directory (it holds :data:`PRETRAIN_CONFIG`)."""
    return path is not None and (Path(path) / PRETRAIN_CONFIG).is_file()


def pretrain_identity(path: str | Path) -> dict:
    """The identity a ``pefs pretrain`` directory records (its JSON), or a PefsError saying what is wrong."""
    import json

    try:
        info = json.loads((Path(path) / PRETRAIN_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise PefsError(f"cannot read the pretraining identity {str(Path(path) / PRETRAIN_CONFIG)!r}: {e}") from e
    if not isinstance(info, dict) or not isinstance(info.get("weights"), dict) or "sha256" not in info["weights"]:
        raise PefsError(f"{str(Path(path) / PRETRAIN_CONFIG)!r} is not a pefs pretrain identity (no weights.sha256)")
    return info


def _pretrain_weights(path: Path) -> Path:
    """The weight file of pretrain directory ``path`` once its SHA-256 matches the recorded one."""
    from pefs.config.identity import sha256_file

    weights = path / PRETRAIN_WEIGHTS
    if not weights.is_file():
        raise PefsError(f"pretrain checkpoint {str(path)!r} lacks its weight file {PRETRAIN_WEIGHTS}")
    expected = pretrain_identity(path)["weights"]["sha256"]
    if sha256_file(weights) != expected:
        raise PefsError(f"pretrain checkpoint {str(weights)!r} was changed after pefs pretrain wrote it (its SHA-256 "
                        f"differs from the one in {PRETRAIN_CONFIG}); refusing to load it")
    return weights


def check_checkpoint_path(path: str | Path) -> Path:
    """``path`` as a readable checkpoint file name, or a PefsError saying what it is instead."""
    path = Path(path)
    if path.is_dir() and (path / PRETRAIN_CONFIG).is_file():
        return path / PRETRAIN_WEIGHTS
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in SUFFIXES)[:5]
        raise PefsError(f"checkpoint {str(path)!r} is a folder; give the weight file itself ("
                        + (f"this folder holds {', '.join(inside)}" if inside else
                           f"a file ending in {', '.join(SUFFIXES)}; this folder holds none") + ")")
    if not path.is_file():
        raise PefsError(f"checkpoint {str(path)!r} does not exist (expected a file ending in {', '.join(SUFFIXES)})")
    if path.suffix not in SUFFIXES:
        raise PefsError(f"checkpoint {str(path)!r} has suffix {path.suffix!r}; expected one of {', '.join(SUFFIXES)}")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict, unwrapping the usual ``state_dict`` / ``model`` nesting and ``module.`` prefixes; a
    ``pefs pretrain`` directory's weight file only when its checksum matches."""
    path = _pretrain_weights(Path(path)) if is_pretrain_dir(path) else check_checkpoint_path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file
        import pickle

        if isinstance(e, pickle.UnpicklingError):  # weights_only refused a Python object: it would run code
            raise PefsError(f"checkpoint {str(path)!r} holds Python objects besides tensors, which pefs never "
                            "unpickles (they could run code); save its state dict alone (torch.save(model."
                            "state_dict(), ...)) or as .safetensors") from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PefsError(f"cannot read checkpoint {str(path)!r}: {type(e).__name__}: {first}") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PefsError(f"checkpoint {str(path)!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_checkpoint(model: nn.Module, path: str | Path, head_name: str | None = None) -> None:
    """Load ``path`` into ``model``.

    Head tensors whose shape differs (a checkpoint fine-tuned for another class count) are skipped:
    pefs resets the head anyway. Any other missing, unexpected or misshapen key is an error that
    says how many keys did not fit and names a few.
    """
    sd = read_state_dict(path)
    own = model.state_dict()
    def is_head(k):
        return (head_name is not None and k.startswith(head_name + "."))
    shape_bad = [k for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape) and not is_head(k)]
    sd = {k: v for k, v in sd.items() if not (k in own and tuple(v.shape) != tuple(own[k].shape))}
    missing = [k for k in own if k not in sd and not is_head(k) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if shape_bad or missing or unexpected:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shape_bad)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise PefsError(f"checkpoint {str(path)!r} does not fit {type(model).__name__}: "
                        f"{len(missing) + len(unexpected) + len(shape_bad)} of {len(own)} keys mismatched: "
                        + "; ".join(parts))
    model.load_state_dict(sd, strict=False)
