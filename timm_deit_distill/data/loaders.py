"""The loaders: training views with timm's transforms and Mixup (see :mod:`timm_deit_distill.data`), the
in-order evaluation loader, and the teacher check's seeded subset. A streamed source (wds/, hfids/) gets the
loaders of :mod:`.streams`, built as timm builds them over an IterableImageDataset.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils.data
from timm.data import Mixup
from timm.data.distributed_sampler import OrderedDistributedSampler

from ..errors import DataError
from .sources import check_num_classes, check_views_supported, image_loader, is_streamed
from .transforms import build_eval_transform, build_train_transform
from .views import (
    STREAM_MIX_BATCH,
    STREAM_MIX_GROUP,
    STREAM_VIEW,
    ViewLayout,
    ViewSettings,
    isolated_global_rngs,
    seed_all,
    view_seed,
    view_seeds,
)
from .workers import quiet_worker_init

__all__ = ["LoaderSettings", "ViewLoader", "build_mixup", "build_train_loader", "build_eval_loader",
           "build_check_loader", "CHECK_IMAGES"]

# Validation images the teacher check measures unless told otherwise (--teacher-check-images' default).
CHECK_IMAGES = 512


@dataclass(frozen=True)
class LoaderSettings:
    """How batches are loaded (not what they hold): timm train.py's batch sizes, workers and pinned memory.

    Made only with values that can work, else :class:`DataError` naming the flag.
    """

    batch_size: int
    validation_batch_size: int | None
    workers: int
    pin_mem: bool

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise DataError(f"--batch-size {self.batch_size} must be >= 1.")
        if self.validation_batch_size is not None and self.validation_batch_size < 1:
            raise DataError(f"--validation-batch-size {self.validation_batch_size} must be >= 1.")
        if self.workers < 0:
            raise DataError(f"--workers {self.workers} must be >= 0.")

    @property
    def eval_batch_size(self) -> int:
        """The evaluation batch: ``--validation-batch-size``, else ``--batch-size`` (timm's rule)."""
        return self.validation_batch_size or self.batch_size

    @property
    def pin_memory(self) -> bool:
        return bool(self.pin_mem) and torch.cuda.is_available()


def build_mixup(view: ViewSettings) -> Mixup | None:
    """timm's ``Mixup`` exactly as timm's train.py builds it, or None when mixing is off."""
    a = view.augment
    if not a.mixing:
        return None
    return Mixup(
        mixup_alpha=a.mixup,
        cutmix_alpha=a.cutmix,
        cutmix_minmax=a.cutmix_minmax,
        prob=a.mixup_prob,
        switch_prob=a.mixup_switch_prob,
        mode=a.mixup_mode,
        label_smoothing=a.smoothing,
        num_classes=view.num_classes,
    )


class _ViewDataset(torch.utils.data.Dataset):
    """Loads view keys ``(epoch, position, sample_index)``; reseeds from the view's identity."""

    def __init__(self, dataset: Any, transform: Any, seed: int, *, unlabeled: bool = False) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.load = image_loader(dataset)
        self.unlabeled = unlabeled  # its labels are ignored: every target is 0 (Mixup needs one in range)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int, int, int]:
        epoch, position, index = key
        with isolated_global_rngs():
            return self._view(epoch, position, index, view_seed(self.seed, epoch, position, STREAM_VIEW))

    def __getitems__(self, keys: list[tuple[int, int, int]]) -> list[tuple[torch.Tensor, int, int, int]]:
        # The DataLoader fetches a whole batch here: the global RNG states are saved and restored once per batch
        # (in the main process, ~77 us per 32px image when done per image) and the batch's seeds are computed in
        # one go; every view is still seeded from its own identity, so the views are the same.
        epochs = {key[0] for key in keys}
        if len(epochs) != 1:  # a batch never spans epochs; the per-view path stays correct if one ever did
            return [self[key] for key in keys]
        epoch = keys[0][0]
        seeds = view_seeds(self.seed, epoch, [key[1] for key in keys], STREAM_VIEW)
        with isolated_global_rngs():
            return [self._view(epoch, position, index, s) for (_, position, index), s in zip(keys, seeds, strict=True)]

    def _view(self, epoch: int, position: int, index: int, seed64: int) -> tuple[torch.Tensor, int, int, int]:
        img, target = self.load(index)
        seed_all(seed64)
        return self.transform(img), 0 if self.unlabeled else target, position, epoch


class _ViewBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's batches of view keys for the current epoch."""

    def __init__(self, layout: ViewLayout, *, batch_size: int, rank: int, world_size: int,
                 mixing: bool, drop_last: bool = True, per_epoch: int | None = None) -> None:
        self.layout = layout
        self.batch_size = batch_size
        self.positions = layout.rank_positions(rank, world_size, mixing)
        n = len(self.positions)
        # timm drops the last partial batch; a whole epoch shorter than a batch still trains once
        self.num_batches = n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)
        self.epoch = 0
        # unlabelled images: ``per_epoch`` batches per (labelled) epoch, drawn from passes over the images that
        # continue across epochs, so batch b of epoch e is the (e * per_epoch + b)-th of the sequence of passes
        self.per_epoch = per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches if self.per_epoch is None else self.per_epoch

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        if self.per_epoch is not None:
            yield from self._continuing()
            return
        samples, _ = self.layout.epoch(self.epoch)
        positions = self.positions
        for b in range(self.num_batches):
            chunk = positions[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(self.epoch, int(p), int(samples[p])) for p in chunk]


    def _continuing(self) -> Iterator[list[tuple[int, int, int]]]:
        assert self.per_epoch is not None
        pass_index, samples = -1, None
        for g in range(self.epoch * self.per_epoch, (self.epoch + 1) * self.per_epoch):
            p, b = divmod(g, self.num_batches)
            if p != pass_index:
                pass_index, (samples, _) = p, self.layout.epoch(p)
            chunk = self.positions[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(p, int(q), int(samples[q])) for q in chunk]


class _MixCollate:
    """Stacks a batch and applies timm's Mixup, seeded by view identity (groups) or by batch."""

    def __init__(self, mixup: Mixup | None, *, seed: int, group_size: int | None,
                 mixup_off_epoch: int) -> None:
        self.mixup = mixup
        self.seed = seed
        self.group_size = group_size  # None: timm's batch-wide mixing
        self.mixup_off_epoch = mixup_off_epoch

    def __call__(self, batch: list[tuple[torch.Tensor, int, int, int]]) -> tuple[torch.Tensor, ...]:
        # default_collate stacks straight into shared memory in a loader worker, as timm's loader does; a plain
        # torch.stack there costs a second copy of every batch on its way to the trainer (~10 % of a 224px epoch
        # with 2 workers, measured by benchmarks/loader_throughput.py).
        inputs = torch.utils.data.default_collate([b[0] for b in batch])
        targets = torch.tensor([b[1] for b in batch], dtype=torch.int64)
        positions = torch.tensor([b[2] for b in batch], dtype=torch.int64)
        if self.mixup is None:
            return inputs, targets, positions
        return (*self.mix(inputs, targets, positions, batch[0][3]), positions)

    def mix(self, inputs: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor,
            epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        mixup = self.mixup
        assert mixup is not None
        mixup.mixup_enabled = not (self.mixup_off_epoch and epoch >= self.mixup_off_epoch)
        with isolated_global_rngs():
            if self.group_size is None:
                np.random.seed(view_seed(self.seed, epoch, int(positions[0]), STREAM_MIX_BATCH) & 0xFFFFFFFF)
                return mixup(inputs, targets)
            g = self.group_size
            mixed_targets = []
            for start in range(0, len(inputs), g):
                group = int(positions[start]) // g
                np.random.seed(view_seed(self.seed, epoch, group, STREAM_MIX_GROUP) & 0xFFFFFFFF)
                part, part_targets = mixup(inputs[start:start + g], targets[start:start + g])
                inputs[start:start + g] = part
                mixed_targets.append(part_targets)
            return inputs, torch.cat(mixed_targets)


class ViewLoader:
    """The training loader: ``set_epoch(e)``, ``len()``, yields ``(inputs, targets, view_index)``.

    ``view_index`` holds each view's position in the epoch (global across ranks); with the epoch it
    identifies the view. ``targets`` are soft ``(B, C)`` when Mixup/CutMix is on, else int64.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, batch_sampler: _ViewBatchSampler,
                 mixup: Mixup | None) -> None:
        self.loader = loader
        self.batch_sampler = batch_sampler
        self.mixup = mixup

    @property
    def mixup_active(self) -> bool:
        return self.mixup is not None

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return iter(self.loader)


def build_train_loader(dataset: Any, view: ViewSettings, loader: LoaderSettings, *, rank: int = 0,
                       world_size: int = 1, drop_last: bool = True,
                       unlabeled_per_epoch: int | None = None, unlabeled: bool = False) -> ViewLoader:
    """The training loader for ``dataset`` with timm's transforms and Mixup (see :mod:`timm_deit_distill.data`).

    ``drop_last=False`` keeps the last partial batch (made of whole mix groups), so every position of
    the epoch is produced: what a teacher target cache needs. ``unlabeled_per_epoch``: ``dataset`` is unlabelled
    images (its labels ignored, every target 0), drawn that many batches per epoch from passes over it that
    continue across epochs (pass ``p`` ordered and augmented as epoch ``p`` of ``view``'s seed). ``unlabeled``
    alone: unlabelled images loaded by epoch, epoch ``p`` being that pass (what a cache of them builds from).
    """
    unlabeled = unlabeled or unlabeled_per_epoch is not None
    if not unlabeled:
        check_num_classes(dataset, view.num_classes)
    a = view.augment
    deterministic = bool(a.deterministic_aug)
    mixup = build_mixup(view)
    group = int(a.mix_group_size)
    batch_size = loader.batch_size
    streamed = is_streamed(dataset)
    if streamed:
        check_views_supported(dataset.source_info.spec, deterministic_aug=deterministic, distill_cache=False,
                              aug_repeats=a.repeats)
    if deterministic and mixup is not None and batch_size % group:
        raise DataError(
            f"--batch-size {batch_size} is not a multiple of the mix group size {group}; "
            f"--deterministic-aug mixes in fixed groups of {group}. fix: use a batch size divisible by {group}.")
    if mixup is not None and not deterministic and batch_size % 2:
        raise DataError(f"--batch-size {batch_size} is odd; timm's Mixup/CutMix needs an even batch. "
                        "fix: use an even batch size.")
    if streamed:
        from .streams import build_stream_train_loader

        return build_stream_train_loader(dataset, view, loader, mixup, rank=rank, world_size=world_size)
    layout = ViewLayout(len(dataset), seed=int(a.seed), repeats=a.repeats, group_size=group, grouped=deterministic)
    batch_sampler = _ViewBatchSampler(layout, batch_size=batch_size, rank=rank, world_size=world_size,
                                      mixing=mixup is not None, drop_last=drop_last, per_epoch=unlabeled_per_epoch)
    views = _ViewDataset(dataset, build_train_transform(view), int(a.seed), unlabeled=unlabeled)
    collate = _MixCollate(mixup, seed=int(a.seed), group_size=group if deterministic else None,
                          mixup_off_epoch=int(a.mixup_off_epoch))
    data_loader = torch.utils.data.DataLoader(
        views,
        batch_sampler=batch_sampler,
        num_workers=loader.workers,
        collate_fn=collate,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.workers > 0,
        worker_init_fn=quiet_worker_init,
        generator=torch.Generator(),  # keeps the loader from drawing on the global generator
    )
    return ViewLoader(data_loader, batch_sampler, mixup)


class _EvalDataset(torch.utils.data.Dataset):
    def __init__(self, dataset: Any, transform: Any) -> None:
        self.dataset = dataset
        self.transform = transform
        self.load = image_loader(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, target = self.load(index)
        return self.transform(img), target


def build_eval_loader(dataset: Any, data_config: dict[str, Any], loader: LoaderSettings, *, rank: int = 0,
                      world_size: int = 1) -> torch.utils.data.DataLoader:
    """In-order evaluation loader with timm's eval transform, yielding ``(inputs, targets)``.

    With several processes, timm's ``OrderedDistributedSampler`` splits the set (padding the last
    rank by wrapping, as timm does); a stream's processes each read their share of its shards.
    """
    if is_streamed(dataset):
        from .streams import build_stream_eval_loader

        return build_stream_eval_loader(dataset, data_config, loader, world_size=world_size)
    sampler = (OrderedDistributedSampler(dataset, num_replicas=world_size, rank=rank)
               if world_size > 1 else None)
    return torch.utils.data.DataLoader(
        _EvalDataset(dataset, build_eval_transform(data_config)),
        batch_size=loader.eval_batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=loader.workers,
        drop_last=False,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.workers > 0,
        worker_init_fn=quiet_worker_init,
    )


def build_check_loader(
    dataset: Any,
    data_config: dict[str, Any],
    *,
    max_images: int = CHECK_IMAGES,
    batch_size: int = 64,
    workers: int = 0,
    seed: int = 0,
) -> torch.utils.data.DataLoader:
    """A loader for the teacher check: a seeded random subset of ``dataset`` (at most ``max_images``,
    drawn without replacement) with timm's eval transform for ``data_config``, yielding ``(inputs, targets)``.

    The subset depends only on ``(len(dataset), max_images, seed)``; its indices are read in file order. A
    stream has no index to draw from: its first ``max_images`` validation samples are used (the same on every
    process).
    """
    if int(max_images) < 1:
        raise DataError(f"--teacher-check-images {max_images} must be >= 1.")
    if int(batch_size) < 1:
        raise DataError(f"batch size {batch_size} must be >= 1.")
    if is_streamed(dataset):
        from .streams import build_stream_check_loader

        return build_stream_check_loader(dataset, data_config, max_images=int(max_images), batch_size=int(batch_size))
    n = len(dataset)
    if n == 0:
        raise DataError("the validation split holds no images, so the teacher cannot be checked; fix: add "
                        "images (or pass --no-teacher-check).")
    count = min(n, int(max_images))
    indices = np.sort(np.random.default_rng(int(seed)).choice(n, size=count, replace=False)).tolist()
    subset = torch.utils.data.Subset(_EvalDataset(dataset, build_eval_transform(data_config)), indices)
    # Its own generator: checking the teacher must not move the global generator the student's training draws on.
    return torch.utils.data.DataLoader(subset, batch_size=int(batch_size), shuffle=False,
                                       num_workers=int(workers), drop_last=False, generator=torch.Generator(),
                                       worker_init_fn=quiet_worker_init)
