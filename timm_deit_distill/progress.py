"""The one progress display: a tqdm bar on a terminal, plain log lines (the caller's) everywhere else.

A bar redrawn into a log file or a shared screen is noise, so a bar is drawn only when stderr is a terminal;
otherwise the iterable comes back as it is and the caller logs a line every so often
(:func:`is_progress_bar` tells which it got).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

__all__ = ["progress_bar", "is_progress_bar"]

T = TypeVar("T")


def progress_bar(iterable: Iterable[T], desc: str, *, show: bool = True, **tqdm_kwargs: Any) -> Iterable[T]:
    """``iterable`` behind a transient tqdm bar on stderr when ``show`` and stderr is a terminal, else as it is."""
    if show and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, **tqdm_kwargs)
    return iterable


def is_progress_bar(obj: Any) -> bool:
    """Whether :func:`progress_bar` drew a bar (status goes beside it) or not (status goes into the log)."""
    return hasattr(obj, "set_postfix_str")
