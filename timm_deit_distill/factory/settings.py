"""A run's options, typed: frozen settings for every group, and the one reader of an options namespace.

``settings_from_options(options) -> TrainSettings`` reads the namespace :mod:`.options` resolved (from argv,
keywords or YAML) and is the only code that does (:func:`eval_settings_from_options` for `deit-distill eval`).
Everything downstream takes these settings: the data pipeline's, the student's, the teacher's and the loss's own
(library types), and the factory's groups below for the optimizer, the schedule, EMA, AMP, the step, the
intervals, the run's folder, the device and the rest. timm's ``optimizer_kwargs(cfg)`` and
``scheduler_kwargs(cfg)`` read an argparse-like object: :meth:`OptimizerSettings.timm_cfg` and
:meth:`ScheduleSettings.timm_cfg` give them exactly the attributes they read.

:meth:`TrainSettings.options` gives the settings back as option values (dest -> value, in the declaration's
order): what a run's ``args.yaml`` records, reloadable with ``-c``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from ..data import (
    AugmentSettings,
    DataSettings,
    LoaderSettings,
    check_views_supported,
    resolve_input_img_mode,
)
from ..losses import DistillSettings
from ..teacher import TeacherSettings
from .builders import StudentSettings

__all__ = [
    "TrainSettings", "OptimizerSettings", "ScheduleSettings", "EmaSettings", "AmpSettings", "StepSettings",
    "IntervalSettings", "RunSettings", "DeviceSettings", "MiscSettings", "EvalSettings", "settings_from_options",
    "eval_settings_from_options", "teacher_settings",
]


@dataclass(frozen=True)
class OptimizerSettings:
    """timm's optimizer factory's settings (``--opt`` and its companions)."""

    opt: str
    opt_eps: float | None
    opt_betas: Sequence[float] | None
    momentum: float
    weight_decay: float
    layer_decay: float | None
    layer_decay_min_scale: float
    layer_decay_no_opt_scale: float | None
    opt_kwargs: Mapping[str, Any]

    def timm_cfg(self, lr: float) -> SimpleNamespace:
        """What timm's ``optimizer_kwargs(cfg)`` reads, with the run's learning rate."""
        return SimpleNamespace(opt=self.opt, lr=lr, weight_decay=self.weight_decay, momentum=self.momentum,
                               opt_eps=self.opt_eps, opt_betas=self.opt_betas, layer_decay=self.layer_decay,
                               layer_decay_min_scale=self.layer_decay_min_scale,
                               layer_decay_no_opt_scale=self.layer_decay_no_opt_scale)


@dataclass(frozen=True)
class ScheduleSettings:
    """The learning rate (timm train.py's ``--lr`` / ``--lr-base`` rule), timm's schedule and the epochs."""

    sched: str
    sched_on_updates: bool
    lr: float | None
    lr_base: float
    lr_base_size: int
    lr_base_scale: str
    lr_noise: Sequence[float] | None
    lr_noise_pct: float
    lr_noise_std: float
    lr_cycle_mul: float
    lr_cycle_decay: float
    lr_cycle_limit: int
    lr_k_decay: float
    warmup_lr: float
    min_lr: float
    epochs: int
    decay_milestones: Sequence[int]
    decay_epochs: float
    warmup_epochs: int
    warmup_prefix: bool
    cooldown_epochs: int
    patience_epochs: int
    decay_rate: float

    def timm_cfg(self, *, seed: int, eval_metric: str) -> SimpleNamespace:
        """What timm's ``scheduler_kwargs(cfg)`` reads (its noise seed is the run's seed, as in timm)."""
        return SimpleNamespace(
            sched=self.sched, epochs=self.epochs, decay_epochs=self.decay_epochs,
            decay_milestones=self.decay_milestones, warmup_epochs=self.warmup_epochs,
            cooldown_epochs=self.cooldown_epochs, patience_epochs=self.patience_epochs, decay_rate=self.decay_rate,
            min_lr=self.min_lr, warmup_lr=self.warmup_lr, warmup_prefix=self.warmup_prefix, lr_noise=self.lr_noise,
            lr_noise_pct=self.lr_noise_pct, lr_noise_std=self.lr_noise_std, seed=seed, lr_cycle_mul=self.lr_cycle_mul,
            lr_cycle_decay=self.lr_cycle_decay, lr_cycle_limit=self.lr_cycle_limit, lr_k_decay=self.lr_k_decay,
            eval_metric=eval_metric, sched_on_updates=self.sched_on_updates)


@dataclass(frozen=True)
class EmaSettings:
    """timm's ModelEmaV3 of the student (``--model-ema``)."""

    model_ema: bool
    model_ema_force_cpu: bool
    model_ema_decay: float
    model_ema_warmup: bool


@dataclass(frozen=True)
class AmpSettings:
    """Mixed precision for the student (``--amp``, ``--amp-dtype``); the teacher runs on its own path."""

    amp: bool
    amp_dtype: str

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.amp_dtype == "bfloat16" else torch.float16


@dataclass(frozen=True)
class StepSettings:
    """One optimizer update: gradient accumulation and clipping."""

    grad_accum_steps: int
    clip_grad: float | None
    clip_mode: str


@dataclass(frozen=True)
class IntervalSettings:
    """When the run logs, evaluates and saves, how many checkpoints it keeps and what ranks them."""

    log_interval: int
    val_interval: int
    checkpoint_interval: int
    checkpoint_hist: int
    eval_metric: str


@dataclass(frozen=True)
class RunSettings:
    """The run's folder (``--output``/``--experiment``) and what it continues (``--resume``, ``--start-epoch``)."""

    output: str
    experiment: str
    resume: str
    no_resume_opt: bool
    start_epoch: int | None


@dataclass(frozen=True)
class DeviceSettings:
    """Where the run computes: the device, modules to import first, DDP's buffer broadcast, step synchronisation."""

    device: str | None
    device_modules: Sequence[str] | None
    no_ddp_bb: bool
    synchronize_step: bool


@dataclass(frozen=True)
class MiscSettings:
    """The rest: memory layout, compilation, norms, BatchNorm under DDP, the recipe, and values kept as given.

    ``input_img_mode`` is ``--input-img-mode`` as given (the data settings hold the resolved mode).
    """

    channels_last: bool
    torchcompile: str | None
    torchcompile_mode: str | None
    fast_norm: bool
    sync_bn: bool
    dist_bn: str
    no_prefetcher: bool
    recipe: str | None
    input_img_mode: str | None


@dataclass(frozen=True)
class TrainSettings:
    """Everything a `deit-distill train` run (or a `cache build`) takes, typed: one group per concern."""

    data: DataSettings
    student: StudentSettings
    teacher: TeacherSettings
    distill: DistillSettings
    augment: AugmentSettings
    loader: LoaderSettings
    optimizer: OptimizerSettings
    schedule: ScheduleSettings
    ema: EmaSettings
    amp: AmpSettings
    step: StepSettings
    intervals: IntervalSettings
    run: RunSettings
    device: DeviceSettings
    misc: MiscSettings
    seed: int
    distill_cache: str | None  # a teacher target cache replayed instead of a teacher (``--distill-cache``)

    @property
    def distills(self) -> bool:
        """Whether the loss has a distillation term (a teacher or a cache gives its targets)."""
        return self.distill.type != "none"

    def learning_rate(self, world_size: int) -> tuple[float, str]:
        """timm train.py's rule: ``--lr``, else ``--lr-base`` x (global batch / ``--lr-base-size``).

        Returns the rate and a sentence saying how it was obtained. DeiT's ``5e-4 x batch / 512`` is
        ``--lr-base 5e-4 --lr-base-size 512 --lr-base-scale linear`` (its recipes set exactly that).
        """
        s = self.schedule
        if s.lr:
            return s.lr, f"--lr {s.lr}"
        global_batch = self.loader.batch_size * world_size * self.step.grad_accum_steps
        scale = s.lr_base_scale or ("sqrt" if any(o in self.optimizer.opt.lower() for o in ("ada", "lamb"))
                                    else "linear")
        ratio = global_batch / s.lr_base_size
        if scale == "sqrt":
            ratio = ratio ** 0.5
        lr = s.lr_base * ratio
        return lr, (f"{lr:g} = --lr-base {s.lr_base:g} x ({global_batch} global batch / {s.lr_base_size})"
                    f"{'^0.5' if scale == 'sqrt' else ''} ({scale} scaling)")

    def options(self) -> dict[str, Any]:
        """The settings as option values (dest -> plain value), in the order the options are declared: what
        ``args.yaml`` records and ``-c`` reloads (the alias spellings and refused timm flags are not settings)."""
        return {dest: _plain(read(self)) for dest, read in _RECORD.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _field(group: str, name: str) -> Any:
    def read(settings: TrainSettings) -> Any:
        return getattr(getattr(settings, group), name)

    return read


def _record_table() -> dict[str, Any]:
    """dest -> how to read it from the settings, in the options' declaration order (tests/test_settings.py holds
    it to :func:`~timm_deit_distill.factory.options.config_dict`'s keys and values)."""
    data = ("data_dir", "dataset", "train_split", "val_split", "train_num_samples", "val_num_samples")
    student_a = ("model", "pretrained", "pretrained_path", "initial_checkpoint", "initial_ema")
    student_b = ("num_classes", "gp", "img_size", "in_chans", "input_size", "crop_pct", "mean", "std", "interpolation")
    schedule = ("sched", "sched_on_updates", "lr", "lr_base", "lr_base_size", "lr_base_scale", "lr_noise",
                "lr_noise_pct", "lr_noise_std", "lr_cycle_mul", "lr_cycle_decay", "lr_cycle_limit", "lr_k_decay",
                "warmup_lr", "min_lr", "epochs")
    schedule_b = ("decay_milestones", "decay_epochs", "warmup_epochs", "warmup_prefix", "cooldown_epochs",
                  "patience_epochs", "decay_rate")
    augment = ("no_aug", "train_crop_mode", "scale", "ratio", "hflip", "vflip", "color_jitter", "color_jitter_prob",
               "grayscale_prob", "gaussian_blur_prob", "aa", "aug_repeats", "deterministic_aug", "mix_group_size",
               "reprob", "remode", "recount", "mixup", "cutmix", "cutmix_minmax", "mixup_prob", "mixup_switch_prob",
               "mixup_mode", "mixup_off_epoch", "smoothing", "train_interpolation")
    table: dict[str, Any] = {"recipe": _field("misc", "recipe")}
    table |= {k: _field("data", k) for k in data}
    table |= {"dataset_download": _field("data", "download"), "class_map": _field("data", "class_map"),
              "input_img_mode": _field("misc", "input_img_mode"), "input_key": _field("data", "input_key"),
              "target_key": _field("data", "target_key"), "skip_bad_images": _field("data", "skip_bad_images")}
    table |= {k: _field("student", k) for k in student_a}
    table |= {"resume": _field("run", "resume"), "no_resume_opt": _field("run", "no_resume_opt")}
    table |= {k: _field("student", k) for k in student_b}
    table |= {k: _field("loader", k) for k in ("batch_size", "validation_batch_size")}
    table |= {"channels_last": _field("misc", "channels_last"), "grad_accum_steps": _field("step", "grad_accum_steps"),
              "grad_checkpointing": _field("student", "grad_checkpointing"), "fast_norm": _field("misc", "fast_norm"),
              "model_kwargs": _field("student", "model_kwargs"),
              "head_init_scale": _field("student", "head_init_scale"),
              "head_init_bias": _field("student", "head_init_bias"),
              "torchcompile_mode": _field("misc", "torchcompile_mode"), "torchcompile": _field("misc", "torchcompile"),
              "device": _field("device", "device"), "amp": _field("amp", "amp"), "amp_dtype": _field("amp", "amp_dtype"),
              "no_ddp_bb": _field("device", "no_ddp_bb"), "synchronize_step": _field("device", "synchronize_step"),
              "device_modules": _field("device", "device_modules")}
    table |= {k: _field("optimizer", k) for k in ("opt", "opt_eps", "opt_betas", "momentum", "weight_decay")}
    table |= {k: _field("step", k) for k in ("clip_grad", "clip_mode")}
    table |= {k: _field("optimizer", k) for k in ("layer_decay", "layer_decay_min_scale", "layer_decay_no_opt_scale",
                                                 "opt_kwargs")}
    table |= {k: _field("schedule", k) for k in schedule}
    table |= {"start_epoch": _field("run", "start_epoch")}
    table |= {k: _field("schedule", k) for k in schedule_b}
    table |= {k: _field("augment", k) for k in augment}
    table |= {k: _field("student", k) for k in ("drop", "drop_connect", "drop_path", "drop_block", "bn_momentum",
                                               "bn_eps")}
    table |= {k: _field("misc", k) for k in ("sync_bn", "dist_bn")}
    table |= {k: _field("ema", k) for k in ("model_ema", "model_ema_force_cpu", "model_ema_decay", "model_ema_warmup")}
    table |= {"seed": lambda s: s.seed}
    table |= {k: _field("intervals", k) for k in ("log_interval", "val_interval", "checkpoint_hist",
                                                 "checkpoint_interval")}
    table |= {k: _field("loader", k) for k in ("workers", "pin_mem")}
    table |= {"no_prefetcher": _field("misc", "no_prefetcher"), "output": _field("run", "output"),
              "experiment": _field("run", "experiment"), "eval_metric": _field("intervals", "eval_metric")}
    return table | _distill_record()


def _distill_settings(v: Mapping[str, Any]) -> DistillSettings:
    """The loss's settings from the resolved option values: the family, DeiT's alpha or timm's task and weights."""
    timm = v["distill_family"] == "timm"

    def timm_only(key: str) -> Any:
        return v[key] if timm else None

    return DistillSettings(
        type=v["distill_type"], alpha=None if timm else v["distill_alpha"], tau=v["distill_tau"],
        soft_reduction=v["distill_soft_reduction"], family=v["distill_family"],
        kd_distill_type=timm_only("kd_distill_type"), task_loss_weight=timm_only("task_loss_weight"),
        distill_loss_weight=timm_only("distill_loss_weight"), kd_loss_type=v["kd_loss_type"] or "kl",
        kd_student_feature_dim=timm_only("kd_student_feature_dim"),
        kd_teacher_feature_dim=timm_only("kd_teacher_feature_dim"))


def _distill_record() -> dict[str, Any]:
    """The distillation options, read from the teacher's and the loss's settings (a timm-family run in timm's
    keys: :func:`~timm_deit_distill.factory.options.timm_spelled`)."""
    def listed(values: Sequence[Any] | None) -> list[Any] | None:
        return list(values) if values is not None else None

    def deit(read: Any) -> Any:
        return lambda s: read(s) if s.distill.family == "deit" else None

    def timm(read: Any) -> Any:
        return lambda s: read(s) if s.distill.family == "timm" else None

    token = timm(lambda s: s.distill.type if s.distill.kd_distill_type == "token" else None)
    return {
        "distill_teacher": deit(_field("teacher", "source")),
        "distill_teacher_path": _field("teacher", "checkpoint_path"),
        "distill_type": deit(_field("distill", "type")), "distill_alpha": deit(_field("distill", "alpha")),
        "distill_tau": deit(_field("distill", "tau")),
        "distill_soft_reduction": deit(_field("distill", "soft_reduction")),
        "teacher_precision": _field("teacher", "precision"), "teacher_compile": _field("teacher", "compile"),
        "teacher_min_agreement": _field("teacher", "min_agreement"),
        "distill_teacher_ema": _field("teacher", "use_ema"), "distill_cache": lambda s: s.distill_cache,
        "teacher_input_size": lambda s: listed(s.teacher.input_size),
        "teacher_min_top1": _field("teacher", "min_top1"), "teacher_check_images": _field("teacher", "check_images"),
        "no_teacher_check": lambda s: not s.teacher.check,
        "teacher_mean": lambda s: listed(s.teacher.mean), "teacher_std": lambda s: listed(s.teacher.std),
        "kd_model_name": timm(_field("teacher", "source")), "kd_distill_type": lambda s: s.distill.kd_distill_type or "logit",
        "kd_token_distill_type": token, "kd_temperature": timm(_field("distill", "tau")),
        "task_loss_weight": timm(_field("distill", "task_loss_weight")),
        "distill_loss_weight": timm(_field("distill", "distill_loss_weight")),
        "kd_loss_type": _field("distill", "kd_loss_type"),
        "kd_student_feature_dim": timm(_field("distill", "kd_student_feature_dim")),
        "kd_teacher_feature_dim": timm(_field("distill", "kd_teacher_feature_dim")),
    }


_RECORD = _record_table()


@dataclass(frozen=True)
class EvalSettings:
    """What `deit-distill eval` measures and where it writes, typed (timm validate.py's flags where it has them).

    The data are the eval flags as given: their :class:`DataSettings` depend on the model's input channels,
    known once it is loaded (:meth:`data_settings`). ``teacher.given`` says whether a teacher is measured too.
    """

    checkpoint: str | None
    model: str | None
    pretrained: bool
    use_ema: bool | None
    head: str
    data_dir: str | None
    dataset: str
    split: str
    class_map: str
    input_img_mode: str | None
    input_key: str | None
    target_key: str | None
    val_num_samples: int | None
    dataset_download: bool
    skip_bad_images: bool
    teacher: TeacherSettings
    loader: LoaderSettings
    device: str | None
    amp: bool
    amp_dtype: str
    json: str | None
    predict: str | None
    results_file: str | None
    results_format: str
    overwrite: bool

    def data_settings(self, in_chans: int) -> DataSettings:
        """The one split to evaluate, as the data pipeline opens it, for a model of ``in_chans`` channels."""
        return DataSettings(data_dir=self.data_dir, train_split=self.split, val_split=self.split,
                            class_map=self.class_map, skip_bad_images=self.skip_bad_images, dataset=self.dataset,
                            train_num_samples=None, val_num_samples=self.val_num_samples, input_key=self.input_key,
                            target_key=self.target_key, input_img_mode=resolve_input_img_mode(self.input_img_mode,
                                                                                              in_chans),
                            download=self.dataset_download, split_flags="--split")


# ----------------------------------------------------------------------------------------------------------
# The one reader of an options namespace


def teacher_settings(options: argparse.Namespace, *, source: str | None, checkpoint_path: str | None,
                     use_ema: bool | None, channels_last: bool | None) -> TeacherSettings:
    """The teacher settings of options with the teacher flags (train, cache build and eval share them)."""
    size = options.teacher_input_size
    return TeacherSettings(
        source=source, checkpoint_path=checkpoint_path, use_ema=use_ema,
        input_size=tuple(size) if size is not None else None, precision=options.teacher_precision,
        channels_last=channels_last, check=not options.no_teacher_check, check_images=options.teacher_check_images,
        min_top1=options.teacher_min_top1, mean=_floats(options.teacher_mean), std=_floats(options.teacher_std),
        compile=options.teacher_compile, min_agreement=options.teacher_min_agreement)


def _floats(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return tuple(float(v) for v in values) if values is not None else None


def _fields(cls: type, values: Mapping[str, Any]) -> Any:
    """``cls`` built from the option values of the same names."""
    return cls(**{name: values[name] for name in cls.__dataclass_fields__})


def settings_from_options(options: argparse.Namespace) -> TrainSettings:
    """The resolved `deit-distill train` options (:mod:`.options`) as typed settings; the namespace is left as it is.

    Raises :class:`~timm_deit_distill.errors.DataError` for data pipeline settings that cannot work (a batch
    size below 1, repeats that are not whole, an odd mix group, a dataset flag its source ignores, views a stream
    cannot give).
    """
    o = options
    in_chans = o.in_chans if o.in_chans is not None else (o.input_size[0] if o.input_size else 3)
    data = DataSettings(data_dir=o.data_dir, train_split=o.train_split, val_split=o.val_split, class_map=o.class_map,
                        skip_bad_images=o.skip_bad_images, dataset=o.dataset, train_num_samples=o.train_num_samples,
                        val_num_samples=o.val_num_samples, input_key=o.input_key, target_key=o.target_key,
                        input_img_mode=resolve_input_img_mode(o.input_img_mode, in_chans), download=o.dataset_download)
    check_views_supported(o.dataset, deterministic_aug=o.deterministic_aug, distill_cache=bool(o.distill_cache),
                          aug_repeats=max(1, int(o.aug_repeats)))
    values = vars(o)
    student = StudentSettings(**{**{k: values[k] for k in StudentSettings.__dataclass_fields__},
                                 "model_kwargs": dict(o.model_kwargs or {})})
    return TrainSettings(
        data=data, student=student,
        # --channels-last is about the student; unset, the teacher picks channels_last for convnets itself
        teacher=teacher_settings(o, source=o.distill_teacher, checkpoint_path=o.distill_teacher_path,
                                 use_ema=o.distill_teacher_ema, channels_last=o.channels_last or None),
        distill=_distill_settings(vars(o)),
        augment=_fields(AugmentSettings, values), loader=_fields(LoaderSettings, values),
        optimizer=_fields(OptimizerSettings, values), schedule=_fields(ScheduleSettings, values),
        ema=_fields(EmaSettings, values), amp=_fields(AmpSettings, values), step=_fields(StepSettings, values),
        intervals=_fields(IntervalSettings, values), run=_fields(RunSettings, values),
        device=_fields(DeviceSettings, values), misc=_fields(MiscSettings, values),
        seed=o.seed, distill_cache=o.distill_cache)


def eval_settings_from_options(options: argparse.Namespace) -> EvalSettings:
    """`deit-distill eval`'s options (its parser's namespace) as typed settings, refusing what cannot work in the
    order the command always has: the loader's values, the data and the model asked for, the teacher flags."""
    from ..errors import UsageError
    from .options import validate_teacher_check_flags

    o = options
    loader = LoaderSettings(batch_size=o.batch_size, validation_batch_size=None, workers=o.workers, pin_mem=False)
    if o.data and o.data_dir and os.path.abspath(o.data) != os.path.abspath(o.data_dir):
        raise UsageError(f"the dataset is given twice, as {o.data} and as --data-dir {o.data_dir}; give it once.")
    if not o.checkpoint and not o.model:
        raise UsageError("nothing to evaluate: pass --checkpoint FILE (written by deit-distill train), or --model "
                         "with pretrained weights (local-dir:DIR, hf-hub:ORG/NAME, or a timm name with a pretrained "
                         "tag).")
    if not o.checkpoint and o.use_ema is not None:
        flag = "--use-ema" if o.use_ema else "--no-ema"
        raise UsageError(f"{flag} chooses between a checkpoint's raw and EMA weights; --model {o.model} without "
                         "--checkpoint has one set (its pretrained weights): drop it, or pass --checkpoint.")
    validate_teacher_check_flags(o, has_teacher=bool(o.distill_teacher or o.distill_teacher_path))
    values = {**vars(o), "data_dir": o.data_dir or o.data}
    fields = set(EvalSettings.__dataclass_fields__) - {"teacher", "loader"}
    return EvalSettings(**{name: values[name] for name in fields}, loader=loader,
                        teacher=teacher_settings(o, source=o.distill_teacher, checkpoint_path=o.distill_teacher_path,
                                                 use_ema=o.teacher_ema, channels_last=None))
