"""DeiT-style distillation through attention for timm.

Importing the package registers the distilled DeiT variants with timm's model registry; nothing
else happens at import (no network, no file I/O). Heavier pieces load lazily on first use, among them
the Python API: ``timm_deit_distill.train(**options)``, ``build_cache(**options)`` and ``evaluate(**options)``,
whose keywords are the command line's flags (``python -m timm_deit_distill train ...`` is the command line).
"""

from __future__ import annotations

import importlib
from typing import Any

from . import models  # noqa: F401  (registers the models with timm)
from .models import DISTILLED_VARIANTS, PLUGIN_VARIANTS
from .version import __version__

# Public names that live in submodules, imported on first access so `import timm_deit_distill`
# stays as cheap as registering the models.
_LAZY = {
    "DistillationLoss": "losses",
    "DistillationTeacher": "teacher",
    "TeacherError": "teacher",
    "TeacherCheck": "teacher",
    "DeitDistillError": "errors",
    "DistilledOutput": "task",
    "DistilledStudent": "task",
    "DeiTDistillationTask": "task",
    "save_pretrained": "hub",
    "push_to_hub": "hub",
    "pull": "hub",
    "load_model": "hub",
    # the Python API: a whole run, cache build or evaluation as one call (keywords = the command line's flags)
    "train": "factory.api",
    "build_cache": "factory.api",
    "evaluate": "factory.api",
    "TrainResult": "factory.api",
    "EvalResult": "factory.api",
    "TrainSettings": "factory.settings",
}

__all__ = ["DISTILLED_VARIANTS", "PLUGIN_VARIANTS", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
