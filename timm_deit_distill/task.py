"""DeiT distillation in timm-style loops and in timm's Task API.

* :class:`DistilledStudent` wraps a distilled student and its teacher for loops that call
  ``loss_fn(model(x), y)``: in training it returns a :class:`DistilledOutput` (the student's two heads
  and the teacher's logits for the same batch), in eval the student's fused logits. Its ``state_dict()``
  is the student's alone, so checkpoints stay plain timm student checkpoints.
* :class:`DeiTDistillationTask` is a ``timm.task.TrainingTask`` with DeiT's loss (the numbers of
  :class:`~timm_deit_distill.losses.DistillationLoss`) and a target source (:mod:`timm_deit_distill.targets`:
  the teacher online, or a cache replayed), for timm's train.py, this package's trainer and other task-driven
  loops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.task import TrainingTask
from timm.task.classification import resolve_classification_loss
from timm.task.distillation import FeatureDistillationTrainableModule
from timm.utils import unwrap_model

from .losses import DistillationLoss
from .targets import OnlineTargets, TargetSource
from .teacher import DistillationTeacher, PathChoice, TeacherError, fixed_input_hw

__all__ = ["DistilledOutput", "DistilledStudent", "DeiTDistillationTask", "student_data_config", "HEADS",
           "has_distillation_head", "feature_trainable", "feature_dim", "clip_parameters"]

_logger = logging.getLogger(__name__)


class DistilledOutput(NamedTuple):
    """A distilled student's training output together with the teacher's logits for the same input."""

    cls_logits: torch.Tensor
    dist_logits: torch.Tensor
    teacher_logits: torch.Tensor


#: How a student's heads learn: ``'auto'`` (DeiT: a distilled student's distillation head learns from the teacher,
#: a single-head student's one head learns both terms), ``'one'`` (timm's LogitDistillationTask: the student's one
#: output, a distilled student's fused one), ``'two'`` (timm's TokenDistillationTask: a distilled student only).
HEADS = ("auto", "one", "two")


def has_distillation_head(student: nn.Module) -> bool:
    """Whether the student's architecture has a distillation head (never judged by what its forward returns: a
    distilled model in eval mode, or with ``set_distilled_training(False)``, returns one tensor)."""
    unwrapped = unwrap_model(student)
    return hasattr(unwrapped, "set_distilled_training") or hasattr(unwrapped, "head_dist")


def feature_dim(model: nn.Module) -> int:
    """A timm model's pooled pre-logits size (what timm's FeatureDistillationTask detects: ``head_hidden_size``,
    else ``num_features``)."""
    from timm.task.distillation import FeatureDistillationTask

    return FeatureDistillationTask._detect_feature_dim(model)


def feature_trainable(student: nn.Module, teacher_dim: int, *, student_dim: int | None = None,
                      device: torch.device | None = None) -> FeatureDistillationTrainableModule:
    """timm's feature-distillation trainable module: the student and, where its pooled features' size differs
    from the teacher's, a linear projection onto them (trained with the student: give this module's parameters
    to the optimizer; the projection is checkpointed as timm's ``task_state['projection']``)."""
    student_dim = feature_dim(student) if student_dim is None else int(student_dim)
    projection = None
    if student_dim != int(teacher_dim):
        param = next(iter(student.parameters()), None)
        projection = nn.Linear(student_dim, int(teacher_dim), device=device or (param.device if param is not None
                                                                                 else None))
    return FeatureDistillationTrainableModule(student, projection)


def clip_parameters(model: nn.Module, *, exclude_head: bool) -> list[nn.Parameter]:
    """The parameters gradient clipping sees, as timm's train.py takes them from its task: timm's
    ``model_parameters`` (the last two, the classifier's, left out for AGC); for feature distillation the
    student's, then the projection's (timm's ``FeatureDistillationTask.get_clip_parameters``: the trainable
    module's last two parameters are the projection's, not the classifier's)."""
    from timm.models import model_parameters
    from timm.utils import unwrap_model

    trainable = unwrap_model(model)
    if not isinstance(trainable, FeatureDistillationTrainableModule):
        return list(model_parameters(model, exclude_head=exclude_head))
    parameters = list(model_parameters(trainable.student, exclude_head=exclude_head))
    if trainable.projection is not None:
        parameters.extend(trainable.projection.parameters())
    return parameters


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
    """DeiT distillation as a ``timm.task.TrainingTask`` (timm's train.py, this package's trainer, any task-driven
    loop).

    ``forward(input, target, views=None)`` returns ``loss``, ``output`` (class-head logits), ``task_loss`` and
    ``distill_loss`` (the unweighted, detached parts; :meth:`DistillationLoss.parts`). The teacher's targets come
    from a target source (:mod:`timm_deit_distill.targets`): the teacher run on the batch, or a teacher target
    cache replayed for the batch's ``views`` of the epoch set by :meth:`set_epoch`; the task does not know which.
    The numbers are :class:`DistillationLoss`'s: DeiT's by default, timm's ``TokenDistillationTask`` soft term
    with ``soft_reduction='batchmean'``. ``trainable_module`` is the student; the teacher stays in eval, frozen,
    outside DDP and outside checkpoints (timm saves the eval model, the student). With ``'none'`` a distilled
    student trains both heads on the labels through their average, as timm's train.py trains it.

    Nothing is measured in ``forward``: a teacher whose precision is ``'auto'`` runs eager fp32 until
    :meth:`select_teacher_path` measures its paths (under DDP process 0 measures, and every process takes its path).

    Args:
        student_model: a timm classifier: a distilled model (``*_distilled_*``), or any single-head model (its one
            head learns both terms: DeiT's "usual" and "hard" distillation).
        teacher_model: a target source (:class:`~timm_deit_distill.targets.OnlineTargets`,
            :class:`~timm_deit_distill.targets.CachedTargets`), a :class:`DistillationTeacher`, or anything
            ``DistillationTeacher.create`` accepts; ``None`` only for ``distillation_type='none'``.
        criterion: the class-head loss; by default timm's ``create_classification_loss(**criterion_kwargs)``.
        distillation_type, alpha, tau, soft_reduction, weights: as :class:`DistillationLoss`.
        heads: which heads learn (:data:`HEADS`): ``'auto'`` by the student's architecture (DeiT's families),
            ``'one'`` (timm's logit distillation), ``'two'`` (timm's token distillation: a distilled student).
        teacher_kwargs: options for ``DistillationTeacher.create`` (checkpoint_path, use_ema, precision,
            data_mean/data_std/input_size of the real pipeline, ...) when the task builds the teacher.
    """

    def __init__(
        self,
        student_model: nn.Module,
        teacher_model: TargetSource | str | nn.Module | DistillationTeacher | None,
        criterion: nn.Module | Callable[..., torch.Tensor] | None = None,
        distillation_type: str = "hard",
        alpha: float = 0.5,
        tau: float = 1.0,
        *,
        soft_reduction: str = "deit",
        weights: tuple[float, float] | None = None,
        heads: str = "auto",
        criterion_kwargs: Mapping[str, Any] | None = None,
        teacher_kwargs: Mapping[str, Any] | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        # Validate the loss settings before the (possibly slow) teacher is built.
        criterion = resolve_classification_loss(criterion, self.device, criterion_kwargs=dict(criterion_kwargs or {}))
        if heads not in HEADS:
            raise ValueError(f"heads must be one of {HEADS}, got {heads!r}.")
        self.feature = distillation_type == "feature"
        if self.feature:
            self._init_feature(student_model, teacher_model, criterion, tau, weights)
            return
        two = has_distillation_head(student_model) and heads != "one"
        if heads == "two" and not two:
            raise ValueError(f"{type(unwrap_model(student_model)).__name__} has no distillation head, which timm's token "
                             "distillation trains: use a distilled student, or logit distillation for any student.")
        self.distill_loss = DistillationLoss(criterion, None, distillation_type, alpha, tau,
                                             soft_reduction=soft_reduction, weights=weights, single_head=not two)
        self.distillation_type = distillation_type
        self.epoch: int | None = None
        self.teacher: DistillationTeacher | None = None
        self.target_source: TargetSource | None = None
        if hasattr(unwrap_model(student_model), "set_distilled_training"):
            # 'none' and timm's logit distillation train both heads through their average, as timm's train.py does
            unwrap_model(student_model).set_distilled_training(two and distillation_type != "none")
        if distillation_type != "none":
            if teacher_model is None:
                raise ValueError(f"distillation_type={distillation_type!r} needs a teacher_model.")
            self.target_source, self.teacher = _target_source(teacher_model, student_model, teacher_kwargs,
                                                              self.device)
        self.trainable_module = student_model
        if self.verbose:
            _logger.info("DeiTDistillationTask: %s, targets=%s", self.distill_loss.extra_repr(), self.target_source)

    def _init_feature(self, student_model: nn.Module, teacher: Any, criterion: Any, tau: float,
                      weights: tuple[float, float] | None) -> None:
        """timm's FeatureDistillationTask: ``student_model`` is its trainable module (student + projection: see
        :func:`feature_trainable`), ``teacher`` a source of the teacher's pooled features."""
        if not isinstance(unwrap_model(student_model), FeatureDistillationTrainableModule):
            raise ValueError("feature distillation trains timm's FeatureDistillationTrainableModule: pass "
                             "feature_trainable(student, teacher_dim) as student_model (its projection must reach "
                             "the optimizer).")
        if teacher is None or not isinstance(teacher, TargetSource) or isinstance(teacher, nn.Module):
            raise ValueError("feature distillation needs a target source of the teacher's features: "
                             "OnlineFeatures(teacher).")
        self.distill_loss = DistillationLoss(criterion, None, "none", None, tau, weights=weights or (1.0, 1.0))
        self.distillation_type = "feature"
        self.epoch = None
        self.target_source, self.teacher = teacher, getattr(teacher, "teacher", None)
        self.trainable_module = student_model
        self.eval_model = unwrap_model(student_model).student

    @property
    def projection(self) -> nn.Module | None:
        """Feature distillation's trained projection (None: none, or another kind of distillation)."""
        return unwrap_model(self.trainable_module).projection if self.feature else None

    @property
    def criterion(self) -> nn.Module | Callable[..., torch.Tensor]:
        return self.distill_loss.base_criterion

    def train(self, mode: bool = True) -> DeiTDistillationTask:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # DistillationTeacher already refuses training; explicit for readers
        return self

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next batches' views belong to (a cache replays that epoch's rows)."""
        self.epoch = int(epoch)
        if hasattr(self.target_source, "set_epoch"):
            self.target_source.set_epoch(self.epoch)

    def prepare_distributed(self, device_ids: list | None = None, **ddp_kwargs: Any) -> DeiTDistillationTask:
        """Wrap the student alone in DistributedDataParallel; the teacher is never wrapped. A teacher whose path
        is still to be measured: call :meth:`select_teacher_path` (process 0 measures, every process follows)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.trainable_module = DDP(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    def select_teacher_path(self, batches: Iterable[Any], *, steps: int | None = None,
                            batch_size: int | None = None) -> PathChoice | None:
        """Measure the teacher's paths on ``batches`` (a loader, or a list of batches: tensors or
        ``(inputs, ...)``), for a run of ``steps`` teacher batches, and run on the fastest that agrees with fp32
        (:meth:`DistillationTeacher.select_path`). Under torch.distributed process 0 measures and every process
        takes its path (each measuring for itself could pick another precision): every process must call it.
        None when the targets do not come from a teacher (a cache, or ``'none'``)."""
        import torch.distributed as dist

        from .teacher.tuning import agree_on_path

        teacher = self.teacher
        if teacher is None:
            return None
        group = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if group else (0, 1)
        return agree_on_path(teacher, lambda: teacher.select_path(batches, batch_size=batch_size, steps=steps),
                             rank=rank, world_size=world)

    def _feature_forward(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """timm's FeatureDistillationTask.forward, its expression, with the teacher's features from the source."""
        assert self.target_source is not None
        student_logits, student_features = self.trainable_module(input)
        task_loss = self.criterion(student_logits, target)
        teacher_features = self.target_source.targets(input, None, self.epoch).detach()
        kd_loss = F.mse_loss(student_features, teacher_features)
        loss = self.distill_loss.task_weight * task_loss + self.distill_loss.distill_weight * kd_loss
        return {"loss": loss, "output": student_logits, "task_loss": task_loss.detach(),
                "distill_loss": kd_loss.detach()}

    def compile(self, backend: str = "inductor", mode: str | None = None, **compile_kwargs: Any) -> nn.Module:
        """Compile the student (also the eval model) and the teacher's forward, before DDP wrapping."""
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        # feature distillation evaluates the student alone (timm's FeatureDistillationTask.get_eval_model)
        self.eval_model = unwrap_model(self.trainable_module).student if self.feature else self.trainable_module
        if self.teacher is not None:
            self.teacher.compile(backend=backend, mode=mode, **compile_kwargs)
        return self.trainable_module

    def forward(self, input: torch.Tensor, target: torch.Tensor,
                views: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The loss and its parts for a batch (``views``: the batch's view positions, which a cache replays)."""
        if self.feature:
            return self._feature_forward(input, target)
        source = self.target_source
        teacher_output = source.targets(input, views, self.epoch) if source is not None else None
        output = self.trainable_module(input)
        parts = self.distill_loss.parts(output, target, teacher_output)
        return {"loss": parts["loss"], "output": output if isinstance(output, torch.Tensor) else output[0],
                "task_loss": parts["task_loss"], "distill_loss": parts["distill_loss"]}


def _target_source(teacher: Any, student: nn.Module, teacher_kwargs: Mapping[str, Any] | None,
                   device: torch.device) -> tuple[TargetSource, DistillationTeacher | None]:
    """A target source, and the teacher behind it (None for a cache): a given source as it is, else the teacher
    checked against the student (see :func:`_resolve_teacher`) run online."""
    if isinstance(teacher, TargetSource) and not isinstance(teacher, nn.Module):
        if teacher_kwargs:
            raise ValueError("teacher_kwargs apply when the task builds the teacher, not to a target source.")
        return teacher, getattr(teacher, "teacher", None)
    kwargs = dict(teacher_kwargs or {})
    if not isinstance(teacher, DistillationTeacher):
        kwargs.setdefault("device", device)
    resolved = _resolve_teacher(teacher, student, kwargs or None)
    return OnlineTargets(resolved), resolved
