"""DeiT's distillation loss, numerically identical to facebookresearch/deit's ``losses.py``.

Total loss ``(1 - alpha) * base + alpha * distill`` where ``distill`` is

* ``'none'``: nothing, the base loss alone;
* ``'hard'``: cross-entropy of the distillation logits against the teacher's argmax;
* ``'soft'``: ``KL(softmax(teacher / tau) || softmax(dist / tau)) * tau**2``, summed and divided by
  ``B * C`` with ``soft_reduction='deit'`` (DeiT's choice) or by ``B`` with ``'batchmean'`` (timm's
  ``TokenDistillationTask`` and the textbook). The two differ by exactly the class count ``C``:
  a ``'batchmean'`` soft term is 1000x DeiT's on ImageNet, so ``alpha`` does not transfer between them.

One loss serves three training loops:

* DeiT's engine: ``loss(inputs, outputs, labels)`` runs the teacher on ``inputs`` itself;
* timm-style loops: ``loss(outputs, labels)`` with ``outputs`` a ``DistilledOutput`` from
  :class:`timm_deit_distill.task.DistilledStudent` (it carries the teacher's logits);
* trainers and cache replay: ``loss.parts(outputs, labels, teacher_output)`` (the loss and its parts) or
  ``loss.from_teacher_output(outputs, labels, teacher_output)`` (the loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DistillationLoss", "DistillSettings", "DISTILLATION_TYPES", "TEACHER_TYPES", "LOGIT_TYPES",
           "SOFT_REDUCTIONS", "FAMILIES", "KD_TASKS", "KD_LOSS_TYPES", "WEIGHT_MODES"]

#: Every distillation type: the one list the options, the trainer, the Task and the cache read.
DISTILLATION_TYPES = ("none", "soft", "hard")
#: The types with a distillation term, which need a teacher (or its cached targets): all but 'none'.
TEACHER_TYPES = tuple(t for t in DISTILLATION_TYPES if t != "none")
#: The types whose term needs the teacher's logits, not only its argmax (a cache of labels cannot replay them).
LOGIT_TYPES = ("soft",)
SOFT_REDUCTIONS = ("deit", "batchmean")

_NOT_DISTILLED = (
    "distillation_type={kind!r} needs the student's (cls_logits, dist_logits) pair, but the model returned "
    "a single tensor. Use a distilled model (a '*_distilled_*' architecture such as "
    "deit_tiny_distilled_patch16_224) in training mode with model.set_distilled_training(True), "
    "or use distillation_type='none'."
)


#: The two families of distillation spellings: DeiT's (``--distill-*``, alpha) and timm train.py's (``--kd-*``).
FAMILIES = ("deit", "timm")
#: timm train.py's ``--kd-distill-type``: its LogitDistillationTask, TokenDistillationTask, FeatureDistillationTask.
KD_TASKS = ("logit", "token", "feature")
#: timm's ``--kd-loss-type`` values (its LogitDistillationTask supports 'kl' alone).
KD_LOSS_TYPES = ("kl",)
#: How the two terms are weighted: DeiT's ``(1 - alpha, alpha)``, and timm's three modes (its tasks' docstrings).
WEIGHT_MODES = ("deit", "independent", "complementary", "equal")


@dataclass(frozen=True)
class DistillSettings:
    """The distillation a run does, in the family it was spelled in.

    ``type`` is the term on the logits (``'none'``, ``'soft'``, ``'hard'``; ``'feature'`` for timm's feature
    distillation), ``tau`` its temperature, ``soft_reduction`` the soft KL's divisor. ``family`` says whose
    meaning the weights have:

    * ``'deit'`` (``--distill-*``, ``--teacher-model``, ``--distillation-*``): ``(1 - alpha) * task + alpha *
      distill``; on a single-head student both terms use the one head (DeiT's "usual"/"hard" distillation).
    * ``'timm'`` (``--kd-model-name`` and its companions): ``kd_distill_type`` is timm's task (``logit``,
      ``token``, ``feature``); ``task_loss_weight`` / ``distill_loss_weight`` are timm's flags as given (None:
      not given), weighted in timm's three modes (:attr:`weight_mode`); ``alpha`` is None.
    """

    type: str
    alpha: float | None
    tau: float
    soft_reduction: str
    family: str = "deit"
    kd_distill_type: str | None = None
    task_loss_weight: float | None = None
    distill_loss_weight: float | None = None
    kd_loss_type: str = "kl"
    kd_student_feature_dim: int | None = None
    kd_teacher_feature_dim: int | None = None

    @property
    def weight_mode(self) -> str:
        """``'deit'``, or timm's mode: ``'independent'`` (distill weight given; task weight defaults to 1.0),
        ``'complementary'`` (task weight alone: distill = 1 - task), ``'equal'`` (neither: 1.0 and 1.0)."""
        if self.family == "deit":
            return "deit"
        if self.distill_loss_weight is not None:
            return "independent"
        return "complementary" if self.task_loss_weight is not None else "equal"

    @property
    def weights(self) -> tuple[float, float]:
        """(task weight, distill weight) the loss multiplies the two terms by."""
        mode = self.weight_mode
        if mode == "deit":
            alpha = float(self.alpha if self.alpha is not None else 0.5)
            return 1 - alpha, alpha
        if mode == "independent":
            task = self.task_loss_weight
            return (1.0 if task is None else float(task)), float(self.distill_loss_weight)
        if mode == "complementary":
            return float(self.task_loss_weight), 1.0 - float(self.task_loss_weight)
        return 1.0, 1.0


class DistillationLoss(nn.Module):
    """Wrap a base criterion and add DeiT's distillation term on the student's distillation head.

    Args:
        base_criterion: loss for the class head, e.g. ``nn.CrossEntropyLoss()`` or timm's
            ``SoftTargetCrossEntropy`` when Mixup/CutMix produce soft labels.
        teacher_model: the teacher, an ``nn.Module`` (called exactly as DeiT calls it, under
            ``torch.no_grad()``) or a :class:`~timm_deit_distill.teacher.DistillationTeacher` (its
            precision, normalisation and resolution settings apply). May be ``None`` when the teacher's
            output arrives some other way (``DistilledOutput`` or :meth:`from_teacher_output`).
        distillation_type: ``'none'``, ``'soft'`` or ``'hard'``.
        alpha: weight of the distillation term, in ``[0, 1]``.
        tau: softmax temperature of the soft term, ``> 0`` (ignored by ``'hard'``).
        soft_reduction: ``'deit'`` divides the summed KL by ``B * C`` (DeiT), ``'batchmean'`` by ``B``.
        weights: ``(task weight, distill weight)`` in place of ``(1 - alpha, alpha)`` (timm's tasks' weights,
            :attr:`DistillSettings.weights`); ``alpha`` may then be None.
        single_head: the student has one head (any timm classifier): both terms use its one output (DeiT's
            "usual" and "hard" distillation, timm's LogitDistillationTask). Otherwise a single tensor is refused
            (a distilled model in eval mode, or with ``set_distilled_training(False)``).

    :meth:`parts` returns the loss with its two unweighted parts, detached, for logging (the trainer and
    :class:`~timm_deit_distill.task.DeiTDistillationTask` use it). As a convenience for loops that call the
    module (DeiT's engine), after every call ``last_base_loss`` and ``last_distill_loss`` hold those parts
    (``last_distill_loss`` is a zero tensor for ``'none'``).
    """

    def __init__(
        self,
        base_criterion: nn.Module | Callable[..., torch.Tensor],
        teacher_model: nn.Module | None,
        distillation_type: str,
        alpha: float | None,
        tau: float,
        *,
        soft_reduction: str = "deit",
        weights: tuple[float, float] | None = None,
        single_head: bool = False,
    ) -> None:
        super().__init__()
        if distillation_type not in DISTILLATION_TYPES:
            raise ValueError(
                f"distillation_type must be one of {DISTILLATION_TYPES}, got {distillation_type!r}.")
        if weights is None:
            if alpha is None or not 0.0 <= alpha <= 1.0:  # also rejects NaN
                raise ValueError(f"alpha must be in [0, 1] (the distillation term's weight), got {alpha!r}.")
            weights = (1 - float(alpha), float(alpha))
        elif not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(f"weights must be finite and >= 0 (task, distill), got {weights!r}.")
        if not tau > 0.0:
            raise ValueError(f"tau must be > 0 (a softmax temperature; DeiT uses 1.0), got {tau!r}.")
        if soft_reduction not in SOFT_REDUCTIONS:
            raise ValueError(
                f"soft_reduction must be one of {SOFT_REDUCTIONS} ('deit' divides by batch*classes as DeiT "
                f"does, 'batchmean' by batch as timm does), got {soft_reduction!r}.")
        self.base_criterion = base_criterion
        self.teacher_model = teacher_model
        self.distillation_type = distillation_type
        self.alpha = None if alpha is None else float(alpha)
        self.task_weight, self.distill_weight = float(weights[0]), float(weights[1])
        self.single_head = bool(single_head)
        self.tau = float(tau)
        self.soft_reduction = soft_reduction
        self.last_base_loss: torch.Tensor | None = None
        self.last_distill_loss: torch.Tensor | None = None

    def extra_repr(self) -> str:
        heads = ", single_head=True" if self.single_head else ""
        return (f"distillation_type={self.distillation_type!r}, weights=({self.task_weight:g}, "
                f"{self.distill_weight:g}), tau={self.tau}, soft_reduction={self.soft_reduction!r}{heads}")

    def forward(self, *args: Any) -> torch.Tensor:
        """``loss(inputs, outputs, labels)`` (DeiT's engine) or ``loss(outputs, labels)`` (timm-style).

        In the two-argument form ``outputs`` must carry the teacher's logits (a ``DistilledOutput``
        from ``DistilledStudent``) unless ``distillation_type='none'``.
        """
        if len(args) == 3:
            inputs, outputs, labels = args
            return self._deit_call(inputs, outputs, labels)
        if len(args) == 2:
            outputs, labels = args
            teacher_output = getattr(outputs, "teacher_logits", None)
            if teacher_output is None and self.distillation_type != "none":
                if isinstance(outputs, torch.Tensor):
                    raise ValueError(_NOT_DISTILLED.format(kind=self.distillation_type))
                raise ValueError(
                    "loss(outputs, labels) needs outputs that carry the teacher's logits: wrap the student "
                    "as DistilledStudent(student, teacher), or call loss(inputs, outputs, labels) so the "
                    "loss runs the teacher itself, or loss.from_teacher_output(outputs, labels, logits).")
            return self.from_teacher_output(outputs, labels, teacher_output)
        raise TypeError(
            f"DistillationLoss takes (inputs, outputs, labels) or (outputs, labels), got {len(args)} arguments.")

    def _deit_call(self, inputs: torch.Tensor, outputs: Any, labels: torch.Tensor) -> torch.Tensor:
        if self.distillation_type == "none":
            return self._remember(self.parts(outputs, labels, None))
        self._split(outputs)  # a single tensor is refused before the teacher runs
        if self.teacher_model is None:
            raise ValueError(
                "loss(inputs, outputs, labels) runs the teacher, but this DistillationLoss was built with "
                "teacher_model=None: pass a teacher, or use loss.from_teacher_output(outputs, labels, logits).")
        # Don't backprop through the teacher (DeiT's exact call for plain modules; a
        # DistillationTeacher runs under inference_mode with its own settings).
        with torch.no_grad():
            teacher_output = self.teacher_model(inputs)
        return self._remember(self.parts(outputs, labels, teacher_output))

    def parts(self, outputs: Any, labels: torch.Tensor,
              teacher_output: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The loss given the teacher's output computed elsewhere, with its parts: ``loss`` (to backpropagate),
        ``task_loss`` and ``distill_loss`` (the unweighted parts, detached; ``distill_loss`` is zero for
        ``'none'``). Arguments as :meth:`from_teacher_output`."""
        cls_logits, dist_logits = self._split(outputs)
        if self.distillation_type == "none":
            dist_logits, teacher_output = None, None
        elif teacher_output is None:
            raise ValueError(f"distillation_type={self.distillation_type!r} needs the teacher's output, got None.")
        base_loss = self.base_criterion(cls_logits, labels)
        if dist_logits is None or teacher_output is None:
            zero = torch.zeros((), device=base_loss.device, dtype=base_loss.dtype)
            return {"loss": base_loss, "task_loss": base_loss.detach(), "distill_loss": zero}
        distillation_loss = self._distillation_term(dist_logits, teacher_output)
        # DeiT's expression (the task weight is its 1 - alpha) and timm's tasks' (scalar products commute), so fp32
        # results match both bit for bit.
        loss = base_loss * self.task_weight + distillation_loss * self.distill_weight
        return {"loss": loss, "task_loss": base_loss.detach(), "distill_loss": distillation_loss.detach()}

    def from_teacher_output(
        self, outputs: Any, labels: torch.Tensor, teacher_output: torch.Tensor | None
    ) -> torch.Tensor:
        """The loss given the teacher's output computed elsewhere (a trainer, or the target cache).

        ``outputs`` is the student's ``(cls_logits, dist_logits)``; ``teacher_output`` is float logits
        ``(B, C)`` or, for ``'hard'`` only, int64 class indices ``(B,)``; ``None`` only for ``'none'``.
        """
        return self._remember(self.parts(outputs, labels, teacher_output))

    def _remember(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Keep the parts as ``last_base_loss`` / ``last_distill_loss`` (conveniences for loops that log them, such
        as DeiT's engine); returns the loss."""
        self.last_base_loss, self.last_distill_loss = parts["task_loss"], parts["distill_loss"]
        return parts["loss"]

    def _split(self, outputs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(outputs, torch.Tensor):
            if self.single_head:
                return outputs, outputs  # the one head learns both terms
            if self.distillation_type != "none":
                raise ValueError(_NOT_DISTILLED.format(kind=self.distillation_type))
            return outputs, None
        # (cls, dist) from the student, or DistilledOutput(cls, dist, teacher).
        return outputs[0], outputs[1]

    def _distillation_term(self, dist_logits: torch.Tensor, teacher_output: torch.Tensor) -> torch.Tensor:
        teacher_output = teacher_output.detach()  # never backprop into a teacher, however its output arrived
        if teacher_output.dim() == 1:
            if teacher_output.is_floating_point() or self.distillation_type != "hard":
                raise ValueError(
                    "A 1-D teacher output must be int64 class indices and is usable only with "
                    f"distillation_type='hard'; got dtype {teacher_output.dtype} with "
                    f"distillation_type={self.distillation_type!r}. Pass (B, C) logits for soft distillation.")
            return F.cross_entropy(dist_logits, teacher_output)
        if teacher_output.dtype != dist_logits.dtype:
            # e.g. fp16 logits replayed from the cache beside fp32 student logits.
            teacher_output = teacher_output.to(torch.promote_types(teacher_output.dtype, dist_logits.dtype))
        if teacher_output.shape != dist_logits.shape:
            raise ValueError(
                f"Teacher logits {tuple(teacher_output.shape)} and student distillation logits "
                f"{tuple(dist_logits.shape)} differ in shape: teacher and student must predict the same classes.")
        if self.distillation_type == "hard":
            return F.cross_entropy(dist_logits, teacher_output.argmax(dim=1))
        T = self.tau
        if self.soft_reduction == "deit":
            # Summed and divided by outputs_kd.numel() = B * C, DeiT's "legacy PyTorch" reduction.
            return F.kl_div(
                F.log_softmax(dist_logits / T, dim=1),
                F.log_softmax(teacher_output / T, dim=1),
                reduction="sum",
                log_target=True,
            ) * (T * T) / dist_logits.numel()
        # timm's TokenDistillationTask expression: divided by the batch size only.
        return F.kl_div(
            F.log_softmax(dist_logits / T, dim=-1),
            F.log_softmax(teacher_output / T, dim=-1),
            reduction="batchmean",
            log_target=True,
        ) * (T ** 2)
