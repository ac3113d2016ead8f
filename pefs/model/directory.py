"""Model directories: what :meth:`PefsModel.save` writes and what :meth:`PefsModel.load` checks.

A model directory holds ``pefs_config.json`` (format version, strategy spec and options, backbone identity
with a fingerprint of its frozen weights, class names, preprocessing, the tune config) and one tensor file:
``adapter.safetensors`` (trainable tensors and every buffer, BatchNorm statistics included) or, after
``merge()``, ``merged.safetensors`` (the whole merged state). Loading is strict: the format, the backbone,
its weights, every tensor's presence, shape and the file's checksum are checked, or loading is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pefs.config import checks
from pefs.config.files import atomic_dir, atomic_path, write_text
from pefs.config.identity import sha256_file
from pefs.errors import PefsError

if TYPE_CHECKING:
    from pefs.model.wrap import PefsModel

FORMAT_VERSION = 2
CONFIG_FILE = "pefs_config.json"
ADAPTER_FILE = "adapter.safetensors"
MERGED_FILE = "merged.safetensors"
PREPROCESSING_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def weights_fingerprint(tensors: list[tuple[str, torch.Tensor]]) -> str:
    """A hash of named tensors (names, shapes, dtypes and bytes, whatever their device or memory layout): equal
    fingerprints mean identical weights. The one weights hash of pefs (model directories, runs, feature store)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(tensors, key=lambda kv: kv[0]):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else b"")
    return h.hexdigest()


def preprocessing(data_config: dict[str, Any], img_size: int | None = None) -> dict[str, Any]:
    """The eval preprocessing (size, interpolation, mean, std, crop) of a backbone's data config at ``img_size``."""
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items() if k in PREPROCESSING_KEYS}
    if img_size:
        cfg["input_size"] = [3, img_size, img_size]
    return cfg


def saved_state(model: PefsModel) -> dict[str, torch.Tensor]:
    """What a save writes: after ``merge()`` the whole merged state; else trainable parameters and every buffer
    (BatchNorm running statistics move when BN trains, so they are the model's too)."""
    state = model.net.state_dict()
    if model.merged or base_saved(model):
        return dict(state)
    params = dict(model.net.named_parameters())
    return {k: v for k, v in state.items() if k not in params or params[k].requires_grad}


def base_saved(model: PefsModel) -> bool:
    """Whether a save keeps the frozen base weights too: a random base (``--no-pretrained``) cannot be rebuilt by
    name, so its directory holds every tensor and loads on its own (``pefs predict`` works on it)."""
    return model.backbone.source == "random" and not model.merged


def check_writable_dir(path: str | Path, flag: str) -> None:
    """Fail before any compute, naming the folder and the flag, when a model directory cannot be written there."""
    checks.check_writable_dir(path, f"{flag} folder", flag)


def check_replaceable(path: str | Path, flag: str) -> None:
    """Refuse a folder a save would replace whole when it holds files but no pefs model (a save must never delete
    the user's other files); a missing or empty folder, or a model directory, is fine."""
    d = Path(path)
    if d.is_dir() and not (d / CONFIG_FILE).is_file() and any(d.iterdir()):
        names = sorted(p.name for p in d.iterdir())
        raise PefsError(f"{flag} folder {str(d)!r} holds files that are not a pefs model ({', '.join(names[:3])}"
                        f"{', ...' if len(names) > 3 else ''}); a save replaces the folder whole: choose a new or "
                        "empty folder, or a model directory to overwrite")


def save_model(model: PefsModel, directory: str | Path) -> Path:
    """Write the model directory whole: into a temporary sibling folder (tensor file, then the config that names it
    and its checksum), swapped in for ``directory`` only once complete, so a failure at any point leaves the
    previous model there and loadable (:func:`pefs.config.files.atomic_dir`)."""
    from safetensors.torch import save_file

    d = Path(directory)
    check_replaceable(d, "model directory")
    name = MERGED_FILE if model.merged else ADAPTER_FILE
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in saved_state(model).items()}
    config = _config(model, name, len(tensors))
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PefsError(f"cannot save to {str(d)!r}: {e.strerror or e}") from e
    with atomic_dir(d, "model directory") as new:
        with atomic_path(new / name, "model tensors") as tmp:
            save_file(tensors, str(tmp))
            usual_mode(tmp)
            config["tensors"]["sha256"] = sha256_file(tmp)
        write_text(new / CONFIG_FILE, json.dumps(config, indent=2, default=str), "model config")
    return d


def _config(model: PefsModel, tensor_file: str, count: int) -> dict[str, Any]:
    """``pefs_config.json`` of ``model`` (the tensor file's checksum is added once it is written)."""
    bb = model.backbone
    return {
        "format": FORMAT_VERSION, "spec": model.spec, "num_classes": model.num_classes, "merged": model.merged,
        "options": {f"{s.name}.{k}" if len(model.strategies) > 1 else k: v
                    for s in model.strategies for k, v in strategy_options(s).items()},
        "backbone": {"name": bb.name, "params": model.backbone_params, "fingerprint": model.base_fingerprint,
                     "source": bb.source, "family": bb.family, "rebuildable": rebuildable(bb.name),
                     "revision": bb.revision, "base_saved": base_saved(model)},
        "load": model.load_info, "class_names": model.class_names,
        "preprocessing": model.preprocessing, "tune_config": model.tune_config,
        "tensors": {"file": tensor_file, "count": count},
    }


def read_config(directory: str | Path) -> dict[str, Any]:
    """The model directory's config, checked for its format version and required keys (one clear error)."""
    d = Path(directory)
    path = d / CONFIG_FILE
    if not d.is_dir():
        raise PefsError(f"model directory {str(d)!r} does not exist")
    if not path.is_file():
        raise PefsError(f"{str(d)!r} holds no saved pefs model ({CONFIG_FILE} missing)")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PefsError(f"{str(path)!r} is damaged (not valid JSON: {e}); save the model again") from e
    if not isinstance(cfg, dict) or "format" not in cfg:
        raise PefsError(f"{str(path)!r} is not a pefs model config (no 'format' key)")
    if cfg["format"] != FORMAT_VERSION:
        raise PefsError(f"{str(d)!r} was saved in model-directory format {cfg['format']!r}; this pefs reads format "
                        f"{FORMAT_VERSION} (format 1 kept neither BatchNorm statistics nor a fingerprint of the base "
                        "weights, so it cannot be loaded exactly); save the model again with this pefs")
    required = ("spec", "num_classes", "merged", "options", "backbone", "load", "tensors")
    missing = [k for k in required if k not in cfg]
    bb_missing = [k for k in ("name", "params", "fingerprint") if k not in (cfg.get("backbone") or {})]
    if missing or bb_missing or not isinstance(cfg["tensors"], dict) or "file" not in cfg["tensors"]:
        raise PefsError(f"{str(path)!r} is damaged: missing {', '.join(missing + bb_missing) or 'tensors.file'}")
    problem = config_problem(cfg)
    if problem is not None:
        raise PefsError(f"{str(path)!r}: {problem}; a model directory pefs saved never holds this (save the model "
                        "again)")
    return cfg


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos", "random")
CROP_MODES = ("center", "squash", "border")
LOAD_KEYS = ("pretrained", "checkpoint", "model_kwargs")


def _kind(value: Any) -> str:
    """``null``, or the type and value: ``str '3'``."""
    return "null" if value is None else f"{type(value).__name__} {value!r:.60}"


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, kind) and not (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple)
                                                                                     else (kind,)))


def _typed(cfg: dict[str, Any]) -> str | None:
    """The first key of ``cfg`` whose JSON type is wrong, as ``<key> <problem>``."""
    bb, tensors = cfg["backbone"], cfg["tensors"]
    expected: list[tuple[str, Any, type | tuple[type, ...], bool]] = [
        ("spec", cfg["spec"], str, False), ("num_classes", cfg["num_classes"], int, False),
        ("merged", cfg["merged"], bool, False), ("options", cfg["options"], dict, False),
        ("backbone", bb, dict, False), ("load", cfg["load"], dict, False),
        ("class_names", cfg.get("class_names"), list, True), ("preprocessing", cfg.get("preprocessing"), dict, True),
        ("tune_config", cfg.get("tune_config"), dict, True)]
    if isinstance(bb, dict):
        expected += [("backbone.name", bb["name"], str, False), ("backbone.params", bb["params"], int, False),
                     ("backbone.fingerprint", bb["fingerprint"], str, False),
                     ("backbone.rebuildable", bb.get("rebuildable", True), bool, False),
                     ("backbone.source", bb.get("source"), str, True),
                     ("backbone.revision", bb.get("revision"), str, True)]
    expected += [("tensors.count", tensors.get("count", 0), int, False),
                 ("tensors.sha256", tensors.get("sha256"), str, True)]
    for key, value, kind, optional in expected:
        if not (value is None and optional) and not _is(value, kind):
            return f"{key} is {_kind(value)}, not {getattr(kind, '__name__', kind)}"
    return None


def _sizes(pre: dict[str, Any]) -> str | None:
    """The first preprocessing value out of range (the input size bounded by the decoder's pixel limit)."""
    from pefs.data.decoding import max_image_pixels

    size = pre.get("input_size")
    if size is not None:
        if not (isinstance(size, list) and len(size) == 3 and all(_is(v, int) and v >= 1 for v in size)):
            return f"preprocessing.input_size is {size!r:.60}, not [channels, height, width] of whole numbers >= 1"
        if size[0] not in (1, 3) or size[1] * size[2] > max_image_pixels():
            return (f"preprocessing.input_size {size!r} is out of range: 1 or 3 channels and at most "
                    f"{max_image_pixels():,} pixels (the image limit, --max-image-pixels)")
    for key in ("mean", "std"):
        v = pre.get(key)
        if v is not None and not (isinstance(v, list) and len(v) in (1, 3) and all(
                _is(x, (int, float)) and math.isfinite(x) and (key == "mean" or x > 0) for x in v)):
            return f"preprocessing.{key} is {v!r:.60}, not 1 or 3 finite numbers" + (" > 0" if key == "std" else "")
    crop = pre.get("crop_pct")
    if crop is not None and not (_is(crop, (int, float)) and 0 < crop <= 1):
        return f"preprocessing.crop_pct is {crop!r:.60}, not a number in (0, 1]"
    for key, valid in (("interpolation", INTERPOLATIONS), ("crop_mode", CROP_MODES)):
        if pre.get(key) is not None and pre[key] not in valid:
            return f"preprocessing.{key} is {pre[key]!r:.60}; valid: {', '.join(valid)}"
    return None


def config_problem(cfg: dict[str, Any]) -> str | None:
    """``<key> <problem>`` for the first key of a model config that is not what :func:`save_model` writes (types,
    ranges, names), checked before anything is built or any tensor is read; None for a good config."""
    from pefs.heads import registry
    from pefs.strategies.spec import build, parts

    if (problem := _typed(cfg)) is not None:
        return problem
    if cfg["num_classes"] < 1 or cfg["backbone"]["params"] < 0:
        key = "num_classes" if cfg["num_classes"] < 1 else "backbone.params"
        return f"{key} is {cfg['num_classes'] if key == 'num_classes' else cfg['backbone']['params']}, out of range"
    names = cfg.get("class_names")
    if names is not None and (len(names) != cfg["num_classes"] or not all(isinstance(n, str) for n in names)):
        return f"class_names holds {len(names)} entries for {cfg['num_classes']} classes, or a non-string name"
    if cfg["tensors"]["file"] not in (ADAPTER_FILE, MERGED_FILE):
        return f"tensors.file is {cfg['tensors']['file']!r:.60}; valid: {ADAPTER_FILE}, {MERGED_FILE}"
    if (problem := _sizes(cfg.get("preprocessing") or {})) is not None:
        return problem
    unknown = sorted(set(cfg["load"]) - set(LOAD_KEYS))
    if unknown:
        return f"load has unknown key {unknown[0]!r}; valid: {', '.join(LOAD_KEYS)}"
    head = (cfg.get("tune_config") or {}).get("head")
    for key, check in (("tune_config.head", lambda: head is None or registry.check(head)),
                       ("spec", lambda: parts(cfg["spec"])), ("options", lambda: build(cfg["spec"], **cfg["options"]))):
        try:
            check()
        except PefsError as e:
            return f"{key}: {e}"
        except (TypeError, ValueError) as e:
            return f"{key}: does not fit {cfg['spec']!r}: {e}"
    return None


def read_tensors(directory: str | Path, cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The saved tensors, after checking the file is there and its checksum is the one saved with it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / cfg["tensors"]["file"]
    if not path.is_file():
        raise PefsError(f"model directory {str(directory)!r} is incomplete: {path.name} is missing")
    if cfg["tensors"].get("sha256") and sha256_file(path) != cfg["tensors"]["sha256"]:
        raise PefsError(f"{str(path)!r} is damaged: its checksum differs from the one saved with it "
                        "(truncated or altered); save the model again")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PefsError(f"{str(path)!r} is damaged: {e}") from e


def usual_mode(path: str | Path) -> None:
    """Give a file the permissions the user's umask gives new files (safetensors creates them 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def rebuildable(name: str) -> bool:
    """Whether ``name`` is a model pefs can build by name (an offline model or a timm architecture)."""
    from pefs.backbones import is_known

    return is_known(name)


def strategy_options(s: Any) -> dict[str, Any]:
    """A strategy's options as JSON values (tuples as lists)."""
    import dataclasses

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(s.config).items()}


