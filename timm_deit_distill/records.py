"""The run folder's text records: ``summary.csv`` (one row per epoch) and ``args.yaml``.

Both are rewritten whole and atomically each time, so a kill never leaves a torn file, and a resumed
run rewrites ``summary.csv`` from the rows stored in its checkpoint (no duplicated or missing epochs).

``summary.csv``'s columns mean what timm's train.py writes under them: ``eval_loss``/``eval_top1``/``eval_top5``
are the evaluated model's, and with ``--model-ema`` (EMA evaluated, i.e. not ``--model-ema-force-cpu``) that model
is the EMA, as in timm, whose metric also ranks ``model_best``. Every ``eval_*`` column of this package (the heads,
the teacher's agreement) describes the same weights; the raw weights' figures are under ``raw_eval_*``. Runs
written before this rule (``eval_*`` raw, ``eval_top1_ema``/``eval_top5_ema`` the EMA) are read by
:func:`current_row` and :func:`weights_view`.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from .atomic import atomic_write_text

__all__ = ["UNLABELED_COLUMNS", "summary_columns", "write_summary", "read_summary", "read_summary_text",
           "write_args_yaml", "EVAL_COLUMNS", "RAW_PREFIX", "current_row", "weights_view", "timm_rows"]

# timm's summary.csv columns first (epoch, train_loss, eval_loss, eval_top1, eval_top5, lr), then ours.
_BASE = ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"]
_EXTRA = ["train_task_loss", "train_distill_loss", "eval_top1_cls", "eval_top5_cls", "eval_top1_dist",
          "eval_top5_dist"]
_TEACHER = ["teacher_top1", "teacher_agreement"]
# a run with unlabelled images: the class term on the labelled samples, on the unlabelled ones (--pseudo-labels),
# and the distillation term on each kind (train_task_loss / train_distill_loss stay the terms over their samples)
UNLABELED_COLUMNS = ["train_task_loss_labeled", "train_pseudo_loss", "train_distill_loss_labeled",
                     "train_distill_loss_unlabeled"]


#: The columns that describe the evaluated weights (the EMA's when it is evaluated, as timm's train.py).
EVAL_COLUMNS = ("eval_loss", "eval_top1", "eval_top5", "eval_top1_cls", "eval_top5_cls", "eval_top1_dist",
                "eval_top5_dist")
#: The raw weights' figures, beside an evaluated EMA: ``raw_eval_top1`` etc.
RAW_PREFIX = "raw_"
_LEGACY_EMA = {"eval_top1_ema": "eval_top1", "eval_top5_ema": "eval_top5"}  # runs before the timm rule
# What a run before the timm rule measured of the raw weights (its agreement too: its teacher ran beside them).
_RAW_FOLLOWS = (*EVAL_COLUMNS, "teacher_agreement")


def summary_columns(*, ema: bool, unlabeled: bool = False) -> list[str]:
    """The header of ``summary.csv``. ``ema``: the EMA is evaluated (``--model-ema`` without
    ``--model-ema-force-cpu``): ``eval_*`` are then its figures and ``raw_eval_*`` the raw weights'. ``unlabeled``:
    the :data:`UNLABELED_COLUMNS` of a run with unlabelled images."""
    raw = [RAW_PREFIX + c for c in EVAL_COLUMNS] if ema else []
    return _BASE + _EXTRA + raw + _TEACHER + (UNLABELED_COLUMNS if unlabeled else [])


def current_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A summary row in today's columns: a row of a run from before the timm rule (raw ``eval_*`` beside
    ``eval_top1_ema``) has its EMA figures moved to ``eval_top1``/``eval_top5`` and its raw ones to ``raw_eval_*``
    (its EMA's loss and heads were not measured: left empty). Today's rows come back unchanged."""
    if not any(row.get(k) not in (None, "") for k in _LEGACY_EMA):
        return {k: v for k, v in row.items() if k not in _LEGACY_EMA}
    out = {k: v for k, v in row.items() if k not in _LEGACY_EMA and k not in _RAW_FOLLOWS}
    out.update({RAW_PREFIX + k: row.get(k) for k in _RAW_FOLLOWS})
    out.update({k: None for k in _RAW_FOLLOWS})
    out.update({column: row.get(legacy) for legacy, column in _LEGACY_EMA.items()})
    return out


def weights_view(row: Mapping[str, Any], weights: str) -> dict[str, Any]:
    """The figures of one set of weights in a summary row (either layout), under the ``eval_*`` names:
    ``weights='ema'`` gives the EMA's (None where the row has no evaluated EMA), ``'raw'`` the raw weights'. A row
    with ``raw_eval_*`` columns had its EMA evaluated, even where the raw weights' cells are empty (timm's
    train.py does not write them: :func:`timm_rows`)."""
    row = current_row(row)
    has_ema = any(RAW_PREFIX + k in row for k in EVAL_COLUMNS)
    out = {k: v for k, v in row.items() if not k.startswith(RAW_PREFIX)}
    if weights == "raw" and has_ema:
        out.update({k: row.get(RAW_PREFIX + k) for k in _RAW_FOLLOWS})
    elif weights == "ema" and not has_ema:
        out.update({k: None for k in _RAW_FOLLOWS})
    return out


def timm_rows(rows: Sequence[Mapping[str, Any]], *, ema_evaluated: bool) -> list[dict[str, Any]]:
    """Rows of timm train.py's ``summary.csv`` in this package's columns. With ``--model-ema`` (not
    ``--model-ema-force-cpu``) timm's ``eval_*`` are the EMA's, and the raw weights' figures were not written:
    their ``raw_eval_*`` cells are empty."""
    if not ema_evaluated:
        return [dict(row) for row in rows]
    return [{**{RAW_PREFIX + k: "" for k in EVAL_COLUMNS}, **row} for row in rows]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_summary(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], *, ema: bool,
                  unlabeled: bool = False) -> None:
    """Write ``rows`` (dicts keyed by column) as ``summary.csv``; missing values are left empty. Keys of the
    rows outside the columns (a resumed older run's ``raw_teacher_agreement``) get columns of their own, last."""
    columns = summary_columns(ema=ema, unlabeled=unlabeled)
    columns += list(dict.fromkeys(k for row in rows for k in row if k not in columns and not k.startswith("_")))
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


def write_args_yaml(path: str | os.PathLike[str], config: dict[str, Any], *, note: str | None = None) -> None:
    """Write the resolved settings; ``deit-distill train -c args.yaml`` repeats the run. ``note``: a comment at
    the top of the file (YAML readers skip it)."""
    head = "".join(f"# {line}\n" for line in note.splitlines()) if note else ""
    atomic_write_text(path, head + yaml.safe_dump(config, default_flow_style=False, sort_keys=False))
