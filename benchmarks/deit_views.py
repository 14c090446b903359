"""DeiT's training augmentation under --deterministic-aug, as the cache benchmarks build their views, and the
views of epoch 0 those benchmarks step through."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from timm_deit_distill.data import AugmentSettings


def epoch0_batches(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The loader's batches of epoch 0, over and over (a cache the benchmark builds holds epoch 0; an unlabelled
    loader's epoch 0 is its pass 0)."""
    while True:
        loader.set_epoch(0)
        yield from loader


def deit_augment() -> AugmentSettings:
    """DeiT's augmentation (its recipe's flags) under --deterministic-aug."""
    return AugmentSettings(
        seed=0, deterministic_aug=True, aug_repeats=3, mix_group_size=2, no_aug=False, train_crop_mode=None,
        scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3], hflip=0.5, vflip=0.0, color_jitter=0.4, color_jitter_prob=None,
        grayscale_prob=None, gaussian_blur_prob=None, aa="rand-m9-mstd0.5-inc1", train_interpolation="random",
        reprob=0.25, remode="pixel", recount=1, mixup=0.8, cutmix=1.0, cutmix_minmax=None, mixup_prob=1.0,
        mixup_switch_prob=0.5, mixup_mode="batch", mixup_off_epoch=0, smoothing=0.1)
