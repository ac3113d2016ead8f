"""The PNGs of ``pefs explain`` (matplotlib, Agg backend), each written whole or not at all
(:func:`pefs.config.files.atomic_path`).

A maps PNG has one row per method (rollout and last-block attention for a ViT, Grad-CAM for a CNN) and the
columns image | before tuning | after tuning, each panel :data:`PANEL_PX` pixels square, plus :data:`TITLE_PX`
for the title: ``(columns x PANEL_PX, rows x PANEL_PX + TITLE_PX)`` pixels. A matches PNG shows the query and
the matched support images side by side with a line per matched patch pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pefs.config.files import atomic_path

if TYPE_CHECKING:
    from pefs.model.explain import Explanation

PANEL_PX = 300
TITLE_PX = 40
DPI = 100


def check_matplotlib() -> None:
    """Refuse, before any model loads, when matplotlib (the ``explain`` extra) is not installed."""
    import importlib.util

    from pefs.errors import PefsError

    if importlib.util.find_spec("matplotlib") is None:
        raise PefsError("pefs explain draws its PNGs with matplotlib, which is not installed: "
                        "pip install 'pefs[explain]' (or matplotlib)")


def _figure(width_px: int, height_px: int):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)


def _save(fig, path: Path) -> Path:
    with atomic_path(path, "explanation PNG") as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")  # no bbox_inches: the pixel size is the figure's
    return path


def map_png_size(rows: int, columns: int) -> tuple[int, int]:
    """(width, height) in pixels of a maps PNG with ``rows`` methods and ``columns`` panels per row."""
    return columns * PANEL_PX, rows * PANEL_PX + TITLE_PX


def _caption(when: str, e: Explanation, names: Sequence[str]) -> str:
    text = f"{when}: {names[e.label]} {e.score:.2f}"
    return text + (f"\nmap for {names[e.target]}" if e.target != e.label else "")


def draw_maps(path: Path, image: np.ndarray, tuned: list[Explanation], base: list[Explanation] | None,
              names: Sequence[str], title: str) -> Path:
    """One maps PNG: per method, the image, the base's map over it (when there is a base) and the tuned model's,
    each titled with the predicted class and its probability."""
    columns = 3 if base is not None else 2
    width, height = map_png_size(len(tuned), columns)
    fig = _figure(width, height)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - (TITLE_PX + 10) / height, wspace=0.05,
                        hspace=0.25)
    axes = fig.subplots(len(tuned), columns, squeeze=False)
    for i, (row, t) in enumerate(zip(axes, tuned)):
        panels = [("image", None), *([("before tuning", base[i])] if base is not None else []),
                  ("after tuning", t)]
        for ax, (when, e) in zip(row, panels):
            ax.imshow(image)
            ax.set_axis_off()
            if e is None:
                ax.set_title(t.method, fontsize=8)
                continue
            ax.imshow(e.map, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
            ax.set_title(_caption(when, e, names), fontsize=8)
    return _save(fig, path)


def draw_matches(path: Path, query: np.ndarray, supports: list[np.ndarray], pairs: list[tuple[tuple[float, float],
                 int, tuple[float, float], float]], title: str) -> Path:
    """A matches PNG: the query (left) and the support images stacked (right); ``pairs`` are (query point (x, y),
    support image index, point in that image, cosine), each drawn as a line coloured by its cosine."""
    import matplotlib
    from matplotlib.patches import ConnectionPatch

    rows = max(len(supports), 1)
    fig = _figure(2 * PANEL_PX, rows * PANEL_PX + TITLE_PX)
    fig.suptitle(title, fontsize=9)
    grid = fig.add_gridspec(rows, 2, left=0.01, right=0.99, bottom=0.01, top=1 - (TITLE_PX + 10) / (
        rows * PANEL_PX + TITLE_PX), wspace=0.05, hspace=0.05)
    left = fig.add_subplot(grid[:, 0])
    left.imshow(query)
    right = [fig.add_subplot(grid[i, 1]) for i in range(len(supports))]
    for ax, img in zip(right, supports):
        ax.imshow(img)
    for ax in (left, *right):
        ax.set_axis_off()
    cmap = matplotlib.colormaps["viridis"]
    for (qx, qy), s, (sx, sy), cos in pairs:
        colour = cmap(float(np.clip((cos + 1) / 2, 0, 1)))
        fig.add_artist(ConnectionPatch((qx, qy), (sx, sy), "data", "data", axesA=left, axesB=right[s],
                                       color=colour, linewidth=1.2))
        left.plot(qx, qy, "o", color=colour, markersize=3)
        right[s].plot(sx, sy, "o", color=colour, markersize=3)
    return _save(fig, path)
