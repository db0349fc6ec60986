"""Learning curves of a sweep: one PNG per task, one subplot per test mode, one line per method (the mean
over its complete seeds, on the evaluation steps they all share, with a ±std band).

Figures are made without pyplot (its global state and backend belong to the notebook or script that
imports this); `draw_task` draws onto any axes, e.g. ``plt.subplots`` ones in a notebook.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sgqn.app.report.collect import Collection, Curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_MODES = ("train", "video_hard")


def mean_curve(curves: Sequence[Curve], ddof: int = 1) -> tuple[list[int], list[float], list[float] | None]:
    """Steps all `curves` share, the mean over curves at each, and the std (ddof) or None (one curve)."""
    if not curves:
        return [], [], None
    shared = sorted(set.intersection(*(set(c.steps) for c in curves)))
    rows = [dict(zip(c.steps, c.values, strict=True)) for c in curves]
    columns = [[row[step] for row in rows] for step in shared]
    means = [sum(col) / len(col) for col in columns]
    n = len(curves)
    if n < 2 or n <= ddof:
        return shared, means, None
    stds = [
        math.sqrt(sum((v - m) ** 2 for v in col) / (n - ddof)) for col, m in zip(columns, means, strict=True)
    ]
    return shared, means, stds


def plot_modes(collection: Collection, modes: Sequence[str] | None = None) -> list[str]:
    """The modes to plot: `modes`, else those of ``train, video_hard`` that were evaluated (else all)."""
    if modes:
        return list(modes)
    found = collection.modes
    return [m for m in DEFAULT_MODES if m in found] or found


def draw_task(
    axes: Sequence[Any], collection: Collection, task: str, modes: Sequence[str], ddof: int = 1
) -> None:
    """One mode per axes: each method's mean curve over its complete seeds of `task`, with a ±std band."""
    for ax, mode in zip(axes, modes, strict=True):
        for method in collection.methods:
            expected = collection.trials_of(task, method)
            trials = [t for t in expected if t.complete and mode in t.curves]
            steps, means, stds = mean_curve([t.curves[mode] for t in trials], ddof)
            if not steps:
                continue
            seeds = f"{len(trials)}/{len(expected)}" if len(trials) < len(expected) else str(len(trials))
            (line,) = ax.plot(steps, means, label=f"{method} ({seeds} seed{'s' * (len(expected) > 1)})")
            if stds is not None:
                low = [m - s for m, s in zip(means, stds, strict=True)]
                high = [m + s for m, s in zip(means, stds, strict=True)]
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(f"{task}: {mode}", fontsize=10)
        ax.set_xlabel("agent steps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("episode return")
    if any(ax.get_lines() for ax in axes):
        axes[0].legend(fontsize=8)


def task_figure(collection: Collection, task: str, modes: Sequence[str], ddof: int = 1) -> Figure:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2 * len(modes), 3.2), layout="constrained")
    axes = figure.subplots(1, len(modes), squeeze=False)[0]
    draw_task(list(axes), collection, task, modes, ddof)
    return figure


def write_curves(
    collection: Collection, out: Path, modes: Sequence[str] | None = None, ddof: int = 1, dpi: int = 120
) -> list[Path]:
    """``curves_<task>.png`` in `out` for every task with a complete trial evaluated in one of `modes`."""
    modes = plot_modes(collection, modes)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for task in collection.tasks:
        present = [m for m in modes if any(t.task == task and m in t.curves for t in collection.complete)]
        if not present:
            continue
        path = out / f"curves_{task}.png"
        task_figure(collection, task, present, ddof).savefig(path, dpi=dpi)
        paths.append(path)
    return paths
