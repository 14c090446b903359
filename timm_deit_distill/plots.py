"""Line plots written as PNG: the trainer's ``curves.png`` and the demo's comparison, drawn by one function.

Drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .atomic import atomic_path

__all__ = ["Series", "Panel", "plot_panels", "plot_curves"]


@dataclass
class Series:
    """One line: its (x, y) points, its legend label (None: no legend entry) and matplotlib's line style."""

    points: Sequence[tuple[float, float]]
    label: str | None = None
    style: dict[str, Any] = field(default_factory=dict)


@dataclass
class Panel:
    """One plot of a figure: its lines, horizontal reference lines ``(y, label, style)``, and its labels."""

    series: Sequence[Series]
    xlabel: str
    ylabel: str
    title: str | None = None
    hlines: Sequence[tuple[float, str | None, dict[str, Any]]] = ()


def plot_panels(path: str | os.PathLike[str], panels: Sequence[Panel], *, size: tuple[float, float],
                title: str = "") -> None:
    """Draw ``panels`` side by side into the PNG ``path``; series with no points are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels))
    for ax, panel in zip(axes, panels, strict=True):
        for series in panel.series:
            if series.points:
                xs, ys = zip(*series.points, strict=True)
                ax.plot(xs, ys, label=series.label, **series.style)
        for y, label, style in panel.hlines:
            ax.axhline(y, label=label, **style)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        if panel.title:
            ax.set_title(panel.title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


_LOSSES = [("train_loss", "train (total)"), ("train_task_loss", "train (class head)"),
           ("train_distill_loss", "train (distillation head)"), ("eval_loss", "eval")]
_ACCURACIES = [("eval_top1", "fused"), ("eval_top1_cls", "class head"), ("eval_top1_dist", "distillation head"),
               ("teacher_top1", "teacher")]
# With an evaluated EMA the eval_* columns are the EMA's (timm's rule) and raw_eval_* the raw weights'.
_ACCURACIES_EMA = [("eval_top1", "EMA, fused"), ("eval_top1_cls", "EMA, class head"),
                   ("eval_top1_dist", "EMA, distillation head"), ("raw_eval_top1", "raw weights, fused"),
                   ("teacher_top1", "teacher")]


def plot_curves(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, title: str = "") -> None:
    """``curves.png``: the ``summary.csv`` rows' losses and accuracies per epoch. Series with no values are left out."""
    from .records import RAW_PREFIX, current_row

    style = {"marker": "o", "markersize": 3}
    rows = [current_row(r) for r in rows]
    accuracies = _ACCURACIES_EMA if any(r.get(RAW_PREFIX + "eval_top1") is not None for r in rows) else _ACCURACIES

    def series(columns: list[tuple[str, str]]) -> list[Series]:
        return [Series([(r["epoch"], r[key]) for r in rows if r.get(key) is not None], label, style)
                for key, label in columns]

    plot_panels(path, [Panel(series(_LOSSES), "epoch", "loss"),
                       Panel(series(accuracies), "epoch", "top-1 accuracy (%)")], size=(10, 4), title=title)
