"""``pefs explain``: maps of where a saved model looks, before and after tuning, one PNG per image.

"Before" is the model directory's base: the backbone rebuilt by name (pretrained, or from its checkpoint) or,
for a random-weight backbone, the frozen weights the directory keeps beside the adapter (``base.safetensors``),
with the tuned model's classifier head on top, so both panels score the same classes. The maps themselves are
computed by :mod:`pefs.model.explain` and drawn by :mod:`pefs.model.explain_plot`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pefs.config.files import check_outside
from pefs.errors import PefsError, unknown
from pefs.model import directory as pefs_io
from pefs.model.explain import decode, explain, to_display
from pefs.model.inference import class_names_of
from pefs.model.predict import collect_images

if TYPE_CHECKING:
    from pefs.model.wrap import PefsModel


def base_model(tuned: PefsModel, cfg: dict[str, Any]) -> tuple[PefsModel | None, str]:
    """The tuned model's base with its head (see the module docstring), or (None, why it cannot be rebuilt)."""
    from pefs.model.wrap import wrap

    bb = cfg["backbone"]
    if not bb.get("rebuildable", True):
        return None, f"the base is your own module {bb['name']!r}, which pefs cannot rebuild by name"
    random = bb.get("source") == "random"
    if random and cfg["merged"]:
        return None, ("a merged model of a random-weight backbone keeps no base weights (merging folded the "
                      "tuning into them)")
    base = wrap(bb["name"], "linear", num_classes=cfg["num_classes"], **cfg["load"])
    params = dict(base.net.named_parameters())
    head = base.backbone.head_name + "."
    if random:
        saved = dict(tuned.base_weights())
        missing = sorted(n for n in params if n not in saved and not n.startswith(head))
        if missing:
            return None, (f"the strategy trained {len(missing)} tensors of the random-weight base (e.g. {missing[0]}), "
                          "whose values before tuning a model directory does not keep")
        buffers = dict(tuned.net.named_buffers())
        with torch.no_grad():
            for n, t in saved.items():
                params[n].copy_(t)
            for n, b in base.net.named_buffers():
                if n in buffers and buffers[n].shape == b.shape:
                    b.copy_(buffers[n])
    try:
        base.backbone.head.load_state_dict(tuned.backbone.head.state_dict())
    except RuntimeError:
        return None, "the tuned model's head does not fit the base backbone's (a strategy changed the head)"
    base.class_names, base.preprocessing = tuned.class_names, tuned.preprocessing
    return base, ""


def check_inputs(model_dir: str, inputs: Sequence[str], out: str, target: str | None,
                 support: str | None) -> tuple[list[Path], dict[str, Any], int | None]:
    """Every check that can refuse, before any weights load or image decodes: the images exist, the output folder
    lies outside every input, MODEL_DIR is a model directory and ``--class`` one of its classes."""
    paths = collect_images(inputs)
    read = [(model_dir, "model directory"), (support, "support folder"),
            *((i, "image folder" if Path(i).is_dir() else "images or image lists") for i in inputs),
            *((p, "images or image lists") for p in paths)]
    check_outside(out, "--out", read)
    for stem in png_names(paths):  # a PNG may not replace an image being read (--out . beside photo.png)
        for png in (f"{stem}.png", f"{stem}_matches.png"):
            check_outside(Path(out) / png, "--out", read)
    if Path(out).exists() and not Path(out).is_dir():
        raise PefsError(f"--out {out!r} is a file; name a folder for the PNGs")
    cfg = pefs_io.read_config(model_dir)
    names = cfg.get("class_names") or [str(i) for i in range(cfg["num_classes"])]
    if target is not None and target not in names:
        raise unknown("class", target, names, extra="--class names one of the model's classes")
    if support is not None and not Path(support).is_dir():
        raise PefsError(f"--support {support!r} is not a folder; give a folder of class folders "
                        "(<support>/<class>/<image>) holding the support images")
    return paths, cfg, None if target is None else names.index(target)


def png_names(paths: Sequence[Path]) -> list[str]:
    """One PNG name per image: its file stem, or ``<folder>_<stem>`` where stems repeat (``cat/0.png`` and
    ``dog/0.png``), with ``-2``, ``-3`` ... where even those repeat; characters other than letters, digits,
    ``-``, ``_`` and ``.`` become ``_``."""
    clean = lambda t: re.sub(r"[^A-Za-z0-9._-]", "_", t) or "image"  # noqa: E731
    stems = [clean(p.stem) for p in paths]
    names = [f"{clean(p.parent.name)}_{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems)]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


#: images explained per forward pass (a large encoder's attention is (images, heads, tokens, tokens) per block)
BATCH = 4


def explain_command(model_dir: str, inputs: Sequence[str], out: str, target: str | None = None,
                    support: str | None = None, allow_different_base: bool = False, matches: int = 12) -> int:
    """``pefs explain``: check, load the tuned model and its base, write ``OUT/<image>.png`` per image (and
    ``OUT/<image>_matches.png`` with ``--support``) a few images at a time; print what was written. Images that
    cannot be decoded are listed by path and the others still drawn; then the exit status is 1."""
    from pefs.model import explain_plot
    from pefs.model.explain_match import draw_support_matches, support_set
    from pefs.model.wrap import PefsModel

    if matches < 1:
        raise PefsError(f"--matches must be >= 1, got {matches}")
    paths, cfg, cls = check_inputs(model_dir, inputs, out, target, support)
    explain_plot.check_matplotlib()
    tuned = PefsModel.load(model_dir, allow_different_base=allow_different_base)
    base, why = base_model(tuned, cfg)
    supports = support_set(tuned, Path(support)) if support is not None else None
    names, stems = class_names_of(tuned), png_names(paths)
    written: list[Path] = []
    failures: list[tuple[str, str]] = []
    for start in range(0, len(paths), BATCH):
        x, ok, failed = decode(tuned, paths[start:start + BATCH])
        failures += failed
        chunk = [start + i for i in ok]
        if not chunk:
            continue
        shown = to_display(tuned, x)
        tuned_maps = explain(tuned, x, cls)
        # the base's maps are for the class the tuned model predicts (or --class), so the two panels compare
        base_maps = explain(base, x, [m[0].target for m in tuned_maps]) if base is not None else None
        for j, i in enumerate(chunk):
            written.append(explain_plot.draw_maps(
                Path(out) / f"{stems[i]}.png", shown[j].numpy(), tuned_maps[j], base_maps[j] if base_maps else None,
                names, f"{paths[i].name}: {tuned.spec} on {tuned.backbone.name}"))
        if supports is not None:
            written += draw_support_matches(tuned, supports, x, shown, [paths[i] for i in chunk],
                                            [stems[i] for i in chunk], Path(out), matches)
    _summary(out, written, base is None, why, cfg, support)
    if failures:
        print(f"{len(failures)} image(s) could not be decoded (the others were drawn):", file=sys.stderr)
        for _, reason in failures:
            print(f"  {reason}", file=sys.stderr)
    return 1 if failures else 0


def _summary(out: str, written: list[Path], no_base: bool, why: str, cfg: dict[str, Any], support: str | None) -> None:
    print(f"wrote {len(written)} PNG(s) to {out}: " + ", ".join(p.name for p in written[:5])
          + (", ..." if len(written) > 5 else ""))
    if no_base:
        print(f"note: no 'before tuning' panels: {why}")
    if (cfg.get("tune_config") or {}).get("head") == "patch-match" and support is None:
        print("note: a model directory keeps no support images, so the patch-match pairs cannot be drawn from it; "
              "pass --support DIR (<class>/<image> folders) to draw them")
