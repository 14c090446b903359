"""`deit-distill train`: timm's train.py loop with DeiT distillation through the distillation token.

The command line: argv into options (:mod:`.args`), the run through the Python API
(:func:`timm_deit_distill.factory.api.run_training`: :mod:`timm_deit_distill.factory.run` builds it,
:mod:`timm_deit_distill.factory.loop` trains it), refusals and failures in one line, exit codes, and the
stop signals. Run ``deit-distill train --help`` for the flags; ``--print-config`` shows what a command line
resolves to.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from ..errors import DataError, DeitDistillError, DiskFullError, NonFiniteLoss, one_line
from ..factory.api import run_training
from ..factory.run import Run
from ..factory.settings import TrainSettings, settings_from_options
from ..stops import Stopped, stop_of, stop_signals
from .args import UsageError, format_config, parse_args  # noqa: F401  (UsageError: the refusal, re-exported)
from .common import refuse, setup_logging

__all__ = ["main", "NonFiniteLoss"]

_logger = logging.getLogger("timm_deit_distill.train")  # the name the trainer's log lines always had


def _env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _current_epoch(run: Run) -> int:
    return run.history[-1]["epoch"] + 1 if run.history else run.start_epoch


def _kept(run: Run, fix: str) -> str:
    """What is left after a stop, and what to do: ``fix`` (e.g. "Fix the file"), then --resume the checkpoint kept,
    or, with none written yet, rerun the same command (nothing to resume). A named run folder (--experiment) that
    holds no checkpoint is refused as a run folder (run_folder.check_run_folder), so it must be deleted first; a
    dated one is not reused anyway: the rerun trains in a new folder."""
    last = os.path.join(run.output_dir or "", "last.pth.tar")
    if not (run.output_dir and os.path.exists(last)):
        if not run.output_dir:
            return f"No checkpoint had been written yet. {fix}, then rerun the same command."
        if run.settings.run.experiment:
            return (f"No checkpoint had been written yet, so there is nothing to resume. {fix}, then delete "
                    f"{run.output_dir} (it holds this run's first files only) and rerun the same command.")
        return (f"No checkpoint had been written yet, so there is nothing to resume. {fix}, then rerun the same "
                f"command (it trains in a new folder; {run.output_dir} holds no checkpoint and can be deleted).")
    epoch = f" (epoch {run.last_saved_epoch})" if run.last_saved_epoch is not None else ""
    return f"The last good checkpoint is kept: {last}{epoch}. {fix}, then --resume."


def _resume(run: Run) -> str:
    """The command that resumes the run from its last.pth.tar, in its own folder, with its own settings."""
    from ..run_folder import resume_command

    return resume_command(str(run.output_dir), world_size=run.world_size,
                          local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", run.world_size)))


def _disk_full(run: Run, error: DiskFullError) -> str:
    """A write that found the disk full: what it needed, that nothing is lost, and the command that resumes."""
    last = os.path.join(run.output_dir or "", "last.pth.tar")
    if not (run.output_dir and os.path.exists(last)):
        return f"{error} {_kept(run, 'Free space there')}"
    saved = getattr(run.saver, "last_epoch", None)  # set once this run replaced last.pth.tar
    epoch = saved if saved is not None else run.last_saved_epoch
    at = f" (epoch {epoch})" if epoch is not None else ""
    return (f"{error} Nothing is lost: {last}{at} is the last complete checkpoint and the partial file was removed. "
            f"Free space there, then resume: {_resume(run)}")


def _where(run: Run) -> str:
    """Where the loop stood, in the log's terms ("Train: EPOCH [STEP/STEPS]")."""
    if run.epoch_now is None:
        return "before its first step"
    if run.steps_done < run.updates_per_epoch:
        return f"in epoch {run.epoch_now} at step {run.steps_done}/{run.updates_per_epoch}"
    return f"in epoch {run.epoch_now} after its {run.updates_per_epoch} steps"


def _stop_line(run: Run | None, stop: Stopped) -> str:
    """Where a stop by a signal left the run and how to go on (the API has removed the files of a fresh run that
    saved no checkpoint: nothing to resume there, and they would make its folder refuse the rerun)."""
    if run is None or not run.output_dir:
        return f"stopped by {stop.name} before the run started; nothing was written. Rerun the same command to start."
    where = _where(run)
    last = os.path.join(run.output_dir, "last.pth.tar")
    if os.path.exists(last):
        epoch = f" (epoch {run.last_saved_epoch})" if run.last_saved_epoch is not None else ""
        return (f"stopped by {stop.name} {where}; the last checkpoint is kept: {last}{epoch}. Resume with: "
                f"{_resume(run)}")
    if not run.fresh:
        return (f"stopped by {stop.name} {where}, before it saved a checkpoint; {run.output_dir} is as it was. "
                "Rerun the same command to resume again.")
    if run.epoch_now is not None:
        where += ", before its first checkpoint"
    removed = run.discarded if run.primary else "nothing"
    if removed is None:
        return (f"stopped by {stop.name} {where}: nothing to resume. Delete {run.output_dir} (it holds this run's "
                "first files only) and rerun the same command.")
    return f"stopped by {stop.name} {where}: nothing to resume, and {removed}. Rerun the same command to start again."


def main(argv: Sequence[str] | None = None) -> int:
    """Run `deit-distill train`; returns 0 on success, 2 when the input is refused (also when a file it reads
    turns bad during training), 1 when training diverged or the disk filled up, 130 / 143 when SIGINT / SIGTERM
    stopped it."""
    try:
        args = parse_args(argv)
        settings = settings_from_options(args)
    except DeitDistillError as e:
        return refuse("train", e)
    if args.print_config:
        print(format_config(args, int(os.environ.get("WORLD_SIZE", "1"))), end="")
        return 0
    setup_logging()
    with stop_signals() as owner:
        return _main(settings, owner=owner)


def _main(settings: TrainSettings, *, owner: bool) -> int:
    """The run (:func:`~timm_deit_distill.factory.api.run_training`), its refusals and failures in one line; a
    stop reported by rank 0 when this command owns the process (``owner``), else passed on to the command that
    does."""
    started: list[Run] = []
    try:
        run_training(settings, on_start=started.append, announce=lambda e: refuse("train", e))
        return 0
    except DeitDistillError as e:
        run = started[0] if started else None
        if run is None or not run.looping:  # refused while setting up: nothing of the run's work was done
            if _env_rank() == 0 and not getattr(e, "reported", False):
                return refuse("train", e)
            return e.exit_code
        return _failed(run, e)
    except BaseException as e:
        # A stop, or (several processes) a collective that failed because another process stopped first.
        stop = stop_of(e)
        if stop is None:
            raise
        run = started[0] if started else None
        if not owner:
            if stop is e:
                raise
            raise stop from e
        if (run.primary if run is not None else _env_rank() == 0):
            print(f"deit-distill train: {_stop_line(run, stop)}", file=sys.stderr)
        return stop.exit_code


def _failed(run: Run, error: DeitDistillError) -> int:
    """A failure during training, in one line with what is kept and the way on."""
    if isinstance(error, NonFiniteLoss):
        if run.primary:
            _logger.error("Stopped: %s. Nothing was saved from this epoch. %s", error,
                          _kept(run, "Lower --lr, add --clip-grad, or check the data"))
        return 1
    if isinstance(error, DiskFullError):  # no input's fault (exit 1); only rank 0 writes the run's files
        if run.primary:
            print(f"deit-distill train: error: {_disk_full(run, error)}", file=sys.stderr)
        return error.exit_code
    # A file that turned bad mid-run (a cache chunk, an image): the same one line as a refusal.
    # An image is read by one rank only, so that rank speaks; a cache chunk is read by all, rank 0 speaks.
    if run.primary or isinstance(error, DataError):
        rank = f" (rank {run.rank})" if run.distributed else ""
        print(f"deit-distill train: error{rank}: stopped in epoch {_current_epoch(run)}: {one_line(error)} "
              f"{_kept(run, 'Fix the file')}", file=sys.stderr)
    return error.exit_code
