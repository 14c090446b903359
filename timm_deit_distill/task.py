"""DeiT distillation in timm-style loops and in timm's Task API.

* :class:`DistilledStudent` wraps a distilled student and its teacher for loops that call
  ``loss_fn(model(x), y)``: in training it returns a :class:`DistilledOutput` (the student's two heads
  and the teacher's logits for the same batch), in eval the student's fused logits. Its ``state_dict()``
  is the student's alone, so checkpoints stay plain timm student checkpoints.
* :class:`DeiTDistillationTask` is a ``timm.task.TrainingTask`` with DeiT's loss (the numbers of
  :class:`~timm_deit_distill.losses.DistillationLoss`), for timm's train.py and other task-driven loops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from timm.task import TrainingTask
from timm.task.classification import resolve_classification_loss
from timm.utils import unwrap_model

from .losses import DistillationLoss
from .teacher import DistillationTeacher, TeacherError, fixed_input_hw

__all__ = ["DistilledOutput", "DistilledStudent", "DeiTDistillationTask", "student_data_config"]

_logger = logging.getLogger(__name__)


class DistilledOutput(NamedTuple):
    """A distilled student's training output together with the teacher's logits for the same input."""

    cls_logits: torch.Tensor
    dist_logits: torch.Tensor
    teacher_logits: torch.Tensor


def _require_distilled(student: nn.Module) -> nn.Module:
    unwrapped = unwrap_model(student)
    if not hasattr(unwrapped, "set_distilled_training"):
        raise ValueError(
            f"{type(unwrapped).__name__} has no distillation head (no set_distilled_training()). Use a "
            "distilled student such as deit_tiny_distilled_patch16_224 (any '*_distilled_*' model).")
    return unwrapped


def student_data_config(student: nn.Module) -> dict[str, Any]:
    """The student's ``mean``, ``std`` and real ``input_size`` (its patch embedding's, not a stale cfg's)."""
    from timm.data import resolve_model_data_config

    model = unwrap_model(student)
    cfg = resolve_model_data_config(model)
    hw = fixed_input_hw(model) or tuple(cfg["input_size"][-2:])
    return {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]), "input_size": (cfg["input_size"][0], *hw)}


def _resolve_teacher(
    teacher: str | nn.Module | DistillationTeacher, student: nn.Module, teacher_kwargs: Mapping[str, Any] | None
) -> DistillationTeacher:
    """A DistillationTeacher checked against the student's classes, adapted to the student's data config
    unless ``teacher_kwargs`` says what the data pipeline really uses (data_mean, data_std, input_size)."""
    classes = unwrap_model(student).num_classes
    if isinstance(teacher, DistillationTeacher):
        if teacher_kwargs:
            raise ValueError("teacher_kwargs apply when the task builds the teacher, not to a DistillationTeacher.")
        return DistillationTeacher.create(teacher, num_classes=classes)
    data = student_data_config(student)
    kwargs = {"data_mean": data["mean"], "data_std": data["std"], "input_size": data["input_size"],
              **dict(teacher_kwargs or {})}
    kwargs.setdefault("num_classes", classes)
    if kwargs["num_classes"] != classes:
        raise TeacherError(f"num_classes={kwargs['num_classes']} differs from the student's {classes} classes.")
    return DistillationTeacher.create(teacher, **kwargs)


class DistilledStudent(nn.Module):
    """A distilled student plus its teacher, for loops that call ``loss_fn(model(x), y)``.

    Training: returns ``DistilledOutput(cls_logits, dist_logits, teacher_logits)``, which
    ``DistillationLoss(...)(output, target)`` consumes. Eval: the student's fused logits, as timm's.
    ``state_dict()`` / ``load_state_dict()`` use the student's own keys (no ``student.`` prefix, no
    teacher), also when this module is nested in another. For EMA, average ``.student``, not this module.

    Args:
        student: a distilled timm model (``*_distilled_*``).
        teacher: a :class:`DistillationTeacher`, or anything ``DistillationTeacher.create`` accepts
            (then built for the student's classes and data config, with ``teacher_kwargs``).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: str | nn.Module | DistillationTeacher,
        *,
        teacher_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        _require_distilled(student).set_distilled_training(True)
        self.student = student
        self.teacher = _resolve_teacher(teacher, student, teacher_kwargs)
        self.register_state_dict_post_hook(_drop_student_prefix)
        self.register_load_state_dict_pre_hook(_add_student_prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor | DistilledOutput:
        if not self.training:
            return self.student(x)
        out = self.student(x)
        if isinstance(out, torch.Tensor):
            raise ValueError("The student returned one tensor in training: call set_distilled_training(True) on it.")
        cls_logits, dist_logits = out
        return DistilledOutput(cls_logits, dist_logits, self.teacher(x))

    # timm helpers (resolve_data_config, create_optimizer_v2) look these up on the model they are given.
    @property
    def num_classes(self) -> int:
        return unwrap_model(self.student).num_classes

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        return unwrap_model(self.student).pretrained_cfg

    @property
    def default_cfg(self) -> dict[str, Any]:
        return self.pretrained_cfg

    def no_weight_decay(self) -> set[str]:
        student = unwrap_model(self.student)
        names = student.no_weight_decay() if hasattr(student, "no_weight_decay") else set()
        return {f"student.{name}" for name in names}


_STUDENT = "student."


def _drop_student_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    inner = prefix + _STUDENT
    moved = [(k, state_dict.pop(k)) for k in [k for k in state_dict if k.startswith(inner)]]
    for key, value in moved:
        state_dict[prefix + key[len(inner):]] = value
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        metadata.pop(prefix + "teacher", None)  # the teacher's (empty) entry: nothing of it is saved
        root = inner[:-1]
        for key in [k for k in metadata if k == root or k.startswith(inner)]:
            metadata[prefix + key[len(inner):] if key != root else prefix[:-1]] = metadata.pop(key)


def _add_student_prefix(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool,
    missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
) -> None:
    inner = prefix + _STUDENT
    plain = [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]
    for key in plain:
        state_dict[inner + key[len(prefix):]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None and plain:
        root = prefix[:-1]
        for key in [k for k in list(metadata) if k == root or k.startswith(prefix)]:
            if key == root:
                metadata.setdefault(inner[:-1], metadata[key])
            elif not key.startswith(inner):
                metadata.setdefault(inner + key[len(prefix):], metadata[key])


class DeiTDistillationTask(TrainingTask):
    """DeiT distillation as a ``timm.task.TrainingTask`` (timm's train.py, or any task-driven loop).

    ``forward(input, target)`` returns ``loss``, ``output`` (class-head logits), ``task_loss`` and
    ``distill_loss`` (the unweighted, detached parts). The numbers are :class:`DistillationLoss`'s:
    DeiT's by default, timm's ``TokenDistillationTask`` soft term with ``soft_reduction='batchmean'``.
    ``trainable_module`` is the student; the teacher stays in eval, frozen, outside DDP and outside
    checkpoints (timm saves the eval model, the student).

    Args:
        student_model: a distilled timm model (``*_distilled_*``).
        teacher_model: a :class:`DistillationTeacher` or anything ``DistillationTeacher.create`` accepts;
            ``None`` only for ``distillation_type='none'``.
        criterion: the class-head loss; by default timm's ``create_classification_loss(**criterion_kwargs)``.
        distillation_type, alpha, tau, soft_reduction: as :class:`DistillationLoss`.
        teacher_kwargs: options for ``DistillationTeacher.create`` (checkpoint_path, use_ema, precision,
            data_mean/data_std/input_size of the real pipeline, ...) when the task builds the teacher.
    """

    _one_teacher_path = False  # set by prepare_distributed

    def __init__(
        self,
        student_model: nn.Module,
        teacher_model: str | nn.Module | DistillationTeacher | None,
        criterion: nn.Module | Callable[..., torch.Tensor] | None = None,
        distillation_type: str = "hard",
        alpha: float = 0.5,
        tau: float = 1.0,
        *,
        soft_reduction: str = "deit",
        criterion_kwargs: Mapping[str, Any] | None = None,
        teacher_kwargs: Mapping[str, Any] | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        # Validate the loss settings before the (possibly slow) teacher is built.
        criterion = resolve_classification_loss(criterion, self.device, criterion_kwargs=dict(criterion_kwargs or {}))
        self.distill_loss = DistillationLoss(criterion, None, distillation_type, alpha, tau,
                                             soft_reduction=soft_reduction)
        self.distillation_type = distillation_type
        if distillation_type == "none":
            if hasattr(unwrap_model(student_model), "set_distilled_training"):
                unwrap_model(student_model).set_distilled_training(True)
            self.teacher = None
        else:
            _require_distilled(student_model).set_distilled_training(True)
            if teacher_model is None:
                raise ValueError(f"distillation_type={distillation_type!r} needs a teacher_model.")
            kwargs = dict(teacher_kwargs or {})
            if not isinstance(teacher_model, DistillationTeacher):
                kwargs.setdefault("device", self.device)
            self.teacher = _resolve_teacher(teacher_model, student_model, kwargs or None)
        self.trainable_module = student_model
        if self.verbose:
            _logger.info("DeiTDistillationTask: %s, teacher=%s", self.distill_loss.extra_repr(),
                         self.teacher.name if self.teacher is not None else None)

    @property
    def criterion(self) -> nn.Module | Callable[..., torch.Tensor]:
        return self.distill_loss.base_criterion

    def train(self, mode: bool = True) -> DeiTDistillationTask:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # DistillationTeacher already refuses training; explicit for readers
        return self

    def prepare_distributed(self, device_ids: list | None = None, **ddp_kwargs: Any) -> DeiTDistillationTask:
        """Wrap the student alone in DistributedDataParallel; the teacher is never wrapped.

        A teacher whose path is still to be measured (precision ``'auto'``) is then measured on process 0's first
        batch alone and every process runs on that path (each measuring for itself could pick another precision).
        """
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.trainable_module = DDP(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        self._one_teacher_path = True
        return self

    def _agree_on_teacher_path(self, input: torch.Tensor) -> None:
        import torch.distributed as dist

        from .teacher.tuning import agree_on_path

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return  # one process: the teacher measures on its first batch itself
        teacher = self.teacher
        assert teacher is not None
        agree_on_path(teacher, lambda: teacher.select_path([input.detach()], batch_size=len(input)),
                      rank=dist.get_rank(), world_size=dist.get_world_size())

    def compile(self, backend: str = "inductor", mode: str | None = None, **compile_kwargs: Any) -> nn.Module:
        """Compile the student (also the eval model) and the teacher's forward, before DDP wrapping."""
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        self.eval_model = self.trainable_module
        if self.teacher is not None:
            self.teacher.compile(backend=backend, mode=mode, **compile_kwargs)
        return self.trainable_module

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        output = self.trainable_module(input)
        if self.teacher is not None and self.teacher.path is None and self._one_teacher_path:
            self._agree_on_teacher_path(input)
        teacher_logits = self.teacher(input) if self.teacher is not None else None
        loss = self.distill_loss.from_teacher_output(output, target, teacher_logits)
        cls_logits = output if isinstance(output, torch.Tensor) else output[0]
        return {
            "loss": loss,
            "output": cls_logits,
            "task_loss": self.distill_loss.last_base_loss,
            "distill_loss": self.distill_loss.last_distill_loss,
        }
