"""The Python API: a whole run as one call, with the command line's options as keywords.

    import timm_deit_distill
    result = timm_deit_distill.train(data_dir="digits", model="deit_tiny_distilled_patch4_32", epochs=1,
                                     distill_teacher="resnet10t", distill_teacher_path="t.pth.tar",
                                     output="runs", experiment="a")
    result.run_dir, result.summary, result.best_metric, result.best_epoch

Every flag of `deit-distill train` is a keyword with its dest name (``--batch-size`` is ``batch_size=``), checked
as a ``-c`` file's values are and layered as the command line is (defaults < ``recipe=`` < ``config=`` <
keywords); ``settings=`` takes :class:`~timm_deit_distill.factory.settings.TrainSettings` instead. The same for
:func:`build_cache` and :func:`evaluate`. Refusals and failures raise the package's errors
(:class:`~timm_deit_distill.errors.DeitDistillError`), never ``SystemExit``; progress goes to ``logging`` (which the
API does not configure: the command line does). `deit-distill train`, `cache build`, `eval` and the demo call
these functions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import DeitDistillError, UsageError
from ..stops import stop_of
from .options import eval_options_from_keywords, eval_parser, options_from_keywords, train_parser
from .settings import EvalSettings, TrainSettings, eval_settings_from_options, settings_from_options

__all__ = ["TrainResult", "EvalResult", "train", "train_settings", "run_training", "build_cache", "evaluate",
           "eval_settings"]

_logger = logging.getLogger("timm_deit_distill.api")


@dataclass(frozen=True)
class TrainResult:
    """What a run left: its folder, its summary rows (as summary.csv holds them) and its best checkpoint's metric
    and epoch (None when no epoch was evaluated)."""

    run_dir: str
    summary: list[dict[str, Any]]
    best_metric: float | None
    best_epoch: int | None

    @property
    def checkpoint(self) -> str:
        """The run's last checkpoint (``last.pth.tar``)."""
        return os.path.join(self.run_dir, "last.pth.tar")


def train_settings(**options: Any) -> TrainSettings:
    """The typed settings of `deit-distill train` options given as keywords (see :func:`train`), every check run."""
    return settings_from_options(options_from_keywords(train_parser(), options, what="timm_deit_distill.train()"))


def train(*, settings: TrainSettings | None = None, **options: Any) -> TrainResult:
    """Train a student, exactly as `deit-distill train` with the same options does; returns what the run left.

    ``options`` are the command line's flags by dest name (``data_dir=``, ``model=``, ``distill_teacher=``,
    ``distill_type=``, ``epochs=``, ``output=``, ``experiment=``, ``batch_size=``, ..., ``recipe=`` and
    ``config=`` as ``--recipe`` and ``-c``); or ``settings=`` (typed, :func:`train_settings` makes them).
    Raises the package's errors (one line each, naming the fix) before anything is written when an input cannot
    work; :class:`~timm_deit_distill.errors.NonFiniteLoss` and friends when training fails.
    """
    if settings is not None and options:
        raise UsageError(f"timm_deit_distill.train(): settings= with keywords ({', '.join(sorted(options))}); pass "
                         "one: the settings, or the keywords (dataclasses.replace changes typed settings).")
    return run_training(settings if settings is not None else train_settings(**options))


def run_training(settings: TrainSettings, *, on_start: Callable[[Any], None] | None = None,
                 announce: Callable[[DeitDistillError], None] | None = None) -> TrainResult:
    """Build the run (:func:`~timm_deit_distill.factory.run.build_run`) and train it
    (:func:`~timm_deit_distill.factory.loop.run_epochs`).

    ``on_start`` receives the Run once its folder is claimed (the command line reports a stop or a failure from
    it); ``announce`` says rank 0's refusals under torchrun first. A stop (Ctrl-C, or a command's SIGTERM) of a
    fresh run that saved no checkpoint removes what it wrote (nothing to resume, and the files would make the
    folder refuse the rerun); what was removed is on ``run.discarded``. The run folder is released and a process
    group this run started is ended, however it ends.
    """
    from .loop import run_epochs
    from .run import build_run

    started: list[Any] = []

    def start(run: Any) -> None:
        started.append(run)
        if on_start is not None:
            on_start(run)

    group_before = _process_group()
    try:
        run = build_run(settings, on_start=start, announce=announce)
        best_metric, best_epoch = run_epochs(run)
        return TrainResult(run_dir=str(run.output_dir), summary=_summary_rows(run),
                           best_metric=best_metric, best_epoch=best_epoch)
    except BaseException as error:
        if started and (isinstance(error, KeyboardInterrupt) or stop_of(error) is not None):
            _tidy_after_stop(started[0])
        raise
    finally:
        if started:
            started[0].close()
        if not group_before and _process_group():
            torch.distributed.destroy_process_group()


def _process_group() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _tidy_after_stop(run: Any) -> None:
    """After a stop: rank 0 removes the files of a fresh run that saved no checkpoint (see :func:`run_training`)."""
    last = os.path.join(str(run.output_dir), "last.pth.tar")
    if run.output_dir and run.fresh and run.primary and not os.path.exists(last):
        run.discarded = run.discard_unsaved()


def _summary_rows(run: Any) -> list[dict[str, Any]]:
    """The run's summary.csv rows, as read back (rank 0 wrote it; the others return their own history)."""
    from ..records import read_summary

    path = os.path.join(str(run.output_dir), "summary.csv")
    if run.primary and os.path.exists(path):
        return read_summary(path)
    return [dict(row) for row in run.history]


# ----------------------------------------------------------------------------------------------------------
# Cache build and evaluation


def build_cache(*, out: str | None = None, store: str = "hard", settings: TrainSettings | None = None,
                **options: Any) -> dict[str, Any]:
    """Build a teacher target cache, exactly as `deit-distill cache build` with the same options does; returns its
    manifest (what ``cache info`` reads).

    ``out`` and ``store`` are the command's ``--out`` and ``--store`` (hard, topk:K, full, full:fp16); the other
    keywords are `deit-distill train`'s options (its data, augmentation, teacher and ``epochs``), or ``settings=``.
    Rerun on the same ``out`` to resume or extend it.
    """
    from ..cache import CacheStore
    from .caching import build_teacher_cache, check_cache_output

    check_cache_output(out)
    parsed = CacheStore.parse(store)
    if settings is not None and options:
        raise UsageError(f"timm_deit_distill.build_cache(): settings= with keywords ({', '.join(sorted(options))}); "
                         "pass one.")
    if settings is None:
        settings = settings_from_options(options_from_keywords(train_parser(), options,
                                                               what="timm_deit_distill.build_cache()"))
    assert out is not None
    return build_teacher_cache(settings, out=out, store=parsed)


@dataclass(frozen=True)
class EvalResult:
    """What an evaluation measured (``results``: what eval.json holds) and where its JSON went (None: nowhere)."""

    results: dict[str, Any]
    json_path: str | None


def eval_settings(**options: Any) -> EvalSettings:
    """The typed settings of `deit-distill eval` options given as keywords, every check run."""
    namespace = eval_options_from_keywords(eval_parser(), options, what="timm_deit_distill.evaluate()")
    return eval_settings_from_options(namespace)


def evaluate(*, settings: EvalSettings | None = None, on_result: Callable[[dict[str, Any]], None] | None = None,
             written: list[str] | None = None, **options: Any) -> EvalResult:
    """Evaluate a checkpoint (or a model's pretrained weights) as `deit-distill eval` with the same options does:
    per-head top-1/top-5, with a teacher its top-1 and agreement; the files it writes (``json=``, else next to the
    checkpoint; ``results_file=``, ``predict=``) are checked before the measurement.

    ``on_result`` sees the results before any file is written; ``written`` receives a line per file written.
    """
    from .evaluating import check_outputs, run_evaluation, write_outputs

    if settings is not None and options:
        raise UsageError(f"timm_deit_distill.evaluate(): settings= with keywords ({', '.join(sorted(options))}); "
                         "pass one.")
    settings = settings if settings is not None else eval_settings(**options)
    check_outputs(settings)
    results = run_evaluation(settings)
    if on_result is not None:
        on_result(results)
    lines = written if written is not None else []
    json_path = write_outputs(settings, results, lines)
    if written is None:
        for line in lines:
            _logger.info("%s", line)
    return EvalResult(results=results, json_path=json_path)
