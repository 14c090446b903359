"""The run folder's text records: ``summary.csv`` (one row per epoch) and ``args.yaml``.

Both are rewritten whole and atomically each time, so a kill never leaves a torn file, and a resumed
run rewrites ``summary.csv`` from the rows stored in its checkpoint (no duplicated or missing epochs).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from typing import Any

import yaml

from .atomic import atomic_write_text

__all__ = ["UNLABELED_COLUMNS", "summary_columns", "write_summary", "read_summary", "read_summary_text",
           "write_args_yaml"]

# timm's summary.csv columns first (epoch, train_loss, eval_loss, eval_top1, eval_top5, lr), then ours.
_BASE = ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"]
_EXTRA = ["train_task_loss", "train_distill_loss", "eval_top1_cls", "eval_top5_cls", "eval_top1_dist",
          "eval_top5_dist"]
_TEACHER = ["teacher_top1", "teacher_agreement"]
# a run with unlabelled images: the class term on the labelled samples, on the unlabelled ones (--pseudo-labels),
# and the distillation term on each kind (train_task_loss / train_distill_loss stay the terms over their samples)
UNLABELED_COLUMNS = ["train_task_loss_labeled", "train_pseudo_loss", "train_distill_loss_labeled",
                     "train_distill_loss_unlabeled"]


def summary_columns(*, ema: bool, unlabeled: bool = False) -> list[str]:
    """The header of ``summary.csv``; ``eval_top1_ema``/``eval_top5_ema`` only when EMA is on, the
    :data:`UNLABELED_COLUMNS` only with unlabelled images."""
    return (_BASE + _EXTRA + (["eval_top1_ema", "eval_top5_ema"] if ema else []) + _TEACHER
            + (UNLABELED_COLUMNS if unlabeled else []))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_summary(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], *, ema: bool,
                  unlabeled: bool = False) -> None:
    """Write ``rows`` (dicts keyed by column) as ``summary.csv``; missing values are left empty."""
    columns = summary_columns(ema=ema, unlabeled=unlabeled)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    atomic_write_text(path, buf.getvalue())


def read_summary_text(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a (timm or deit-distill) ``summary.csv`` as dicts of the strings the run wrote."""
    with open(path, newline="", encoding="utf-8") as f:
        return [dict(row) for row in csv.DictReader(f)]


def read_summary(path: str | os.PathLike[str]) -> list[dict[str, float | int | None]]:
    """Rows of a ``summary.csv`` with numbers parsed (empty cells become None)."""
    out = []
    for row in read_summary_text(path):
        parsed: dict[str, float | int | None] = {}
        for key, value in row.items():
            if value == "":
                parsed[key] = None
            elif key == "epoch":
                parsed[key] = int(value)
            else:
                parsed[key] = float(value)
        out.append(parsed)
    return out


def write_args_yaml(path: str | os.PathLike[str], config: dict[str, Any]) -> None:
    """Write the resolved settings; ``deit-distill train -c args.yaml`` repeats the run."""
    atomic_write_text(path, yaml.safe_dump(config, default_flow_style=False, sort_keys=False))
