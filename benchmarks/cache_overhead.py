"""What a teacher target cache saves: plain training vs online distillation vs cached distillation.

One process, one student, one data pipeline (DeiT's augmentation with ``--deterministic-aug``:
RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, Mixup 0.8 + CutMix 1.0, repeated augmentation
x3, on scikit-learn's bundled digits). It first builds a cache for the views it will time (one
teacher pass), then times training steps (next batch from the loader, forward, loss, backward, AdamW)
of

* ``plain``:  the student alone (distillation type ``none``);
* ``online``: hard distillation with the teacher run on every batch (DistillationTeacher, precision
  ``auto``, as `deit-distill train` runs it);
* ``cached``: hard distillation with targets read from the cache (no teacher in memory).

Each cycle runs one step of every mode, in rotating order; the figures are medians over cycles of
each mode's step time divided by the plain step's in the same cycle (so slow drifts in machine load
cancel). Prints::

    cached_over_plain=X.XX online_over_plain=Y.YY

(the goal is ``cached_over_plain <= 1.05``), then steps per second and the
cache size per view and per epoch, here and extrapolated to ImageNet-1k. Details go to stderr.
Defaults: DeiT-Ti/16 distilled at 224px, batch 16, a RegNetY-16GF teacher with random weights (timing
only). Run: ``python benchmarks/cache_overhead.py`` (a few minutes on 2 CPU cores); ``--quick`` for a
32px smoke run; ``--clock cpu`` times by this process's CPU time, which load from other processes on
a shared machine disturbs far less than wall time (use it with ``OMP_NUM_THREADS=1``: idle OpenMP
threads spin and burn CPU time while descheduled).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from deit_views import deit_augment, epoch0_batches  # beside this script (run as python benchmarks/X.py)
from timm.loss import SoftTargetCrossEntropy

import timm_deit_distill  # noqa: F401  (registers the distilled variants)
from timm_deit_distill.cache import TeacherTargetCache, build_cache
from timm_deit_distill.commands.cache import format_bytes
from timm_deit_distill.data import (
    DataSettings,
    LoaderSettings,
    ViewSettings,
    build_train_loader,
    open_source,
)
from timm_deit_distill.data.digits import write_digits_imagefolder
from timm_deit_distill.losses import DistillationLoss
from timm_deit_distill.teacher import DistillationTeacher

IMAGENET_TRAIN_IMAGES = 1_281_167


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(opts: argparse.Namespace) -> dict[str, Any]:
    # cpu: this process's CPU seconds, which other processes' load disturbs far less than wall time
    clock = time.process_time if opts.clock == "cpu" else time.perf_counter
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="cache_overhead."))
    root = write_digits_imagefolder(tmp / "digits", train_per_class=opts.per_class)
    train_ds, _ = open_source(DataSettings(data_dir=str(root)), batch_size=opts.batch_size, seed=0)
    num_classes = len(train_ds.reader.class_to_idx)
    student = timm.create_model(opts.student, num_classes=num_classes, img_size=opts.img_size)
    data_config = {"input_size": (3, opts.img_size, opts.img_size), "mean": student.pretrained_cfg["mean"],
                   "std": student.pretrained_cfg["std"], "crop_pct": 0.875, "interpolation": "bicubic"}
    view = ViewSettings.resolve(deit_augment(), data_config, num_classes)
    loader = LoaderSettings(batch_size=opts.batch_size, validation_batch_size=None, workers=opts.workers,
                            pin_mem=False)
    raw_teacher = timm.create_model(opts.teacher, pretrained=False, num_classes=num_classes)
    teacher = DistillationTeacher.create(raw_teacher, num_classes=num_classes, data_mean=data_config["mean"],
                                         data_std=data_config["std"], input_size=data_config["input_size"])
    _log(f"student {opts.student} at {opts.img_size}px, batch {opts.batch_size}; teacher {opts.teacher} "
         f"({teacher.description['precision']}, channels_last={teacher.channels_last}); "
         f"{len(train_ds)} training images, workers={opts.workers}")

    started = time.perf_counter()
    manifest = build_cache(train_ds, view, loader, teacher, tmp / "cache", epochs=1, store=opts.store)
    build_s = time.perf_counter() - started
    cache = TeacherTargetCache.open(tmp / "cache")
    cache.check_training(view, train_ds, 1, distill_type="hard")
    _log(f"cache built in {build_s:.1f}s ({manifest['rows_per_epoch']} views)")

    def runner(kind: str, targets: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]) -> Callable[[], float]:
        torch.manual_seed(0)
        model = timm.create_model(opts.student, num_classes=num_classes, img_size=opts.img_size)
        model.set_distilled_training(kind != "none")
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        criterion = DistillationLoss(SoftTargetCrossEntropy(), None, kind, 0.5, 1.0)
        batches = epoch0_batches(build_train_loader(train_ds, view, loader))

        def step() -> float:
            t0 = clock()
            inputs, labels, views = next(batches)
            teacher_out = targets(inputs, views)
            loss = criterion.from_teacher_output(model(inputs), labels, teacher_out)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return clock() - t0

        return step

    steps = {
        "plain": runner("none", lambda x, v: None),
        "online": runner("hard", lambda x, v: teacher(x)),
        "cached": runner("hard", lambda x, v: cache.targets(0, v)),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for name in names:  # warm-up: allocator, kernels, first loader pass
        steps[name]()
    # One step of each mode per cycle, order rotating: load from other processes drifts slowly, so
    # ratios taken within a cycle cancel it and their median is the figure reported.
    ratios: dict[str, list[float]] = {"cached": [], "online": []}
    for cycle in range(opts.cycles):
        order = names[cycle % len(names):] + names[:cycle % len(names)]
        step_time = {name: steps[name]() for name in order}
        for name, t in step_time.items():
            times[name].append(t)
        for name in ratios:
            ratios[name].append(step_time[name] / step_time["plain"])
        if (cycle + 1) % max(1, opts.cycles // 4) == 0:
            _log(f"cycle {cycle + 1}/{opts.cycles}: " + ", ".join(
                f"{n} {statistics.median(t):.3f}s/step" for n, t in times.items()))
    median = {name: statistics.median(t) for name, t in times.items()}
    # The cached step's only extra work, timed alone: reading one batch of targets.
    views = torch.arange(min(opts.batch_size, manifest["rows_per_epoch"]))
    lookups = []
    for _ in range(200):
        t0 = time.perf_counter()
        cache.targets(0, views)
        lookups.append(time.perf_counter() - t0)
    median["lookup"] = statistics.median(lookups)
    median_ratio = {name: statistics.median(r) for name, r in ratios.items()}
    return {"median": median, "ratio": median_ratio, "manifest": manifest, "build_s": build_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default="deit_tiny_distilled_patch16_224")
    parser.add_argument("--teacher", default="regnety_160")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--per-class", type=int, default=12, help="training images per digit class")
    parser.add_argument("--store", default="hard", help="hard, topk:K, full or full:fp16")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--cycles", type=int, default=12, help="timed cycles of one step per mode")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time steps by wall clock, or by this process's CPU time (for shared machines)")
    parser.add_argument("--quick", action="store_true", help="32px student and a small teacher: a smoke run")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.student, opts.teacher, opts.img_size = "deit_tiny_distilled_patch4_32", "resnet50", 32
    result = measure(opts)
    m = result["median"]
    manifest = result["manifest"]
    per_view = manifest["bytes_per_view"]
    ratio = result["ratio"]
    print(f"cached_over_plain={ratio['cached']:.2f} online_over_plain={ratio['online']:.2f}  ({opts.clock} clock)")
    print(f"steps_per_s plain={1 / m['plain']:.2f} online={1 / m['online']:.2f} cached={1 / m['cached']:.2f}")
    print(f"cache store={manifest['store']} bytes_per_view={per_view} "
          f"per_epoch_here={format_bytes(per_view * manifest['rows_per_epoch'])} "
          f"per_epoch_imagenet1k={format_bytes(per_view * IMAGENET_TRAIN_IMAGES)} "
          f"imagenet1k_300_epochs={format_bytes(per_view * IMAGENET_TRAIN_IMAGES * 300)}")
    print(f"cache_lookup_ms_per_batch={m['lookup'] * 1e3:.3f} ({100 * m['lookup'] / m['plain']:.3f}% of a plain step)")
    _log(f"cache build: {result['build_s']:.1f}s for {manifest['rows_per_epoch']} views (one teacher pass)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
