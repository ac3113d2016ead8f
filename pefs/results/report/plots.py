"""PNG plots of a report (matplotlib, Agg backend): accuracy vs shots, accuracy vs trainable parameters, a
shots × trainable-parameters heatmap of accuracy, and shots × trainable parameters × accuracy in 3-D (numeric
log axes, CI bars). One set of files per protocol setting in the store."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pefs.config.files import atomic_path
from pefs.results.aggregate import fmt_count

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pefs.results.aggregate import Group

MARKERS = "osD^vP*Xh<>"


def _save(fig: Figure, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as a PNG whole or not at all, and free it."""
    plt = _pyplot()
    fig.tight_layout()
    try:
        with atomic_path(path, "plot") as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ok(groups: list[Group]) -> list[Group]:
    return [g for g in groups if g.mean_ci()[0] is not None]


def _err(g: Group) -> float:
    """A group's error bar: its t 95% half-width; nan (no bar) for one seed, which has no interval."""
    ci = g.mean_ci()[1]
    return float("nan") if ci is None else ci


def _random_note(groups: list[Group]) -> str:
    return " (random weights)" if any(g.pretrained == "random" for g in groups) else ""


def _model_label(g: Group) -> str:
    return f"{g.model} ({fmt_count(g.backbone_params)})"


def _shots_axis(ax, shots: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots)
    ax.set_xticklabels([str(k) for k in shots])
    ax.set_xlabel("shots per class (K)")


def accuracy_vs_shots(groups: list[Group], path: Path, title: str) -> Path:
    """One panel per strategy, one line per model, error bars = 95% CI."""
    plt = _pyplot()
    gs = _ok(groups)
    strategies = sorted({g.strategy for g in gs})
    shots = sorted({g.shots for g in gs})
    models = sorted({g.model for g in gs}, key=lambda m: next(g.backbone_params or 0 for g in gs if g.model == m))
    ncols = min(len(strategies), 3)
    nrows = -(-len(strategies) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), sharey=True, squeeze=False)
    for ax, strategy in zip(axes.flat, strategies):
        for i, m in enumerate(models):
            pts = sorted((g for g in gs if g.strategy == strategy and g.model == m), key=lambda g: g.shots)
            if not pts:
                continue
            dodge = 2 ** (0.05 * (i - (len(models) - 1) / 2))  # side by side, so error bars do not hide each other
            ax.errorbar([g.shots * dodge for g in pts], [g.mean_ci()[0] for g in pts],
                        yerr=[_err(g) for g in pts],
                        marker=MARKERS[i % len(MARKERS)], capsize=3, label=_model_label(pts[0]))
        _shots_axis(ax, shots)
        ax.set_title(strategy)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="model (backbone params)", title_fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%), mean ± 95% CI")
    for ax in list(axes.flat)[len(strategies):]:
        ax.set_visible(False)
    fig.suptitle(f"Accuracy vs shots{_random_note(gs)}\n{title}")
    return _save(fig, path)


def accuracy_vs_params(groups: list[Group], path: Path, title: str) -> Path:
    """One panel per shots value: trainable parameters (log x) vs accuracy; colour = strategy, marker = model."""
    from matplotlib.ticker import NullFormatter

    plt = _pyplot()
    gs = [g for g in _ok(groups) if g.trainable]
    shots = sorted({g.shots for g in gs})
    strategies = sorted({g.strategy for g in gs})
    models = sorted({g.model for g in gs}, key=lambda m: next(g.backbone_params or 0 for g in gs if g.model == m))
    colours = plt.get_cmap("tab10")
    ncols = min(len(shots) + 1, 3)
    nrows = -(-(len(shots) + 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.7 * nrows), sharey=True, sharex=True,
                             squeeze=False)
    lo, hi = min(g.trainable for g in gs), max(g.trainable for g in gs)
    for ax, k in zip(axes.flat, shots):
        for g in (g for g in gs if g.shots == k):
            ax.errorbar(g.trainable, g.mean_ci()[0], yerr=_err(g), capsize=3, linestyle="none",
                        marker=MARKERS[models.index(g.model) % len(MARKERS)], markersize=7,
                        color=colours(strategies.index(g.strategy) % 10))
        ax.set_xscale("log")
        ax.set_xlim(lo / 2.5, hi * 2.5)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{k}-shot")
        ax.grid(alpha=0.3)
    for i, ax in enumerate(axes.flat):
        if i < len(shots) and i + ncols >= len(shots):
            ax.set_xlabel("trainable parameters (log scale)")
            ax.xaxis.set_tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%), mean ± 95% CI")
    handles = [plt.Line2D([], [], color=colours(i % 10), marker="o", linestyle="none", label=s)
               for i, s in enumerate(strategies)]
    handles += [plt.Line2D([], [], color="grey", marker=MARKERS[i % len(MARKERS)], linestyle="none",
                           label=_model_label(next(g for g in gs if g.model == m))) for i, m in enumerate(models)]
    legend_ax = list(axes.flat)[len(shots)]
    legend_ax.axis("off")
    legend_ax.legend(handles=handles, loc="center", fontsize=9, title="colour = strategy, marker = model",
                     title_fontsize=9)
    for ax in list(axes.flat)[len(shots) + 1:]:
        ax.set_visible(False)
    fig.suptitle(f"Accuracy vs trainable parameters{_random_note(gs)}\n{title}")
    return _save(fig, path)


def shots_params_heatmap(groups: list[Group], path: Path, title: str) -> Path:
    """Rows = (strategy, model) ordered by trainable parameters, columns = shots, colour = mean accuracy."""
    import numpy as np

    plt = _pyplot()
    gs = _ok(groups)
    shots = sorted({g.shots for g in gs})
    first = {(g.strategy, g.model): g for g in gs}
    rows = sorted(first, key=lambda r: (first[r].trainable or 0, first[r].backbone_params or 0, r))
    grid = np.full((len(rows), len(shots)), np.nan)
    text = [["" for _ in shots] for _ in rows]
    for g in gs:
        i, j = rows.index((g.strategy, g.model)), shots.index(g.shots)
        mean, ci = g.mean_ci()
        grid[i, j], text[i][j] = mean, f"{mean:.1f}\n" + ("one seed" if ci is None else f"±{ci:.1f}")
    labels = [f"{s} · {m} ({fmt_count(first[s, m].trainable)})" for s, m in rows]
    fig, ax = plt.subplots(figsize=(1.3 * len(shots) + 5.5, 0.55 * len(rows) + 2.0))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    lo, hi = np.nanmin(grid), np.nanmax(grid)
    for i in range(len(rows)):
        for j in range(len(shots)):
            if not text[i][j]:
                ax.text(j, i, "not run", ha="center", va="center", fontsize=7, color="grey")
            else:
                dark = (grid[i, j] - lo) / max(hi - lo, 1e-9) < 0.6
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(len(shots)), [str(k) for k in shots])
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlabel("shots per class (K)")
    ax.set_ylabel("strategy · model (trainable params), fewest first")
    fig.colorbar(im, ax=ax, label="accuracy (%), mean")
    ax.set_title(f"Accuracy by shots and trainable parameters{_random_note(gs)}\n{title}", fontsize=10)
    return _save(fig, path)


def plot_names(groups: list[Group]) -> dict[str, list[str]]:
    """Per setting, the PNG files :func:`write_plots` writes for it (the report links them): the setting is a
    file-name suffix only when the store holds several; the 3-D plot only where a setting has several shots
    with known trainable-parameter counts."""
    settings = sorted({g.setting for g in groups})
    names: dict[str, list[str]] = {}
    for setting in settings:
        gs = _ok([g for g in groups if g.setting == setting])
        if not gs:
            continue
        suffix = "" if len(settings) == 1 else "-" + re.sub(r"[^a-z0-9]+", "-", setting.lower()).strip("-")
        several_shots = len({g.shots for g in gs if g.trainable is not None}) > 1
        kinds = ["accuracy_vs_shots", *(["accuracy_vs_params"] if any(g.trainable for g in gs) else []),
                 "shots_params_heatmap", *(["shots_params_accuracy_3d"] if several_shots else [])]
        names[setting] = [f"{kind}{suffix}.png" for kind in kinds]
    return names


def write_plots(groups: list[Group], out: Path) -> list[Path]:
    """Every plot of :func:`plot_names`, per setting."""
    draw = {"accuracy_vs_shots": accuracy_vs_shots, "accuracy_vs_params": accuracy_vs_params,
            "shots_params_heatmap": shots_params_heatmap, "shots_params_accuracy_3d": shots_params_accuracy_3d}
    files = []
    for setting, names in plot_names(groups).items():
        gs = [g for g in groups if g.setting == setting]
        files += [draw[re.match(r"[a-z0-9_]+", name).group()](gs, out / name, setting) for name in names]
    return files


@dataclass(frozen=True)
class Point3d:
    """One finished cell of the 3-D plot: K shots, trainable parameters, mean accuracy (%) and its t 95%
    half-width (None for one seed), under its (strategy · model (trainable params)) label."""

    shots: int
    trainable: int
    mean: float
    ci: float | None
    label: str


def points_3d_data(groups: list[Group]) -> tuple[list[Point3d], int]:
    """What the 3-D plot draws: one point per finished cell with a known trainable-parameter count, fewest
    parameters then fewest shots first, and how many finished cells were left out for an unknown count."""
    gs = _ok(groups)
    known = [g for g in gs if g.trainable is not None]
    points = [Point3d(g.shots, g.trainable, g.mean_ci()[0], g.mean_ci()[1],
                      f"{g.strategy} · {g.model} ({fmt_count(g.trainable)})") for g in known]
    return sorted(points, key=lambda p: (p.trainable, p.label, p.shots)), len(gs) - len(known)


def _log_positions(counts: list[int]) -> tuple[dict[int, float], list[float], list[str]]:
    """log10 position of each trainable count (a count of 0 sits one decade below the smallest positive one, its
    tick labelled 0), and the decade ticks with their labels: a numeric axis, not categories."""
    positive = [c for c in counts if c > 0]
    lowest = math.floor(math.log10(min(positive))) if positive else 0
    pos = {c: (math.log10(c) if c > 0 else lowest - 1.0) for c in counts}
    top = math.ceil(max(pos.values())) if positive else 0
    decades = list(range(lowest if positive else 0, max(top, lowest) + 1))
    ticks = ([lowest - 1.0] if 0 in counts else []) + [float(d) for d in decades]
    labels = (["0"] if 0 in counts else []) + [_decade(d) for d in decades]
    return pos, ticks, labels


def _decade(d: int) -> str:
    """10**d as a tick label: 1, 10, 100, 1k, 10k, 100k, 1M, ..."""
    for unit, power in (("G", 9), ("M", 6), ("k", 3)):
        if d >= power:
            return f"{10 ** (d - power)}{unit}"
    return str(10 ** d)


def shots_params_accuracy_3d(groups: list[Group], path: Path, title: str) -> Path:
    """Shots × trainable parameters × accuracy in 3-D, written to ``path`` (see :func:`figure_3d`)."""
    return _save(figure_3d(groups, title), path)


def figure_3d(groups: list[Group], title: str) -> Figure:
    """The 3-D figure: x = shots (log2), y = trainable parameters (log10, numeric), z = mean accuracy; one line
    per (strategy, model) across its shots, colour = strategy, marker = model, a vertical bar at each point for
    its t 95% CI. Each point's ``gid`` is ``strategy · model (trainable) · K-shot: mean% ± ci``."""
    plt = _pyplot()
    points, unknown = points_3d_data(groups)
    if not points:
        raise ValueError("no finished cell with a known trainable-parameter count to plot")
    strategies = sorted({p.label.split(" · ")[0] for p in points})
    models = sorted({g.model for g in _ok(groups)})
    colours = plt.get_cmap("tab10" if len(strategies) <= 10 else "tab20")
    ypos, yticks, ylabels = _log_positions([p.trainable for p in points])
    fig = plt.figure(figsize=(11, 7.5))
    ax = fig.add_subplot(projection="3d")
    ax.view_init(elev=20, azim=-125)
    for label in dict.fromkeys(p.label for p in points):
        series = [p for p in points if p.label == label]
        strategy, model = label.split(" · ")[0], label.split(" · ")[1].rsplit(" (", 1)[0]
        colour = colours(strategies.index(strategy) % colours.N)
        xs = [math.log2(p.shots) for p in series]
        ys = [ypos[p.trainable] for p in series]
        ax.plot(xs, ys, [p.mean for p in series], color=colour, alpha=0.6, linewidth=1.2)
        for p, x, y in zip(series, xs, ys, strict=True):
            spread = "" if p.ci is None else f" ± {p.ci:.2f}"
            ax.scatter([x], [y], [p.mean], color=colour, marker=MARKERS[models.index(model) % len(MARKERS)],
                       s=28, depthshade=False, gid=f"{label} · {p.shots}-shot: {p.mean:.2f}%{spread}")
            if p.ci is not None:
                ax.plot([x, x], [y, y], [p.mean - p.ci, p.mean + p.ci], color=colour, linewidth=1.0)
    shots = sorted({p.shots for p in points})
    ax.set_xticks([math.log2(k) for k in shots], [str(k) for k in shots])
    ax.set_yticks(yticks, ylabels, fontsize=8)
    lows = [p.mean - (p.ci or 0.0) for p in points]
    highs = [p.mean + (p.ci or 0.0) for p in points]
    ax.set_zlim(max(0.0, 5 * (min(lows) // 5) - 5), min(100.0, max(highs) + 5))
    ax.set_xlabel("shots per class (K, log scale)")
    ax.set_ylabel("trainable parameters (log scale)")
    ax.set_zlabel("accuracy (%), mean ± t 95% CI")
    handles = [plt.Line2D([], [], color=colours(i % colours.N), label=s) for i, s in enumerate(strategies)]
    handles += [plt.Line2D([], [], color="0.3", linestyle="", marker=MARKERS[i % len(MARKERS)], label=m)
                for i, m in enumerate(models)]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 0.95))
    left = f"; {unknown} cell(s) without a trainable-parameter count not drawn" if unknown else ""
    ax.set_title(f"Shots × trainable parameters × accuracy{_random_note(_ok(groups))}\n{title}\n"
                 f"(vertical bars: t 95% CI over seeds; one seed has none{left})", fontsize=9)
    fig.tight_layout()
    return fig
