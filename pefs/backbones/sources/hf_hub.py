"""``hf:<repo id or local directory>``: a ``transformers`` vision model through ``from_pretrained``, described.

A local directory loads offline (``local_files_only``); a hub id that cannot be fetched says how to get the files
onto this machine. The image-processor config next to the weights (``preprocessor_config.json``) sets the data
config (mean, std, size, interpolation).
"""

from __future__ import annotations

from typing import Any

from pefs.backbones.describe import Backbone
from pefs.backbones.families.hf import SUPPORTED, describe_hf
from pefs.errors import PefsError


def _read_processor(directory: str) -> dict[str, Any] | None:
    import json
    from pathlib import Path

    p = Path(directory) / "preprocessor_config.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise PefsError(f"cannot read the image-processor config {str(p)!r}: {e}") from e


def load_hf(ref: str, pretrained: bool = True, revision: str | None = None, img_size: int | None = None,
            **unknown: Any) -> Backbone:
    """``hf:<repo id or local directory>``: the model through ``from_pretrained`` (``architectures`` in its
    config picks the class; a full CLIP checkpoint gives its vision tower). Local directories load offline."""
    from pathlib import Path

    import transformers

    if unknown:
        raise PefsError(f"option {next(iter(unknown))}= does not apply to hf: models; valid: revision=, img_size=")
    local = Path(ref).is_dir()
    if not local and (ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or Path(ref).exists()):
        raise PefsError(f"hf:{ref} looks like a local path, but no such directory exists; give a directory written "
                        "by save_pretrained (with config.json), or a hub repo id such as google/vit-base-patch16-224")
    kwargs: dict[str, Any] = {"local_files_only": True} if local else {}
    if revision:
        kwargs["revision"] = revision
    try:
        config = transformers.AutoConfig.from_pretrained(ref, **kwargs)
    except (OSError, ValueError) as e:
        if local:
            raise PefsError(f"hf:{ref} is a directory without a readable transformers config.json: {e}") from e
        raise PefsError(
            f"could not fetch hf:{ref} from the Hugging Face hub ({type(e).__name__}); offline? download it where "
            f"there is network (`huggingface-cli download {ref} --local-dir DIR`, or save_pretrained(DIR)) and pass "
            "--model hf:DIR; a local path must be an existing directory") from e
    archs = [a for a in (getattr(config, "architectures", None) or []) if a in SUPPORTED]
    if config.model_type == "clip":
        archs = ["CLIPVisionModel"]
    if not archs:
        fallback = {"vit": "ViTModel", "deit": "DeiTModel", "dinov2": "Dinov2Model",
                    "dinov2_with_registers": "Dinov2WithRegistersModel", "clip_vision_model": "CLIPVisionModel",
                    "convnext": "ConvNextModel", "resnet": "ResNetModel"}
        if config.model_type not in fallback:
            raise PefsError(f"hf:{ref} is a {config.model_type!r} model ({', '.join(config.architectures or [])}); "
                            f"pefs describes these transformers classes: {', '.join(SUPPORTED)}")
        archs = [fallback[config.model_type]]
    cls = getattr(transformers, archs[0])
    try:
        model = cls.from_pretrained(ref, **kwargs) if pretrained else cls(
            config.vision_config if config.model_type == "clip" else config)
    except (OSError, ValueError) as e:
        raise PefsError(f"cannot load hf:{ref} as {archs[0]}: {e}") from e
    processor = _read_processor(ref) if local else None
    if not local and pretrained:
        try:
            from transformers.utils import cached_file

            path = cached_file(ref, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False,
                               **kwargs)
            processor = _read_processor(str(Path(path).parent)) if path else None
        except OSError:
            processor = None
    bb = describe_hf(model, name=f"hf:{ref}", pretrained=("hub" if not local else "local") if pretrained else "random",
                     processor=processor, img_size=img_size)
    bb.revision = revision or getattr(config, "_commit_hash", None)
    return bb
