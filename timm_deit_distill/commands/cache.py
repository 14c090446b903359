"""`deit-distill cache`: build a teacher target cache once, replay it in every later training run.

    deit-distill cache build <the training command's data/augmentation/teacher flags> \\
        --epochs N --store hard|topk:K|full|full:fp16 --out DIR
    deit-distill cache info DIR

``build`` reads the training command line with the trainer's own parser (recipes, ``-c`` configs and
every alias work the same), always with ``--deterministic-aug``. Rerun it on the same ``--out`` to
resume a killed build or to add epochs; under ``torchrun`` the processes share the epochs.
Train from it with ``deit-distill train <same flags> --deterministic-aug --distill-cache DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..cache import CacheError, CacheStore, TeacherTargetCache, build_cache, check_cache_dir, rows_per_epoch
from ..cache.store import MANIFEST, chunk_name
from ..errors import DeitDistillError, DiskFullError
from ..run_folder import output_inside_data
from .common import ArgumentParser, refuse
from .stops import Stopped, run_stoppable
from .stops import check as check_stop

__all__ = ["main", "format_bytes"]

_logger = logging.getLogger("timm_deit_distill.cache")

USAGE = """usage: deit-distill cache build [training flags] --epochs N --store hard|topk:K|full|full:fp16 --out DIR
       deit-distill cache info DIR"""


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def _split_own_flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    own = ArgumentParser(prog="deit-distill cache build", add_help=False)
    own.add_argument("--store", default="hard")
    own.add_argument("--out", default=None)
    return own.parse_known_args(argv)


def _build(argv: list[str]) -> int:
    from .. import factory
    from ..data import ViewSettings, check_num_classes, check_views_supported, label_names
    from . import args as train_args

    own, rest = _split_own_flags(argv)
    if "-h" in rest or "--help" in rest:
        print(USAGE)
        print("\nThe training flags are `deit-distill train`'s (see `deit-distill train --help`); in addition:\n"
              "  --store   hard (teacher argmax, exact for hard distillation), topk:K (K largest logits, fp16),\n"
              "            full (every logit, fp32, exact) or full:fp16; default hard\n"
              "  --out     the cache directory (rerun on it to resume or extend)\n"
              "  --epochs  epochs to cache (training may use up to this many)")
        return 0
    # The training flags through the trainer's own declaration, named as this command: a bad flag prints
    # `deit-distill cache build: error: ...`, not the trainer's name.
    given = train_args.given_flags(rest, prog="deit-distill cache build")
    if not own.out:
        raise CacheError("no --out DIR given; fix: add --out DIR, the directory the cache is written to.")
    check_cache_dir(own.out)  # before the data scan and the teacher: a file in the way is the cheapest refusal
    store = CacheStore.parse(own.store)
    args = train_args.resolve_given(given, prog="deit-distill cache build")
    settings = train_args.settings_from_args(args)
    inside = output_inside_data("--out", own.out, args.data_dir)  # the rest of --out was checked above
    if inside is not None:
        raise CacheError(inside)
    if not settings.teacher.given:
        raise CacheError("no teacher given; fix: add --distill-teacher NAME (e.g. regnety_160.deit_in1k) "
                         "and/or --distill-teacher-path FILE, as for `deit-distill train`.")
    # A cache holds one row per (epoch, position): only sources with a stable sample index have positions.
    check_views_supported(settings.data.dataset, deterministic_aug=True, distill_cache=False, aug_repeats=1,
                          what="cache build")

    # The device and, under torchrun, the process group: the processes share the epochs.
    device_info = factory.init_device(settings.device)
    device, rank, world_size = device_info.device, device_info.rank, device_info.world_size
    barrier = torch.distributed.barrier if device_info.distributed else None

    train_ds, val_ds = factory.open_datasets(settings.data, num_classes=settings.student.num_classes,
                                             loader=settings.loader, seed=settings.seed)
    labels = label_names(train_ds)
    num_classes = check_num_classes(train_ds, settings.student.num_classes)
    data_config = factory.student_data_config(settings.student, num_classes)

    # The teacher exactly as `deit-distill train` builds it, so cached and online targets are the same numbers.
    if settings.teacher.source:
        factory.check_model_name(settings.teacher.source, "--distill-teacher")
    teacher = factory.create_teacher(settings.teacher, num_classes, data_config, device, label_names=labels or None)
    view = ViewSettings.resolve(settings.augment, data_config, num_classes)
    loader = settings.loader
    started = _started_path(own.out, settings.teacher)
    if started is not None:
        # Extending or resuming a cache: its targets so far came from this path, and the rest must too.
        teacher.use_path(started)
        if rank == 0:
            _logger.info("cache %s was started with the teacher on %s: continuing on it.", own.out, started)
    else:
        rows = rows_per_epoch(len(train_ds), view.augment.mix_group_size)
        steps = math.ceil(args.epochs * rows / world_size / loader.batch_size)
        factory.select_teacher_path(teacher, settings.teacher, val_ds, data_config, loader, seed=settings.seed,
                                    batch_size=loader.batch_size, steps=steps, rank=rank, world_size=world_size)
    # Measured before a single target is written: a cache of a teacher near chance is noise on disk.
    # Every process checks the same seeded images, so all of them refuse or none does.
    measured = factory.check_teacher(teacher, settings.teacher, val_ds, data_config, settings.loader,
                                     seed=settings.seed)
    check = measured.as_dict() if measured is not None else None

    def run_teacher(x: torch.Tensor) -> torch.Tensor:
        check_stop()  # a stop that arrived while an exception was being handled
        return teacher(x.to(device, non_blocking=True))

    if rank == 0:
        _logger.info("caching %d epochs of %d images, store %s, teacher %s (%s), into %s", args.epochs,
                     len(train_ds), store.spec, args.distill_teacher or args.distill_teacher_path, teacher.path,
                     own.out)
    try:
        manifest = build_cache(train_ds, view, loader, run_teacher, own.out, epochs=args.epochs, store=store,
                               teacher_description=teacher.description, teacher_check=check, rank=rank,
                               world_size=world_size, barrier=barrier)
    except DiskFullError as e:  # no input's fault (exit 1): what is kept, and the rerun that resumes
        return refuse("cache build", e, hint=f" {_kept_epochs(own.out, args.epochs)}")
    if rank == 0:
        print(_summary(own.out, manifest))
    if device_info.distributed:
        torch.distributed.destroy_process_group()
    return 0


def _kept_epochs(out: str, epochs: int) -> str:
    """After a full disk: the finished epochs kept, what the missing ones need, and the rerun that resumes."""
    done = sum((Path(out) / chunk_name(epoch)).is_file() for epoch in range(epochs))
    missing = max(epochs - done, 0)
    need = ""
    try:
        manifest = json.loads((Path(out) / MANIFEST).read_text())  # written before the first epoch
        per_epoch = int(manifest["bytes_per_view"]) * int(manifest["rows_per_epoch"])
        if missing:
            need = f"; the {missing} missing need about {format_bytes(missing * per_epoch)}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return (f"Nothing is lost: {done} of {epochs} epochs are written in {out} and kept, the partial file was removed"
            f"{need}. Free space there, then rerun the same `deit-distill cache build` command: it resumes with the "
            "missing epochs.")


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


def _summary(directory: str, manifest: dict[str, Any]) -> str:
    per_view = manifest["bytes_per_view"]
    per_epoch = per_view * manifest["rows_per_epoch"]
    done = len(manifest["chunks"])
    on_disk = sum(c["bytes"] for c in manifest["chunks"])
    return (f"cache {directory}: store {manifest['store']}, {done}/{manifest['epochs']} epochs "
            f"({'complete' if manifest['complete'] else 'incomplete'}), {manifest['rows_per_epoch']} views per epoch, "
            f"{per_view} bytes per view, {format_bytes(per_epoch)} per epoch, {format_bytes(on_disk)} on disk")


def _info_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="deit-distill cache info",
        description="Print what a teacher target cache holds: store, epochs built, views per epoch, size on disk, "
                    "the teacher and the augmentation settings its views were made with.")
    parser.add_argument("directory", metavar="DIR", help="the cache directory (the --out of `cache build`)")
    parser.add_argument("--verify", action="store_true",
                        help="hash every chunk against the sha256 recorded when it was written; exit 1 naming "
                             "each one that is missing, truncated or altered")
    return parser


def _info(argv: list[str]) -> int:
    options = _info_parser().parse_args(argv)  # -h: help, exit 0; a bad flag: usage, exit 2
    directory = options.directory
    cache = TeacherTargetCache.open(directory)
    print(_summary(directory, cache.manifest))
    teacher = cache.teacher_description or {}
    views = cache.fingerprint["views"]
    print(f"teacher: {teacher.get('name')} ({teacher.get('precision')}), sha256 {str(teacher.get('sha256'))[:12]}")
    print("views: " + ", ".join(f"{k}={v}" for k, v in views.items()))
    check = cache.teacher_check
    if check is None:
        print("teacher check: none (built with --no-teacher-check: training from it needs --no-teacher-check)")
    else:
        threshold = "no threshold" if check.get("min_top1") is None else f"threshold {check['min_top1']:.2f}%"
        print(f"teacher check: top-1 {check['top1']:.2f}% on {check['images']} validation images ({threshold}, "
              f"chance {check['chance']:.2f}%), measured when the cache was built")
    built = len(cache.manifest["chunks"])
    if not options.verify:
        print(f"chunks: {built} listed, not hashed here (--verify hashes them; training verifies the ones it needs "
              "before its first step)")
        return 0
    damaged = cache.damaged_chunks()
    for problem in damaged:
        print(f"damaged: {problem}")
    print(f"chunks: {built - len(damaged)} of {built} match the sha256 recorded when they were written")
    return 1 if damaged else 0


def _build_stopped(argv: list[str], stop: Stopped) -> str:
    """Where a stopped build left its cache, and the command that resumes it."""
    own, _ = _split_own_flags(argv)
    done = sorted(Path(own.out).glob("epoch-*.json")) if own.out else []
    cached = f"{len(done)} finished epoch(s) are kept in {own.out}" if done else "no epoch was finished"
    again = ("the same torchrun command" if int(os.environ.get("WORLD_SIZE", "1")) > 1
             else shlex.join(["deit-distill", "cache", "build", *argv]))
    return f"stopped by {stop.name}; {cached}. Resume with (only missing epochs are computed): {again}"


def main(argv: Sequence[str] | None = None) -> int:
    """`deit-distill cache build|info ...`; returns the exit code (2 with a message for bad input, 130 / 143 when
    SIGINT / SIGTERM stopped a build)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not argv:
        print("deit-distill cache: error: a command is required: build or info (see deit-distill cache --help)",
              file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "build":
            return run_stoppable("cache build", lambda: _build(rest), lambda stop: _build_stopped(rest, stop),
                                 speaks=int(os.environ.get("RANK", "0")) == 0)
        if command == "info":
            return _info(rest)
    except (DeitDistillError, ValueError) as e:  # refusals name the fix (timm's ValueErrors too)
        return refuse(f"cache {command}", e)
    print(f"deit-distill cache: error: unknown command {command!r}: use build or info (see deit-distill cache --help)",
          file=sys.stderr)
    return 2

