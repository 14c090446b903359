"""What a DataLoader worker does with the signals meant for the whole job: it leaves stopping to its parent."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

__all__ = ["quiet_worker_init"]


def _exit_quietly(signum: int, frame: Any) -> None:
    os._exit(0)  # as torch's worker does for its parent's SIGTERM: the parent sees no failed worker


def quiet_worker_init(worker_id: int, then: Callable[[int], None] | None = None) -> None:
    """A loader worker's ``worker_init_fn``: Ctrl-C is ignored and SIGTERM ends the worker quietly; then ``then``.

    A terminal sends Ctrl-C to every process of the group, a scheduler SIGTERM to every process of the job. A
    worker that raised KeyboardInterrupt printed a traceback of its own; one that died of SIGTERM (torch's worker
    exits quietly only for its parent's) made its parent report "DataLoader worker is killed by signal" in the
    middle of stopping. The parent, which gets the signal too, shuts its workers down as it stops.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)
    if then is not None:
        then(worker_id)
