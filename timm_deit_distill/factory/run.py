"""A training run, built from its settings: ``build_run(settings) -> Run``.

Checks first (names, files, the run folder, the data, the student, the teacher or cache, the resume), then
building, then (last) claiming the run folder and writing its first files: nothing is written before every check
has passed. Built from timm's parts: ``create_model``, ``create_optimizer_v2``, ``create_scheduler_v2``,
``ModelEmaV3``, autocast + ``NativeScaler``, ``CheckpointSaver``'s files. The teacher stays outside DDP, in eval
mode, one per process; checkpoints hold the student only. A run writes only into a folder of its own, created (or,
for ``--resume``, taken) and locked; a folder holding another run is refused, never overwritten
(:mod:`timm_deit_distill.run_folder`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import DataError, DeitDistillError, RunFolderError, UsageError, one_line
from ..stops import deferred
from . import builders
from .settings import TrainSettings
from .teacher import create_teacher, ready_teacher
from .timm_args import timm_device_modules

__all__ = ["Run", "build_run", "build_schedule", "extra_state", "PLATEAU_NOTE"]

_logger = logging.getLogger("timm_deit_distill.train")  # the name the trainer's log lines always had


@dataclass
class Run:
    """The pieces of one training run (built by :func:`build_run`) and where its loop stands."""

    settings: TrainSettings
    device: torch.device
    rank: int = 0
    world_size: int = 1
    model: nn.Module | None = None  # the trainable module (DDP/compiled wrapper when used)
    student: nn.Module | None = None  # the plain student
    model_ema: Any = None
    teacher: Any = None
    cache: Any = None
    task: Any = None  # the training step: the package's DeiTDistillationTask over model and the target source
    projection: Any = None  # feature distillation's trained projection (timm's task_state['projection'])
    optimizer: Any = None
    loss_scaler: Any = None
    lr_scheduler: Any = None
    amp_autocast: Callable[[], Any] = contextlib.nullcontext
    train_loader: Any = None
    eval_loader: Any = None
    unlabeled_ds: Any = None  # the unlabelled images (--unlabeled-*), or None
    num_epochs: int = 0
    updates_per_epoch: int = 0
    output_dir: str | None = None
    saver: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    start_epoch: int = 0
    num_updates: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    rng_states: list[dict[str, Any]] = field(default_factory=list)
    lock: Any = None  # rank 0's RunLock on output_dir, held for the whole run
    last_saved_epoch: int | None = None  # the epoch output_dir/last.pth.tar holds
    dist_bn: str = ""  # --dist-bn, or '' when SyncBatchNorm already keeps the statistics in sync
    fresh: bool = False  # output_dir held no run when claimed (not a --resume continuing in its own folder)
    created: bool = False  # output_dir was created by this run
    looping: bool = False  # the epoch loop has started (a failure from here on is one of training, not set-up)
    epoch_now: int | None = None  # where the loop is: the epoch, and the updates done in it
    steps_done: int = 0
    best: tuple[Any, Any] = (None, None)  # (metric, epoch) of the best checkpoint so far
    discarded: str | None = None  # after a stop: what was removed of a fresh run that saved no checkpoint

    @property
    def primary(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def close(self) -> None:
        """Release the run folder (the process's end would as well)."""
        if self.lock is not None:
            self.lock.release()

    def discard_unsaved(self) -> str | None:
        """Remove what a run that saved no checkpoint wrote into the folder it started (its folder too, when it
        created it), under its lock; says what was removed, or None when nothing may be (no lock held)."""
        from ..run_folder import LOCK_NAME, partial_files, run_files

        if self.lock is None or not self.lock.held:
            return None
        folder = Path(str(self.output_dir))
        names = run_files(folder)
        for path in [*(folder / name for name in names), *partial_files(folder)]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self.created:
            with contextlib.suppress(OSError):
                (folder / LOCK_NAME).unlink()  # ours while we hold it; nobody else's once the folder is gone
                folder.rmdir()
                return f"its folder {folder} is removed"
        return (f"its files are removed from {folder} ({', '.join(names)})" if names
                else f"{folder} holds none of its files")


@dataclass
class _Checked:
    """What the cheap checks read, and the process's place in the run."""

    resume_from: dict[str, Any] | None
    resume_epoch: int | None
    device_info: Any
    folder_plan: Any


# --------------------------------------------------------------------------------------------------------------
# build_run(): checks first, then building, then (last) claiming the folder and writing
# --------------------------------------------------------------------------------------------------------------

def build_run(settings: TrainSettings, *, on_start: Callable[[Run], None] | None = None,
              announce: Callable[[DeitDistillError], None] | None = None) -> Run:
    """Build data, student, teacher/cache, loss, optimizer, schedule, EMA; check everything; then claim the run
    folder, write its first files and resume if asked.

    ``on_start`` receives the Run as soon as its folder is claimed (a stop before build_run returns can then tidy
    it); ``announce`` says a refusal of rank 0 before the other processes learn of it (under torchrun, which stops
    rank 0 once they exit). Nothing is written before every check has passed.
    """
    checked = _check_inputs(settings, announce)
    info = checked.device_info
    run = Run(settings=settings, device=info.device, rank=info.rank, world_size=info.world_size)
    train_ds, eval_ds, labels, num_classes = _open_data(settings)
    run.unlabeled_ds = _open_unlabeled(settings, train_ds, eval_ds, run.world_size)
    arch_kwargs, data_config = _build_student(run, num_classes, labels)
    _build_teacher_or_cache(run, num_classes, data_config, labels)
    view = _place_student_and_loaders(run, train_ds, eval_ds, data_config, num_classes)
    lr, lr_how = _build_optimization(run)
    metadata = _run_metadata(run, arch_kwargs, data_config, labels, train_ds, checked.resume_from)
    # what checkpoints record as their args: the settings with what the run resolved (classes, lr, dist_bn, the
    # device type: timm's train.py splits args.device, so None is never recorded; the modules it imports, this
    # package's for its variants, as args.yaml writes them)
    saved = {**settings.options(), "num_classes": num_classes, "lr": lr, "dist_bn": run.dist_bn,
             "device": run.device.type, "device_modules": timm_device_modules(settings)}
    comparison, metadata, resumed = _check_resume(run, checked, view, train_ds, saved, metadata)
    metadata = _ready_teacher(run, checked, eval_ds, data_config, len(run.train_loader), metadata)
    _claim(run, checked.folder_plan, data_config, metadata, on_start, announce)
    if run.primary:
        _write_first_files(run, saved, metadata, data_config, num_classes, train_ds, eval_ds, lr_how)
    _resume_tail(run, checked, comparison, resumed)
    return run


def _check_inputs(settings: TrainSettings, announce: Callable[[DeitDistillError], None] | None) -> _Checked:
    """The cheap checks first (names, files, the checkpoint to resume from, the run folder), then the process's
    device and place in the run, seeded."""
    from timm.layers import set_fast_norm
    from timm.utils import random_seed

    from .. import checkpoint as ckpt
    from ..run_folder import plan_run_folder

    for module in settings.device.device_modules or []:
        importlib.import_module(module)
    builders.check_model_name(settings.student.model, "--model")
    if settings.teacher.source:
        builders.check_model_name(settings.teacher.source, "--distill-teacher")
    for flag, path in (("--initial-checkpoint", settings.student.initial_checkpoint),
                       ("--pretrained-path", settings.student.pretrained_path),
                       ("--distill-teacher-path", settings.teacher.checkpoint_path)):
        # a damaged file is refused here, before the data scan and any model is built
        if path and not path.lower().endswith((".npz", ".npy")):  # NumPy weights are timm's to read
            ckpt.check_checkpoint_file(path, what=flag)
    resume_from = resume_epoch = None
    if settings.run.resume:
        resume_from = ckpt.read_checkpoint(settings.run.resume, what="--resume")
        resume_epoch = ckpt.checkpoint_epoch(resume_from)

    info = builders.init_device(settings.device.device)
    if info.rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    out = settings.run
    plan = rank0_decides(info.rank, info.world_size, lambda: plan_run_folder(
        output=out.output, experiment=out.experiment, resume=out.resume or None, resume_epoch=resume_epoch,
        start_epoch=out.start_epoch, data_dir=settings.data.data_dir), announce)
    random_seed(settings.seed, info.rank)
    if settings.misc.fast_norm:
        set_fast_norm()
    return _Checked(resume_from, resume_epoch, info, plan)


def rank0_decides(rank: int, world_size: int, decide: Callable[[], Any],
                  announce: Callable[[DeitDistillError], None] | None = None) -> Any:
    """Run ``decide`` on rank 0 only and give every rank its (picklable) result, or its refusal, together.

    Every rank refuses at once, instead of rank 0 alone while the others wait for it in a collective; rank 0
    ``announce``s its refusal first (torchrun stops it once the others exit).
    """
    result, error, failed = None, None, False
    if rank == 0:
        try:
            result = decide()
        except DeitDistillError as e:
            error = one_line(e)
            if world_size > 1:  # said before the others learn of it: torchrun stops rank 0 once they exit
                (announce or _log_refusal)(e)
        except BaseException:
            failed = True
            if world_size == 1:
                raise
            torch.distributed.broadcast_object_list([None, None, True], src=0)
            raise
    if world_size > 1:
        box = [result, error, failed]
        torch.distributed.broadcast_object_list(box, src=0)
        result, error, failed = box
    if failed:
        raise RuntimeError("rank 0 failed while setting up the run folder; see its error.")
    if error is not None:
        refusal = RunFolderError(error)
        refusal.reported = world_size > 1  # type: ignore[attr-defined]
        raise refusal
    return result


def _log_refusal(error: DeitDistillError) -> None:
    _logger.error("%s", one_line(error))


def _open_data(settings: TrainSettings) -> tuple[Any, Any, list[str], int]:
    """Both splits, checked (a wrong folder is the most common mistake and the cheapest to report), their
    classes and the number of classes."""
    from ..data import check_num_classes, label_names

    train_ds, eval_ds = builders.open_datasets(settings.data, num_classes=settings.student.num_classes,
                                               loader=settings.loader, seed=settings.seed)
    for split, ds in (("train", train_ds), ("validation", eval_ds)):
        if getattr(ds, "skipped_files", None):
            _logger.warning("Skipped %d unreadable image(s) in the %s split.", len(ds.skipped_files), split)
    labels = label_names(train_ds)
    return train_ds, eval_ds, labels, check_num_classes(train_ds, settings.student.num_classes)


def _open_unlabeled(settings: TrainSettings, train_ds: Any, eval_ds: Any, world_size: int) -> Any:
    """The unlabelled images (None without them), checked: readable, not the training split, no validation image,
    at least one batch's share per process."""
    from ..data.unlabeled import check_unlabeled, open_unlabeled

    u = settings.unlabeled
    if not u.active:
        return None
    flag = u.source_name
    ds = open_unlabeled(u.unlabeled_data_dir, u.unlabeled_dataset, u.unlabeled_split,
                        skip_bad_images=settings.data.skip_bad_images, input_img_mode=settings.data.input_img_mode,
                        batch_size=settings.loader.batch_size, seed=settings.seed)
    if getattr(ds, "skipped_files", None):
        _logger.warning("Skipped %d unreadable unlabelled image(s).", len(ds.skipped_files))
    check_unlabeled(ds, train_ds, eval_ds, flag=flag)
    per_batch = u.per_batch(settings.loader.batch_size)
    if len(ds) < per_batch * world_size:
        raise DataError(f"{flag} holds {len(ds)} images, fewer than the {per_batch} a batch takes from it "
                        f"({'per process, ' if world_size > 1 else ''}--unlabeled-fraction {u.unlabeled_fraction} of "
                        f"--batch-size {settings.loader.batch_size}); fix: add images or lower the fraction.")
    return ds


def _build_student(run: Run, num_classes: int, labels: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The student (refused when it cannot distil as asked) and its data config; returns (architecture kwargs,
    data config)."""
    from ..evaluation import is_distilled

    settings = run.settings
    arch_kwargs = builders.architecture_kwargs(settings.student, num_classes)
    student = builders.create_student(settings.student, arch_kwargs, label_names=labels or None)
    distilled = is_distilled(student)
    distill = settings.distill
    heads = builders.task_heads(distill)
    if heads == "two" and not distilled:
        raise UsageError(
            f"--kd-distill-type token trains a distillation token's head, but --model {settings.student.model} has "
            "none. Use a distilled student (e.g. deit_tiny_distilled_patch16_224; `deit-distill models` lists them), "
            "or timm's logit distillation (drop --kd-distill-type) for any student.")
    if distilled:
        # 'none' and timm's logit task train both heads through their average (timm's behaviour); a single-head
        # student needs nothing: its one head learns both terms.
        student.set_distilled_training(distill.type != "none" and heads != "one")
    data_config = builders.student_data_config(settings.student, num_classes, model=student, verbose=run.primary)
    _check_normalisation_channels(settings.student.model, data_config)
    student.pretrained_cfg = {**student.pretrained_cfg, **data_config}  # the size the student now takes
    run.student = student
    return arch_kwargs, data_config


def _check_normalisation_channels(model: str, data_config: dict[str, Any]) -> None:
    """A student taking C channels is normalised with C means and stds: a pretrained config's 3 against
    ``--in-chans 1`` would fail in the first batch (after the run's folder was written)."""
    channels = int(data_config["input_size"][0])
    for key in ("mean", "std"):
        values = tuple(float(v) for v in data_config[key])
        if len(values) != channels:
            raise UsageError(
                f"--model {model} takes {channels} input channel(s) but its {key} {values} (its pretrained config) "
                f"has {len(values)}; fix: pass --mean and --std with {channels} value(s) (one value is repeated "
                "per channel, e.g. --mean 0.5 --std 0.5).")


def _build_teacher_or_cache(run: Run, num_classes: int, data_config: dict[str, Any], labels: list[str]) -> None:
    """The cache the run replays (checked against the run once its epochs are known), or its teacher (readied, its
    path chosen and checked, once every cheaper check has passed)."""
    settings = run.settings
    if settings.distill_cache:
        from ..cache import TeacherTargetCache  # only runs that replay a cache pay for its import

        run.cache = TeacherTargetCache.open(settings.distill_cache)
    elif settings.teacher.given:
        run.teacher = create_teacher(settings.teacher, num_classes, data_config, run.device,
                                     label_names=labels or None)


def _place_student_and_loaders(run: Run, train_ds: Any, eval_ds: Any, data_config: dict[str, Any],
                               num_classes: int) -> Any:
    """The student on its device (channels_last, SyncBatchNorm) and the loaders; returns the view settings."""
    from ..data import ViewSettings, build_eval_loader, build_train_loader

    settings, student = run.settings, run.student
    assert student is not None
    student.to(run.device)
    if settings.misc.channels_last:
        student.to(memory_format=torch.channels_last)
    run.dist_bn = settings.misc.dist_bn
    if run.distributed and settings.misc.sync_bn:
        run.dist_bn = ""  # SyncBatchNorm keeps the statistics in sync already
        run.student = student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    view = ViewSettings.resolve(settings.augment, data_config, num_classes)
    if run.unlabeled_ds is not None:
        run.train_loader = _mixed_loader(run, train_ds, view)
    else:
        run.train_loader = build_train_loader(train_ds, view, settings.loader, rank=run.rank,
                                              world_size=run.world_size)
    run.eval_loader = build_eval_loader(eval_ds, data_config, settings.loader, rank=run.rank,
                                        world_size=run.world_size)
    return view


def _mixed_loader(run: Run, train_ds: Any, view: Any) -> Any:
    """Labelled batches of ``B - u`` views followed by ``u`` unlabelled ones (``u``: --unlabeled-fraction of
    --batch-size), the unlabelled views under a seed of their own (:mod:`timm_deit_distill.data.unlabeled`)."""
    from ..data import build_train_loader
    from ..data.unlabeled import MixedLoader, unlabeled_seed

    settings = run.settings
    batch = settings.loader.batch_size
    per_batch = settings.unlabeled.per_batch(batch)
    kinds = {"labelled": batch - per_batch, "unlabelled": per_batch}
    for kind, size in kinds.items():  # each kind is mixed on its own: each part must suit Mixup's batches
        try:
            replace(settings.loader, batch_size=size)
            if view.augment.mixing:
                group = int(view.augment.mix_group_size) if view.augment.deterministic_aug else 2
                if size % group:
                    raise DataError(f"must be a multiple of {group}")
        except DataError as e:
            raise DataError(f"--unlabeled-fraction {settings.unlabeled.unlabeled_fraction} of --batch-size {batch} "
                            f"leaves {size} {kind} images a batch, which Mixup/CutMix mixes on their own: "
                            f"{one_line(e)}; fix: choose a batch size and fraction that give both parts a multiple "
                            "of the mix group.") from None
    labeled = build_train_loader(train_ds, view, replace(settings.loader, batch_size=kinds["labelled"]),
                                 rank=run.rank, world_size=run.world_size)
    unlabeled_view = replace(view, augment=replace(view.augment, seed=unlabeled_seed(view.augment.seed)))
    unlabeled = build_train_loader(run.unlabeled_ds, unlabeled_view, replace(settings.loader, batch_size=per_batch),
                                   rank=run.rank, world_size=run.world_size, unlabeled_per_epoch=len(labeled))
    return MixedLoader(labeled, unlabeled)


def _build_optimization(run: Run) -> tuple[float, str]:
    """Optimizer, AMP, EMA, compilation, DDP, the training step (the Task) and the schedule; returns the learning
    rate and how it was set."""
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.utils import ModelEmaV3, NativeScaler

    settings, student = run.settings, run.student
    lr, lr_how = settings.learning_rate(run.world_size)
    opt = settings.optimizer
    trainable: nn.Module = student
    if settings.distill.type == "feature":
        # timm's trainable module: the student and the projection onto the teacher's features, both optimised
        trainable = builders.feature_module(student, run.teacher, settings.distill)
        run.projection = trainable.projection
    try:
        run.optimizer = create_optimizer_v2(trainable, **{**optimizer_kwargs(cfg=opt.timm_cfg(lr)), "lr": lr},
                                            **(opt.opt_kwargs or {}))
    except (TypeError, ValueError, ImportError) as e:  # timm's or the optimizer's own refusal of these settings
        raise UsageError(f"--opt {opt.opt}: timm could not build the optimizer ({type(e).__name__}: {one_line(e)}); "
                         "fix: check --opt-kwargs / --opt-betas / --opt-eps / --momentum for this optimizer.") from None
    if settings.amp.amp:
        run.amp_autocast = partial(torch.autocast, device_type=run.device.type, dtype=settings.amp.dtype)
        if run.device.type == "cuda" and settings.amp.dtype == torch.float16:
            run.loss_scaler = NativeScaler(device=run.device.type)  # bfloat16 needs no loss scaling
    ema = settings.ema
    if ema.model_ema:
        run.model_ema = ModelEmaV3(student, decay=ema.model_ema_decay, use_warmup=ema.model_ema_warmup,
                                   device="cpu" if ema.model_ema_force_cpu else None)
    model: nn.Module = trainable
    if settings.misc.torchcompile:
        model = torch.compile(model, backend=settings.misc.torchcompile, mode=settings.misc.torchcompile_mode)
    if run.distributed:
        # broadcast_buffers is passed only to turn it off (--no-ddp-bb): torch 2.14 deprecates the keyword.
        ddp_kwargs = {"broadcast_buffers": False} if settings.device.no_ddp_bb else {}
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[run.device] if run.device.type == "cuda" else None, **ddp_kwargs)
    run.model = model
    run.task = builders.create_task(model, _target_source(run), settings.distill, smoothing=settings.augment.smoothing,
                                    mixup_active=run.train_loader.mixup_active, device=run.device,
                                    pseudo_labels=settings.unlabeled.pseudo_labels)
    accum = settings.step.grad_accum_steps
    run.updates_per_epoch = (len(run.train_loader) + accum - 1) // accum
    run.lr_scheduler, run.num_epochs = build_schedule(settings, run.optimizer, run.updates_per_epoch)
    return lr, lr_how


def _target_source(run: Run) -> Any:
    """Where the step's teacher targets come from: the cache replayed, the teacher online, or nowhere."""
    from ..targets import CachedTargets, OnlineFeatures, OnlineTargets

    if run.cache is not None:
        return CachedTargets(run.cache)
    if run.settings.distill.type == "feature":
        return OnlineFeatures(run.teacher)
    return OnlineTargets(run.teacher) if run.teacher is not None else None


# timm warns on building its plateau schedule that the schedule's state "is not saved in checkpoints, so a resumed
# run restarts the plateau logic". This trainer saves all of it (checkpoint.scheduler_state), so that warning is
# wrong here: it is silenced (that one only) and the log says this instead.
_PLATEAU_WARNING = r"PlateauLRScheduler is deprecated .*not saved in checkpoints"
PLATEAU_NOTE = ("timm deprecates the plateau schedule; this trainer checkpoints its full state (best metric, patience "
                "and cooldown counters), so --resume is exact.")


def build_schedule(settings: TrainSettings, optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> tuple[Any, int]:
    """timm's schedule for these settings, and the number of epochs it runs; a setting timm refuses is a
    UsageError."""
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    metric = settings.intervals.eval_metric
    cfg = settings.schedule.timm_cfg(seed=settings.seed, eval_metric=metric)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_PLATEAU_WARNING, category=FutureWarning)
            return create_scheduler_v2(optimizer, **scheduler_kwargs(cfg, decreasing_metric=metric == "loss"),
                                       updates_per_epoch=updates_per_epoch)
    except (TypeError, ValueError, AssertionError) as e:  # timm's consistency checks of the schedule's settings
        raise UsageError(f"--sched {settings.schedule.sched}: timm refused the schedule ({one_line(e)}); fix: adjust "
                         "the schedule's flags (--epochs, --warmup-epochs, --decay-epochs, ...).") from None


def _heads_taught(distill: Any, distilled: bool) -> str | None:
    """Which head learned from which source, as the card says it (None without a teacher)."""
    if distill.type == "none":
        return None
    if distill.type == "feature":
        return "pooled features (projected where sizes differ): teacher's features; the head: labels"
    if distilled and builders.task_heads(distill) != "one":
        return "class head: labels; distillation head: teacher"
    if distilled:
        return "class and distillation heads, through their average: labels and teacher"
    return "the one head: labels and teacher"


def _timm_weights(distill: Any) -> dict[str, Any]:
    """timm's task and the weights it applied, for a timm-family run's metadata (nothing for DeiT's family)."""
    if distill.family != "timm":
        return {}
    task, weight = distill.weights
    return {"kd_distill_type": distill.kd_distill_type, "task_loss_weight": task, "distill_loss_weight": weight}


def _unlabeled_record(run: Run) -> dict[str, Any] | None:
    """What the checkpoint (and so the Hub card and a later --resume) records of the unlabelled images."""
    from ..data import dataset_fingerprint

    if run.unlabeled_ds is None:
        return None
    u = run.settings.unlabeled
    info = run.unlabeled_ds.source_info
    return {"source": u.source_name, "dataset": u.unlabeled_dataset or "folder",
            "split": u.unlabeled_split if u.unlabeled_dataset else None, "location": str(info.location),
            "num_images": len(run.unlabeled_ds), "fraction": u.unlabeled_fraction,
            "per_batch": u.per_batch(run.settings.loader.batch_size), "pseudo_labels": u.pseudo_labels,
            "fingerprint": dataset_fingerprint(run.unlabeled_ds)}


def _run_metadata(run: Run, arch_kwargs: dict[str, Any], data_config: dict[str, Any], labels: list[str],
                  train_ds: Any, resume_from: dict[str, Any] | None) -> Any:
    """The run's :class:`~timm_deit_distill.checkpoint.RunMetadata` (its teacher's path and check come later)."""
    from .. import checkpoint as ckpt
    from ..data import dataset_fingerprint, is_streamed, source_size
    from ..task import has_distillation_head

    settings, teacher, cache = run.settings, run.teacher, run.cache
    distill = settings.distill
    metadata = ckpt.RunMetadata(
        model=settings.student.model,
        model_kwargs=arch_kwargs,
        pretrained_cfg={"input_size": [int(v) for v in data_config["input_size"]],
                        "mean": [float(v) for v in data_config["mean"]],
                        "std": [float(v) for v in data_config["std"]],
                        "crop_pct": float(data_config["crop_pct"]),
                        "interpolation": str(data_config["interpolation"])},
        label_names=labels,
        initial_weights=builders.initial_weights_origin(settings.student, run.student, resumed=resume_from),
        distill=ckpt.Distillation(teacher=settings.teacher.source or getattr(teacher, "name", None),
                                  teacher_description=(getattr(teacher, "description", None)
                                                       or getattr(cache, "teacher_description", None)),
                                  type=distill.type, alpha=distill.alpha,
                                  # feature distillation's MSE has neither (timm's too)
                                  tau=None if distill.type == "feature" else distill.tau,
                                  soft_reduction=None if distill.type == "feature" else distill.soft_reduction,
                                  family=distill.family if distill.type != "none" else None,
                                  heads=_heads_taught(distill, has_distillation_head(run.student)),
                                  unlabeled=_unlabeled_record(run), **_timm_weights(distill)),
        recipe=settings.misc.recipe,
        ema=bool(settings.ema.model_ema),
        # What a later --resume is checked against (see checkpoint.compare_resume).
        seed=settings.seed,
        data=dataset_fingerprint(train_ds),
        world_size=run.world_size,
        resumed=[],
    )
    if is_streamed(train_ds):
        # What reproduces a stream's shard order at an epoch boundary (timm deals shards by seed + epoch to
        # world x workers, each worker's epoch sized by the batch): a resume must keep all of it.
        metadata = replace(metadata, stream={"seed": settings.seed, "world_size": run.world_size,
                                             "workers": settings.loader.workers,
                                             "batch_size": settings.loader.batch_size,
                                             "num_samples": source_size(train_ds),
                                             "shards": train_ds.source_info.identity.get("shards")})
    return metadata


def _check_resume(run: Run, checked: _Checked, view: Any, train_ds: Any, saved: dict[str, Any],
                  metadata: Any) -> tuple[Any, Any, Any]:
    """Every remaining check, still before anything is written: the resume's identity, the epochs left, the
    cache against the run; then the resumed weights, optimizer, schedule and EMA (the generator states come last,
    after the folder is claimed). Returns (the resume comparison, the metadata, the resumed state)."""
    from .. import checkpoint as ckpt
    from .resuming import identity_refusal, nothing_to_train, optimizer_refusal

    settings, resume_from = run.settings, checked.resume_from
    comparison = None
    if resume_from is not None:
        comparison = ckpt.compare_resume(resume_from, settings=saved, metadata=metadata)
        if comparison.refused:
            raise UsageError(identity_refusal(settings, comparison, resume_from, metadata, checked.folder_plan))
        other_optimizer = optimizer_refusal(settings, resume_from, ckpt.RunMetadata.from_checkpoint(resume_from))
        if other_optimizer:
            raise UsageError(other_optimizer)
    start_epoch = checked.resume_epoch + 1 if checked.resume_epoch is not None else 0
    if settings.run.start_epoch is not None:
        start_epoch = settings.run.start_epoch
    if start_epoch >= run.num_epochs:
        raise UsageError(nothing_to_train(settings, checked.resume_epoch, start_epoch, run.num_epochs))
    run.start_epoch = start_epoch
    if run.cache is not None:
        run.cache.check_training(view, train_ds, run.num_epochs, distill_type=settings.distill.type,
                                 teacher=settings.teacher, start_epoch=start_epoch)
        if run.unlabeled_ds is not None:
            _check_unlabeled_cache(run, view, start_epoch)
    resumed = None
    if resume_from is not None:
        assert comparison is not None
        resumed = ckpt.resume(settings.run.resume, run.student,
                              optimizer=None if settings.run.no_resume_opt else run.optimizer,
                              loss_scaler=run.loss_scaler, lr_scheduler=run.lr_scheduler, model_ema=run.model_ema,
                              rank=run.rank, world_size=run.world_size, checkpoint=resume_from, restore_rng=False)
        if run.projection is not None:
            ckpt.load_task_state(settings.run.resume, resume_from, projection=run.projection)
        entry = {"epoch": start_epoch, "checkpoint": os.path.abspath(settings.run.resume),
                 "changed": comparison.changed}
        metadata = replace(metadata, resumed=[*(ckpt.RunMetadata.from_checkpoint(resume_from).resumed or []), entry])
    return comparison, metadata, resumed


def _check_unlabeled_cache(run: Run, view: Any, start_epoch: int) -> None:
    """The cache's unlabelled passes against the run's: the same images, and every pass this process draws on
    (its batches per pass are its own share's, so the count depends on the process count)."""
    from ..data.unlabeled import passes_consumed

    labeled = len(run.train_loader)
    per_pass = run.train_loader.unlabeled.batch_sampler.num_batches
    run.cache.check_unlabeled(view, run.unlabeled_ds, passes_consumed(run.num_epochs, labeled, per_pass),
                              start_pass=start_epoch * labeled // per_pass, distill_type=run.settings.distill.type,
                              flag=run.settings.unlabeled.source_name)


def _ready_teacher(run: Run, checked: _Checked, eval_ds: Any, data_config: dict[str, Any], train_batches: int,
                   metadata: Any) -> Any:
    """The teacher's path (precision, compiled or not): the one a resumed run ran on, else measured here for this
    run; then the teacher is checked through exactly that path, the loss's own, before it teaches (refused near
    chance). A cache's check was measured when it was built. Returns the metadata with them."""
    settings, teacher = run.settings, run.teacher
    if teacher is None:
        if run.cache is not None:  # measured when it was built (held against these settings by check_training)
            metadata = metadata.with_distill(teacher_check=run.cache.teacher_check)
        return metadata
    resumed_path = _resumed_teacher_path(checked.resume_from, settings)
    steps = 0 if resumed_path is not None else _teacher_batches(settings, run.start_epoch, run.num_epochs,
                                                                 train_batches, len(eval_ds), run.world_size)
    check = ready_teacher(teacher, settings.teacher, eval_ds, data_config, settings.loader, seed=settings.seed,
                          batch_size=settings.loader.batch_size, steps=steps, rank=run.rank,
                          world_size=run.world_size, resumed_path=resumed_path,
                          resumed_reason=f"the path the run ran on before --resume ({settings.run.resume})")
    # its precision is now chosen; None check: skipped with --no-teacher-check (with a warning), the card says so
    return metadata.with_distill(teacher_path=teacher.path_choice.as_dict(), teacher_description=teacher.description,
                                 teacher_check=check.as_dict() if check is not None else None)


def _resumed_teacher_path(resume_from: dict[str, Any] | None, settings: TrainSettings) -> str | None:
    """The teacher path a resumed checkpoint's run used, when this run leaves the path to measurement: the rest of
    the run teaches the same targets as an uninterrupted one (a fresh measurement could choose another)."""
    if resume_from is None or settings.teacher.precision != "auto" or settings.teacher.compile != "auto":
        return None
    from ..checkpoint import read_run_metadata

    distill = read_run_metadata(resume_from).distill
    recorded = (distill.teacher_path if distill is not None else None) or {}
    path = recorded.get("path")
    return path if isinstance(path, str) and path.split(" ")[0] in ("fp32", "bf16", "fp16") else None


def _teacher_batches(settings: TrainSettings, start_epoch: int, num_epochs: int, train_batches: int,
                     eval_images: int, world_size: int) -> int:
    """How many batches of ``--batch-size`` this process's teacher will run: every training batch of the epochs
    left (when it distils), every evaluation (in batches of that size) and the teacher check."""
    epochs = range(start_epoch, num_epochs)
    interval = settings.intervals.val_interval
    evaluations = sum(1 for e in epochs if (e + 1) % interval == 0 or e + 1 == num_epochs)
    batch = max(1, settings.loader.batch_size)
    training = len(epochs) * train_batches if settings.distills else 0
    evaluating = math.ceil(evaluations * math.ceil(eval_images / world_size) / batch)
    checking = 0 if not settings.teacher.check else math.ceil(min(settings.teacher.check_images, eval_images) / batch)
    return training + evaluating + checking


def _run_name(settings: TrainSettings, data_config: dict[str, Any]) -> str:
    """timm train.py's name for a run folder: date-time, model, input size."""
    from timm.models import safe_model_name

    return "-".join([datetime.datetime.now().strftime("%Y%m%d-%H%M%S"), safe_model_name(settings.student.model),
                     str(data_config["input_size"][-1])])


def _claim(run: Run, folder_plan: Any, data_config: dict[str, Any], metadata: Any,
           on_start: Callable[[Run], None] | None, announce: Callable[[DeitDistillError], None] | None) -> None:
    """Claim the run folder (create or take it, lock it): the run's first write. A stop waits until the Run that
    knows the claimed folder is handed to ``on_start``."""
    from ..run_folder import claim_run_folder

    lock_box: list[Any] = []

    def claim() -> str:
        lock = claim_run_folder(folder_plan, _run_name(run.settings, data_config))
        lock_box.append(lock)
        return str(lock.folder)

    existed = folder_plan.path is not None and os.path.isdir(folder_plan.path)
    with deferred():
        run.output_dir = rank0_decides(run.rank, run.world_size, claim, announce)
        run.metadata = metadata.as_dict()
        run.lock = lock_box[0] if lock_box else None
        run.fresh, run.created = not folder_plan.continuing, not existed
        if on_start is not None:
            on_start(run)


def _write_first_files(run: Run, saved: dict[str, Any], metadata: Any, data_config: dict[str, Any],
                       num_classes: int, train_ds: Any, eval_ds: Any, lr_how: str) -> None:
    """Rank 0: the checkpoint saver, args.yaml (settings only: `-c args.yaml` repeats the run; where it resumed from
    is history, kept under ``resumed``) and the run's description in the log."""
    from .. import checkpoint as ckpt
    from ..records import write_args_yaml
    from ..run_folder import format_size
    from ..task import has_distillation_head
    from .timm_args import timm_gap, timm_keys

    settings = run.settings
    removed, size = run.lock.remove_partial_files()
    run.saver = ckpt.CheckpointSaver(
        # timm's checkpoints hold their args as a Namespace (plain values: weights_only-loadable)
        # the student's weights alone, as timm saves its eval model (feature distillation's projection: task_state)
        model=run.student, optimizer=run.optimizer, args=argparse.Namespace(**saved), model_ema=run.model_ema,
        amp_scaler=run.loss_scaler, checkpoint_dir=run.output_dir, recovery_dir=run.output_dir,
        decreasing=settings.intervals.eval_metric == "loss", max_history=settings.intervals.checkpoint_hist,
        extra_state=lambda: extra_state(run))
    record = {k: v for k, v in settings.options().items() if k not in ("resume", "no_resume_opt", "start_epoch")}
    where = dict(distilled=has_distillation_head(run.student),
                 teacher_description=getattr(run.teacher, "description", None),
                 student_input_size=data_config.get("input_size"))
    record.update(timm_keys(settings, device=saved["device"], num_classes=num_classes, **where))  # timm's -c reads
    gap = timm_gap(settings, **where)
    if metadata.resumed:
        record["resumed"] = metadata.resumed
    if metadata.distill is not None and metadata.distill.teacher_check is not ckpt.NOT_RECORDED:
        record["teacher_check"] = metadata.distill.teacher_check
    write_args_yaml(os.path.join(run.output_dir, "args.yaml"), record,
                    note=f"timm's train.py: {gap}." if gap else None)
    _log_run(run, data_config, num_classes, train_ds, eval_ds, lr_how)
    if removed:
        _logger.info("Removed %d partial file(s) (%s) that a killed save left in %s.", removed,
                     format_size(size), run.output_dir)


def extra_state(run: Run) -> dict[str, Any]:
    """Keys added to every checkpoint: what exact resumption and downstream readers need."""
    from ..checkpoint import scheduler_state

    state: dict[str, Any] = {
        "deit_distill": run.metadata,
        "scheduler": scheduler_state(run.lr_scheduler),
        "num_updates": run.num_updates,
        "rng": run.rng_states,  # gathered from every rank just before saving
        "summary": list(run.history),
    }
    if run.projection is not None:
        state["task_state"] = {"projection": run.projection.state_dict()}  # timm's key and layout
    if run.model_ema is not None and hasattr(run.model_ema, "_sr_generator"):
        state["ema_rng"] = run.model_ema._sr_generator.get_state()
    return state


def _log_run(run: Run, data_config: dict[str, Any], num_classes: int, train_ds: Any, eval_ds: Any,
             lr_how: str) -> None:
    from ..data import is_streamed, source_size

    settings = run.settings
    params = sum(p.numel() for p in run.student.parameters()) / 1e6
    _logger.info("Student %s (%.2fM parameters, input %s), %d classes, %d train / %d eval images, "
                 "%s on %s.", settings.student.model, params, tuple(data_config["input_size"]), num_classes,
                 source_size(train_ds), source_size(eval_ds),
                 f"{run.world_size} processes" if run.distributed else "1 process", run.device)
    if is_streamed(train_ds):
        _logger.info("Streamed source %s: each epoch shows %d samples per process (whole batches on every loader "
                     "worker); --resume continues at an epoch boundary with that epoch's shard order, not its "
                     "sample order.", settings.data.dataset, len(run.train_loader) * settings.loader.batch_size)
    if run.unlabeled_ds is not None:
        u, batch = settings.unlabeled, settings.loader.batch_size
        _logger.info("Unlabelled images: %d from %s; each batch of %d holds %d labelled and %d unlabelled images "
                     "(an epoch is one pass over the labelled ones); their class term: %s.", len(run.unlabeled_ds),
                     u.source_name, batch, batch - u.per_batch(batch), u.per_batch(batch),
                     "the teacher's argmax (--pseudo-labels)" if u.pseudo_labels else "none (only the teacher's "
                     "answer supervises them)")
    distill = settings.distill
    task, weight = distill.weights
    _logger.info("Distillation: %s (%s; weights %g x task + %g x distill, tau %g, soft reduction %s), teacher: %s.",
                 distill.type, f"timm's {distill.kd_distill_type} task" if distill.family == "timm" else "DeiT's",
                 task, weight, distill.tau, distill.soft_reduction, _teacher_source(run))
    _logger.info("Learning rate %s; %d epochs of %d updates; output %s.", lr_how, run.num_epochs,
                 run.updates_per_epoch, run.output_dir)
    if settings.schedule.sched == "plateau":
        _logger.info(PLATEAU_NOTE)


def _teacher_source(run: Run) -> str:
    settings, teacher = run.settings, run.teacher
    if run.cache is not None:
        return f"cache {settings.distill_cache}"
    if teacher is None:
        return "none"
    name = settings.teacher.source or getattr(teacher, "name", None) or "?"
    path = settings.teacher.checkpoint_path
    return f"{name} ({path})" if path else name


def _resume_tail(run: Run, checked: _Checked, comparison: Any, resumed: Any) -> None:
    """After the folder is claimed: the resumed history and generator states, and the schedule positioned at the
    start epoch (timm's rule, and the plateau schedule's rate)."""
    from ..records import current_row
    from .resuming import log_resumed, warn_changes

    settings = run.settings
    if resumed is not None:
        run.start_epoch, run.num_updates = resumed.start_epoch, resumed.num_updates
        run.history = [current_row(row) for row in resumed.summary]  # an older run's rows in today's columns
        if checked.folder_plan.continuing:
            run.last_saved_epoch = checked.resume_epoch
            if run.saver is not None:
                run.saver.load_state_dict(resumed.saver_state or {})
        if run.primary:
            warn_changes(comparison)
        # Resume last: the generator states, which nothing after this may consume before the first step.
        resumed.restore_rng(run.model_ema)
        if run.primary:
            log_resumed(settings, resumed, run.start_epoch)
    if settings.run.start_epoch is not None:
        run.start_epoch = settings.run.start_epoch
    _position_schedule(run, checked.resume_from, comparison, resumed)


def _position_schedule(run: Run, resume_from: dict[str, Any] | None, comparison: Any, resumed: Any) -> None:
    """Put the schedule at the run's start epoch when its state was not restored (timm's rule), give a plateau
    schedule started past its warm-up a rate, and warn when a resumed plateau run's new --lr has no effect."""
    from .resuming import plateau_keeps_lr

    settings, lr_scheduler, start_epoch = run.settings, run.lr_scheduler, run.start_epoch
    explicit_start = settings.run.start_epoch is not None
    if start_epoch > 0 and (resumed is None or not resumed.scheduler_restored or explicit_start):
        if settings.schedule.sched_on_updates:
            lr_scheduler.step_update(start_epoch * run.updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)
    optimizer_restored = resume_from is not None and not settings.run.no_resume_opt and "optimizer" in resume_from
    plateau = settings.schedule.sched == "plateau"
    if plateau and not optimizer_restored and start_epoch > lr_scheduler.warmup_t:
        # timm's plateau schedule sets the warm-up's first rate (--warmup-lr) when built and sets none past its
        # warm-up (it only cuts the rate the optimizer holds): started past it with a fresh optimizer, the whole
        # run would train at --warmup-lr. It takes the rate its restored state last set, else --lr.
        restored = resumed is not None and resumed.scheduler_restored and not explicit_start
        lr_scheduler.update_groups(lr_scheduler.lr_scheduler.get_last_lr() if restored else lr_scheduler.base_values)
    if resumed is not None and run.primary:
        assert comparison is not None and resume_from is not None
        warning = plateau_keeps_lr(settings, comparison.changed, optimizer_restored=optimizer_restored,
                                   lr_scheduler=lr_scheduler, optimizer=run.optimizer, start_epoch=start_epoch)
        if warning:
            _logger.warning(warning)
