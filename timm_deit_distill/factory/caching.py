"""`deit-distill cache build`'s work, from typed settings: the teacher targets of every training view of the
asked epochs, computed once by the teacher exactly as `deit-distill train` gets it, written to a cache that later
runs replay (:mod:`timm_deit_distill.cache`). Rerun on the same folder to resume or extend it; under torchrun the
processes share the epochs."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from ..cache import CacheError, CacheStore, build_cache, check_cache_dir, rows_per_epoch
from ..cache.build import UNLABELED_DIR
from ..cache.store import MANIFEST
from ..data.unlabeled import unlabeled_view
from ..run_folder import output_inside_data
from ..stops import check as check_stop
from . import builders
from .settings import TrainSettings
from .teacher import get_teacher

__all__ = ["check_cache_output", "build_teacher_cache"]

_logger = logging.getLogger("timm_deit_distill.cache")


def check_cache_output(out: str | None) -> None:
    """Refuse, before the data scan and the teacher (the cheapest refusals first), a cache build without a folder
    or with one that cannot hold a cache."""
    if not out:
        raise CacheError("no --out DIR given; fix: add --out DIR, the directory the cache is written to.")
    check_cache_dir(out)


def build_teacher_cache(settings: TrainSettings, *, out: str, store: CacheStore,
                        unlabeled_passes: int | None = None) -> dict[str, Any]:
    """Build (or resume, or extend) the cache of ``settings``' training views in ``out``; returns its manifest.
    With unlabelled images, also ``unlabeled_passes`` passes over them (default: what one process consumes)."""
    from ..data import ViewSettings, check_num_classes, check_views_supported, label_names

    _check_build(settings, out, unlabeled_passes)
    # A cache holds one row per (epoch, position): only sources with a stable sample index have positions.
    check_views_supported(settings.data.dataset, deterministic_aug=True, distill_cache=False, aug_repeats=1,
                          what="cache build")

    # The device and, under torchrun, the process group: the processes share the epochs.
    device_info = builders.init_device(settings.device.device)
    device, rank, world_size = device_info.device, device_info.rank, device_info.world_size
    barrier = torch.distributed.barrier if device_info.distributed else None

    train_ds, val_ds = builders.open_datasets(settings.data, num_classes=settings.student.num_classes,
                                             loader=settings.loader, seed=settings.seed)
    labels = label_names(train_ds)
    num_classes = check_num_classes(train_ds, settings.student.num_classes)
    unlabeled_ds = _open_unlabeled(settings, train_ds, val_ds)
    data_config = builders.student_data_config(settings.student, num_classes)

    # The teacher exactly as `deit-distill train` gets it, so cached and online targets are the same numbers.
    if settings.teacher.source:
        builders.check_model_name(settings.teacher.source, "--distill-teacher")
    view = ViewSettings.resolve(settings.augment, data_config, num_classes)
    loader = settings.loader
    epochs = settings.schedule.epochs
    started = _started_path(out, settings.teacher)
    if started is not None and rank == 0:
        _logger.info("cache %s was started with the teacher on %s: continuing on it.", out, started)
    rows = rows_per_epoch(len(train_ds), view.augment.mix_group_size)
    # Measured before a single target is written: a cache of a teacher near chance is noise on disk.
    # Every process checks the same seeded images, so all of them refuse or none does.
    teacher, measured = get_teacher(
        settings.teacher, num_classes=num_classes, data_config=data_config, device=device,
        label_names=labels or None, dataset=val_ds, loader=loader, seed=settings.seed, batch_size=loader.batch_size,
        steps=math.ceil(epochs * rows / world_size / loader.batch_size), rank=rank, world_size=world_size,
        # extending or resuming a cache: its targets so far came from this path, and the rest must too
        resumed_path=started, resumed_reason=f"the path cache {out} was started with")
    check = measured.as_dict() if measured is not None else None

    def run_teacher(x: torch.Tensor) -> torch.Tensor:
        check_stop()  # a stop that arrived while an exception was being handled
        return teacher(x.to(device, non_blocking=True))

    if rank == 0:
        _logger.info("caching %d epochs of %d images, store %s, teacher %s (%s), into %s", epochs,
                     len(train_ds), store.spec, settings.teacher.source or settings.teacher.checkpoint_path,
                     teacher.path, out)
    common = {"store": store, "teacher_description": teacher.description, "teacher_check": check, "rank": rank,
              "world_size": world_size, "barrier": barrier}
    try:
        return _build_both(settings, train_ds, unlabeled_ds, view, run_teacher, out, unlabeled_passes, common)
    finally:
        if device_info.distributed:
            torch.distributed.destroy_process_group()


def _build_both(settings: TrainSettings, train_ds: Any, unlabeled_ds: Any, view: Any, run_teacher: Any, out: str,
                unlabeled_passes: int | None, common: dict[str, Any]) -> dict[str, Any]:
    """The labelled views' cache in ``out``, then (with unlabelled images) their passes in ``out/unlabeled``; returns
    the labelled cache's manifest (which records the unlabelled part)."""
    record = None
    if unlabeled_ds is not None:
        record = _unlabeled_record(settings, unlabeled_ds, view, len(train_ds), unlabeled_passes)
        _logger.info("caching %d pass(es) over %d unlabelled images into %s", record["passes"], len(unlabeled_ds),
                     Path(out) / UNLABELED_DIR)
    manifest = build_cache(train_ds, view, settings.loader, run_teacher, out, epochs=settings.schedule.epochs,
                           unlabeled=record, **common)
    if record is not None:
        build_cache(unlabeled_ds, unlabeled_view(view), settings.loader, run_teacher, Path(out) / UNLABELED_DIR,
                    epochs=record["passes"], labels_ignored=True, **common)
    return manifest


def _check_build(settings: TrainSettings, out: str, unlabeled_passes: int | None) -> None:
    """What a build needs before the data is read: an --out outside the data, a teacher, and --unlabeled-passes
    only with unlabelled images (at least 1)."""
    if unlabeled_passes is not None and not settings.unlabeled.active:
        raise CacheError(f"--unlabeled-passes {unlabeled_passes} caches passes over unlabelled images, but none are "
                         "given; fix: add --unlabeled-data-dir DIR (as for training), or drop --unlabeled-passes.")
    if unlabeled_passes is not None and unlabeled_passes < 1:
        raise CacheError(f"--unlabeled-passes {unlabeled_passes} must be >= 1.")
    inside = output_inside_data("--out", out, settings.data.data_dir)  # the rest of --out was checked above
    if inside is not None:
        raise CacheError(inside)
    if not settings.teacher.given:
        raise CacheError("no teacher given; fix: add --distill-teacher NAME (e.g. regnety_160.deit_in1k) "
                         "and/or --distill-teacher-path FILE, as for `deit-distill train`.")


def _open_unlabeled(settings: TrainSettings, train_ds: Any, val_ds: Any) -> Any:
    """The unlabelled images, opened and checked as `deit-distill train` does (None without them)."""
    from .run import _open_unlabeled as open_checked

    return open_checked(settings, train_ds, val_ds, 1)


def _unlabeled_record(settings: TrainSettings, unlabeled_ds: Any, view: Any, num_labeled: int,
                      passes: int | None) -> dict[str, Any]:
    """What the cache records of its unlabelled images: the source, its content fingerprint (part of the cache's),
    and the passes cached: ``passes``, else those one process consumes over ``--epochs`` (a run of N processes
    draws N times fewer batches a pass and epoch, rounded: training names the count it needs if it is more)."""
    from ..data import dataset_fingerprint
    from ..data.unlabeled import batches_per_pass, passes_consumed

    u, batch = settings.unlabeled, settings.loader.batch_size
    per_batch = u.per_batch(batch)
    deterministic = view.deterministic()
    if passes is None:
        labeled = batches_per_pass(num_labeled, deterministic, batch - per_batch)
        passes = passes_consumed(settings.schedule.epochs, labeled,
                                 batches_per_pass(len(unlabeled_ds), unlabeled_view(deterministic), per_batch))
    return {"fingerprint": dataset_fingerprint(unlabeled_ds), "source": u.source_name,
            "location": str(unlabeled_ds.source_info.location), "num_images": len(unlabeled_ds),
            "fraction": u.unlabeled_fraction, "per_batch": per_batch, "passes": int(passes)}


def _started_path(out: str, teacher: Any) -> str | None:
    """The teacher path (e.g. ``'bf16 eager'``) a cache in ``out`` was started with, when this build leaves the
    path to measurement ('auto'): a resumed or extended cache keeps the precision its chunks were computed at.

    None when there is no such cache, or the path is given explicitly (a mismatch is then refused by the build)."""
    if teacher.precision != "auto" and teacher.compile != "auto":
        return None
    try:
        described = json.loads((Path(out) / MANIFEST).read_text()).get("teacher") or {}
    except (OSError, ValueError, AttributeError):
        return None  # no cache yet, or one the build itself refuses with the reason
    precision = described.get("precision") if teacher.precision == "auto" else teacher.precision
    compiled = bool(described.get("compiled")) if teacher.compile == "auto" else teacher.compile == "yes"
    if precision not in ("fp32", "bf16", "fp16"):
        return None
    return f"{precision} {'compiled' if compiled else 'eager'}"
