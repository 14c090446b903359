"""What the sources share: the class comparison, the quoting of a sample value, the image check before training."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from ...errors import DataError
from .base import SourceInfo

__all__ = ["short_value", "class_difference", "check_same_classes", "scan"]

_logger = logging.getLogger(__name__)
# How much of a sample value a message quotes: an image column's bytes would make a line of kilobytes.
_VALUE_CHARS = 60


def short_value(value: Any) -> str:
    """A sample value as a message quotes it: its type and a repr cut to about 60 characters."""
    text = repr(value)
    if len(text) > _VALUE_CHARS:
        text = text[:_VALUE_CHARS - 3] + "..."
    return f"{type(value).__name__} {text}"


def class_difference(first: Sequence[str], second: Sequence[str], first_what: str, second_what: str) -> str | None:
    """Where two class lists (names in index order) first differ, said in words; None when they are the same.

    E.g. "class 0 is '0' in train but '9' in validation (10 and 10 classes, the same names in another order)".
    """
    first, second = [str(n) for n in first], [str(n) for n in second]
    if first == second:
        return None
    i = next((i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b), min(len(first), len(second)))
    name_a = repr(first[i]) if i < len(first) else "missing"
    name_b = repr(second[i]) if i < len(second) else "missing"
    how = ", the same names in another order" if sorted(first) == sorted(second) else ""
    return (f"class {i} is {name_a} in {first_what} but {name_b} in {second_what} ({len(first)} and {len(second)} "
            f"classes{how})")


def check_same_classes(first: Sequence[str] | None, second: Sequence[str] | None, first_what: str, second_what: str,
                       fix: str) -> None:
    """Refuse (:class:`DataError`) two class lists that differ, naming the first differing class and ``fix``;
    nothing to compare when either is unknown (None or empty)."""
    if not first or not second:
        return
    difference = class_difference(first, second, first_what, second_what)
    if difference is not None:
        raise DataError(f"different classes: {difference}; fix: {fix}")


# --- the image check before training ----------------------------------------------------------------------------

def _verify(opener: Callable[[], Any]) -> str | None:
    try:
        with Image.open(opener()) as img:  # a path is opened and closed by Pillow
            img.verify()  # reads and checks the structure without decoding pixels
        return None
    except Exception as e:  # PIL raises many types for broken files
        return f"{type(e).__name__}: {e}"


def scan(ds: Any, opener: Callable[[int], Any], *, threads: bool) -> None:
    """Check every sample opens as an image; drop bad ones under --skip-bad-images, else refuse naming the first."""
    info: SourceInfo = ds.source_info
    source = info.source
    n = len(ds)
    if threads:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 4)) as pool:
            problems = list(pool.map(lambda i: _verify(lambda: opener(i)), range(n), chunksize=64))
    else:
        problems = [_verify(lambda i=i: opener(i)) for i in range(n)]
    bad = [i for i, p in enumerate(problems) if p is not None]
    ds.skipped_files = []
    if not bad:
        return
    first = source.sample_name(ds, bad[0])
    if not info.skip_bad_images:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"unreadable image {first}{more}: {problems[bad[0]]}; fix: replace it, or pass "
                        "--skip-bad-images to train without it.")
    if len(bad) == n:
        raise DataError(f"every image of {info.location} split {info.split} is unreadable; fix: check the data.")
    ds.skipped_files = [source.sample_name(ds, i) for i in bad]
    source.drop(ds, np.setdiff1d(np.arange(n), np.asarray(bad)))
    info.identity["skipped"] = len(bad)
    _logger.warning("skipped %d unreadable image(s) in %s split %s, e.g. %s", len(bad), info.location, info.split,
                    first)
