"""`deit-distill train`'s command line: argv into options (:mod:`timm_deit_distill.factory.options` declares them
all and resolves them), ``--help``'s formatting and ``--print-config``.

Layers, lowest first: timm train.py's defaults < ``--recipe`` YAML < ``-c/--config`` YAML < the command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from ..data import (
    AugmentSettings,
    DataSettings,
    LoaderSettings,
    check_views_supported,
    resolve_input_img_mode,
)
from ..errors import UsageError
from ..factory import StudentSettings
from ..factory.options import (
    DISTILL_KEYS,
    ON_THE_COMMAND_LINE,
    TRAIN_PROG,
    config_dict,
    dests,
    given_options,
    option_source,
    resolve_lr,
    resolve_options,
    train_parser,
)
from ..losses import DistillSettings
from ..teacher import TeacherSettings
from .common import ArgumentParser

__all__ = ["HelpFormatter", "UsageError", "build_parser", "parse_args", "format_config", "TrainSettings",
           "settings_from_args", "teacher_settings"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it says something (not None/False/'') and the help has not already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, "", argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser(prog: str = TRAIN_PROG) -> argparse.ArgumentParser:
    """The `deit-distill train` parser of the command line (one-line usage errors, defaults in --help); built once
    per process and ``prog`` (`cache build` parses the same flags under its own name)."""
    return train_parser(prog, ArgumentParser, HelpFormatter)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options of a `deit-distill train` command line: parsed (a malformed one: argparse's usage error, exit
    2), layered (defaults < recipe < config < command line) and resolved
    (:func:`~timm_deit_distill.factory.options.resolve_options`: unsupported flags refused, aliases folded,
    everything validated; a :class:`UsageError` otherwise)."""
    return resolve_given(given_flags(argv))


def given_flags(argv: Sequence[str] | None, *, prog: str = TRAIN_PROG) -> dict[str, Any]:
    """The training flags a command line gives (argparse's usage error, exit 2, for a malformed one), named as
    ``prog`` in that error (`cache build` takes the same flags)."""
    return given_options(build_parser(prog), argv)


def resolve_given(given: dict[str, Any], *, prog: str = TRAIN_PROG) -> argparse.Namespace:
    """:func:`given_flags` resolved into the options (a :class:`UsageError` for settings that cannot work)."""
    return resolve_options(build_parser(prog), given, given_as=ON_THE_COMMAND_LINE)


def format_config(args: argparse.Namespace, world_size: int = 1) -> str:
    """``--print-config`` output: YAML of every setting, non-default ones marked with where they came from."""
    parser = build_parser()
    defaults = {dest: a.default for dest, a in dests(parser).items()}
    layers = getattr(args, "_layers", {"cli": {}, "config": {}, "recipe": {}})
    lines = [f"# deit-distill train resolved settings (recipe: {args.recipe or 'none'})"]
    lr, how = resolve_lr(args, world_size)
    lines.append(f"# learning rate at world size {world_size}: {how}")
    if args.distill_type != "none" or args.distill_teacher:
        lines.append(f"# distillation: {args.distill_type}, teacher {args.distill_teacher}, alpha {args.distill_alpha}, "
                     f"tau {args.distill_tau}, soft reduction {args.distill_soft_reduction} "
                     f"(defaults of the {getattr(args, 'distill_spelling', 'deit-distill')} spelling)")
    for key, value in config_dict(parser, args).items():
        text = yaml.safe_dump({key: value}, default_flow_style=True, width=1000).strip()
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1]
        src = option_source(layers, key)
        if not src and key in DISTILL_KEYS and value != defaults.get(key):
            src = "resolved"
        lines.append(f"{text}{'  # ' + src if src else ''}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# The namespace, typed: what the factory and the library take


@dataclass(frozen=True)
class TrainSettings:
    """A `deit-distill train` (or `cache build`) command line as the factory and the library take it."""

    data: DataSettings
    student: StudentSettings
    teacher: TeacherSettings
    distill: DistillSettings
    augment: AugmentSettings
    loader: LoaderSettings
    device: str | None
    seed: int


def teacher_settings(args: argparse.Namespace, *, source: str | None, checkpoint_path: str | None,
                     use_ema: bool | None, channels_last: bool | None) -> TeacherSettings:
    """The teacher settings of a command line with :func:`add_teacher_check_flags` and :func:`add_teacher_path_flags`."""
    size = args.teacher_input_size
    return TeacherSettings(
        source=source, checkpoint_path=checkpoint_path, use_ema=use_ema,
        input_size=tuple(size) if size is not None else None, precision=args.teacher_precision,
        channels_last=channels_last, check=not args.no_teacher_check, check_images=args.teacher_check_images,
        min_top1=args.teacher_min_top1, mean=_floats(args.teacher_mean), std=_floats(args.teacher_std),
        compile=args.teacher_compile, min_agreement=args.teacher_min_agreement)


def _floats(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return tuple(float(v) for v in values) if values is not None else None


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The parsed `deit-distill train` namespace as typed settings; the namespace itself is left as it is.

    Raises :class:`~timm_deit_distill.errors.DataError` for data pipeline settings that cannot work (a batch
    size below 1, repeats that are not whole, an odd mix group, a dataset flag its source ignores, views a stream
    cannot give), so call it right after :func:`parse_args`.
    """
    in_chans = args.in_chans if args.in_chans is not None else (args.input_size[0] if args.input_size else 3)
    data = DataSettings(data_dir=args.data_dir, train_split=args.train_split, val_split=args.val_split,
                        class_map=args.class_map, skip_bad_images=args.skip_bad_images, dataset=args.dataset,
                        train_num_samples=args.train_num_samples, val_num_samples=args.val_num_samples,
                        input_key=args.input_key, target_key=args.target_key,
                        input_img_mode=resolve_input_img_mode(args.input_img_mode, in_chans),
                        download=args.dataset_download)
    check_views_supported(args.dataset, deterministic_aug=args.deterministic_aug, distill_cache=bool(args.distill_cache),
                          aug_repeats=max(1, int(args.aug_repeats)))
    return TrainSettings(
        data=data,
        student=StudentSettings(
            model=args.model, pretrained=args.pretrained, pretrained_path=args.pretrained_path,
            initial_checkpoint=args.initial_checkpoint, initial_ema=args.initial_ema, num_classes=args.num_classes,
            gp=args.gp, img_size=args.img_size, input_size=args.input_size, in_chans=args.in_chans,
            model_kwargs=dict(args.model_kwargs or {}), drop=args.drop, drop_path=args.drop_path,
            drop_connect=args.drop_connect, drop_block=args.drop_block, bn_momentum=args.bn_momentum,
            bn_eps=args.bn_eps, head_init_scale=args.head_init_scale, head_init_bias=args.head_init_bias,
            grad_checkpointing=args.grad_checkpointing, mean=args.mean, std=args.std, crop_pct=args.crop_pct,
            interpolation=args.interpolation),
        # --channels-last is about the student; unset, the teacher picks channels_last for convnets itself
        teacher=teacher_settings(args, source=args.distill_teacher, checkpoint_path=args.distill_teacher_path,
                                 use_ema=args.distill_teacher_ema, channels_last=args.channels_last or None),
        distill=DistillSettings(type=args.distill_type, alpha=args.distill_alpha, tau=args.distill_tau,
                                soft_reduction=args.distill_soft_reduction),
        augment=AugmentSettings(
            seed=args.seed, deterministic_aug=args.deterministic_aug, aug_repeats=args.aug_repeats,
            mix_group_size=args.mix_group_size, no_aug=args.no_aug, train_crop_mode=args.train_crop_mode,
            scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
            color_jitter_prob=args.color_jitter_prob, grayscale_prob=args.grayscale_prob,
            gaussian_blur_prob=args.gaussian_blur_prob, aa=args.aa, train_interpolation=args.train_interpolation,
            reprob=args.reprob, remode=args.remode, recount=args.recount, mixup=args.mixup, cutmix=args.cutmix,
            cutmix_minmax=args.cutmix_minmax, mixup_prob=args.mixup_prob, mixup_switch_prob=args.mixup_switch_prob,
            mixup_mode=args.mixup_mode, mixup_off_epoch=args.mixup_off_epoch, smoothing=args.smoothing),
        loader=LoaderSettings(batch_size=args.batch_size, validation_batch_size=args.validation_batch_size,
                              workers=args.workers, pin_mem=args.pin_mem),
        device=args.device,
        seed=args.seed,
    )
