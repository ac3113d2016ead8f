"""``pefs export``: a saved model for tools that do not know pefs, each export checked against PyTorch.

* ``merged``: the strategies folded into the backbone weights, written as one safetensors state dict that
  ``timm.create_model(name, pretrained=False, num_classes=N)`` loads with ``strict=True``, head included.
  Only mergeable strategies (LoRA, SSF, norm, bias, peft tuners, ...) and timm backbones qualify.
* ``onnx``: the model's forward traced to ONNX (dynamic batch), run with onnxruntime on the same inputs as
  PyTorch; the file is kept only if the logits agree within tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pefs.config.checks import check_writable_file
from pefs.config.files import atomic_path
from pefs.errors import PefsError
from pefs.model.directory import ADAPTER_FILE, BASE_FILE, CONFIG_FILE, MERGED_FILE, usual_mode

if TYPE_CHECKING:
    from pefs.model.wrap import PefsModel

FORMATS = ("merged", "onnx", "peft")
#: ONNX logits must match PyTorch's within atol + rtol * |logit|
ONNX_ATOL, ONNX_RTOL = 1e-4, 1e-3


def timm_name(model: PefsModel) -> str:
    """The timm architecture the model is (an offline model's timm name); refuses a user's own module."""
    from pefs.backbones import timm_architecture

    name = model.backbone.name
    arch = timm_architecture(name) if not name.startswith("hf:") else None
    if arch is not None:
        return arch
    raise PefsError(f"{name!r} is not a timm model, so there is no library that would load a merged checkpoint "
                    "of it; export it with --format onnx instead")


def merged_state(model: PefsModel) -> tuple[str, dict[str, torch.Tensor]]:
    """Merge the model (in place) and return (timm name, state dict) after checking that timm's own model of the
    same architecture has exactly these tensors; refuses with the reason otherwise."""
    import timm

    bad = [s.name for s in model.strategies if not s.mergeable]
    if bad:
        raise PefsError(f"cannot export {model.spec!r} as a merged checkpoint: {', '.join(bad)} adds computation "
                        "that has no equivalent backbone weights (prompts, adapters, extra tokens); export it with "
                        "--format onnx instead")
    name = timm_name(model)
    model.cpu()  # exports are written and checked on the CPU, wherever the model was tuned
    if not model.merged:
        model.merge()
    state = {k: v.detach().contiguous().cpu().clone() for k, v in model.net.state_dict().items()}
    kwargs = dict((model.load_info or {}).get("model_kwargs") or {})
    ref = timm.create_model(name, pretrained=False, num_classes=model.num_classes, **kwargs).state_dict()
    extra, missing = sorted(set(state) - set(ref)), sorted(set(ref) - set(state))
    wrong = sorted(k for k in set(ref) & set(state) if ref[k].shape != state[k].shape)
    if extra or missing or wrong:
        raise PefsError(f"the merged {model.spec!r} model does not have the tensors of timm's {name}: "
                        + "; ".join(f"{len(v)} {what} (e.g. {', '.join(v[:3])})" for what, v in
                                    (("extra", extra), ("missing", missing), ("of another shape", wrong)) if v)
                        + " (ssf adds a bias to layers that have none); export it with --format onnx instead")
    return name, state


def export_merged(model: PefsModel, out: str | Path) -> Path:
    """Write the merged checkpoint (safetensors, metadata: timm name, classes, preprocessing) and check that a
    plain timm model loaded from it strictly gives the same logits as the pefs model."""
    import timm
    from safetensors.torch import save_file

    name, state = merged_state(model)
    meta = {"timm_name": name, "num_classes": str(model.num_classes), "pefs_spec": model.spec,
            "class_names": json.dumps(model.class_names), "preprocessing": json.dumps(model.preprocessing),
            "model_kwargs": json.dumps((model.load_info or {}).get("model_kwargs") or {})}
    out = _writable(out)
    with atomic_path(out, "merged checkpoint") as tmp:  # an existing file is replaced only by a checked one
        save_file(state, str(tmp), metadata=meta)
        usual_mode(tmp)
        kwargs = json.loads(meta["model_kwargs"])
        plain = timm.create_model(name, pretrained=False, num_classes=model.num_classes, **kwargs).eval()
        plain.load_state_dict(_read(tmp), strict=True)
        x = sample_input(model)
        with torch.no_grad():
            ours, theirs = model.eval()(x), plain(x)
        if not torch.allclose(ours, theirs, atol=ONNX_ATOL, rtol=ONNX_RTOL):
            raise PefsError(f"timm's {name} loaded from the merged tensors gives different logits (max difference "
                            f"{(ours - theirs).abs().max():.3g}); nothing written")
    return out


def export_onnx(model: PefsModel, out: str | Path) -> tuple[Path, float]:
    """Trace the model to ONNX (input ``images``, output ``logits``, dynamic batch), then run it with
    onnxruntime beside PyTorch; returns the file and the largest logit difference, or refuses. The graph is
    written under a temporary name and replaces ``out`` only once checked: a failure leaves ``out`` as it was."""
    out = _writable(out)
    net = model.cpu().net.eval()
    with atomic_path(out, "ONNX export") as tmp:
        _trace_onnx(model, net, tmp)
        worst = _check_onnx(model, net, tmp)
    return out, worst


def _trace_onnx(model: PefsModel, net: torch.nn.Module, path: Path) -> None:
    import warnings

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (sample_input(model),), str(path), input_names=["images"],
                              output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                              dynamo=False, opset_version=17)
    except OSError:
        raise  # a full disk or a lost folder: said by the writer as a write failure, not as a tracing one
    except Exception as e:  # noqa: BLE001 - any tracing failure means "this forward does not export"
        raise PefsError(f"the forward of {model.spec!r} on {model.backbone.name} does not trace to ONNX: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; nothing written") from e


def _check_onnx(model: PefsModel, net: torch.nn.Module, path: Path) -> float:
    """The largest logit difference between onnxruntime on ``path`` and PyTorch, on two batch sizes; refuses
    a graph outside tolerance."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for inp in (sample_input(model), sample_input(model, batch=3, seed=1)):  # the batch axis really is dynamic
        with torch.no_grad():
            ref = net(inp)
        got = torch.from_numpy(session.run(["logits"], {"images": inp.numpy()})[0])
        worst = max(worst, float((got - ref).abs().max()))
        if got.shape != ref.shape or not torch.allclose(got, ref, atol=ONNX_ATOL, rtol=ONNX_RTOL):
            raise PefsError(f"the ONNX graph of {model.spec!r} gives different logits from PyTorch under "
                            f"onnxruntime (max difference {worst:.3g}); nothing written")
    return worst


def sample_input(model: PefsModel, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A normalised-looking random batch at the model's saved input size."""
    size = tuple(model.preprocessing["input_size"])
    return torch.randn((batch, *size), generator=torch.Generator().manual_seed(seed))


def export_command(model_dir: str, fmt: str = "merged", out: str | None = None,
                   allow_different_base: bool = False) -> int:
    """``pefs export``: load the model directory, write and check the export, say how to load it."""
    from pefs.model.wrap import PefsModel

    if fmt not in FORMATS:
        raise PefsError(f"unknown export format {fmt!r}; valid choices: {', '.join(FORMATS)}")
    check_out(model_dir, out)
    model = PefsModel.load(model_dir, allow_different_base=allow_different_base)
    if fmt == "merged":
        path = export_merged(model, out or Path(model_dir) / "model.safetensors")
        name = timm_name(model)
        print(f"merged checkpoint: {path} (checked: timm alone gives the same logits)\nload it without pefs:\n"
              f"  m = timm.create_model({name!r}, pretrained=False, num_classes={model.num_classes})\n"
              f"  m.load_state_dict(safetensors.torch.load_file({str(path)!r}))")
    elif fmt == "peft":
        from pefs.export.peft_format import save_peft_adapter

        path = save_peft_adapter(model, out or Path(model_dir) / "peft_adapter")
        print(f"peft adapter: {path}\nload it without pefs:\n  model = peft.PeftModel.from_pretrained(<the base "
              f"{model.backbone.name.removeprefix('hf:')} model>, {str(path)!r})")
    else:
        path, worst = export_onnx(model, out or Path(model_dir) / "model.onnx")
        print(f"ONNX: {path} (checked with onnxruntime: logits within {worst:.2g} of PyTorch)\n"
              f"input 'images' (batch, {', '.join(map(str, model.preprocessing['input_size']))}), output 'logits'; "
              f"preprocessing: {json.dumps(model.preprocessing)}")
    return 0


def _writable(out: str | Path) -> Path:
    """``out`` once its folder exists and takes new files; nothing is created at ``out`` itself."""
    out = Path(out)
    if out.is_dir():
        raise PefsError(f"export --out {str(out)!r} is a folder; name a file")
    check_writable_file(out, "export", "--out")
    return out


def check_out(model_dir: str | Path, out: str | Path | None) -> None:
    """Refuse an ``--out`` that would overwrite the model directory or one of its own files."""
    if out is None:
        return
    d, o = Path(model_dir).resolve(), Path(out).resolve()
    if o == d or (o.parent == d and o.name in (CONFIG_FILE, ADAPTER_FILE, MERGED_FILE, BASE_FILE)):
        raise PefsError(f"export --out {str(out)!r} would overwrite the model directory {str(model_dir)!r} it "
                        "exports; choose another path")


def _read(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))
