"""PNG plots of a report (matplotlib, Agg backend): accuracy vs shots, accuracy vs trainable parameters, a
shots × trainable-parameters heatmap of accuracy and the same as 3-D bars. One set of files per protocol setting
in the store."""

from __future__ import annotations

import re
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
    file-name suffix only when the store holds several; the 3-D plot only where a setting has several shots."""
    settings = sorted({g.setting for g in groups})
    names: dict[str, list[str]] = {}
    for setting in settings:
        gs = _ok([g for g in groups if g.setting == setting])
        if not gs:
            continue
        suffix = "" if len(settings) == 1 else "-" + re.sub(r"[^a-z0-9]+", "-", setting.lower()).strip("-")
        kinds = ["accuracy_vs_shots", *(["accuracy_vs_params"] if any(g.trainable for g in gs) else []),
                 "shots_params_heatmap", *(["shots_params_accuracy_3d"] if len({g.shots for g in gs}) > 1 else [])]
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


def bars_3d_data(groups: list[Group]) -> tuple[list[int], list[str], list[tuple[int, int, float]]]:
    """What the 3-D plot draws: the shots, the (strategy · model (trainable params)) rows fewest parameters first,
    and one (shots index, row index, mean accuracy %) bar per finished cell."""
    gs = _ok(groups)
    shots = sorted({g.shots for g in gs})
    first = {(g.strategy, g.model): g for g in gs}
    rows = sorted(first, key=lambda r: (first[r].trainable or 0, first[r].backbone_params or 0, r))
    labels = [f"{s} · {m} ({fmt_count(first[s, m].trainable)})" for s, m in rows]
    bars = [(shots.index(g.shots), rows.index((g.strategy, g.model)), g.mean_ci()[0]) for g in gs]
    return shots, labels, sorted(bars)


def shots_params_accuracy_3d(groups: list[Group], path: Path, title: str) -> Path:
    """Shots × trainable parameters × accuracy as 3-D bars, written to ``path`` (see :func:`figure_3d`)."""
    return _save(figure_3d(groups, title), path)


def figure_3d(groups: list[Group], title: str) -> Figure:
    """The 3-D bar figure: one row of bars per (strategy, model), rows ordered by trainable parameters (fewest
    in front, the count in the row's tick label), colour = strategy; each bar's ``gid`` is
    ``strategy · model (trainable) · K-shot: mean%``."""
    plt = _pyplot()
    shots, labels, bars = bars_3d_data(groups)
    strategies = sorted({label.split(" · ")[0] for label in labels})
    palette = "tab10" if len(strategies) <= 10 else "tab20"  # one colour per strategy up to 20
    colours = plt.get_cmap(palette)
    fig = plt.figure(figsize=(9.5, 7.5))
    ax = fig.add_subplot(projection="3d")
    ax.view_init(elev=22, azim=-130)  # the row labels (strategy · model) on the open side, not behind the bars
    lo = min(z for _, _, z in bars)
    floor = max(0.0, 5 * (lo // 5) - 5)  # bars start a little below the lowest accuracy, so differences show
    for i, j, z in bars:
        colour = colours(strategies.index(labels[j].split(" · ")[0]) % colours.N)
        ax.bar3d(i - 0.3, j - 0.3, floor, 0.6, 0.6, z - floor, color=colour, alpha=0.85, shade=True,
                 gid=f"{labels[j]} · {shots[i]}-shot: {z:.2f}%")
    ax.set_xticks(range(len(shots)), [str(k) for k in shots])
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_zlim(floor, 100 if max(z for _, _, z in bars) > 95 else max(z for _, _, z in bars) + 5)
    ax.set_xlabel("shots per class (K)")
    ax.set_zlabel("accuracy (%), mean")
    ax.set_title(f"Shots × trainable parameters × accuracy{_random_note(_ok(groups))}\n{title}\n"
                 "(rows: strategy · model (trainable params), fewest in front)", fontsize=9)
    fig.tight_layout()
    return fig
