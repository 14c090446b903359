"""How close `deit-distill cache build` comes to the teacher's pure inference throughput on this machine.

One process. The teacher (random weights: timing only) runs on the path `cache build` would choose for it
(precision and compilation measured on the build's own batches, see ``DistillationTeacher.select_path``);
then

* ``inference``: the teacher alone on one prepared batch of the build's shape, over and over (images/s,
  median of ``--rounds`` timed calls): the most a build could reach;
* ``build``: :func:`timm_deit_distill.cache.build_cache` over ``--epochs`` epochs of DeiT's augmentation under
  ``--deterministic-aug`` (RandAugment, random erasing, Mixup/CutMix, repeated augmentation x3) on
  scikit-learn's bundled digits, data loading and target encoding included (views/s).

Prints one line::

    build_over_inference=R.RR build_images_per_s=B inference_images_per_s=I path=...

(the goal is ``R >= 0.9``); details go to stderr. The build's views do not depend on its batch size (Mixup and
CutMix mix inside fixed groups of views), so ``--batch-size`` can be raised for throughput without changing a
target. Run: ``python benchmarks/cache_build_throughput.py`` (about 2 minutes on 2 CPU cores);
``--quick`` for a 32px smoke run with a small teacher. The build's data loading (``--workers``) shares the
machine's cores with the teacher: on 2 cores that is what the ratio mostly measures.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
from deit_views import deit_augment  # beside this script (run as python benchmarks/X.py)

import timm_deit_distill  # noqa: F401  (registers the distilled variants)
from timm_deit_distill.cache import build_cache, rows_per_epoch
from timm_deit_distill.data import (
    DataSettings,
    LoaderSettings,
    ViewSettings,
    build_check_loader,
    open_source,
)
from timm_deit_distill.data.digits import write_digits_imagefolder
from timm_deit_distill.teacher import DistillationTeacher, PathMemory


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(opts: argparse.Namespace) -> dict[str, float | str]:
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="cache_build_throughput."))
    root = write_digits_imagefolder(tmp / "digits", train_per_class=opts.per_class)
    train_ds, val_ds = open_source(DataSettings(data_dir=str(root)), batch_size=opts.batch_size, seed=0)
    num_classes = len(train_ds.reader.class_to_idx)
    size = opts.img_size
    data_config = {"input_size": (3, size, size), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                   "crop_pct": 0.875, "interpolation": "bicubic"}
    view = ViewSettings.resolve(deit_augment(), data_config, num_classes)
    loader = LoaderSettings(batch_size=opts.batch_size, validation_batch_size=None, workers=opts.workers,
                            pin_mem=False)
    teacher = DistillationTeacher.create(timm.create_model(opts.teacher, pretrained=False, num_classes=num_classes),
                                         num_classes=num_classes, data_mean=data_config["mean"],
                                         data_std=data_config["std"], input_size=data_config["input_size"],
                                         precision=opts.teacher_precision, compile=opts.teacher_compile)
    rows = rows_per_epoch(len(train_ds), view.augment.mix_group_size)
    # As `cache build` does: the path measured on real images for the build's batch shape, over the length of a
    # real build (--choose-for-steps; this benchmark's few views would not repay measuring at all).
    steps = opts.choose_for_steps
    check = build_check_loader(val_ds, data_config, max_images=256, batch_size=opts.batch_size)
    choice = teacher.select_path(check, batch_size=opts.batch_size, steps=steps,
                                 memory=PathMemory.default() if opts.remember else PathMemory(None))
    _log(f"teacher {opts.teacher} at {size}px, batch {opts.batch_size}, {rows} views/epoch x {opts.epochs} "
         f"epoch(s), workers={opts.workers}; path {choice.summary()}\n{choice.table()}")

    x = teacher.prepare_input(torch.randn(opts.batch_size, 3, size, size))
    run = teacher._runner(teacher.path)  # the chosen path, input already prepared: the teacher's own cost only
    times = []
    with torch.inference_mode():
        for i in range(opts.rounds + 2):
            start = time.perf_counter()
            run(x)
            if i >= 2:  # the first calls pay one-time set-up (a compiled path is already warm from select_path)
                times.append(time.perf_counter() - start)
    inference = opts.batch_size / statistics.median(times)

    started = time.perf_counter()
    manifest = build_cache(train_ds, view, loader, teacher, tmp / "cache", epochs=opts.epochs, store=opts.store)
    build_s = time.perf_counter() - started
    build = manifest["rows_per_epoch"] * opts.epochs / build_s
    _log(f"build: {manifest['rows_per_epoch'] * opts.epochs} views in {build_s:.1f} s; inference: median "
         f"{1000 * statistics.median(times):.1f} ms per batch of {opts.batch_size}")
    return {"ratio": build / inference, "build": build, "inference": inference, "path": str(teacher.path)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="regnety_160")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32, help="a multiple of the mix group size (2)")
    parser.add_argument("--per-class", type=int, default=8, help="training images per digit class")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--store", default="hard", help="hard, topk:K, full or full:fp16")
    parser.add_argument("--workers", type=int, default=1, help="data loader processes beside the teacher")
    parser.add_argument("--rounds", type=int, default=5, help="timed inference calls (median)")
    parser.add_argument("--teacher-precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--teacher-compile", default="auto", choices=("auto", "yes", "no"))
    parser.add_argument("--choose-for-steps", type=int, default=40_000,
                        help="teacher batches the path is chosen for (default: one ImageNet-1k epoch at batch 32)")
    parser.add_argument("--remember", action="store_true",
                        help="use and update the remembered teacher paths in the user's cache folder")
    parser.add_argument("--quick", action="store_true", help="32px, a small teacher: a smoke run")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.teacher, opts.img_size, opts.per_class = "resnet18", 32, 20
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    _log(f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
         f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    result = measure(opts)
    print(f"build_over_inference={result['ratio']:.2f} build_images_per_s={result['build']:.1f} "
          f"inference_images_per_s={result['inference']:.1f} path={result['path'].replace(' ', '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
