"""Shared settings of the loader and cache tests: a 32px data config and DeiT's augmentation as timm flags."""

from __future__ import annotations

import argparse
from typing import Any

DATA_CONFIG = dict(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.9,
                   interpolation="bicubic")


def make_args(**overrides: Any) -> argparse.Namespace:
    """timm train.py flag names with DeiT's augmentation (RandAugment, random erasing, Mixup + CutMix,
    repeats x3) under --deterministic-aug, small batches."""
    args = dict(
        aa="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel", recount=1, mixup=0.8, cutmix=1.0,
        cutmix_minmax=None, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch", smoothing=0.1,
        aug_repeats=3, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3], hflip=0.5, vflip=0.0, color_jitter=0.4,
        train_interpolation="random", batch_size=8, workers=0, pin_mem=False, seed=0, num_classes=None,
        deterministic_aug=True,
    )
    args.update(overrides)
    return argparse.Namespace(**args)
