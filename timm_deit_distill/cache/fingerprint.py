"""A cache's fingerprint: everything that decides its contents (dataset, views, teacher, store, library
versions), its sha256, and a field-by-field account of how two fingerprints differ."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from .store import canonical_json

__all__ = ["library_versions", "make_fingerprint", "fingerprint_id", "differences"]


def library_versions() -> dict[str, str]:
    """Versions of every library whose code decides a view's pixels or order."""
    import PIL
    import timm

    from ..version import __version__

    return {"torch": torch.__version__.split("+")[0], "timm": timm.__version__, "numpy": np.__version__,
            "pillow": PIL.__version__, "timm_deit_distill": __version__}


def make_fingerprint(*, dataset: dict[str, Any], views: dict[str, Any], teacher: dict[str, Any] | None,
                     store: str, versions: dict[str, str]) -> dict[str, Any]:
    """Everything that decides a cache's contents (plain JSON types)."""
    return {"dataset": dataset, "views": views, "teacher": teacher, "store": store, "versions": versions}


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """The sha256 a cache is known by: of its fingerprint's canonical JSON."""
    return hashlib.sha256(canonical_json(fingerprint).encode()).hexdigest()


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def differences(cached: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Every leaf field that differs, as ``'views.seed: cache 0, now 1'``."""
    a, b = _flatten(cached), _flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if canonical_json(a.get(key)) != canonical_json(b.get(key)):
            diffs.append(f"{key}: cache {a.get(key)!r}, now {b.get(key)!r}")
    return diffs
