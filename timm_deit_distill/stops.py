"""Stops asked for by a signal: Ctrl-C (SIGINT) or a scheduler's SIGTERM end a command in one line, whole.

The commands own the process and install the handlers (:func:`stop_signals`, :func:`run_stoppable`); the code
they run (the trainer's loop, a cache build) marks where a stop may land (:func:`check`) and what must finish
first (:func:`deferred`), which does nothing when no command installed them (the Python API in a notebook).

Python turns SIGINT into a KeyboardInterrupt wherever the main thread stands, and SIGTERM, by default, ends the
process at once: an atomic write's temporary is left behind, a run's lock is never released in order. Inside
:func:`stop_signals` both raise :class:`Stopped`, a ``KeyboardInterrupt``, so every cleanup written for Ctrl-C
runs for SIGTERM too (atomic writes remove their temporaries, locks are released, loader workers are shut
down); the command says in one line where it stopped and how to go on, and exits with 128 + the signal's
number (130 for SIGINT, 143 for SIGTERM), what a shell reports for a process the signal ended.

* Only the first signal raises. Later ones are ignored while the first unwinds (torchrun passes the terminal's
  Ctrl-C on to processes that already got it, a process pool's parent passes a stop on; a cleanup must not be
  cut short), except a third Ctrl-C, which ends the process at once, as SIGINT would have.
* A process forked while they are in force (a DataLoader worker, until its own ``worker_init_fn`` sets what it
  does: :func:`~timm_deit_distill.data.workers.quiet_worker_init`) ignores both: its parent stops it.
* A signal that arrives while an exception is being handled (a peer process stopped first and a collective
  failed) is recorded, not raised: :func:`requested` tells the command it was a stop; :func:`check` raises it at
  the next safe point.
* :func:`deferred` holds a stop until a block has finished (an epoch's checkpoint and records are written whole).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Stopped", "STOP_SIGNALS", "stop_signals", "run_stoppable", "stop_of", "deferred", "check", "requested",
           "pool_worker", "working", "spawning"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """A stop asked for by ``signum`` (a ``KeyboardInterrupt``, so Ctrl-C's cleanups run for SIGTERM too)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by {self.name}")

    def __reduce__(self) -> tuple[Any, ...]:  # crosses a process pool's pipe with its signal
        return type(self), (self.signum,)

    @property
    def name(self) -> str:
        """The signal's name: ``SIGINT``, ``SIGTERM``."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended (130, 143)."""
        return 128 + self.signum


@dataclass
class _State:
    pid: int | None = None  # the process whose main thread the handlers serve (None: not installed)
    signum: int | None = None  # the first stop signal received
    count: int = 0  # stop signals received
    raised: bool = False
    deferring: int = 0
    idle: bool = False  # a pool worker between jobs: its parent shuts it down
    previous: dict[int, Any] = field(default_factory=dict)


_state = _State()


def _handler(signum: int, frame: Any) -> None:
    if os.getpid() != _state.pid or _state.idle:
        return  # a forked child (a DataLoader worker), a pool worker between jobs: the parent shuts it down
    _state.count += 1
    if _state.signum is None:
        _state.signum = signum
    if signum == signal.SIGINT and _state.count >= 3:  # Ctrl-C three times: end now, as SIGINT would have
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _state.raised or _state.deferring or sys.exc_info()[1] is not None:
        return  # once only; after the deferred block; or at the next check(), the exception in flight first
    _state.raised = True
    raise Stopped(signum)


def _reset() -> None:
    global _state
    _state = _State()


def _install(ignore: tuple[int, ...] = ()) -> None:
    for signum in STOP_SIGNALS:
        _state.previous[signum] = signal.signal(signum, signal.SIG_IGN if signum in ignore else _handler)
    _state.pid = os.getpid()


@contextlib.contextmanager
def stop_signals() -> Iterator[bool]:
    """SIGINT and SIGTERM raise :class:`Stopped` in the body; yields whether this call installed them.

    A command inside another (the demo's runs, its evaluations; a run in a pool worker) finds them installed
    and gets False: it tidies what it wrote and lets the stop go on to the outer command, which reports it.
    Outside the main thread nothing can be installed (False too).
    """
    if _state.pid == os.getpid() or threading.current_thread() is not threading.main_thread():
        yield False
        return
    _install()
    try:
        yield True
    finally:
        for signum, previous in _state.previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        _reset()


def stop_of(error: BaseException) -> Stopped | None:
    """The stop ``error`` is: itself, or, once a signal asked for a stop, whatever the stop caused (a collective
    that failed because another process stopped first); None for an error of its own."""
    return error if isinstance(error, Stopped) else requested()


def run_stoppable(command: str, work: Callable[[], int], report: Callable[[Stopped], str], *,
                  speaks: bool = True) -> int:
    """``work()`` (a command's body) with SIGINT and SIGTERM as :class:`Stopped`: a stop ends it with one line,
    ``deit-distill COMMAND: report(stop)`` on stderr (when ``speaks``: rank 0 only under torchrun), and returns
    128 + the signal's number. Inside another command, the stop goes on to that command, which reports it."""
    with stop_signals() as owner:
        try:
            return work()
        except BaseException as error:
            stop = stop_of(error)
            if stop is None:
                raise
            if not owner:
                if stop is error:
                    raise
                raise stop from error
            if speaks:
                print(f"deit-distill {command}: {report(stop)}", file=sys.stderr)
            return stop.exit_code


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a stop that arrives in the body until it has finished; then raise it (unless the body failed)."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
    if not _state.deferring:
        check()


def check() -> None:
    """Raise the stop a signal asked for and that could not be raised where it arrived (a safe point)."""
    if _state.signum is not None and not _state.raised and not _state.deferring and _state.pid == os.getpid():
        _state.raised = True
        raise Stopped(_state.signum)


def requested() -> Stopped | None:
    """The stop a signal has asked for in this process (raised or not), or None."""
    return Stopped(_state.signum) if _state.signum is not None and _state.pid == os.getpid() else None


def pool_worker() -> None:
    """For the rest of this process (a worker of a process pool whose parent passes a stop on as SIGTERM): SIGTERM
    raises :class:`Stopped` in a job (see :func:`working`) and is ignored between jobs (the parent shuts the pool
    down); SIGINT, which a terminal's Ctrl-C sends to every process of the group, is ignored."""
    _install(ignore=(signal.SIGINT,))
    _state.idle = True
    if hasattr(signal, "pthread_sigmask"):  # not on Windows
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked while spawned (see spawning())


@contextlib.contextmanager
def working() -> Iterator[None]:
    """A pool worker's job: a stop raises :class:`Stopped` in it (outside jobs the worker ignores stops)."""
    _state.idle = False
    try:
        yield
    finally:
        _state.idle = True
        _state.raised = False
        _state.signum = None
        _state.count = 0


@contextlib.contextmanager
def spawning() -> Iterator[None]:
    """Start processes with SIGINT blocked, so a Ctrl-C during their start-up reaches them only once they ignore
    it (:func:`pool_worker`); this process receives one that arrived meanwhile as the body ends."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks (nor process groups to signal)
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
