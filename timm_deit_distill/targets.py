"""Where a training step's teacher targets come from: a target source gives the teacher's answer for a batch of
views, computed now or replayed, and the task that uses it does not know which.

* :class:`OnlineTargets` runs the teacher on the batch (a :class:`~timm_deit_distill.teacher.DistillationTeacher`
  on its own path, outside the student's autocast).
* :class:`CachedTargets` replays the rows a teacher target cache (:mod:`timm_deit_distill.cache`) holds for the
  batch's views of the current epoch (views identified by ``(seed, epoch, position)``: ``--deterministic-aug``).

Both return what :meth:`~timm_deit_distill.losses.DistillationLoss.parts` takes as the teacher's output: float
logits ``(B, C)``, or int64 labels ``(B,)`` from a ``hard`` cache.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn

from .teacher.precision import has_autocast

__all__ = ["TargetSource", "OnlineTargets", "OnlineFeatures", "CachedTargets"]


@runtime_checkable
class TargetSource(Protocol):
    """The teacher's targets for a batch: ``targets(inputs, views, epoch)`` (``views`` the batch's view
    positions, ``epoch`` the epoch they belong to; an online teacher reads ``inputs`` alone)."""

    def targets(self, inputs: torch.Tensor, views: torch.Tensor | None, epoch: int | None) -> torch.Tensor:
        ...


class OnlineTargets:
    """The teacher's logits for ``inputs``, computed now, under no autocast but the teacher's own: a teacher runs
    on the path it was measured (or asked) to run on, whatever precision the student trains in."""

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher

    def targets(self, inputs: torch.Tensor, views: torch.Tensor | None = None,
                epoch: int | None = None) -> torch.Tensor:
        device_type = inputs.device.type
        with torch.autocast(device_type, enabled=False) if has_autocast(device_type) else nullcontext():
            return self.teacher(inputs)

    def __repr__(self) -> str:
        return f"OnlineTargets({getattr(self.teacher, 'name', None) or type(self.teacher).__name__})"


class OnlineFeatures(OnlineTargets):
    """The teacher's pooled pre-logits features for ``inputs`` (timm's feature distillation), computed now on the
    teacher's input (its normalisation and size) and precision."""

    def targets(self, inputs: torch.Tensor, views: torch.Tensor | None = None,
                epoch: int | None = None) -> torch.Tensor:
        device_type = inputs.device.type
        with torch.autocast(device_type, enabled=False) if has_autocast(device_type) else nullcontext():
            return self.teacher.features(inputs)

    def __repr__(self) -> str:
        return f"OnlineFeatures({getattr(self.teacher, 'name', None) or type(self.teacher).__name__})"


class CachedTargets:
    """The rows a teacher target cache holds for the batch's views (``views``: their positions in ``epoch``),
    on the inputs' device. The epoch is the task's (:meth:`set_epoch`) unless given."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def targets(self, inputs: torch.Tensor, views: torch.Tensor | None = None,
                epoch: int | None = None) -> torch.Tensor:
        epoch = self.epoch if epoch is None else epoch
        if views is None or epoch is None:
            raise ValueError("cached targets are rows of views: pass the batch's views (the training loader gives "
                             "them with --deterministic-aug) and set the epoch (task.set_epoch(epoch)).")
        if hasattr(views, "unlabeled_pass"):  # a batch with unlabelled images (data.unlabeled.MixedViews)
            return torch.cat([self.cache.targets(epoch, views.labeled),
                              self.cache.unlabeled_targets(views.unlabeled_pass, views.unlabeled)]).to(inputs.device)
        return self.cache.targets(epoch, views).to(inputs.device)

    def __repr__(self) -> str:
        return f"CachedTargets({getattr(self.cache, 'directory', self.cache)})"
