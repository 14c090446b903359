"""Resuming a run from its checkpoint: restoring the modules, the schedule and the RNG states, and comparing the
checkpoint's run with the run about to continue it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from timm.models import clean_state_dict
from timm.utils.model import unwrap_model

from ..errors import CheckpointError
from .metadata import Distillation, RunMetadata
from .reader import load_training_checkpoint
from .saver import set_rng_state

__all__ = ["resume", "ResumeState", "checkpoint_epoch", "scheduler_state", "load_scheduler_state", "compare_resume",
           "ResumeComparison", "load_task_state"]

_logger = logging.getLogger(__name__)


def checkpoint_epoch(checkpoint: dict[str, Any]) -> int:
    """The last epoch a training checkpoint completed (timm's ``version`` rule; -1 when it records none)."""
    epoch = int(checkpoint.get("epoch", -1))
    if checkpoint.get("version", 1) < 2:
        epoch -= 1  # timm: version-1 files stored the next epoch
    return epoch


# timm's PlateauLRScheduler.state_dict keeps only 'best' and 'last_epoch' of the torch ReduceLROnPlateau it wraps:
# the patience and cooldown counters (and the learning rates held back under noise) are lost, so a resumed run
# would cut its learning rate at other epochs than the run left alone. The checkpoint carries them under this key.
_PLATEAU_KEY = "deit_distill_plateau"
# What moves as the run trains, as opposed to the settings a resume compares.
_MOVING = {"metric", "best", "last_epoch"}
_PLATEAU_MOVING = {"best", "last_epoch", "_last_lr", "num_bad_epochs", "cooldown_counter"}


def scheduler_state(lr_scheduler: Any) -> dict[str, Any]:
    """The schedule's state for a checkpoint: timm's ``state_dict``, and for timm's plateau schedule the whole
    state of the ReduceLROnPlateau inside it, which timm's leaves out."""
    state = dict(lr_scheduler.state_dict())
    plateau = getattr(lr_scheduler, "lr_scheduler", None)
    if isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau):
        state[_PLATEAU_KEY] = {"reduce_lr_on_plateau": plateau.state_dict(),
                               "restore_lr": getattr(lr_scheduler, "restore_lr", None)}
    return state


def _schedule_settings(state: dict[str, Any]) -> dict[str, Any]:
    settings = {k: v for k, v in state.items() if k not in _MOVING and k != _PLATEAU_KEY}
    if _PLATEAU_KEY in state:
        inner = state[_PLATEAU_KEY]["reduce_lr_on_plateau"]
        settings[_PLATEAU_KEY] = {k: v for k, v in inner.items() if k not in _PLATEAU_MOVING}
    return settings


def load_scheduler_state(lr_scheduler: Any, saved: dict[str, Any], *, source: str = "the checkpoint") -> bool:
    """Restore a :func:`scheduler_state` into ``lr_scheduler`` when its settings are the saved ones; False (and
    nothing changed) when they differ. A plateau schedule saved without its counters (a checkpoint of another
    trainer, or of an earlier version) gets timm's part back and a warning that its counters restart."""
    fresh = scheduler_state(lr_scheduler)
    plateau_saved = _PLATEAU_KEY in saved
    counters_lost = _PLATEAU_KEY in fresh and not plateau_saved
    if counters_lost:
        fresh.pop(_PLATEAU_KEY)
    if _schedule_settings(fresh) != _schedule_settings(saved):
        return False
    lr_scheduler.load_state_dict({k: v for k, v in saved.items() if k != _PLATEAU_KEY})
    if plateau_saved:
        lr_scheduler.lr_scheduler.load_state_dict(saved[_PLATEAU_KEY]["reduce_lr_on_plateau"])
        lr_scheduler.restore_lr = saved[_PLATEAU_KEY]["restore_lr"]
    elif counters_lost:
        _logger.warning("%s holds timm's plateau schedule without its patience and cooldown counters: they restart "
                        "at 0, so the learning rate may drop at other epochs than in the run left alone.", source)
    return True


@dataclass
class ResumeState:
    """What the loop needs after :func:`resume` restored the modules."""

    start_epoch: int
    num_updates: int = 0
    summary: list[dict[str, Any]] = field(default_factory=list)
    saver_state: dict[str, Any] | None = None
    scheduler_restored: bool = False
    rng_restored: bool = False
    rng: list[dict[str, Any]] | None = None  # every rank's generator states, as saved
    ema_rng: Any = None
    rank: int = 0
    world_size: int = 1

    def restore_rng(self, model_ema: nn.Module | None = None) -> None:
        """Put this rank's saved generator states back: the very last step before the first epoch."""
        if not self.rng:
            return
        rngs, rank = self.rng, self.rank
        set_rng_state(rngs[rank] if rank < len(rngs) and len(rngs) == self.world_size else rngs[0])
        if model_ema is not None and self.ema_rng is not None and hasattr(model_ema, "_sr_generator"):
            model_ema._sr_generator.set_state(self.ema_rng)
        self.rng_restored = True


def resume(
    path: str,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    loss_scaler: Any = None,
    lr_scheduler: Any = None,
    model_ema: nn.Module | None = None,
    rank: int = 0,
    world_size: int = 1,
    checkpoint: dict[str, Any] | None = None,
    restore_rng: bool = True,
) -> ResumeState:
    """Restore model, optimizer, scaler, scheduler, EMA and this rank's RNG states from ``path``.

    The RNG states are restored last, so call this right before the first epoch starts; or pass
    ``restore_rng=False`` and call :meth:`ResumeState.restore_rng` then (the trainer does, so that
    nothing it does in between, such as claiming its run folder, can consume them).
    ``optimizer=None`` (``--no-resume-opt``) skips optimizer and scaler state, as timm does.
    ``checkpoint`` is the file's contents when the caller has read it already.
    """
    if checkpoint is None:
        checkpoint = load_training_checkpoint(path)
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{path!r} has no 'state_dict': it is not a training checkpoint; "
                              "use --initial-checkpoint for plain weights.")
    try:
        unwrap_model(model).load_state_dict(clean_state_dict(checkpoint["state_dict"]))
    except RuntimeError as e:
        # torch lists every mismatching tensor on its own line; the first few name the problem.
        detail = " ".join(" ".join(str(e).split("\n")[:4]).split())[:500]
        flag = RunMetadata.from_checkpoint(checkpoint).model_kwargs_flag
        built = f" (its run built the student with {flag})" if flag else ""
        raise CheckpointError(f"{path!r} does not fit the student built from these flags: {detail} Resume with "
                              f"the flags of the original run{built} (its args.yaml: -c RUN/args.yaml).") from None
    if optimizer is not None and "optimizer" in checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if optimizer is not None and loss_scaler is not None and loss_scaler.state_dict_key in checkpoint:
        loss_scaler.load_state_dict(checkpoint[loss_scaler.state_dict_key])
    scheduler_restored = False
    if lr_scheduler is not None and "scheduler" in checkpoint:
        # Restore the schedule's state only when its settings are the ones of the checkpoint's run; a run
        # resumed with another --epochs/--lr/--sched keeps its new schedule, positioned at the start epoch
        # by the caller (timm's behaviour).
        scheduler_restored = load_scheduler_state(lr_scheduler, checkpoint["scheduler"], source=repr(path))
    if model_ema is not None:
        ema_state = checkpoint.get("state_dict_ema")
        if ema_state is None:
            raise CheckpointError(f"{path!r} holds no EMA weights but --model-ema is on; resume without "
                                  "--model-ema or from a run that had it.")
        unwrap_model(model_ema).load_state_dict(clean_state_dict(ema_state))
    state = ResumeState(start_epoch=checkpoint_epoch(checkpoint) + 1, num_updates=int(checkpoint.get("num_updates", 0)),
                        summary=list(checkpoint.get("summary", [])), saver_state=checkpoint.get("saver"),
                        scheduler_restored=scheduler_restored, rng=checkpoint.get("rng") or None,
                        ema_rng=checkpoint.get("ema_rng"), rank=rank, world_size=world_size)
    if restore_rng:
        state.restore_rng(model_ema)
    return state


def load_task_state(path: Any, checkpoint: dict[str, Any], *, projection: torch.nn.Module) -> None:
    """Restore feature distillation's projection from timm's ``task_state['projection']``; a checkpoint without
    one (or with one of another shape) is refused naming the file."""
    state = (checkpoint.get("task_state") or {}).get("projection")
    if state is None:
        raise CheckpointError(f"{path!r} holds no feature-distillation projection (task_state['projection']), which "
                              "this run trains: resume with the flags of the run that wrote it (-c RUN/args.yaml).")
    try:
        projection.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path!r}: its feature-distillation projection does not fit this run's: {detail}") from None


# What exact resumption needs unchanged, compared by compare_resume. Settings that only say where the run
# is written, or which file it resumes from, are no change to the run at all.
_NOT_A_CHANGE = frozenset({"resume", "output", "experiment", "start_epoch"})
_IDENTITY_SETTINGS = frozenset({"seed", "model", "model_kwargs", "num_classes"})


@dataclass
class ResumeComparison:
    """How a resumed run differs from the run its checkpoint came from (see :func:`compare_resume`)."""

    refused: list[str] = field(default_factory=list)  # "seed 3 -> 4": exact resume is impossible
    refused_what: list[str] = field(default_factory=list)  # what each refusal is about: "seed", "model", ...
    changed: dict[str, list[Any]] = field(default_factory=dict)  # setting -> [old, new]: allowed, recorded
    notes: list[str] = field(default_factory=list)  # what could not be compared, and why


def _teacher_identity(description: Mapping[str, Any] | None) -> tuple[Any, Any] | None:
    return None if not description else (description.get("name"), description.get("sha256"))


def _describe_teacher(description: Mapping[str, Any] | None) -> str:
    if not description:
        return "none"
    return f"{description.get('name')} (weights sha256 {str(description.get('sha256'))[:12]})"


def _describe_data(fingerprint: Mapping[str, Any]) -> str:
    return (f"{fingerprint.get('num_samples')} images in {fingerprint.get('num_classes')} classes "
            f"(files sha256 {str(fingerprint.get('files_sha256'))[:12]})")


def compare_resume(checkpoint: Mapping[str, Any], *, settings: Mapping[str, Any],
                   metadata: RunMetadata | Mapping[str, Any]) -> ResumeComparison:
    """Compare a checkpoint's run with the run about to resume from it.

    ``settings`` are the resumed run's resolved settings (the ``args`` it saves), ``metadata`` its
    :class:`RunMetadata` (or its ``deit_distill`` dict). Refused (an exact resume needs them unchanged): the
    student (model, architecture kwargs, classes), the training data (its fingerprint), the seed and the teacher
    (name and weights sha256; none -> some and some -> none included); for a streamed source (metadata
    ``stream``) also what fixes its shard order: world size, loader workers, batch size, sample count and shard
    list. Every other setting that differs is listed in ``changed``. A checkpoint of another program (timm's
    train.py, DeiT's main.py) is compared on what its settings record: model, seed, the other settings.
    """
    out = ResumeComparison()
    old = RunMetadata.from_checkpoint(checkpoint)
    new = metadata if isinstance(metadata, RunMetadata) else RunMetadata.from_dict(metadata)
    old_settings = dict(old.args or {})

    def refuse(what: str, before: Any, after: Any) -> None:
        out.refused.append(f"{what} {before} -> {after}")
        out.refused_what.append(what)

    own = old.layout == "deit-distill"
    if own:
        _compare_student(old, new, out, refuse)
    else:
        out.notes.append("the checkpoint has no deit_distill metadata (not written by deit-distill train): its "
                         "student, training data and teacher could not be compared")
        if old_settings.get("model") not in (None, settings.get("model")):
            refuse("model", old_settings["model"], settings.get("model"))
        _compare_foreign_teacher(old.distill, new.distill, out, refuse)
    if old.seed is not None and old.seed != settings.get("seed"):
        refuse("seed", old.seed, settings.get("seed"))
    if own:
        _compare_data_and_teacher(old, new, out, refuse)
    else:
        _compare_stream(None, new.stream, refuse)

    for key, value in settings.items():
        if key in _NOT_A_CHANGE or key in _IDENTITY_SETTINGS or key not in old_settings:
            continue
        before = old_settings[key]
        if (list(before) if isinstance(before, tuple) else before) != value:
            out.changed[key] = [before, value]
    if own and old.world_size is not None and old.world_size != new.world_size:
        out.changed["world_size"] = [old.world_size, new.world_size]
    return out


def _compare_student(old: RunMetadata, new: RunMetadata, out: ResumeComparison,
                     refuse: Callable[[str, Any, Any], None]) -> None:
    """The model, its architecture kwargs and its classes, as this package's metadata records them."""
    if old.model is not None and old.model != new.model:
        refuse("model", old.model, new.model)
    if old.model_kwargs is not None and old.model_kwargs != new.model_kwargs:
        refuse("architecture", old.model_kwargs, new.model_kwargs)
    if old.label_names is not None and old.label_names != new.label_names:
        from ..data.sources import class_difference

        out.refused.append("classes: " + str(class_difference(old.label_names, new.label_names or [],
                                                              "the checkpoint", "this run's data")))
        out.refused_what.append("classes")


def _compare_data_and_teacher(old: RunMetadata, new: RunMetadata, out: ResumeComparison,
                              refuse: Callable[[str, Any, Any], None]) -> None:
    """The training data's fingerprint, a streamed source's shard order and the teacher's identity."""
    if old.data is not None:
        if old.data != new.data:
            refuse("training data", _describe_data(old.data), _describe_data(new.data or {}))
    else:
        out.notes.append("the checkpoint records no fingerprint of its training data (written before "
                         "deit-distill recorded one): the training data could not be compared")
    _compare_stream(old.stream, new.stream, refuse)
    _compare_unlabeled(old, new, refuse)
    old_teacher = old.distill.teacher_description if old.distill is not None else None
    new_teacher = new.distill.teacher_description if new.distill is not None else None
    if _teacher_identity(old_teacher) != _teacher_identity(new_teacher):
        refuse("teacher", _describe_teacher(old_teacher), _describe_teacher(new_teacher))


def _compare_unlabeled(old: RunMetadata, new: RunMetadata, refuse: Callable[[str, Any, Any], None]) -> None:
    """Unlabelled images: the same images (their fingerprint) in the same share of each batch, or the resumed
    run would draw other unlabelled batches than the uninterrupted one."""
    a = (old.distill.unlabeled if old.distill is not None else None) or {}
    b = (new.distill.unlabeled if new.distill is not None else None) or {}
    for key, what in (("fingerprint", "unlabelled images"), ("per_batch", "unlabelled images per batch"),
                      ("pseudo_labels", "--pseudo-labels")):
        if a.get(key) != b.get(key):
            before, after = a.get(key), b.get(key)
            if key == "fingerprint":
                before, after = (f"{x['num_images']} from {x['source']}" if x else "none" for x in (a, b))
            refuse(what, before, after)
            return


def _compare_foreign_teacher(old: Distillation | None, new: Distillation | None, out: ResumeComparison,
                             refuse: Callable[[str, Any, Any], None]) -> None:
    """The teacher of a timm train.py (``kd_model_name``) or DeiT main.py (``teacher_model``) run, which record
    its name only: a resume that adds or drops the teacher, or names another model, is refused (resuming a
    distilled timm run without one trained on without a teacher, silently). Weights given another way (a file, a
    ``local-dir:`` folder) cannot be compared with what timm downloaded: noted."""
    if old is None:  # a checkpoint without the program's args: nothing recorded
        return
    before = old.teacher if old.distils else None
    after = new.teacher if new is not None and new.distils else None
    if (before is None) != (after is None):
        refuse("teacher", _named(before, old), _named(after, new))
    elif before is not None and after is not None:
        if _model_name(before) != _model_name(after):
            refuse("teacher", _named(before, old), _named(after, new))
        else:
            out.notes.append(f"the checkpoint's run names its teacher {before!r} only: its weights could not be "
                             "compared with this run's")


def _named(teacher: str | None, distill: Distillation | None) -> str:
    if teacher is None:
        return "none"
    kind = distill.kd_distill_type or distill.type if distill is not None else None
    return f"{teacher} ({kind} distillation)" if kind else teacher


def _model_name(source: str) -> str:
    """A teacher source's model name as timm's train.py named it: ``timm/resnet18.a1_in1k`` -> ``resnet18``; a
    ``hf-hub:``/``local-dir:`` source stays as it is (another name)."""
    if ":" in source:
        return source
    return source.split("/")[-1].split(".")[0]


_STREAM_KEYS = ("seed", "world_size", "workers", "batch_size", "num_samples", "shards")


def _compare_stream(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None, refuse: Callable[[str, Any, Any], None]) -> None:
    """A streamed source's epoch is dealt by timm from (seed, epoch) to world x workers, each worker's share sized
    by the batch and the sample count: a resume that changes any of them cannot reproduce the shard order."""
    if old is None and new is None:
        return
    if old is None or new is None:
        refuse("streamed source", "none" if old is None else "recorded", "none" if new is None else "a stream")
        return
    for key in _STREAM_KEYS:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "shards" and isinstance(a, list) and isinstance(b, list):
            first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            a = f"{len(a)} shards ({a[first] if first < len(a) else '-'} at {first})"
            b = f"{len(b)} shards ({b[first] if first < len(b) else '-'} at {first})"
        refuse(f"{key} of the streamed source (with the epoch it fixes the shard order)", a, b)
