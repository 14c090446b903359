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
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cache import CacheStore, TeacherTargetCache
from ..cache.store import MANIFEST, chunk_name
from ..errors import DeitDistillError, DiskFullError
from ..stops import Stopped, run_stoppable
from .common import ArgumentParser, refuse

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
    own.add_argument("--unlabeled-passes", type=int, default=None)
    return own.parse_known_args(argv)


def _build(argv: list[str]) -> int:
    from ..factory.caching import build_teacher_cache, check_cache_output
    from ..factory.settings import settings_from_options
    from . import args as train_args

    own, rest = _split_own_flags(argv)
    if "-h" in rest or "--help" in rest:
        print(USAGE)
        print("\nThe training flags are `deit-distill train`'s (see `deit-distill train --help`); in addition:\n"
              "  --store   hard (teacher argmax, exact for hard distillation), topk:K (K largest logits, fp16),\n"
              "            full (every logit, fp32, exact) or full:fp16; default hard\n"
              "  --out     the cache directory (rerun on it to resume or extend)\n"
              "  --epochs  epochs to cache (training may use up to this many)\n"
              "  --unlabeled-passes P  with --unlabeled-data-dir/--unlabeled-dataset: passes over the unlabelled\n"
              "            images to cache (default: what one process consumes in --epochs; training under\n"
              "            torchrun names the count it needs when it is more)")
        return 0
    # The training flags through the trainer's own declaration, named as this command: a bad flag prints
    # `deit-distill cache build: error: ...`, not the trainer's name.
    given = train_args.given_flags(rest, prog="deit-distill cache build")
    check_cache_output(own.out)  # before the data scan and the teacher: the cheapest refusals first
    store = CacheStore.parse(own.store)
    settings = settings_from_options(train_args.resolve_given(given, prog="deit-distill cache build"))
    try:
        manifest = build_teacher_cache(settings, out=own.out, store=store, unlabeled_passes=own.unlabeled_passes)
    except DiskFullError as e:  # no input's fault (exit 1): what is kept, and the rerun that resumes
        return refuse("cache build", e, hint=f" {_kept_epochs(own.out, settings.schedule.epochs)}")
    if int(os.environ.get("RANK", "0")) == 0:
        print(_summary(own.out, manifest))
        if manifest.get("unlabeled"):
            _print_unlabeled(TeacherTargetCache.open(own.out, verify=False))
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
    _print_unlabeled(cache)
    check = cache.teacher_check
    if check is None:
        print("teacher check: none (built with --no-teacher-check: training from it needs --no-teacher-check)")
    else:
        threshold = "no threshold" if check.get("min_top1") is None else f"threshold {check['min_top1']:.2f}%"
        print(f"teacher check: top-1 {check['top1']:.2f}% on {check['images']} validation images ({threshold}, "
              f"chance {check['chance']:.2f}%), measured when the cache was built")
    built = len(cache.manifest["chunks"]) + _unlabeled_chunks(cache)
    if not options.verify:
        print(f"chunks: {built} listed, not hashed here (--verify hashes them; training verifies the ones it needs "
              "before its first step)")
        return 0
    damaged = cache.damaged_chunks()
    for problem in damaged:
        print(f"damaged: {problem}")
    print(f"chunks: {built - len(damaged)} of {built} match the sha256 recorded when they were written")
    return 1 if damaged else 0


def _unlabeled_chunks(cache: TeacherTargetCache) -> int:
    """How many chunks of unlabelled passes the cache lists (0 without them, or when they cannot be read)."""
    from ..cache.build import UNLABELED_DIR
    from ..errors import CacheError

    if cache.unlabeled is None:
        return 0
    try:
        return len(TeacherTargetCache.open(Path(cache.directory) / UNLABELED_DIR).manifest["chunks"])
    except CacheError:
        return 0


def _print_unlabeled(cache: TeacherTargetCache) -> None:
    """The unlabelled part of a cache: which images, and how many passes over them are built."""
    from ..cache.build import UNLABELED_DIR
    from ..errors import CacheError

    record = cache.unlabeled
    if record is None:
        print("unlabelled images: none (labelled views only)")
        return
    try:
        nested = TeacherTargetCache.open(Path(cache.directory) / UNLABELED_DIR).manifest
        built = f"{len(nested['chunks'])}/{nested['epochs']} passes built, {nested['rows_per_epoch']} views a pass"
    except CacheError as e:
        built = f"its passes cannot be read ({e})"
    where = "" if str(record["location"]) in str(record["source"]) else f" ({record['location']})"
    print(f"unlabelled images: {record['num_images']} from {record['source']}{where} "
          f"(--unlabeled-fraction {record['fraction']:g}, {record['per_batch']} a batch); {built}")


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

