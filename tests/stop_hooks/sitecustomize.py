"""Loaded by every Python process a stop test starts (this folder goes first on its PYTHONPATH): with
``DEIT_DISTILL_TEST_PAUSE`` set, the command pauses at a known point and prints ``PAUSED`` until a stop signal has
reached it, so the test's signal lands there however fast or loaded the machine is.

``train:E:S`` pauses the trainer before step S of epoch E; ``cache:E:S`` a cache build before batch S of epoch E;
``eval`` an evaluation before it measures; ``plot`` a plot's atomic write with its temporary file written (the
moment a SIGTERM used to leave ``.curves.png.*.tmp`` behind). Every hook patches a name that the package had before
it handled signals, so the same tests run against that code and fail there.
"""

from __future__ import annotations

import os
import sys
import time

_PAUSE = os.environ.get("DEIT_DISTILL_TEST_PAUSE", "")
_DEADLINE_S = 300  # a signal that never comes fails the test instead of hanging it


def _stop_requested() -> bool:
    try:
        from timm_deit_distill.stops import requested
    except ImportError:
        try:  # where stops lived before the Python API (the trainer's loop moved below the commands)
            from timm_deit_distill.commands.stops import requested
        except ImportError:  # the code before stops were handled: the signal itself ends the wait
            return False
    return requested() is not None


def _pause(where: str) -> None:
    print(f"PAUSED {where} rank {os.environ.get('RANK', '0')}", flush=True)
    deadline = time.monotonic() + _DEADLINE_S
    while not _stop_requested():  # a stop held back (a checkpoint being written) is recorded, then we go on
        if time.monotonic() > deadline:
            raise SystemExit(f"no stop signal within {_DEADLINE_S} s of pausing at {where}")
        time.sleep(0.02)


def _pausing_progress(module: object, prefix: str, epoch: int, step: int) -> None:
    original = module.progress_bar

    def progress_bar(iterable, desc, **kwargs):
        shown = original(iterable, desc, **kwargs)
        if desc != f"{prefix} {epoch}":
            return shown

        def batches():
            for index, batch in enumerate(shown):
                if index == step:
                    _pause(f"{prefix} {epoch} step {step}")
                yield batch

        return batches()

    module.progress_bar = progress_bar


def _install(pause: str) -> None:
    kind, _, rest = pause.partition(":")
    if kind == "train":
        try:
            from timm_deit_distill.factory import loop as train
        except ImportError:  # the loop before it moved below the commands
            from timm_deit_distill.commands import train

        _pausing_progress(train, "train", *map(int, rest.split(":")))
    elif kind == "cache":
        from timm_deit_distill.cache import build

        _pausing_progress(build, "epoch", *map(int, rest.split(":")))
    elif kind == "eval":
        try:
            from timm_deit_distill.factory import evaluating as evaluate
        except ImportError:  # the measurement before it moved below the commands
            from timm_deit_distill.commands import evaluate

        original = evaluate.evaluate

        def paused(*args, **kwargs):
            _pause("eval")
            return original(*args, **kwargs)

        evaluate.evaluate = paused
    elif kind == "plot":
        from matplotlib.figure import Figure

        savefig = Figure.savefig

        def paused(self, path, *args, **kwargs):
            savefig(self, path, *args, **kwargs)
            _pause(f"plot {os.path.basename(str(path))}")

        Figure.savefig = paused
    else:
        sys.exit(f"DEIT_DISTILL_TEST_PAUSE={pause!r}: unknown pause")


if _PAUSE:
    _install(_PAUSE)
