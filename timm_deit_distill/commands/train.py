"""`deit-distill train`: timm's train.py loop with DeiT distillation through the distillation token.

Built from timm's parts: ``create_model``, ``create_optimizer_v2``, ``create_scheduler_v2``, ``ModelEmaV3``,
autocast + ``NativeScaler``, ``CheckpointSaver``'s files. Per step::

    inputs, targets, views  <- loader (timm transforms + Mixup/CutMix, repeated augmentation)
    teacher_logits          <- teacher(inputs)            or  cache.targets(epoch, views)
    (cls, dist)             <- student(inputs)
    loss                    <- (1 - alpha) * CE(cls, targets) + alpha * distill(dist, teacher_logits)

The teacher stays outside DDP, in eval mode, one per process. Checkpoints hold the student only.
A run writes only into a folder of its own, created (or, for ``--resume``, taken) and locked after every
check has passed; a folder holding another run is refused, never overwritten (see :mod:`.run_folder`).
Run ``deit-distill train --help`` for the flags; ``--print-config`` shows what a command line resolves to.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..errors import DataError, DeitDistillError, DiskFullError, NonFiniteLoss, RunFolderError
from ..factory.options import config_dict, resolve_lr
from ..progress import is_progress_bar, progress_bar
from .args import (
    TrainSettings,
    UsageError,  # re-exported: the refusal raised for a setting that cannot work
    build_parser,
    format_config,
    parse_args,
    settings_from_args,
)
from .common import one_line, refuse, setup_logging
from .stops import Stopped, deferred, stop_of, stop_signals
from .stops import check as check_stop

if TYPE_CHECKING:
    from ..checkpoint import RunMetadata

__all__ = ["main", "setup", "train", "NonFiniteLoss"]

_logger = logging.getLogger("timm_deit_distill.train")  # the name the trainer's log lines always had


# --------------------------------------------------------------------------------------------------------------
# Set-up: everything the loop needs, refused early when it cannot work
# --------------------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """The pieces of one training run (built by :func:`setup`)."""

    args: argparse.Namespace
    device: torch.device
    rank: int
    world_size: int
    model: nn.Module  # the trainable module (DDP/compiled wrapper when used)
    student: nn.Module  # the plain student
    model_ema: Any
    teacher: Any
    cache: Any
    criterion: Any
    optimizer: torch.optim.Optimizer
    loss_scaler: Any
    lr_scheduler: Any
    amp_autocast: Callable[[], Any]
    train_loader: Any
    eval_loader: Any
    num_epochs: int
    updates_per_epoch: int
    output_dir: str | None
    saver: Any
    metadata: dict[str, Any]
    start_epoch: int = 0
    num_updates: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    rng_states: list[dict[str, Any]] = field(default_factory=list)
    lock: Any = None  # rank 0's RunLock on output_dir, held for the whole run
    last_saved_epoch: int | None = None  # the epoch output_dir/last.pth.tar holds
    dist_bn: str = ""  # --dist-bn, or '' when SyncBatchNorm already keeps the statistics in sync
    fresh: bool = False  # output_dir held no run when claimed (not a --resume continuing in its own folder)
    created: bool = False  # output_dir was created by this run
    epoch_now: int | None = None  # where the loop is: the epoch, and the updates done in it
    steps_done: int = 0

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


# --------------------------------------------------------------------------------------------------------------
# The run folder (run_folder.py): checked early by rank 0, claimed at the end of set-up, never overwritten
# --------------------------------------------------------------------------------------------------------------

def _rank0_decides(rank: int, world_size: int, decide: Callable[[], Any]) -> Any:
    """Run ``decide`` on rank 0 only and give every rank its (picklable) result, or its refusal, together.

    Every rank refuses at once, instead of rank 0 alone while the others wait for it in a collective.
    """
    result, error, failed = None, None, False
    if rank == 0:
        try:
            result = decide()
        except DeitDistillError as e:
            error = one_line(e)
            if world_size > 1:  # said before the others learn of it: torchrun stops rank 0 once they exit
                refuse("train", e)
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


def _run_name(args: argparse.Namespace, data_config: dict[str, Any]) -> str:
    """timm train.py's name for a run folder: date-time, model, input size."""
    from timm.models import safe_model_name

    return "-".join([datetime.datetime.now().strftime("%Y%m%d-%H%M%S"), safe_model_name(args.model),
                     str(data_config["input_size"][-1])])


# --------------------------------------------------------------------------------------------------------------
# setup(): checks first, then building, then (last) claiming the folder and writing
# --------------------------------------------------------------------------------------------------------------

def _teacher_source(args: argparse.Namespace, teacher: Any, cache: Any) -> str:
    if cache is not None:
        return f"cache {args.distill_cache}"
    if teacher is None:
        return "none"
    name = args.distill_teacher or getattr(teacher, "name", None) or "?"
    return f"{name} ({args.distill_teacher_path})" if args.distill_teacher_path else name


def _identity_refusal(args: argparse.Namespace, comparison: Any, checkpoint: dict[str, Any],
                      metadata: RunMetadata, plan: Any) -> str:
    """The refusal of a resume that changes what an exact resume needs, with ways out that work.

    Keeping the run: its args.yaml with this command's run folder (the folder already passed its checks; the
    yaml's own --output/--experiment may name a folder where resuming this checkpoint is refused). A new run
    from these weights: --initial-checkpoint only when they still fit the student (same model, architecture,
    classes); --pretrained-path when only the classes or the input size differ; none for another model.
    """
    import shlex

    import yaml

    from ..checkpoint import read_run_metadata

    ckpt, q = args.resume, shlex.quote
    run_dir = os.path.dirname(os.path.abspath(ckpt))
    record = os.path.join(run_dir, "args.yaml")
    if plan.continuing:
        folder = f" --output {q(os.path.dirname(plan.path))} --experiment {q(os.path.basename(plan.path))}"
    elif plan.path is not None:
        folder = f" --output {q(plan.root)} --experiment {q(args.experiment)}"
    else:
        folder = f" --output {q(plan.root)}"
        with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
            if (yaml.safe_load(Path(record).read_text()) or {}).get("experiment"):
                folder += " --experiment ''"  # the yaml's would otherwise pick the folder
    if os.path.isfile(record):
        keep = f"resume with the original values: -c {q(record)} --resume {q(ckpt)}{folder}"
    else:
        keep = (f"resume with the original values (the first of each pair above) and --resume {q(ckpt)}; "
                f"{record} is not there to repeat them with -c")
    what = set(comparison.refused_what)
    if "model" in what:
        new = f"a NEW run of --model {args.model} cannot start from these weights (another architecture): start it " \
              "from scratch, with another --experiment"
    elif what & {"architecture", "classes"}:
        old_kwargs = dict(read_run_metadata(checkpoint).model_kwargs or {})
        new_kwargs = dict(metadata.model_kwargs or {})
        fits = ({k: v for k, v in old_kwargs.items() if k not in ("img_size", "num_classes")}
                == {k: v for k, v in new_kwargs.items() if k not in ("img_size", "num_classes")})
        new = (f"start a NEW run from these weights with --pretrained --pretrained-path {q(ckpt)} (head replaced, "
               "position embedding resampled) and another --experiment" if fits else
               "these weights do not fit the new architecture: start a NEW run from scratch, with another "
               "--experiment")
    else:
        new = f"start a NEW run from these weights with --initial-checkpoint {q(ckpt)} and another --experiment"
    return (f"--resume {ckpt}: {'; '.join(comparison.refused)}. An exact resume needs the student, the training "
            f"data, the seed and the teacher of the run it continues. fix: {keep}; or {new}.")


def _nothing_to_train(args: argparse.Namespace, resume_epoch: int | None, start_epoch: int, num_epochs: int) -> str:
    """The refusal of a run that would start at or after its schedule's end (it trained nothing and exited 0)."""
    length = f"--epochs {args.epochs}" + (f" (a schedule of {num_epochs} epochs with warm-up and cool-down)"
                                          if num_epochs != args.epochs else "")
    if args.start_epoch is None and resume_epoch is not None:
        return (f"--resume {args.resume} has already trained epochs 0-{resume_epoch} ({resume_epoch + 1} epochs) and "
                f"{length} ends at epoch {num_epochs - 1}: nothing is left to train. fix: to train further, give a "
                f"longer schedule (--epochs {args.epochs + resume_epoch + 2 - num_epochs} or more); its checkpoints "
                "already hold the run as it is (evaluate one with `deit-distill eval`).")
    return (f"--start-epoch {start_epoch} is at or past the end of the schedule ({length} ends at epoch "
            f"{num_epochs - 1}): nothing would be trained. fix: a smaller --start-epoch, or a larger --epochs.")


# timm warns on building its plateau schedule that the schedule's state "is not saved in checkpoints, so a resumed
# run restarts the plateau logic". This trainer saves all of it (checkpoint.scheduler_state), so that warning is
# wrong here: it is silenced (that one only) and the log says this instead.
_PLATEAU_WARNING = r"PlateauLRScheduler is deprecated .*not saved in checkpoints"
PLATEAU_NOTE = ("timm deprecates the plateau schedule; this trainer checkpoints its full state (best metric, patience "
                "and cooldown counters), so --resume is exact.")


def build_schedule(args: argparse.Namespace, optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> tuple[Any, int]:
    """timm's schedule for these flags, and the number of epochs it runs; a setting timm refuses is a UsageError."""
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_PLATEAU_WARNING, category=FutureWarning)
            return create_scheduler_v2(optimizer, **scheduler_kwargs(args, decreasing_metric=args.eval_metric == "loss"),
                                       updates_per_epoch=updates_per_epoch)
    except (TypeError, ValueError, AssertionError) as e:  # timm's consistency checks of the schedule's settings
        raise UsageError(f"--sched {args.sched}: timm refused the schedule ({one_line(e)}); fix: adjust the "
                         "schedule's flags (--epochs, --warmup-epochs, --decay-epochs, ...).") from None


def setup(args: argparse.Namespace, settings: TrainSettings | None = None, *,  # noqa: C901 - one linear recipe
          started: list[Run] | None = None) -> Run:
    """Build data, student, teacher/cache, loss, optimizer, schedule, EMA; check everything; then claim the
    run folder, write its first files and resume if asked. ``settings`` are ``settings_from_args(args)``;
    ``started`` receives the Run as soon as its folder is claimed (a stop before setup returns tidies it).

    Nothing is written before every check has passed: the folder is created (or taken) and locked,
    and args.yaml written, only at the end.
    """
    from timm.layers import set_fast_norm
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.utils import ModelEmaV3, NativeScaler, random_seed

    from .. import checkpoint as ckpt
    from .. import factory
    from ..data import (
        ViewSettings,
        build_eval_loader,
        build_train_loader,
        check_num_classes,
        dataset_fingerprint,
        is_streamed,
        source_size,
    )
    from ..data import label_names as dataset_labels
    from ..evaluation import is_distilled
    from ..records import write_args_yaml
    from ..run_folder import FolderPlan, claim_run_folder, format_size, plan_run_folder

    settings = settings or settings_from_args(args)

    # --- Cheap checks first: names, the checkpoint to resume from, the run folder.
    user_config = config_dict(build_parser(), args)  # args.yaml records the settings as given (lr still scales on reload)
    for module in args.device_modules or []:
        importlib.import_module(module)
    factory.check_model_name(args.model, "--model")
    if args.distill_teacher:
        factory.check_model_name(args.distill_teacher, "--distill-teacher")
    for flag in ("initial_checkpoint", "pretrained_path", "distill_teacher_path"):
        path = getattr(args, flag)  # a damaged file is refused here, before the data scan and any model is built
        if path and not path.lower().endswith((".npz", ".npy")):  # NumPy weights are timm's to read
            ckpt.check_checkpoint_file(path, what=f"--{flag.replace('_', '-')}")
    resume_from: dict[str, Any] | None = None
    resume_epoch: int | None = None
    if args.resume:
        resume_from = ckpt.read_checkpoint(args.resume, what="--resume")
        resume_epoch = ckpt.checkpoint_epoch(resume_from)

    device_info = factory.init_device(settings.device)
    device, rank, world_size = device_info.device, device_info.rank, device_info.world_size
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    folder_plan: FolderPlan = _rank0_decides(rank, world_size, lambda: plan_run_folder(
        output=args.output, experiment=args.experiment, resume=args.resume or None, resume_epoch=resume_epoch,
        start_epoch=args.start_epoch, data_dir=args.data_dir))
    random_seed(args.seed, rank)
    if args.fast_norm:
        set_fast_norm()

    # --- Data: a wrong folder is the most common mistake and the cheapest to report.
    train_ds, eval_ds = factory.open_datasets(settings.data, num_classes=settings.student.num_classes,
                                              loader=settings.loader, seed=args.seed)
    for split, ds in (("train", train_ds), ("validation", eval_ds)):
        if getattr(ds, "skipped_files", None):
            _logger.warning("Skipped %d unreadable image(s) in the %s split.", len(ds.skipped_files), split)
    labels = dataset_labels(train_ds)
    num_classes = check_num_classes(train_ds, settings.student.num_classes)

    # --- Student, teacher (or cache), loaders, loss, optimizer, schedule, EMA.
    arch_kwargs = factory.architecture_kwargs(settings.student, num_classes)
    student = factory.create_student(settings.student, arch_kwargs, label_names=labels or None)
    distilled = is_distilled(student)
    if args.distill_type in ("soft", "hard") and not distilled:
        raise UsageError(
            f"--distill-type {args.distill_type} trains the distillation token's head, but --model {args.model} has "
            "none. Use a distilled student (e.g. deit_tiny_distilled_patch16_224; `deit-distill models` lists them) "
            "or --distill-type none.")
    if distilled:
        # 'none' trains both heads on the labels through their average (timm's fine-tuning behaviour).
        student.set_distilled_training(args.distill_type != "none")
    data_config = factory.student_data_config(settings.student, num_classes, model=student, verbose=rank == 0)
    student.pretrained_cfg = {**student.pretrained_cfg, **data_config}  # the size the student now takes

    teacher = cache = None
    if args.distill_cache:
        from ..cache import TeacherTargetCache  # only runs that replay a cache pay for its import

        cache = TeacherTargetCache.open(args.distill_cache)  # checked against the run once epochs are known
    elif args.distill_teacher or args.distill_teacher_path:
        teacher = factory.create_teacher(settings.teacher, num_classes, data_config, device, label_names=labels or None)

    student.to(device)
    if args.channels_last:
        student.to(memory_format=torch.channels_last)
    dist_bn = args.dist_bn
    if world_size > 1 and args.sync_bn:
        dist_bn = ""  # SyncBatchNorm keeps the statistics in sync already
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)

    view = ViewSettings.resolve(settings.augment, data_config, num_classes)
    train_loader = build_train_loader(train_ds, view, settings.loader, rank=rank, world_size=world_size)
    eval_loader = build_eval_loader(eval_ds, data_config, settings.loader, rank=rank, world_size=world_size)
    criterion = factory.create_criterion(settings.distill, smoothing=settings.augment.smoothing,
                                         mixup_active=train_loader.mixup_active)

    lr, lr_how = resolve_lr(args, world_size)
    try:
        optimizer = create_optimizer_v2(student, **{**optimizer_kwargs(cfg=args), "lr": lr}, **(args.opt_kwargs or {}))
    except (TypeError, ValueError, ImportError) as e:  # timm's or the optimizer's own refusal of these settings
        raise UsageError(f"--opt {args.opt}: timm could not build the optimizer ({type(e).__name__}: {one_line(e)}); "
                         "fix: check --opt-kwargs / --opt-betas / --opt-eps / --momentum for this optimizer.") from None
    amp_dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
    amp_autocast: Callable[[], Any] = contextlib.nullcontext
    loss_scaler = None
    if args.amp:
        amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype)
        if device.type == "cuda" and amp_dtype == torch.float16:
            loss_scaler = NativeScaler(device=device.type)  # bfloat16 needs no loss scaling

    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(student, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                               device="cpu" if args.model_ema_force_cpu else None)
    model: nn.Module = student
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode)
    if world_size > 1:
        # broadcast_buffers is passed only to turn it off (--no-ddp-bb): torch 2.14 deprecates the keyword.
        ddp_kwargs = {"broadcast_buffers": False} if args.no_ddp_bb else {}
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None, **ddp_kwargs)

    updates_per_epoch = (len(train_loader) + args.grad_accum_steps - 1) // args.grad_accum_steps
    decreasing = args.eval_metric == "loss"
    lr_scheduler, num_epochs = build_schedule(args, optimizer, updates_per_epoch)

    metadata = ckpt.RunMetadata(
        model=args.model,
        model_kwargs=arch_kwargs,
        pretrained_cfg={"input_size": [int(v) for v in data_config["input_size"]],
                        "mean": [float(v) for v in data_config["mean"]],
                        "std": [float(v) for v in data_config["std"]],
                        "crop_pct": float(data_config["crop_pct"]),
                        "interpolation": str(data_config["interpolation"])},
        label_names=labels,
        initial_weights=factory.initial_weights_origin(settings.student, student, resumed=resume_from),
        distill=ckpt.Distillation(teacher=args.distill_teacher or getattr(teacher, "name", None),
                                  teacher_description=(getattr(teacher, "description", None)
                                                       or getattr(cache, "teacher_description", None)),
                                  type=args.distill_type, alpha=args.distill_alpha, tau=args.distill_tau,
                                  soft_reduction=args.distill_soft_reduction),
        recipe=args.recipe,
        ema=bool(args.model_ema),
        # What a later --resume is checked against (see checkpoint.compare_resume).
        seed=args.seed,
        data=dataset_fingerprint(train_ds),
        world_size=world_size,
        resumed=[],
    )
    if is_streamed(train_ds):
        # What reproduces a stream's shard order at an epoch boundary (timm deals shards by seed + epoch to
        # world x workers, each worker's epoch sized by the batch): a resume must keep all of it.
        metadata = replace(metadata, stream={"seed": args.seed, "world_size": world_size,
                                             "workers": settings.loader.workers,
                                             "batch_size": settings.loader.batch_size,
                                             "num_samples": source_size(train_ds),
                                             "shards": train_ds.source_info.identity.get("shards")})
    # plain values (weights_only-loadable): the settings with what the run resolved (classes, lr, dist_bn)
    saved_args = argparse.Namespace(**{**config_dict(build_parser(), args), "num_classes": num_classes, "lr": lr, "dist_bn": dist_bn})

    # --- Every remaining check, still before anything is written.
    comparison = None
    if resume_from is not None:
        comparison = ckpt.compare_resume(resume_from, settings=vars(saved_args), metadata=metadata)
        if comparison.refused:
            raise UsageError(_identity_refusal(args, comparison, resume_from, metadata, folder_plan))
    start_epoch = resume_epoch + 1 if resume_epoch is not None else 0
    if args.start_epoch is not None:
        start_epoch = args.start_epoch
    if start_epoch >= num_epochs:
        raise UsageError(_nothing_to_train(args, resume_epoch, start_epoch, num_epochs))
    if cache is not None:
        cache.check_training(view, train_ds, num_epochs, distill_type=settings.distill.type,
                             teacher=settings.teacher, start_epoch=start_epoch)
    resumed = None
    if resume_from is not None:
        # Weights, optimizer, schedule and EMA now (a checkpoint that does not fit is refused here);
        # the generator states last, after the folder is claimed.
        resumed = ckpt.resume(args.resume, student, optimizer=None if args.no_resume_opt else optimizer,
                              loss_scaler=loss_scaler, lr_scheduler=lr_scheduler, model_ema=model_ema,
                              rank=rank, world_size=world_size, checkpoint=resume_from, restore_rng=False)
        assert comparison is not None
        entry = {"epoch": start_epoch, "checkpoint": os.path.abspath(args.resume), "changed": comparison.changed}
        metadata = replace(metadata, resumed=[*(ckpt.RunMetadata.from_checkpoint(resume_from).resumed or []), entry])

    # --- The teacher's path (precision, compiled or not), measured here for this run; then the teacher is
    # measured through exactly that path, the loss's own, before it teaches (refused near chance).
    resumed_path = _resumed_teacher_path(resume_from, settings) if teacher is not None else None
    if resumed_path is not None:
        # A resumed run keeps the path its targets so far came from: the rest of the run teaches the same
        # targets as an uninterrupted one (a fresh measurement over the epochs left could choose another).
        teacher.use_path(resumed_path, reason=f"the path the run ran on before --resume ({args.resume})")
        metadata = metadata.with_distill(teacher_path=teacher.path_choice.as_dict())
    elif teacher is not None:
        steps = _teacher_batches(args, settings, start_epoch, num_epochs, len(train_loader), len(eval_ds), world_size)
        metadata = metadata.with_distill(teacher_path=factory.select_teacher_path(
            teacher, settings.teacher, eval_ds, data_config, settings.loader, seed=args.seed,
            batch_size=args.batch_size, steps=steps, rank=rank, world_size=world_size).as_dict())
    if teacher is not None:
        metadata = metadata.with_distill(teacher_description=teacher.description)  # its precision is now chosen
    if teacher is not None:  # None when skipped with --no-teacher-check (with a warning): the card says so
        check = factory.check_teacher(teacher, settings.teacher, eval_ds, data_config, settings.loader, seed=args.seed)
        metadata = metadata.with_distill(teacher_check=check.as_dict() if check is not None else None)
    elif cache is not None:  # measured when it was built (held against these settings by check_training)
        metadata = metadata.with_distill(teacher_check=cache.teacher_check)

    # --- Claim the run folder (create or take it, lock it) and write: the first writes of the run.
    lock_box: list[Any] = []

    def claim() -> str:
        lock = claim_run_folder(folder_plan, _run_name(args, data_config))
        lock_box.append(lock)
        return str(lock.folder)

    existed = folder_plan.path is not None and os.path.isdir(folder_plan.path)
    with deferred():  # a stop waits until the Run that knows the claimed folder is handed over
        output_dir: str = _rank0_decides(rank, world_size, claim)
        run = Run(args=args, device=device, rank=rank, world_size=world_size, model=model, student=student,
                  model_ema=model_ema, teacher=teacher, cache=cache, criterion=criterion, optimizer=optimizer,
                  loss_scaler=loss_scaler, lr_scheduler=lr_scheduler, amp_autocast=amp_autocast,
                  train_loader=train_loader, eval_loader=eval_loader, num_epochs=num_epochs,
                  updates_per_epoch=updates_per_epoch, output_dir=output_dir, saver=None, metadata=metadata.as_dict(),
                  lock=lock_box[0] if lock_box else None, dist_bn=dist_bn, fresh=not folder_plan.continuing,
                  created=not existed)
        if started is not None:
            started.append(run)
    if rank == 0:
        removed, size = run.lock.remove_partial_files()
        run.saver = ckpt.CheckpointSaver(
            model=model, optimizer=optimizer, args=saved_args, model_ema=model_ema, amp_scaler=loss_scaler,
            checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=decreasing,
            max_history=args.checkpoint_hist, extra_state=lambda: _extra_state(run))
        # Settings only: `-c args.yaml` repeats the run. Where it resumed from is history, kept under `resumed`.
        record = {k: v for k, v in user_config.items() if k not in ("resume", "no_resume_opt", "start_epoch")}
        if metadata.resumed:
            record["resumed"] = metadata.resumed
        if metadata.distill is not None and metadata.distill.teacher_check is not ckpt.NOT_RECORDED:
            record["teacher_check"] = metadata.distill.teacher_check
        write_args_yaml(os.path.join(output_dir, "args.yaml"), record)

        params = sum(p.numel() for p in student.parameters()) / 1e6
        _logger.info("Student %s (%.2fM parameters, input %s), %d classes, %d train / %d eval images, "
                     "%s on %s.", args.model, params, tuple(data_config["input_size"]), num_classes,
                     source_size(train_ds), source_size(eval_ds),
                     f"{world_size} processes" if world_size > 1 else "1 process", device)
        if is_streamed(train_ds):
            _logger.info("Streamed source %s: each epoch shows %d samples per process (whole batches on every loader "
                         "worker); --resume continues at an epoch boundary with that epoch's shard order, not its "
                         "sample order.", args.dataset, len(train_loader) * settings.loader.batch_size)
        _logger.info("Distillation: %s (alpha %g, tau %g, soft reduction %s), teacher: %s.", args.distill_type,
                     args.distill_alpha, args.distill_tau, args.distill_soft_reduction,
                     _teacher_source(args, teacher, cache))
        _logger.info("Learning rate %s; %d epochs of %d updates; output %s.", lr_how, num_epochs,
                     updates_per_epoch, output_dir)
        if args.sched == "plateau":
            _logger.info(PLATEAU_NOTE)
        if removed:
            _logger.info("Removed %d partial file(s) (%s) that a killed save left in %s.", removed,
                         format_size(size), output_dir)

    if resumed is not None:
        run.start_epoch, run.num_updates, run.history = resumed.start_epoch, resumed.num_updates, resumed.summary
        if folder_plan.continuing:
            run.last_saved_epoch = resume_epoch
            if run.saver is not None:
                run.saver.load_state_dict(resumed.saver_state or {})
        if rank == 0:
            assert comparison is not None
            for key, (old, new) in comparison.changed.items():
                _logger.warning("Resumed with a changed setting: %s %s -> %s (recorded in args.yaml).", key, old, new)
            for note in comparison.notes:
                _logger.warning("Resume check: %s.", note)
        # Resume last: the generator states, which nothing after this may consume before the first step.
        resumed.restore_rng(model_ema)
        if rank == 0:
            _logger.info("Resumed from %s at epoch %d (RNG states %s; schedule %s).", args.resume, run.start_epoch,
                         "restored" if resumed.rng_restored else "not in the checkpoint: reseeded",
                         _schedule_how(args, resumed.scheduler_restored))
    if args.start_epoch is not None:
        run.start_epoch = args.start_epoch
    if run.start_epoch > 0 and (resumed is None or not resumed.scheduler_restored or args.start_epoch is not None):
        # timm's rule: position the schedule at the start epoch when its state was not restored
        if args.sched_on_updates:
            lr_scheduler.step_update(run.start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(run.start_epoch)
    optimizer_restored = resume_from is not None and not args.no_resume_opt and "optimizer" in resume_from
    if args.sched == "plateau" and not optimizer_restored and run.start_epoch > lr_scheduler.warmup_t:
        # timm's plateau schedule sets the warm-up's first rate (--warmup-lr) when built and sets none past its
        # warm-up (it only cuts the rate the optimizer holds): started past it with a fresh optimizer, the whole
        # run would train at --warmup-lr. It takes the rate its restored state last set, else --lr.
        restored = resumed is not None and resumed.scheduler_restored and args.start_epoch is None
        lr_scheduler.update_groups(lr_scheduler.lr_scheduler.get_last_lr() if restored else lr_scheduler.base_values)
    if resumed is not None and rank == 0:
        assert comparison is not None and resume_from is not None
        warning = _plateau_keeps_lr(args, comparison.changed, optimizer_restored=optimizer_restored,
                                    lr_scheduler=lr_scheduler, optimizer=optimizer, start_epoch=run.start_epoch)
        if warning:
            _logger.warning(warning)
    return run


def _schedule_how(args: argparse.Namespace, restored: bool) -> str:
    """What became of the schedule on --resume, for the "Resumed from" line."""
    if restored:
        return "restored"
    if args.sched == "plateau":  # its state moves with the metric: rebuilt, it forgets what the run had seen
        return ("rebuilt from these flags: the plateau's best metric and its patience and cooldown counters "
                "start anew")
    return "rebuilt from these flags"


def _plateau_keeps_lr(args: argparse.Namespace, changed: dict[str, list[Any]], *, optimizer_restored: bool,
                      lr_scheduler: Any, optimizer: torch.optim.Optimizer, start_epoch: int) -> str | None:
    """The warning for a plateau run resumed with another --lr, which then has no effect: past its warm-up timm's
    plateau schedule sets no rate, it only cuts the one the optimizer holds, and the optimizer state restored
    from the checkpoint holds the rate the checkpoint's run reached. None when --lr does apply."""
    if args.sched != "plateau" or "lr" not in changed or args.no_resume_opt or not optimizer_restored:
        return None
    if start_epoch <= lr_scheduler.warmup_t:
        return None  # the warm-up still ramps to the new --lr
    old, new = (f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in changed["lr"])
    kept = sum(float(g["lr"]) for g in optimizer.param_groups) / len(optimizer.param_groups)
    return (f"Resumed with --lr {new} (was {old}), which has no effect here: the plateau schedule keeps the "
            f"learning rate the checkpoint's run reached ({kept:g}, held by the optimizer state it restored); "
            "--lr applies to new runs only.")


def _resumed_teacher_path(resume_from: dict[str, Any] | None, settings: TrainSettings) -> str | None:
    """The teacher path a resumed checkpoint's run used, when this run leaves the path to measurement."""
    if resume_from is None or settings.teacher.precision != "auto" or settings.teacher.compile != "auto":
        return None
    from ..checkpoint import read_run_metadata

    distill = read_run_metadata(resume_from).distill
    recorded = (distill.teacher_path if distill is not None else None) or {}
    path = recorded.get("path")
    return path if isinstance(path, str) and path.split(" ")[0] in ("fp32", "bf16", "fp16") else None


def _teacher_batches(args: argparse.Namespace, settings: TrainSettings, start_epoch: int, num_epochs: int,
                     train_batches: int, eval_images: int, world_size: int) -> int:
    """How many batches of ``--batch-size`` this process's teacher will run: every training batch of the epochs
    left (when it distils), every evaluation (in batches of that size) and the teacher check."""
    epochs = range(start_epoch, num_epochs)
    evaluations = sum(1 for e in epochs if (e + 1) % args.val_interval == 0 or e + 1 == num_epochs)
    batch = max(1, args.batch_size)
    training = len(epochs) * train_batches if settings.distill.type != "none" else 0
    evaluating = math.ceil(evaluations * math.ceil(eval_images / world_size) / batch)
    checking = 0 if args.no_teacher_check else math.ceil(min(args.teacher_check_images, eval_images) / batch)
    return training + evaluating + checking


def _extra_state(run: Run) -> dict[str, Any]:
    """Keys added to every checkpoint: what exact resumption and downstream readers need."""
    from ..checkpoint import scheduler_state

    state: dict[str, Any] = {
        "deit_distill": run.metadata,
        "scheduler": scheduler_state(run.lr_scheduler),
        "num_updates": run.num_updates,
        "rng": run.rng_states,  # gathered from every rank just before saving
        "summary": list(run.history),
    }
    if run.model_ema is not None and hasattr(run.model_ema, "_sr_generator"):
        state["ema_rng"] = run.model_ema._sr_generator.get_state()
    return state


# --------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------

def _all_reduce_sum(values: list[float], run: Run) -> list[float]:
    if not run.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=run.device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def train_one_epoch(run: Run, epoch: int) -> dict[str, float]:
    """One pass over the training loader; returns the epoch's mean losses (reduced over ranks)."""
    from timm.models import model_parameters
    from timm.utils import dispatch_clip_grad

    args, model, optimizer = run.args, run.model, run.optimizer
    run.train_loader.set_epoch(epoch)
    run.epoch_now, run.steps_done = epoch, 0
    model.train()
    if run.teacher is not None:
        run.teacher.eval()  # the teacher never trains
    accum = args.grad_accum_steps
    num_batches = len(run.train_loader)
    last_accum = num_batches % accum or accum
    sums = [0.0, 0.0, 0.0, 0.0]  # samples, total, class-head and distillation losses (sample-weighted)
    optimizer.zero_grad()
    started, samples_since_log = time.time(), 0
    batches = progress_bar(run.train_loader, f"train {epoch}", show=run.primary)
    for batch_idx, (inputs, targets, views) in enumerate(batches):
        check_stop()  # a stop that arrived while an exception was being handled (e.g. a skipped image)
        inputs, targets = inputs.to(run.device, non_blocking=True), targets.to(run.device, non_blocking=True)
        if args.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        need_update = (batch_idx + 1) % accum == 0 or batch_idx == num_batches - 1
        steps_in_update = last_accum if batch_idx >= num_batches - last_accum else accum

        teacher_out = None
        if args.distill_type != "none":
            if run.cache is not None:
                teacher_out = run.cache.targets(epoch, views).to(run.device)
            else:
                teacher_out = run.teacher(inputs)
        sync = contextlib.nullcontext() if need_update or not run.distributed else model.no_sync()
        with sync:
            with run.amp_autocast():
                outputs = model(inputs)
                loss = run.criterion.from_teacher_output(outputs, targets, teacher_out)
            parts = torch.stack([loss.detach().float(), run.criterion.last_base_loss.float(),
                                 run.criterion.last_distill_loss.float()])
            finite = torch.isfinite(parts[0]).to(torch.float32)
            if run.distributed:  # every rank must stop together
                torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
            if not bool(finite.item()):
                raise NonFiniteLoss(
                    f"the training loss became {parts[0].item()} at epoch {epoch}, step {batch_idx} "
                    f"(update {run.num_updates + 1})")
            _backward(run, loss / steps_in_update, need_update, model_parameters, dispatch_clip_grad)

        n = len(targets)
        values = parts.tolist()
        sums = [sums[0] + n, sums[1] + values[0] * n, sums[2] + values[1] * n, sums[3] + values[2] * n]
        samples_since_log += n * run.world_size
        if not need_update:
            continue
        run.num_updates += 1
        run.steps_done += 1
        optimizer.zero_grad()
        if run.model_ema is not None:
            run.model_ema.update(run.student, step=run.num_updates)
        if args.synchronize_step and run.device.type == "cuda":
            torch.cuda.synchronize()
        update_idx = batch_idx // accum
        if update_idx % args.log_interval == 0 or batch_idx == num_batches - 1:
            lr = sum(g["lr"] for g in optimizer.param_groups) / len(optimizer.param_groups)
            elapsed = max(time.time() - started, 1e-9)
            line = (f"loss {values[0]:#.4g} (task {values[1]:#.4g}, distill {values[2]:#.4g})  "
                    f"lr {lr:.3e}  {samples_since_log / elapsed:.1f} img/s")
            if run.primary:
                if is_progress_bar(batches):
                    batches.set_postfix_str(line)  # type: ignore[attr-defined]
                else:
                    _logger.info("Train: %d [%d/%d]  %s", epoch, update_idx + 1, run.updates_per_epoch, line)
            started, samples_since_log = time.time(), 0
        run.lr_scheduler.step_update(num_updates=run.num_updates, metric=sums[1] / max(sums[0], 1))

    if hasattr(optimizer, "sync_lookahead"):
        optimizer.sync_lookahead()
    total = _all_reduce_sum(sums, run)
    n = max(total[0], 1.0)
    return {"loss": total[1] / n, "task_loss": total[2] / n, "distill_loss": total[3] / n}


def _backward(run: Run, loss: torch.Tensor, need_update: bool, model_parameters: Any, clip: Any) -> None:
    args = run.args
    params = (model_parameters(run.model, exclude_head="agc" in args.clip_mode)
              if args.clip_grad is not None else None)
    if run.loss_scaler is not None:
        run.loss_scaler(loss, run.optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                        parameters=params, need_update=need_update)
        return
    loss.backward()
    if need_update:
        if args.clip_grad is not None:
            clip(params, value=args.clip_grad, mode=args.clip_mode)
        run.optimizer.step()


def _evaluate_epoch(run: Run, epoch: int) -> dict[str, Any]:
    from timm.utils import distribute_bn

    from ..evaluation import evaluate

    args = run.args
    if run.distributed and run.dist_bn in ("broadcast", "reduce"):
        distribute_bn(run.model, run.world_size, run.dist_bn == "reduce")
    common = dict(device=run.device, amp_autocast=run.amp_autocast, channels_last=args.channels_last,
                  distributed=run.distributed)
    metrics = evaluate(run.student, run.eval_loader, teacher=run.teacher,
                       progress=lambda it: progress_bar(it, f"eval {epoch}", show=run.primary), **common)
    row = {"eval_loss": metrics["loss"], "eval_top1": metrics["top1"], "eval_top5": metrics["top5"],
           "eval_top1_cls": metrics["top1_cls"], "eval_top5_cls": metrics["top5_cls"],
           "eval_top1_dist": metrics["top1_dist"], "eval_top5_dist": metrics["top5_dist"],
           "teacher_top1": metrics["teacher_top1"], "teacher_agreement": metrics["teacher_agreement"]}
    ranking = metrics
    if run.model_ema is not None and not args.model_ema_force_cpu:
        if run.distributed and run.dist_bn in ("broadcast", "reduce"):
            distribute_bn(run.model_ema, run.world_size, run.dist_bn == "reduce")
        ema = evaluate(run.model_ema.module, run.eval_loader, **common)
        row["eval_top1_ema"], row["eval_top5_ema"] = ema["top1"], ema["top5"]
        ranking = ema  # timm ranks checkpoints by the EMA's metrics when it evaluates them
    row["_metric"] = ranking[args.eval_metric]
    return row


def _log_epoch(run: Run, row: dict[str, Any]) -> None:
    def f(key: str, fmt: str = "{:.2f}") -> str:
        return "-" if row.get(key) is None else fmt.format(row[key])

    parts = [f"Epoch {row['epoch']}: train loss {f('train_loss', '{:.4f}')} (task {f('train_task_loss', '{:.4f}')}, "
             f"distill {f('train_distill_loss', '{:.4f}')})"]
    if row.get("eval_top1") is not None:
        parts.append(f"eval top-1 {f('eval_top1')} (cls {f('eval_top1_cls')}, dist {f('eval_top1_dist')}"
                     + (f", EMA {f('eval_top1_ema')}" if "eval_top1_ema" in row else "") + ")")
    if row.get("teacher_top1") is not None:
        parts.append(f"teacher top-1 {f('teacher_top1')}, agreement {f('teacher_agreement', '{:.3f}')}")
    _logger.info("  ".join(parts))


def train(run: Run) -> int:
    """The epoch loop: train, evaluate, step the schedule, checkpoint, record. Returns the exit code."""
    from ..checkpoint import rng_state
    from ..plots import plot_curves
    from ..records import write_summary

    args = run.args
    best: tuple[Any, Any] = (None, None)
    for epoch in range(run.start_epoch, run.num_epochs):
        train_metrics = train_one_epoch(run, epoch)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": train_metrics["loss"],
                               "train_task_loss": train_metrics["task_loss"],
                               "train_distill_loss": train_metrics["distill_loss"]}
        lrs = [g["lr"] for g in run.optimizer.param_groups]
        row["lr"] = sum(lrs) / len(lrs)
        last = epoch + 1 == run.num_epochs
        if (epoch + 1) % args.val_interval == 0 or last:
            row.update(_evaluate_epoch(run, epoch))
        metric = row.pop("_metric", None)
        run.lr_scheduler.step(epoch + 1, metric)
        run.history.append(row)
        # Every rank's generator states, captured at the same point of the loop.
        states = [rng_state()]
        if run.distributed:
            states = [None] * run.world_size
            torch.distributed.all_gather_object(states, rng_state())
        run.rng_states = states
        if run.primary:
            _log_epoch(run, row)
            with deferred():  # a stop waits for the epoch's files: checkpoint, summary and curves agree
                # A skipped epoch is only unranked history: evaluated epochs are always saved so that
                # model_best and the ranked checkpoints see every evaluation.
                if metric is not None or last or (epoch + 1) % args.checkpoint_interval == 0:
                    best = run.saver.save_checkpoint(epoch, metric=metric)
                    run.last_saved_epoch = epoch
                write_summary(os.path.join(run.output_dir, "summary.csv"), run.history,
                              ema=run.model_ema is not None)
                if metric is not None or last:  # redraw with new eval points only: a plot costs ~0.5 s of CPU
                    plot_curves(run.history, os.path.join(run.output_dir, "curves.png"),
                                title=f"{args.model} ({args.distill_type} distillation)")
    if run.primary:
        if best[0] is not None:
            _logger.info("Best %s %.4f at epoch %s; checkpoints in %s.", args.eval_metric, best[0], best[1],
                         run.output_dir)
        else:
            _logger.info("Done; checkpoints in %s.", run.output_dir)
    return 0


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------

def _env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _current_epoch(run: Run) -> int:
    return run.history[-1]["epoch"] + 1 if run.history else run.start_epoch


def _kept(run: Run, fix: str) -> str:
    """What is left after a stop, and what to do: ``fix`` (e.g. "Fix the file"), then --resume the checkpoint kept,
    or, with none written yet, rerun the same command (nothing to resume). A named run folder (--experiment) that
    holds no checkpoint is refused as a run folder (run_folder.check_run_folder), so it must be deleted first; a
    dated one is not reused anyway: the rerun trains in a new folder."""
    last = os.path.join(run.output_dir or "", "last.pth.tar")
    if not (run.output_dir and os.path.exists(last)):
        if not run.output_dir:
            return f"No checkpoint had been written yet. {fix}, then rerun the same command."
        if run.args.experiment:
            return (f"No checkpoint had been written yet, so there is nothing to resume. {fix}, then delete "
                    f"{run.output_dir} (it holds this run's first files only) and rerun the same command.")
        return (f"No checkpoint had been written yet, so there is nothing to resume. {fix}, then rerun the same "
                f"command (it trains in a new folder; {run.output_dir} holds no checkpoint and can be deleted).")
    epoch = f" (epoch {run.last_saved_epoch})" if run.last_saved_epoch is not None else ""
    return f"The last good checkpoint is kept: {last}{epoch}. {fix}, then --resume."


def _resume(run: Run) -> str:
    """The command that resumes the run from its last.pth.tar, in its own folder, with its own settings."""
    from ..run_folder import resume_command

    return resume_command(str(run.output_dir), world_size=run.world_size,
                          local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", run.world_size)))


def _disk_full(run: Run, error: DiskFullError) -> str:
    """A write that found the disk full: what it needed, that nothing is lost, and the command that resumes."""
    last = os.path.join(run.output_dir or "", "last.pth.tar")
    if not (run.output_dir and os.path.exists(last)):
        return f"{error} {_kept(run, 'Free space there')}"
    saved = getattr(run.saver, "last_epoch", None)  # set once this run replaced last.pth.tar
    epoch = saved if saved is not None else run.last_saved_epoch
    at = f" (epoch {epoch})" if epoch is not None else ""
    return (f"{error} Nothing is lost: {last}{at} is the last complete checkpoint and the partial file was removed. "
            f"Free space there, then resume: {_resume(run)}")


def _where(run: Run) -> str:
    """Where the loop stood, in the log's terms ("Train: EPOCH [STEP/STEPS]")."""
    if run.epoch_now is None:
        return "before its first step"
    if run.steps_done < run.updates_per_epoch:
        return f"in epoch {run.epoch_now} at step {run.steps_done}/{run.updates_per_epoch}"
    return f"in epoch {run.epoch_now} after its {run.updates_per_epoch} steps"


def _discard_unsaved(run: Run) -> str | None:
    """Remove what a run that saved no checkpoint wrote into the folder it started (its folder too, when it
    created it), under its lock; says what was removed, or None when nothing may be (no lock held)."""
    from ..run_folder import LOCK_NAME, partial_files, run_files

    if run.lock is None or not run.lock.held:
        return None
    folder = Path(str(run.output_dir))
    names = run_files(folder)
    for path in [*(folder / name for name in names), *partial_files(folder)]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if run.created:
        with contextlib.suppress(OSError):
            (folder / LOCK_NAME).unlink()  # ours while we hold it; nobody else's once the folder is gone
            folder.rmdir()
            return f"its folder {folder} is removed"
    return f"its files are removed from {folder} ({', '.join(names)})" if names else f"{folder} holds none of its files"


def _stop_line(run: Run | None, stop: Stopped) -> str:
    """Where a stop by a signal left the run and how to go on; rank 0 first removes the files of a fresh run that
    saved no checkpoint (nothing to resume there, and they would make its folder refuse the rerun)."""
    if run is None or not run.output_dir:
        return f"stopped by {stop.name} before the run started; nothing was written. Rerun the same command to start."
    where = _where(run)
    last = os.path.join(run.output_dir, "last.pth.tar")
    if os.path.exists(last):
        epoch = f" (epoch {run.last_saved_epoch})" if run.last_saved_epoch is not None else ""
        return (f"stopped by {stop.name} {where}; the last checkpoint is kept: {last}{epoch}. Resume with: "
                f"{_resume(run)}")
    if not run.fresh:
        return (f"stopped by {stop.name} {where}, before it saved a checkpoint; {run.output_dir} is as it was. "
                "Rerun the same command to resume again.")
    if run.epoch_now is not None:
        where += ", before its first checkpoint"
    removed = _discard_unsaved(run) if run.primary else "nothing"
    if removed is None:
        return (f"stopped by {stop.name} {where}: nothing to resume. Delete {run.output_dir} (it holds this run's "
                "first files only) and rerun the same command.")
    return f"stopped by {stop.name} {where}: nothing to resume, and {removed}. Rerun the same command to start again."


def main(argv: Sequence[str] | None = None) -> int:
    """Run `deit-distill train`; returns 0 on success, 2 when the input is refused (also when a file it reads
    turns bad during training), 1 when training diverged or the disk filled up, 130 / 143 when SIGINT / SIGTERM
    stopped it."""
    try:
        args = parse_args(argv)
        settings = settings_from_args(args)
    except DeitDistillError as e:
        return refuse("train", e)
    if args.print_config:
        print(format_config(args, int(os.environ.get("WORLD_SIZE", "1"))), end="")
        return 0
    setup_logging()
    with stop_signals() as owner:
        return _main(args, settings, owner=owner)


def _main(args: argparse.Namespace, settings: TrainSettings, *, owner: bool) -> int:
    """The run, its refusals and failures in one line; a stop reported by rank 0 when this command owns the
    process (``owner``), else tidied and passed on to the command that does (the demo)."""
    started: list[Run] = []
    run = None
    try:
        try:
            run = setup(args, settings, started=started)
        except DeitDistillError as e:
            if _env_rank() == 0 and not getattr(e, "reported", False):
                return refuse("train", e)
            return e.exit_code
        try:
            return train(run)
        except NonFiniteLoss as e:
            if run.primary:
                _logger.error("Stopped: %s. Nothing was saved from this epoch. %s", e,
                              _kept(run, "Lower --lr, add --clip-grad, or check the data"))
            return 1
        except DiskFullError as e:  # no input's fault (exit 1); only rank 0 writes the run's files
            if run.primary:
                print(f"deit-distill train: error: {_disk_full(run, e)}", file=sys.stderr)
            return e.exit_code
        except DeitDistillError as e:
            # A file that turned bad mid-run (a cache chunk, an image): the same one line as a refusal.
            # An image is read by one rank only, so that rank speaks; a cache chunk is read by all, rank 0 speaks.
            if run.primary or isinstance(e, DataError):
                rank = f" (rank {run.rank})" if run.distributed else ""
                print(f"deit-distill train: error{rank}: stopped in epoch {_current_epoch(run)}: {one_line(e)} "
                      f"{_kept(run, 'Fix the file')}", file=sys.stderr)
            return e.exit_code
    except BaseException as e:
        # A stop, or (several processes) a collective that failed because another process stopped first.
        stop = stop_of(e)
        if stop is None:
            raise
        run = run or (started[0] if started else None)
        line = _stop_line(run, stop)
        if not owner:
            if stop is e:
                raise
            raise stop from e
        if (run.primary if run is not None else _env_rank() == 0):
            print(f"deit-distill train: {line}", file=sys.stderr)
        return stop.exit_code
    finally:
        run = run or (started[0] if started else None)
        if run is not None:
            run.close()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
