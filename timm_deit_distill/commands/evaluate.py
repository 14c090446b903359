"""`deit-distill eval`: per-head accuracy of a checkpoint and its agreement with a teacher, printed and
written as JSON (the work is :func:`timm_deit_distill.factory.api.evaluate`; the measurement
:func:`timm_deit_distill.evaluation.evaluate`).

It also takes the command line of timm's ``validate.py``: a positional data folder, ``--model NAME``,
``--checkpoint``, ``--pretrained``, ``--num-samples`` and ``--results-file`` (validate.py's summary row,
CSV or ``--results-format json``), so a timm user changes the program name and gets the same numbers."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import DeitDistillError, DiskFullError
from ..stops import Stopped, run_stoppable
from .common import ArgumentParser, refuse

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The `deit-distill eval` parser of the command line (declared in :mod:`timm_deit_distill.factory.options`)."""
    from ..factory.options import EVAL_PROG, eval_parser
    from .args import HelpFormatter

    return eval_parser(EVAL_PROG, ArgumentParser, HelpFormatter)


def _format(result: dict[str, Any]) -> str:
    weights = {"ema": "EMA weights", "raw": "raw weights", "plain": "plain state dict",
               "pretrained": "pretrained weights"}[result["weights"]]
    epoch = f" epoch {result['epoch']}" if result["epoch"] is not None else ""
    lines = [f"{result['model']}{epoch} ({weights}) on {result['count']} images of {result['split']}:"]
    for name, m in result["heads"].items():
        lines.append(f"  {name:<6} top-1 {m['top1']:6.2f}%  top-5 {m['top5']:6.2f}%")
    if result["teacher"]:
        t = result["teacher"]
        lines.append(f"  teacher top-1 {t['top1']:6.2f}%  agreement with fused student {100 * t['agreement']:.2f}%")
        if t.get("check"):
            c = t["check"]
            threshold = "no threshold" if c["min_top1"] is None else f"threshold {c['min_top1']:.2f}%"
            lines.append(f"  teacher check before evaluating: top-1 {c['top1']:.2f}% on {c['images']} images ({threshold})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`deit-distill eval`; returns the exit code (2 for bad input, with a message and no traceback; 130 / 143 when
    SIGINT / SIGTERM stopped it: its files are written whole at the end, never in part)."""
    import shlex

    argv = list(sys.argv[1:] if argv is None else argv)

    def stopped(stop: Stopped) -> str:
        return (f"stopped by {stop.name}; eval writes its files whole once it has measured, so nothing partial was "
                f"written. Rerun the same command: {shlex.join(['deit-distill', 'eval', *argv])}")

    return run_stoppable("eval", lambda: _evaluate_command(argv), stopped)


def _evaluate_command(argv: Sequence[str]) -> int:
    from ..factory.api import evaluate
    from ..factory.settings import eval_settings_from_options

    args = build_parser().parse_args(argv)
    try:
        settings = eval_settings_from_options(args)
    except DeitDistillError as e:
        return refuse("eval", e)
    written: list[str] = []
    shown: list[dict[str, Any]] = []

    def show(result: dict[str, Any]) -> None:
        shown.append(result)
        print(_format(result))
        print(json.dumps(result, indent=2) + "\n", end="")

    try:
        evaluate(settings=settings, on_result=show, written=written)
    except DiskFullError as e:  # no input's fault (exit 1); the results, when computed, are printed above
        _say(written)
        hint = (" The results are printed above (JSON included); for the file, free space there or rerun with "
                "--json elsewhere." if shown else " Free space there (or pass --predict elsewhere) and rerun.")
        return refuse("eval", e, hint=hint)
    except (DeitDistillError, ValueError, FileNotFoundError) as e:  # refusals name the fix (timm's too)
        _say(written)
        return refuse("eval", e)
    _say(written)
    return 0


def _say(written: list[str]) -> None:
    for line in written:
        print(line, file=sys.stderr)
