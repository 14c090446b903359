"""Training checkpoints in timm's CheckpointSaver format, written atomically, resumable exactly.

Each file holds timm's keys (``epoch``, ``arch``, ``state_dict``, ``optimizer``, ``version``, ``args``,
``metric``, ``state_dict_ema``, ``amp_scaler``, ``saver``), so timm's ``load_checkpoint`` and
``resume_checkpoint`` read it, plus:

* ``deit_distill``: plain-JSON metadata to rebuild and describe the student (model, model_kwargs,
  pretrained_cfg, label_names, distill settings, recipe, ema) and to check a resume against the run
  (seed, data: the training set's fingerprint, world_size, resumed: the settings each resume changed);
* ``scheduler``, ``num_updates``, ``rng`` (every rank's Python/NumPy/torch/CUDA generator states) and
  ``summary`` (the per-epoch rows so far): what ``--resume`` needs to continue bit for bit.

The student only: the teacher is never saved.
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from timm.models import clean_state_dict
from timm.utils import CheckpointSaver as TimmCheckpointSaver
from timm.utils.model import get_state_dict, unwrap_model

from .atomic import atomic_link_or_copy, atomic_path

__all__ = [
    "CheckpointSaver", "load_training_checkpoint", "rng_state", "set_rng_state", "ResumeState", "resume",
    "checkpoint_epoch", "compare_resume", "ResumeComparison", "create_model_from_checkpoint", "CheckpointError",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file and the fix."""


def load_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``, allowing the ``argparse.Namespace`` timm stores in ``args``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint {path!r} does not exist; pass the path of a .pth.tar file.")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, unsafe globals...
        raise CheckpointError(f"Checkpoint {path!r} could not be read ({type(e).__name__}: {e}).") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"Checkpoint {path!r} holds a {type(checkpoint).__name__}, not a checkpoint dict.")
    return checkpoint


# --- RNG state -----------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """This process's generator states as weights_only-loadable values (tensors, ints, tuples)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- saving --------------------------------------------------------------------------------------------------

class CheckpointSaver(TimmCheckpointSaver):
    """timm's CheckpointSaver (same files, history and ranking) with atomic replacement and extra state.

    timm's saver unlinks ``last``/``model_best`` before relinking them, so a kill at that moment loses
    the file; here every name is replaced atomically. ``extra_state()`` adds the trainer's keys to
    every file (see the module docstring).
    """

    def __init__(self, *args: Any, extra_state: Callable[[], dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra_state = extra_state

    def _replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def _duplicate(self, src: str, dst: str) -> None:
        atomic_link_or_copy(src, dst)

    def state_for(self, epoch: int, metric: float | None = None) -> dict[str, Any]:
        """Everything a checkpoint file of ``epoch`` holds."""
        state: dict[str, Any] = {
            "epoch": epoch,
            "arch": self.args.model if self.args is not None else type(self.model).__name__.lower(),
            "state_dict": get_state_dict(self.model, self.unwrap_fn),
            "optimizer": self.optimizer.state_dict(),
            "version": 2,  # timm: the epoch stored is the one completed
        }
        if self.args is not None:
            state["args"] = self.args
        if self.amp_scaler is not None:
            state[self.amp_scaler.state_dict_key] = self.amp_scaler.state_dict()
        if self.model_ema is not None:
            state["state_dict_ema"] = get_state_dict(self.model_ema, self.unwrap_fn)
        if metric is not None:
            state["metric"] = metric
        state["saver"] = self.state_dict(epoch, metric)
        if self.extra_state is not None:
            state.update(self.extra_state())
        return state

    def _save(self, save_path: str, epoch: int, metric: float | None = None) -> None:
        state = self.state_for(epoch, metric)
        # timm writes tmp.pth.tar then replaces `last` with it; the temp file itself is also written
        # atomically so a kill mid-write never leaves a half file under any name.
        with atomic_path(save_path) as tmp:
            torch.save(state, tmp)


# --- resuming ------------------------------------------------------------------------------------------------

def checkpoint_epoch(checkpoint: dict[str, Any]) -> int:
    """The last epoch a training checkpoint completed (timm's ``version`` rule; -1 when it records none)."""
    epoch = int(checkpoint.get("epoch", -1))
    if checkpoint.get("version", 1) < 2:
        epoch -= 1  # timm: version-1 files stored the next epoch
    return epoch


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
        raise CheckpointError(f"{path!r} does not fit the student built from these flags: {detail} Resume with "
                              "the flags of the original run (its args.yaml: -c RUN/args.yaml).") from None
    if optimizer is not None and "optimizer" in checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if optimizer is not None and loss_scaler is not None and loss_scaler.state_dict_key in checkpoint:
        loss_scaler.load_state_dict(checkpoint[loss_scaler.state_dict_key])
    scheduler_restored = False
    if lr_scheduler is not None and "scheduler" in checkpoint:
        # Restore the schedule's state only when its settings are the ones of the checkpoint's run; a run
        # resumed with another --epochs/--lr/--sched keeps its new schedule, positioned at the start epoch
        # by the caller (timm's behaviour). 'metric', 'best', 'last_epoch' are the state that moves.
        moving = {"metric", "best", "last_epoch"}
        fresh, saved = lr_scheduler.state_dict(), checkpoint["scheduler"]
        if {k: v for k, v in saved.items() if k not in moving} == {k: v for k, v in fresh.items() if k not in moving}:
            lr_scheduler.load_state_dict(saved)
            scheduler_restored = True
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


# What exact resumption needs unchanged, compared by compare_resume. Settings that only say where the run
# is written, or which file it resumes from, are no change to the run at all.
_NOT_A_CHANGE = frozenset({"resume", "output", "experiment", "start_epoch"})
_IDENTITY_SETTINGS = frozenset({"seed", "model", "model_kwargs", "num_classes"})


@dataclass
class ResumeComparison:
    """How a resumed run differs from the run its checkpoint came from (see :func:`compare_resume`)."""

    refused: list[str] = field(default_factory=list)  # "seed 3 -> 4": exact resume is impossible
    changed: dict[str, list[Any]] = field(default_factory=dict)  # setting -> [old, new]: allowed, recorded
    notes: list[str] = field(default_factory=list)  # what could not be compared, and why


def _teacher_identity(description: dict[str, Any] | None) -> tuple[Any, Any] | None:
    return None if not description else (description.get("name"), description.get("sha256"))


def _describe_teacher(description: dict[str, Any] | None) -> str:
    if not description:
        return "none"
    return f"{description.get('name')} (weights sha256 {str(description.get('sha256'))[:12]})"


def _describe_data(fingerprint: dict[str, Any]) -> str:
    return (f"{fingerprint.get('num_samples')} images in {fingerprint.get('num_classes')} classes "
            f"(files sha256 {str(fingerprint.get('files_sha256'))[:12]})")


def compare_resume(checkpoint: dict[str, Any], *, settings: dict[str, Any], metadata: dict[str, Any]) -> ResumeComparison:
    """Compare a checkpoint's run with the run about to resume from it.

    ``settings`` are the resumed run's resolved settings (the ``args`` it saves), ``metadata`` its
    ``deit_distill`` metadata. Refused (an exact resume needs them unchanged): the student (model,
    architecture kwargs, classes), the training data (its fingerprint), the seed and the teacher
    (name and weights sha256; none -> some and some -> none included). Every other setting that
    differs is listed in ``changed``.
    """
    out = ResumeComparison()
    old_meta = checkpoint.get("deit_distill") or {}
    old_args = checkpoint.get("args")
    old_settings = dict(vars(old_args)) if isinstance(old_args, argparse.Namespace) else dict(old_args or {})

    def refuse(what: str, old: Any, new: Any) -> None:
        out.refused.append(f"{what} {old} -> {new}")

    if not old_meta:
        out.notes.append("the checkpoint has no deit_distill metadata (not written by deit-distill train): its "
                         "student, training data and teacher could not be compared")
    for key, what in (("model", "model"), ("model_kwargs", "architecture")):
        if key in old_meta and old_meta[key] != metadata.get(key):
            refuse(what, old_meta[key], metadata.get(key))
    if not old_meta and old_settings.get("model") not in (None, settings.get("model")):
        refuse("model", old_settings["model"], settings.get("model"))
    if old_meta.get("label_names") is not None and old_meta["label_names"] != metadata.get("label_names"):
        refuse("classes", old_meta["label_names"], metadata.get("label_names"))
    old_seed = old_meta.get("seed", old_settings.get("seed"))
    if old_seed is not None and old_seed != settings.get("seed"):
        refuse("seed", old_seed, settings.get("seed"))
    if "data" in old_meta:
        if old_meta["data"] != metadata.get("data"):
            refuse("training data", _describe_data(old_meta["data"]), _describe_data(metadata.get("data") or {}))
    elif old_meta:
        out.notes.append("the checkpoint records no fingerprint of its training data (written before "
                         "deit-distill recorded one): the training data could not be compared")
    if old_meta:
        old_teacher = (old_meta.get("distill") or {}).get("teacher_description")
        new_teacher = (metadata.get("distill") or {}).get("teacher_description")
        if _teacher_identity(old_teacher) != _teacher_identity(new_teacher):
            refuse("teacher", _describe_teacher(old_teacher), _describe_teacher(new_teacher))

    for key, new in settings.items():
        if key in _NOT_A_CHANGE or key in _IDENTITY_SETTINGS or key not in old_settings:
            continue
        old = old_settings[key]
        if (list(old) if isinstance(old, tuple) else old) != new:
            out.changed[key] = [old, new]
    if "world_size" in old_meta and old_meta["world_size"] != metadata.get("world_size"):
        out.changed["world_size"] = [old_meta["world_size"], metadata.get("world_size")]
    return out


# --- reading a student back ----------------------------------------------------------------------------------

def create_model_from_checkpoint(path: str, *, use_ema: bool | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the student a checkpoint was trained as (from its ``deit_distill`` metadata) and load its weights.

    ``use_ema=None`` loads the EMA weights when the file has them (timm's preference), ``False`` the raw
    weights. Returns ``(model in eval mode, checkpoint dict)``.
    """
    import timm

    checkpoint = load_training_checkpoint(path)
    meta = checkpoint.get("deit_distill")
    if meta is None:
        args = checkpoint.get("args")
        arch = getattr(args, "model", None) or checkpoint.get("arch")
        if not arch:
            raise CheckpointError(f"{path!r} has neither 'deit_distill' metadata nor timm's 'args'; cannot tell "
                                  "which model it holds.")
        meta = {"model": arch, "model_kwargs": {"num_classes": getattr(args, "num_classes", None)}}
    kwargs = {k: v for k, v in meta.get("model_kwargs", {}).items() if v is not None}
    model = timm.create_model(meta["model"], **kwargs)
    key = "state_dict_ema" if use_ema is not False and checkpoint.get("state_dict_ema") is not None else "state_dict"
    if use_ema and key != "state_dict_ema":
        raise CheckpointError(f"{path!r} holds no EMA weights; drop --use-ema.")
    model.load_state_dict(clean_state_dict(checkpoint[key]))
    if meta.get("pretrained_cfg"):
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["pretrained_cfg"].items()}
        model.pretrained_cfg = {**model.pretrained_cfg, **cfg}
    model.eval()
    return model, checkpoint
