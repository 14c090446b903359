"""One way to get a teacher, for `deit-distill train`, `cache build` and `eval` (and their Python API):

    create (:func:`create_teacher`) -> take the path a resumed run or cache ran on, or measure one
    (:func:`select_teacher_path`) -> check it on validation images (:func:`check_teacher`)

:func:`ready_teacher` does the last two, :func:`get_teacher` all three. The trainer creates its teacher early (its
identity is part of what a ``--resume`` is checked against) and readies it once every cheaper check has passed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..data import LoaderSettings, build_check_loader
from ..teacher import DistillationTeacher, PathChoice, TeacherCheck, TeacherSettings
from ..teacher.tuning import agree_on_path

__all__ = ["create_teacher", "select_teacher_path", "check_teacher", "ready_teacher", "get_teacher"]

_logger = logging.getLogger("timm_deit_distill.factory")


def create_teacher(teacher: TeacherSettings, num_classes: int, data_config: Mapping[str, Any],
                   device: torch.device | str, label_names: Sequence[str] | None = None) -> DistillationTeacher:
    """The run's DistillationTeacher, adapted to the data pipeline (``data_config``: the student's)."""
    return DistillationTeacher.create(
        teacher.source, checkpoint_path=teacher.checkpoint_path, use_ema=teacher.use_ema,
        num_classes=num_classes, label_names=label_names,
        data_mean=data_config["mean"], data_std=data_config["std"], input_size=data_config["input_size"],
        teacher_input_size=teacher.input_size, precision=teacher.precision, compile=teacher.compile,
        channels_last=teacher.channels_last, device=device, teacher_mean=teacher.mean, teacher_std=teacher.std)


def select_teacher_path(model: DistillationTeacher, teacher: TeacherSettings, dataset: Any,
                        data_config: Mapping[str, Any], loader: LoaderSettings, *, seed: int, batch_size: int,
                        steps: int, rank: int = 0, world_size: int = 1) -> PathChoice:
    """Choose the teacher's path (:meth:`~timm_deit_distill.teacher.DistillationTeacher.select_path`) for a run of
    ``steps`` teacher batches of ``batch_size``, its agreement measured on the teacher check's seeded validation
    images (also with ``--no-teacher-check``).

    Under torchrun rank 0 measures and every process takes its choice: the processes of one run compute their
    targets on one path (measuring on each would compete for the same machine and could pick different paths).
    """
    def choose() -> PathChoice:
        check_loader = build_check_loader(dataset, dict(data_config), max_images=teacher.check_images,
                                          batch_size=loader.eval_batch_size, workers=loader.workers, seed=seed)
        return model.select_path(check_loader, batch_size=batch_size, steps=steps, min_agreement=teacher.min_agreement)

    return agree_on_path(model, choose, rank=rank, world_size=world_size)


def check_teacher(model: DistillationTeacher, teacher: TeacherSettings, dataset: Any,
                  data_config: Mapping[str, Any], loader: LoaderSettings, *, seed: int) -> TeacherCheck | None:
    """``model.check`` on a seeded subset of ``dataset`` (``teacher.check_images`` images, threshold
    ``teacher.min_top1`` or automatic); raises TeacherError below the threshold. With ``teacher.check`` off
    (``--no-teacher-check``) nothing is measured: a warning says so, and None is returned."""
    if not teacher.check:
        _logger.warning("Teacher check skipped (--no-teacher-check): teacher %s is not measured on validation images "
                        "before it teaches; a teacher near chance would distil noise without a word.", model.name)
        return None
    check_loader = build_check_loader(dataset, dict(data_config), max_images=teacher.check_images,
                                      batch_size=loader.eval_batch_size, workers=loader.workers, seed=seed)
    min_top1 = "auto" if teacher.min_top1 is None else teacher.min_top1
    return model.check(check_loader, max_images=teacher.check_images, min_top1=min_top1)


def ready_teacher(model: DistillationTeacher, teacher: TeacherSettings, dataset: Any, data_config: Mapping[str, Any],
                  loader: LoaderSettings, *, seed: int, batch_size: int, steps: int, rank: int = 0,
                  world_size: int = 1, resumed_path: str | None = None,
                  resumed_reason: str | None = None) -> TeacherCheck | None:
    """Put the teacher on its path and check it through exactly that path; returns the check (None when skipped).

    ``resumed_path`` (e.g. ``'bf16 eager'``) is the path a run or a cache this one continues ran on: it is taken
    without measuring (``resumed_reason`` says why), so the rest of the run teaches the targets the first part did.
    Otherwise the path is measured for ``steps`` teacher batches of ``batch_size`` (:func:`select_teacher_path`).
    The check (:func:`check_teacher`) comes last: a teacher near chance is refused before it teaches.
    """
    if resumed_path is not None:
        model.use_path(resumed_path, reason=resumed_reason or "the path the run it continues ran on")
    else:
        select_teacher_path(model, teacher, dataset, data_config, loader, seed=seed, batch_size=batch_size,
                            steps=steps, rank=rank, world_size=world_size)
    return check_teacher(model, teacher, dataset, data_config, loader, seed=seed)


def get_teacher(teacher: TeacherSettings, *, num_classes: int, data_config: Mapping[str, Any],
                device: torch.device | str, label_names: Sequence[str] | None, dataset: Any, loader: LoaderSettings,
                seed: int, batch_size: int, steps: int, rank: int = 0, world_size: int = 1,
                resumed_path: str | None = None,
                resumed_reason: str | None = None) -> tuple[DistillationTeacher, TeacherCheck | None]:
    """:func:`create_teacher`, then :func:`ready_teacher`: the teacher on its path, checked, and its check."""
    model = create_teacher(teacher, num_classes, data_config, device, label_names=label_names)
    check = ready_teacher(model, teacher, dataset, data_config, loader, seed=seed, batch_size=batch_size,
                          steps=steps, rank=rank, world_size=world_size, resumed_path=resumed_path,
                          resumed_reason=resumed_reason)
    return model, check
