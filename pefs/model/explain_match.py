"""``pefs explain --support DIR``: the patch-match head's Hungarian matches drawn between a query and the support.

A model directory keeps weights, class names and preprocessing, never a task's support images, so the patch
pairs the ``patch-match`` head matched cannot be drawn from it alone; ``--support DIR`` (``<class>/<image>``
folders, classes named as the model's) gives them. Each query is scored as the head scores it
(:func:`pefs.heads.patch_match.patch_match_scores`: its patch tokens matched one-to-one to all patches of each
class's support images, mean cosine); the PNG shows the best class's matching, its strongest pairs as lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from pefs.backbones.split import patch_tokens
from pefs.data.sources import load_folder
from pefs.errors import PefsError
from pefs.heads.patch_match import assignment, patch_match_scores
from pefs.model.explain import decode_all, grid_shape, to_display
from pefs.model.inference import class_names_of

if TYPE_CHECKING:
    from pefs.model.wrap import PefsModel


def tokens_and_grid(model: PefsModel, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch tokens (B, P, D) of images ``x`` (what the patch-match head reads) and their grid (rows, columns)."""
    bb = model.backbone
    with torch.no_grad():
        t = bb.model.eval().forward_features(x).float()
    if t.ndim == 4:
        grid = (int(t.shape[-2]), int(t.shape[-1]))
    elif bb.tokens is not None:
        grid = grid_shape(bb, (int(x.shape[-2]), int(x.shape[-1])))
    else:
        raise PefsError(f"cannot place the patch tokens of {bb.name} on the image: its layout is unknown to pefs")
    tok = patch_tokens(bb, t)
    if tok.shape[1] != grid[0] * grid[1]:
        raise PefsError(f"{bb.name} gives {tok.shape[1]} patch tokens for a {grid[0]}x{grid[1]} grid")
    return tok, grid


def centre(index: int, grid: tuple[int, int], size: tuple[int, int]) -> tuple[float, float]:
    """(x, y) pixel centre of patch ``index`` (row-major) of ``grid`` on an image of ``size`` (height, width)."""
    r, c = divmod(index, grid[1])
    return (c + 0.5) * size[1] / grid[1] - 0.5, (r + 0.5) * size[0] / grid[0] - 0.5


def matched_pairs(query: torch.Tensor, pool: torch.Tensor, per_image: int) -> list[tuple[int, int, int, float]]:
    """The Hungarian matching of one query's patches (P, D) to a class's support patches (K*P', D) by cosine:
    (query patch, support image, its patch, cosine) per pair, strongest first."""
    sim = (F.normalize(query.float(), dim=-1) @ F.normalize(pool.float(), dim=-1).T).numpy()
    rows, cols = assignment(sim)
    order = np.argsort(-sim[rows, cols], kind="stable")
    return [(int(rows[j]), int(cols[j]) // per_image, int(cols[j]) % per_image, float(sim[rows[j], cols[j]]))
            for j in order]


def read_support(model: PefsModel, support: Path) -> tuple[list[Path], torch.Tensor]:
    """The support images' paths and labels (the model's class indices); a class folder that is not one of the
    model's classes is refused by name."""
    names = class_names_of(model)
    images = load_folder(support).train
    bad = [c for c in images.classes if c not in names]
    if bad:
        raise PefsError(f"--support {str(support)!r} has class folder {bad[0]!r}, not a class of this model; its "
                        f"classes: {', '.join(names)}")
    labels = torch.tensor([names.index(images.classes[i]) for i in images.labels])
    return [Path(n) for n in images.names], labels


@dataclass
class SupportSet:
    """The support images' patch tokens (S, P, D), their classes as indices into ``present`` (the model's classes
    that have support images), the patch grid and the images as shown."""

    tokens: torch.Tensor
    labels: torch.Tensor
    present: list[int]
    grid: tuple[int, int]
    shown: np.ndarray


def support_set(model: PefsModel, support: Path) -> SupportSet:
    """Read, decode and run the support images once (an image that cannot be decoded is refused by name)."""
    s_paths, labels = read_support(model, support)
    sx = decode_all(model, s_paths)
    tokens, grid = tokens_and_grid(model, sx)
    present = sorted(set(labels.tolist()))
    return SupportSet(tokens, torch.tensor([present.index(int(v)) for v in labels]), present, grid,
                      to_display(model, sx).numpy())


def draw_support_matches(model: PefsModel, support: SupportSet, x: torch.Tensor, shown: torch.Tensor,
                         paths: Sequence[Path], stems: Sequence[str], out: Path, matches: int) -> list[Path]:
    """``OUT/<image>_matches.png`` per query: the patch-match class and the ``matches`` strongest matched pairs."""
    from pefs.model import explain_plot

    s_tok, grid, local, present = support.tokens, support.grid, support.labels, support.present
    q_tok, _ = tokens_and_grid(model, x)
    scores = patch_match_scores(s_tok, local, q_tok, len(present))
    names, size, written = class_names_of(model), (int(x.shape[-2]), int(x.shape[-1])), []
    for i, (path, stem) in enumerate(zip(paths, stems)):
        best = int(scores[i].argmax())
        members = torch.nonzero(local == best).flatten().tolist()
        pairs = matched_pairs(q_tok[i], s_tok[members].reshape(-1, s_tok.shape[-1]), grid[0] * grid[1])[:matches]
        used = sorted({m for _, m, _, _ in pairs})
        drawn = [(centre(q, grid, size), used.index(m), centre(p, grid, size), cos) for q, m, p, cos in pairs]
        title = (f"{path.name}: patch-match -> {names[present[best]]} (mean matched cosine {float(scores[i, best]):.2f}"
                 f"); {len(pairs)} strongest of {q_tok.shape[1]} pairs")
        written.append(explain_plot.draw_matches(out / f"{stem}_matches.png", shown[i].numpy(),
                                                 [support.shown[members[m]] for m in used], drawn, title))
    return written
