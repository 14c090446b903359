"""The distillation teacher (see :mod:`.wrapper`): :class:`DistillationTeacher`, built from :mod:`.sources`,
fitted to the student's data by :mod:`.fit`, run on the path (:mod:`.precision` x eager/compiled) measured fastest
on the machine (:mod:`.paths`, :mod:`.tuning`, remembered by :mod:`.path_memory`), checked by :mod:`.check`,
described by :class:`TeacherSettings` (:mod:`.settings`)."""

from __future__ import annotations

from ..errors import TeacherError
from .check import TeacherCheck, auto_min_top1
from .fit import fixed_input_hw
from .path_memory import PathMemory
from .paths import COMPILE_CHOICES, MIN_AGREEMENT, PathChoice, PathMeasurement, TeacherPath
from .precision import PRECISIONS
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
    "COMPILE_CHOICES",
    "MIN_AGREEMENT",
    "TeacherPath",
    "PathChoice",
    "PathMeasurement",
    "PathMemory",
    "load_teacher_checkpoint",
]
