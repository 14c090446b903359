"""The middle floor: from options (command-line flags, Python keywords, YAML) to a finished run.

    options (:mod:`.options`) -> typed settings (:mod:`.settings`) -> built objects (:mod:`.builders`,
    :mod:`.teacher`) -> a run (:mod:`.run`) -> its epochs (:mod:`.loop`); :mod:`.api` is the Python entry
    (``timm_deit_distill.train`` / ``build_cache`` / ``evaluate``), which the commands call.

Below this floor the library takes typed arguments only; above it the commands parse argv, print refusals and own
the process. The builders' names are importable from here, as they were when this was one module.
"""

from __future__ import annotations

from .builders import (
    DataSettings,
    DeviceInfo,
    StudentSettings,
    architecture_kwargs,
    check_model_name,
    create_criterion,
    create_student,
    fixed_input_size,
    init_device,
    initial_weights_origin,
    open_datasets,
    select_device,
    student_data_config,
)
from .teacher import check_teacher, create_teacher, get_teacher, ready_teacher, select_teacher_path

__all__ = [
    "DataSettings", "StudentSettings", "DeviceInfo", "select_device", "init_device", "check_model_name",
    "fixed_input_size", "open_datasets", "architecture_kwargs", "create_student", "student_data_config",
    "create_teacher", "select_teacher_path", "check_teacher", "ready_teacher", "get_teacher", "create_criterion",
    "initial_weights_origin",
]
