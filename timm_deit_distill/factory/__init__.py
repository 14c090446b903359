"""The middle floor: from options (command-line flags, Python keywords, YAML) to a finished run.

    options (:mod:`.options`) -> typed settings (:mod:`.settings`) -> built objects (:mod:`.builders`,
    :mod:`.teacher`) -> a run (:mod:`.run`) -> its epochs (:mod:`.loop`); :mod:`.api` is the Python entry
    (``timm_deit_distill.train`` / ``build_cache`` / ``evaluate``), which the commands call.

Below this floor the library takes typed arguments only; above it the commands parse argv, print refusals and own
the process. The builders' names are importable from here, as they were when this was one module; they load on
first use, so a command that only parses (``deit-distill push --help``) does not import torch for them.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public names that live in the submodules, imported on first access.
_LAZY = {
    **dict.fromkeys(("DataSettings", "StudentSettings", "DeviceInfo", "select_device", "init_device",
                     "check_model_name", "fixed_input_size", "open_datasets", "architecture_kwargs", "create_student",
                     "student_data_config", "create_criterion", "base_criterion", "create_task",
                     "initial_weights_origin"), "builders"),
    **dict.fromkeys(("create_teacher", "select_teacher_path", "check_teacher", "ready_teacher", "get_teacher"),
                    "teacher"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
