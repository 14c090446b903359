"""The distillation teacher (see :mod:`.wrapper`): :class:`DistillationTeacher`, built from :mod:`.sources`,
fitted to the student's data by :mod:`.fit`, run at :mod:`.precision`, measured by :mod:`.check`, described by
:class:`TeacherSettings` (:mod:`.settings`)."""

from __future__ import annotations

from ..errors import TeacherError
from .check import TeacherCheck, auto_min_top1
from .fit import fixed_input_hw
from .precision import PRECISIONS, cpu_has_fast_bf16, resolve_precision
from .settings import TeacherSettings
from .sources import load_teacher_checkpoint
from .wrapper import DistillationTeacher

__all__ = [
    "DistillationTeacher",
    "TeacherError",
    "TeacherCheck",
    "TeacherSettings",
    "auto_min_top1",
    "fixed_input_hw",
    "PRECISIONS",
    "cpu_has_fast_bf16",
    "resolve_precision",
    "load_teacher_checkpoint",
]
