"""The checkpoint directory of a pretraining run: ``backbone.safetensors`` (the trunk's tensors, no classifier) and
``pefs_pretrain.json`` (what made it: base model, objective, data identity, steps, losses, and the weights' SHA-256
and fingerprint). Written whole (:func:`pefs.config.files.atomic_dir`); read back only when both checks pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pefs.backbones.sources.checkpoint import PRETRAIN_CONFIG, PRETRAIN_WEIGHTS, is_pretrain_dir, pretrain_identity
from pefs.config.files import atomic_dir, write_text
from pefs.config.identity import sha256_file
from pefs.errors import PefsError
from pefs.model.directory import weights_fingerprint

FORMAT_VERSION = 1


def check_out(out: str | Path) -> None:
    """Refuse an output folder that holds files but no pefs pretrain checkpoint (a save replaces it whole)."""
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise PefsError(f"--out {str(d)!r} is a file; give a directory to write the checkpoint in")
    if d.is_dir() and not is_pretrain_dir(d) and any(d.iterdir()):
        names = sorted(p.name for p in d.iterdir())[:3]
        raise PefsError(f"--out {str(d)!r} holds files that are not a pefs pretrain checkpoint ({', '.join(names)}); "
                        "a save replaces the folder whole: choose a new or empty folder")


def save(trunk: torch.nn.Module, out: str | Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Write ``trunk``'s state and ``identity`` (completed with the weights' checks) as the directory ``out``;
    returns the identity written."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in trunk.state_dict().items()}
    with atomic_dir(out, "pretrain checkpoint") as tmp:
        save_file(tensors, str(tmp / PRETRAIN_WEIGHTS))
        identity = {**identity, "format": FORMAT_VERSION, "weights": {
            "file": PRETRAIN_WEIGHTS, "sha256": sha256_file(tmp / PRETRAIN_WEIGHTS), "tensors": len(tensors),
            "fingerprint": weights_fingerprint(list(tensors.items()))}}
        write_text(tmp / PRETRAIN_CONFIG, json.dumps(identity, indent=2, default=str), "pretraining identity")
    return identity


def verify(path: str | Path) -> dict[str, Any]:
    """The identity of pretrain directory ``path`` once its weight file's SHA-256 and its tensors' fingerprint
    match the recorded ones (a changed file is refused, naming it); what a tune record carries is
    :func:`summary` of it."""
    from safetensors.torch import load_file

    info = pretrain_identity(path)
    weights = Path(path) / PRETRAIN_WEIGHTS
    if not weights.is_file():
        raise PefsError(f"pretrain checkpoint {str(path)!r} lacks its weight file {PRETRAIN_WEIGHTS}")
    if sha256_file(weights) != info["weights"]["sha256"]:
        raise PefsError(f"pretrain checkpoint {str(weights)!r} was changed after pefs pretrain wrote it (its SHA-256 "
                        f"differs from the one in {PRETRAIN_CONFIG}); refusing to load it")
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # a damaged file whose checksum was rewritten to match
        raise PefsError(f"cannot read pretrain checkpoint {str(weights)!r}: {type(e).__name__}: {e}") from e
    if weights_fingerprint(list(tensors.items())) != info["weights"].get("fingerprint"):
        raise PefsError(f"pretrain checkpoint {str(weights)!r}: its tensors' fingerprint differs from the one in "
                        f"{PRETRAIN_CONFIG}; refusing to load it")
    return info


def summary(path: str | Path, info: dict[str, Any]) -> dict[str, Any]:
    """What a tune record says about the pretraining its checkpoint came from."""
    keys = ("model", "objective", "steps", "final_loss", "img_size")
    return {"checkpoint": str(path), **{k: info.get(k) for k in keys},
            "data": {k: (info.get("data") or {}).get(k) for k in ("spec", "name", "split", "fingerprint", "classes")},
            "weights_fingerprint": info["weights"].get("fingerprint"), "start": info.get("start")}
