"""Shared settings of the loader and cache tests: a 32px data config and DeiT's augmentation as timm flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from timm_deit_distill.data import AugmentSettings, LoaderSettings, ViewSettings
from timm_deit_distill.teacher import TeacherSettings

DATA_CONFIG = dict(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.9,
                   interpolation="bicubic")

# DeiT's augmentation (RandAugment, random erasing, Mixup + CutMix, repeats x3) under --deterministic-aug,
# with timm train.py's flag names and, for the flags DeiT leaves alone, timm's defaults.
AUGMENT = dict(
    aa="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel", recount=1, mixup=0.8, cutmix=1.0,
    cutmix_minmax=None, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch", mixup_off_epoch=0, smoothing=0.1,
    aug_repeats=3, mix_group_size=2, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3], hflip=0.5, vflip=0.0,
    color_jitter=0.4, color_jitter_prob=None, grayscale_prob=None, gaussian_blur_prob=None, no_aug=False,
    train_crop_mode=None, train_interpolation="random", seed=0, deterministic_aug=True,
)
LOADER = dict(batch_size=8, validation_batch_size=None, workers=0, pin_mem=False)


@dataclass(frozen=True)
class Settings:
    """What a training run hands the data pipeline and the cache: its views, its loading, its distillation."""

    view: ViewSettings
    loader: LoaderSettings
    distill_type: str
    teacher: TeacherSettings


def make_args(*, data_config: dict[str, Any] = DATA_CONFIG, num_classes: int = 10, distill_type: str = "hard",
              distill_teacher: str | None = None, **overrides: Any) -> Settings:
    """DeiT's augmentation with ``overrides`` (flag names: augmentation or loader settings), small batches,
    for the 10 classes of the digits unless ``num_classes`` says otherwise."""
    unknown = set(overrides) - set(AUGMENT) - set(LOADER)
    assert not unknown, unknown
    augment = AugmentSettings(**{**AUGMENT, **{k: v for k, v in overrides.items() if k in AUGMENT}})
    loader = LoaderSettings(**{**LOADER, **{k: v for k, v in overrides.items() if k in LOADER}})
    teacher = TeacherSettings(source=distill_teacher, checkpoint_path=None, use_ema=None, input_size=None,
                              precision="auto", channels_last=None, check=True, check_images=512, min_top1=None)
    return Settings(ViewSettings.resolve(augment, data_config, num_classes), loader, distill_type, teacher)
