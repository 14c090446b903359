"""``curves.png``: training losses and evaluation accuracies per epoch, redrawn after every epoch.

Drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .atomic import atomic_path

__all__ = ["plot_curves"]

_LOSSES = [("train_loss", "train (total)"), ("train_task_loss", "train (class head)"),
           ("train_distill_loss", "train (distillation head)"), ("eval_loss", "eval")]
_ACCURACIES = [("eval_top1", "fused"), ("eval_top1_cls", "class head"), ("eval_top1_dist", "distillation head"),
               ("eval_top1_ema", "EMA (fused)"), ("teacher_top1", "teacher")]


def plot_curves(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, title: str = "") -> None:
    """Plot the ``summary.csv`` rows into ``path`` (PNG). Series with no values are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, series, ylabel in ((ax_loss, _LOSSES, "loss"), (ax_acc, _ACCURACIES, "top-1 accuracy (%)")):
        for key, label in series:
            points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
