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
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

from .cache import CacheError, CacheStore, TeacherTargetCache, build_cache

__all__ = ["main", "resolve_data_config", "format_bytes"]

_logger = logging.getLogger("timm_deit_distill.cache")

USAGE = """usage: deit-distill cache build [training flags] --epochs N --store hard|topk:K|full|full:fp16 --out DIR
       deit-distill cache info DIR"""


def resolve_data_config(args: argparse.Namespace, num_classes: int | None = None) -> dict[str, Any]:
    """timm's resolved data config for the student ``args.model``, exactly as the trainer resolves it.

    The student is built on the meta device with the trainer's architecture kwargs (``--img-size``,
    ``--input-size``, ``--model-kwargs``): only its pretrained config is read, nothing is allocated.
    """
    import timm
    from timm.data import resolve_data_config as timm_resolve

    import timm_deit_distill  # noqa: F401  (registers the distilled variants)

    from .train import architecture_kwargs

    kwargs = architecture_kwargs(args, int(num_classes or getattr(args, "num_classes", None) or 1000))
    with torch.device("meta"):
        model = timm.create_model(args.model, pretrained=False, **kwargs)
    return dict(timm_resolve(vars(args), model=model))


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def _split_own_flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    own = argparse.ArgumentParser(prog="deit-distill cache build", add_help=False)
    own.add_argument("--store", default="hard")
    own.add_argument("--out", default=None)
    return own.parse_known_args(argv)


def _device(args: argparse.Namespace, local_rank: int) -> torch.device:
    if getattr(args, "device", None):
        device = torch.device(args.device)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        device = torch.device("cuda", local_rank)
    return device


def _build(argv: list[str]) -> int:
    from . import args as train_args
    from .data import build_datasets

    own, rest = _split_own_flags(argv)
    if "-h" in rest or "--help" in rest:
        print(USAGE)
        print("\nThe training flags are `deit-distill train`'s (see `deit-distill train --help`); in addition:\n"
              "  --store   hard (teacher argmax, exact for hard distillation), topk:K (K largest logits, fp16),\n"
              "            full (every logit, fp32, exact) or full:fp16; default hard\n"
              "  --out     the cache directory (rerun on it to resume or extend)\n"
              "  --epochs  epochs to cache (training may use up to this many)")
        return 0
    # The training flags through the trainer's own parser, named as this command: a bad flag prints
    # `usage: deit-distill cache build ...`, not the trainer's name (parse_args below builds its own).
    check = train_args.build_parser()
    check.prog = "deit-distill cache build"
    check.parse_args(rest)
    if not own.out:
        raise CacheError("no --out DIR given; fix: add --out DIR, the directory the cache is written to.")
    store = CacheStore.parse(own.store)
    args = train_args.parse_args(rest)
    args.deterministic_aug = True
    if not (args.distill_teacher or args.distill_teacher_path):
        raise CacheError("no teacher given; fix: add --distill-teacher NAME (e.g. regnety_160.deit_in1k) "
                         "and/or --distill-teacher-path FILE, as for `deit-distill train`.")
    if not args.data_dir:
        raise CacheError("no data given; fix: add --data-dir DIR (the training set's ImageFolder root).")

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(args, local_rank)
    barrier = None
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        barrier = dist.barrier

    train_ds, val_ds = build_datasets(args.data_dir, train_split=args.train_split, val_split=args.val_split,
                                      class_map=args.class_map, skip_bad_images=args.skip_bad_images)
    labels = [name for name, _ in sorted(train_ds.reader.class_to_idx.items(), key=lambda kv: kv[1])]
    num_classes = len(labels)
    data_config = resolve_data_config(args, num_classes)

    # The teacher exactly as `deit-distill train` builds it, so cached and online targets are the same numbers.
    from .preflight import check_model_name
    from .train import check_teacher, create_teacher

    if args.distill_teacher:
        check_model_name(args.distill_teacher, "--distill-teacher")
    teacher = create_teacher(args, num_classes, data_config, device, label_names=labels)
    check = None
    if not args.no_teacher_check:
        # Measured before a single target is written: a cache of a teacher near chance is noise on disk.
        # Every process checks the same seeded images, so all of them refuse or none does.
        check = check_teacher(teacher, args, val_ds, data_config).as_dict()

    def run_teacher(x: torch.Tensor) -> torch.Tensor:
        return teacher(x.to(device, non_blocking=True))

    if rank == 0:
        _logger.info("caching %d epochs of %d images, store %s, teacher %s, into %s", args.epochs, len(train_ds),
                     store.spec, args.distill_teacher or args.distill_teacher_path, own.out)
    manifest = build_cache(args, train_ds, data_config, run_teacher, own.out, epochs=args.epochs, store=store,
                           teacher_description=teacher.description, teacher_check=check, rank=rank,
                           world_size=world_size, barrier=barrier)
    if rank == 0:
        print(_summary(own.out, manifest))
    if world_size > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def _summary(directory: str, manifest: dict[str, Any]) -> str:
    per_view = manifest["bytes_per_view"]
    per_epoch = per_view * manifest["rows_per_epoch"]
    done = len(manifest["chunks"])
    on_disk = sum(c["bytes"] for c in manifest["chunks"])
    return (f"cache {directory}: store {manifest['store']}, {done}/{manifest['epochs']} epochs "
            f"({'complete' if manifest['complete'] else 'incomplete'}), {manifest['rows_per_epoch']} views per epoch, "
            f"{per_view} bytes per view, {format_bytes(per_epoch)} per epoch, {format_bytes(on_disk)} on disk")


def _info_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deit-distill cache info",
        description="Print what a teacher target cache holds: store, epochs built, views per epoch, size on disk, "
                    "the teacher and the augmentation settings its views were made with.")
    parser.add_argument("directory", metavar="DIR", help="the cache directory (the --out of `cache build`)")
    return parser


def _info(argv: list[str]) -> int:
    directory = _info_parser().parse_args(argv).directory  # -h: help, exit 0; a bad flag: usage, exit 2
    cache = TeacherTargetCache.open(directory)
    print(_summary(directory, cache.manifest))
    teacher = cache.teacher_description or {}
    views = cache.fingerprint["views"]
    print(f"teacher: {teacher.get('name')} ({teacher.get('precision')}), sha256 {str(teacher.get('sha256'))[:12]}")
    print("views: " + ", ".join(f"{k}={v}" for k, v in views.items()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`deit-distill cache build|info ...`; returns the exit code (2 with a message for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not argv:
        print(f"{USAGE}\ndeit-distill cache: error: a command is required: build or info", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "build":
            return _build(rest)
        if command == "info":
            return _info(rest)
    except ValueError as e:  # DataError, CacheError, UsageError, TeacherError: messages name the fix
        print(f"deit-distill cache {command}: error: {e}", file=sys.stderr)
        return 2
    print(f"deit-distill cache: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
