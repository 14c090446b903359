"""Streamed sources (``wds/``, ``hfids/``, opened and checked by :mod:`.sources`): loaded as timm's
``create_loader`` loads an ``IterableImageDataset``.

What timm does, kept: its readers deal shards to processes and loader workers (``rank * workers + worker``),
shuffle the shard list with ``seed + epoch`` (``set_epoch`` before each epoch), buffer-shuffle samples inside
each worker, and size every worker's epoch to whole batches (wrapping round its shards), so every process
runs the same number of steps. What is added:

* checks before training, each one line: the ``_info.json`` and split, every local shard, safe shard names,
  the image and target keys (one sample peeked in the main process), the class count, enough shards for
  ``processes x workers`` (fewer would make the processes' step counts differ: a hang), enough hfids shards
  for the workers, and what an epoch drops or repeats when shards do not divide evenly (said, with counts);
* in flight: an unreadable ``wds`` sample or a target outside the classes is named by shard and key
  (``--skip-bad-images`` skips and counts unreadable ones); an ``hfids`` sample by its position in the stream;
* where the split's sample count could not be checked before training (remote data), the distinct samples of the
  first epoch (each worker's first pass over its shards) against the count the epoch was sized for, said in a
  WARNING when fewer;
* each view's augmentation seeded from ``(seed, epoch, worker, position in the worker's stream)`` with the
  caller's generator states restored (loader workers 0), so loading never perturbs the trainer's randomness;
  Mixup per batch, seeded by ``(seed, epoch, batch)``.

Not reproduced, because timm's readers do not allow it: a resumed epoch has the same shard order, not the
same sample order (the in-worker shuffle buffer carries over between epochs), and views are not a function
of a stable sample identity (no deterministic views, no teacher target cache; see
:func:`~timm_deit_distill.data.sources.check_views_supported`). What differs between the streams (how a pass
is counted, the shards a topology needs, a target checked in flight) each stream's source says
(:class:`~timm_deit_distill.data.sources.base.StreamSource`).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import multiprocessing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils.data
from timm.data.readers.reader_wds import WdsTargetKeyError
from timm.data.readers.shared_count import SharedCount

from ..errors import DataError
from .sources import SourceInfo
from .transforms import build_eval_transform, build_train_transform
from .views import (
    STREAM_MIX_BATCH,
    STREAM_ORDER,
    STREAM_VIEW,
    ViewSettings,
    isolated_global_rngs,
    seed_all,
    view_seed,
    view_seeds,
)
from .workers import quiet_worker_init

__all__ = ["StreamLoader", "build_stream_train_loader", "build_stream_eval_loader",
           "build_stream_check_loader", "BadSample"]

_logger = logging.getLogger(__name__)



class BadSample(DataError, WdsTargetKeyError):
    """A stream sample that cannot be used, named by shard and key (a WdsTargetKeyError: timm's wds error handler
    re-raises those instead of logging and skipping)."""


# ------------------------------------------------------------------------------------------------------------
# In flight: timm's wds decoder, wrapped to name (or skip and count) a bad sample


@dataclass
class _Policy:
    """What the decode hook does in this process (set by the stream being read, in the reading process)."""

    skip: bool = False
    num_classes: int | None = None
    skipped: Any = None  # a multiprocessing.Value shared with loader workers


# Samples transformed per save/restore of the trainer's global RNG states when there are no loader workers.
_MAIN_PROCESS_CHUNK = 16
_POLICY = _Policy()


def _install_decode_hook() -> None:
    """Wrap timm's module-level wds ``_decode`` (looked up when a reader builds its pipeline, in the reading
    process) so a bad sample is named by shard and key, or skipped and counted; idempotent."""
    import timm.data.readers.reader_wds as reader_wds

    original = reader_wds._decode
    if getattr(original, "_deit_distill_hook", False):
        return

    @functools.wraps(original)
    def decode(sample: dict[str, Any], **kwargs: Any) -> Any:
        where = f"shard {sample.get('__url__')} key {sample.get('__key__')}"
        try:
            decoded = original(sample, **kwargs)
        except WdsTargetKeyError as e:
            if isinstance(e, BadSample):
                raise
            raise BadSample(f"{e} ({where}); fix: --target-key naming a field every sample's json has.") from e
        except Exception as e:  # Pillow raises many types for a broken image
            if _POLICY.skip:
                if _POLICY.skipped is not None:
                    with _POLICY.skipped.get_lock():
                        _POLICY.skipped.value += 1
                return None  # webdataset's map() drops a None result
            raise BadSample(f"unreadable sample in {where}: {type(e).__name__}: {e}; fix: replace the shard, or "
                            "pass --skip-bad-images to skip (and count) unreadable samples.") from e
        target = decoded["target"] if decoded is not None else None
        n = _POLICY.num_classes
        if isinstance(target, int) and n is not None and not 0 <= target < n:
            raise BadSample(f"target {target} in {where} is outside the {n} classes; fix: --num-classes (or the "
                            "_info.json 'num_classes'), or --target-key naming the class field.")
        return decoded

    decode._deit_distill_hook = True  # type: ignore[attr-defined]
    reader_wds._decode = decode


# ------------------------------------------------------------------------------------------------------------
# Loading


class _StreamViews(torch.utils.data.IterableDataset):
    """timm's IterableImageDataset with the package's transform: each view seeded by its place in the stream,
    bad samples named; runs in the main process (workers 0) or in each loader worker."""

    def __init__(self, dataset: Any, transform: Any, *, seed: int, epoch: SharedCount, rank: int,
                 skipped: Any, distinct: Any = None) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.skipped = skipped
        self.distinct = distinct  # a multiprocessing.Value: the samples of each worker's first pass, summed
        self.passes = self.first_pass = 0
        info: SourceInfo = dataset.source_info
        self.policy = _Policy(skip=info.skip_bad_images, num_classes=info.num_classes, skipped=skipped)
        self.info = info
        self.spec, self.split = info.spec, info.split

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        global _POLICY
        _install_decode_hook()
        _POLICY = self.policy
        worker = torch.utils.data.get_worker_info()
        workers = worker.num_workers if worker is not None else 1
        gwid = self.rank * workers + (worker.id if worker is not None else 0)
        epoch = int(self.epoch.value)
        samples = self._samples(gwid)
        # In the main process the trainer's global RNG states are saved and restored around the transforms, once
        # per chunk of samples rather than per sample (~77 us each); a loader worker's states are its own.
        chunk = 1 if worker is not None else _MAIN_PROCESS_CHUNK
        while True:
            part = list(itertools.islice(samples, chunk))
            if not part:
                return
            seeds = view_seeds(self.seed, epoch, [(gwid << 40) + position for position, _, _ in part], STREAM_VIEW)
            with isolated_global_rngs():
                views = []
                for (_, img, target), seed64 in zip(part, seeds, strict=True):
                    seed_all(seed64)
                    views.append((self.transform(img), target))
            yield from views

    def _count_passes(self) -> None:
        """Pass the reader's samples through :meth:`_count` (timm's readers start another pass over a worker's
        shards to make up the epoch's count): what the first pass yields are the distinct samples it saw."""
        self.passes = self.first_pass = 0
        reader = self.dataset.reader
        if reader.ds is None:
            reader._lazy_init()  # what the reader's own __iter__ does first; its pipeline is built here
        self.info.source.count_passes(reader, self._count)

    def _count(self, samples: Iterator[Any]) -> Iterator[Any]:
        self.passes += 1
        for sample in samples:
            self.first_pass += self.passes == 1
            yield sample

    def _samples(self, gwid: int) -> Iterator[tuple[int, Any, int]]:
        """``(position, image, target)`` of this worker's share of the stream, each read checked."""
        if self.distinct is not None:
            self._count_passes()
        samples = iter(self.dataset)
        position = 0
        while True:
            try:
                img, target = next(samples)
            except StopIteration:
                if self.distinct is not None:
                    with self.distinct.get_lock():
                        self.distinct.value += self.first_pass
                return
            except DataError:
                raise
            except Exception as e:  # hfids: datasets decodes inside its stream; nothing names the row
                raise DataError(f"--dataset {self.spec} split {self.split}: the sample after position {position} of "
                                f"loader worker {gwid} cannot be read: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
                                "; fix: repair the data files (hfds/ finds and skips bad images before training).") from e
            self.info.source.check_stream_target(self.info, target, position, gwid)
            yield position, img, target
            position += 1


def _loader(views: _StreamViews, *, batch_size: int, workers: int, pin_memory: bool, drop_last: bool,
            seed: int, rank: int) -> torch.utils.data.DataLoader:
    from timm.data.loader import _worker_init

    return torch.utils.data.DataLoader(
        views, batch_size=batch_size, num_workers=workers, drop_last=drop_last, pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=functools.partial(quiet_worker_init, then=functools.partial(_worker_init, worker_seeding="all")),
        # the workers' seeds (timm's in-worker shuffle uses them) from the run's seed and rank, as train.py's
        # global generator would give them, without drawing on the trainer's global generator
        generator=torch.Generator().manual_seed(view_seed(seed, 0, rank, STREAM_ORDER) & 0x7FFF_FFFF_FFFF_FFFF))


class StreamLoader:
    """The training loader of a stream: ``set_epoch(e)``, ``len()``, yields ``(inputs, targets, views)``.

    ``views`` is -1 for every sample (a stream has no view identity to replay); ``targets`` are soft ``(B, C)``
    under Mixup/CutMix, else int64, as with :class:`~timm_deit_distill.data.ViewLoader`.
    """

    def __init__(self, dataset: Any, views: _StreamViews, loader: torch.utils.data.DataLoader, mixup: Any, *,
                 seed: int, rank: int, mixup_off_epoch: int, batch_size: int) -> None:
        self.dataset = dataset
        self.views = views
        self.loader = loader
        self.mixup = mixup
        self.seed = seed
        self.rank = rank
        self.mixup_off_epoch = mixup_off_epoch
        self.batch_size = batch_size
        self.epoch = 0

    @property
    def mixup_active(self) -> bool:
        return self.mixup is not None

    def set_epoch(self, epoch: int) -> None:
        """timm's ``set_epoch``: the shard order of epoch ``epoch`` (``seed + epoch``), in every worker."""
        self.epoch = int(epoch)
        self.dataset.set_epoch(self.epoch)
        self.views.epoch.value = self.epoch

    def __len__(self) -> int:
        return len(self.dataset) // self.batch_size  # every worker yields whole batches (timm sizes it so)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self.views.skipped is not None:
            self.views.skipped.value = 0
        distinct = self.views.distinct
        if distinct is not None:
            distinct.value = 0
        views = 0
        for batch, (inputs, targets) in enumerate(self.loader):
            views += len(inputs)
            targets = targets.to(torch.int64)
            if self.mixup is not None:
                self.mixup.mixup_enabled = not (self.mixup_off_epoch and self.epoch >= self.mixup_off_epoch)
                with isolated_global_rngs():  # timm's Mixup draws from numpy's global generator
                    np.random.seed(view_seed(self.seed, self.epoch, (self.rank << 40) + batch, STREAM_MIX_BATCH)
                                   & 0xFFFFFFFF)
                    inputs, targets = self.mixup(inputs, targets)
            yield inputs, targets, torch.full((len(inputs),), -1, dtype=torch.int64)
        skipped = self.views.skipped.value if self.views.skipped is not None else 0
        if skipped:
            _logger.warning("Skipped %d unreadable sample(s) of %s in epoch %d (--skip-bad-images).", skipped,
                            self.views.spec, self.epoch)
        if distinct is not None:
            self.views.distinct = None  # said once, after the first epoch this process trains
            self._say_distinct(int(distinct.value), views)

    def _say_distinct(self, distinct: int, views: int) -> None:
        """Warn when the epoch saw fewer distinct samples than its count assumed (a count that could not be
        checked before training: remote data)."""
        reader = self.dataset.reader
        replicas = max(1, int(getattr(reader, "dist_num_replicas", 1)))
        assumed = math.ceil(int(reader.num_samples) / replicas)
        if distinct >= assumed:
            return
        who = f"process {self.rank} of {replicas}" if replicas > 1 else "the epoch"
        _logger.warning(
            "%s split %s: epoch %d read %d distinct sample(s) but %s was sized for %d (the sample count given by "
            "--train-num-samples, _info.json or the dataset card); %d of its %d views were repeats. If the split "
            "holds %d, fix: pass --train-num-samples %d (or correct the count).", self.views.spec,
            self.views.split, self.epoch, distinct, who, assumed, views - distinct, views, distinct * replicas,
            distinct * replicas)


def build_stream_train_loader(dataset: Any, view: ViewSettings, loader: Any, mixup: Any, *, rank: int = 0,
                              world_size: int = 1) -> StreamLoader:
    """The training loader of a stream, built as timm's ``create_loader`` builds one over an IterableImageDataset
    (``set_loader_cfg`` before the workers start, whole batches, persistent workers), with Mixup per batch."""
    info: SourceInfo = dataset.source_info
    a = view.augment
    info.source.check_topology(dataset, workers=loader.workers, world_size=world_size, training=True)
    dataset.transform = None
    dataset.set_loader_cfg(num_workers=loader.workers)
    context = multiprocessing.get_context()
    skipped = context.Value("i", 0) if info.skip_bad_images else None
    # a count that could not be checked before training is checked against what the first epoch saw
    distinct = context.Value("q", 0) if info.counted is None else None
    views = _StreamViews(dataset, build_train_transform(view), seed=int(a.seed), epoch=SharedCount(),
                         rank=rank, skipped=skipped, distinct=distinct)
    data_loader = _loader(views, batch_size=loader.batch_size, workers=loader.workers, pin_memory=loader.pin_memory,
                          drop_last=True, seed=int(a.seed), rank=rank)
    return StreamLoader(dataset, views, data_loader, mixup, seed=int(a.seed), rank=rank,
                        mixup_off_epoch=int(a.mixup_off_epoch), batch_size=loader.batch_size)


def build_stream_eval_loader(dataset: Any, data_config: Mapping[str, Any], loader: Any, *,
                             world_size: int = 1) -> torch.utils.data.DataLoader:
    """The evaluation loader of a stream: in stream order, yielding ``(inputs, targets)``. With several processes
    each reads its share of the shards, with at most 2 loader workers for wds (timm train.py's rule)."""
    info: SourceInfo = dataset.source_info
    workers = info.source.eval_workers(loader.workers, world_size)
    info.source.check_topology(dataset, workers=workers, world_size=world_size, training=False)
    dataset.transform = None
    dataset.set_loader_cfg(num_workers=workers)
    rank = getattr(dataset.reader, "dist_rank", 0)
    views = _StreamViews(dataset, build_eval_transform(data_config), seed=0, epoch=SharedCount(), rank=rank,
                         skipped=None)
    return _loader(views, batch_size=loader.eval_batch_size, workers=workers, pin_memory=loader.pin_memory,
                   drop_last=False, seed=0, rank=rank)


def build_stream_check_loader(dataset: Any, data_config: Mapping[str, Any], *, max_images: int,
                              batch_size: int) -> Any:
    """The teacher check's images of a stream: the first ``max_images`` of its validation stream, read whole by
    every process (the same images on each), in the main process."""
    info: SourceInfo = dataset.source_info
    fresh = info.reopen()  # built anew: the validation loader's dataset belongs to its own workers
    fresh.source_info = info
    fresh.reader.dist_rank, fresh.reader.dist_num_replicas = 0, 1  # every process checks the same images
    fresh.transform = None
    fresh.set_loader_cfg(num_workers=0)
    views = _StreamViews(fresh, build_eval_transform(data_config), seed=0, epoch=SharedCount(), rank=0, skipped=None)
    return _Bounded(torch.utils.data.DataLoader(views, batch_size=batch_size, num_workers=0), max_images)


class _Bounded:
    """The first ``limit`` samples of a loader (a stream read for the teacher check)."""

    def __init__(self, loader: Any, limit: int) -> None:
        self.loader, self.limit = loader, int(limit)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seen = 0
        for inputs, targets in self.loader:
            take = min(len(targets), self.limit - seen)
            yield inputs[:take], targets[:take]
            seen += take
            if seen >= self.limit:
                return

