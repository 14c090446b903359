"""What unlabelled images cost a training step: a batch of labelled and unlabelled samples against a plain
labelled batch of the same size, with the teacher online and with its targets read from a cache.

One process, one student, one data pipeline (DeiT's augmentation with ``--deterministic-aug``, as
``cache_overhead.py``, on scikit-learn's bundled digits; the unlabelled images are every training digit, their labels
ignored). Each step is: next batch from the loader(s), the teacher's targets, forward, loss, backward,
AdamW. Modes, all at ``--batch-size B``:

* ``plain``:            B labelled images, the student alone (distillation type ``none``);
* ``online``:           B labelled images, hard distillation, the teacher run on the batch;
* ``cached``:           B labelled images, hard distillation, targets read from a cache;
* ``unlabeled_online``: B - u labelled then u unlabelled images (``--unlabeled-fraction``), the teacher run on
  all B, the class term on the labelled ones (the trainer's :class:`~timm_deit_distill.data.unlabeled.MixedLoader`
  composition and :class:`~timm_deit_distill.losses.DistillationLoss`'s mixed-batch loss);
* ``unlabeled_cached``: the same batch with both parts' targets read from caches (one per kind, each view by its
  identity), as the trainer's ``--distill-cache`` replays a cache built with unlabelled images.

Each cycle runs one step of every mode, in rotating order; figures are medians over cycles of each mode's step
time over the plain step's in the same cycle. Prints one line with the ratios side by side::

    online=X.XX unlabeled_online=Y.YY cached=Z.ZZ unlabeled_cached=W.WW  (over plain, wall clock)

Run: ``python benchmarks/unlabeled_step.py`` (DeiT-Ti/16 at 224px, a RegNetY-16GF teacher with random weights:
timing only; minutes on 2 CPU cores); ``--quick``: a 32px student and a ResNet-50 teacher, a smoke run;
``--clock cpu`` with ``OMP_NUM_THREADS=1`` on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import timm
import torch
from deit_views import deit_augment, epoch0_batches  # beside this script (run as python benchmarks/X.py)
from timm.loss import SoftTargetCrossEntropy

import timm_deit_distill  # noqa: F401  (registers the distilled variants)
from timm_deit_distill.cache import TeacherTargetCache, build_cache
from timm_deit_distill.data import DataSettings, LoaderSettings, ViewSettings, build_train_loader, open_source
from timm_deit_distill.data.digits import write_digits_imagefolder
from timm_deit_distill.data.unlabeled import open_unlabeled, unlabeled_seed
from timm_deit_distill.losses import DistillationLoss
from timm_deit_distill.teacher import DistillationTeacher


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _data(opts: argparse.Namespace, tmp: Path, student: Any) -> tuple[Any, Any, ViewSettings, int]:
    """The labelled digits, the unlabelled ones (every training digit, in a folder of its own) and the views."""
    labelled = write_digits_imagefolder(tmp / "digits", train_per_class=opts.per_class)
    every = write_digits_imagefolder(tmp / "every")  # same validation split; its training digits, unlabelled
    train_ds, _ = open_source(DataSettings(data_dir=str(labelled)), batch_size=opts.batch_size, seed=0)
    unlabeled_ds = open_unlabeled(str(every / "train"), None, "train", skip_bad_images=False, input_img_mode="RGB",
                                  batch_size=opts.batch_size, seed=0)
    num_classes = len(train_ds.reader.class_to_idx)
    data_config = {"input_size": (3, opts.img_size, opts.img_size), "mean": student.pretrained_cfg["mean"],
                   "std": student.pretrained_cfg["std"], "crop_pct": 0.875, "interpolation": "bicubic"}
    return train_ds, unlabeled_ds, ViewSettings.resolve(deit_augment(), data_config, num_classes), num_classes


def measure(opts: argparse.Namespace) -> dict[str, float]:
    clock = time.process_time if opts.clock == "cpu" else time.perf_counter
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="unlabeled_step."))
    probe = timm.create_model(opts.student, num_classes=10, img_size=opts.img_size)
    train_ds, unlabeled_ds, view, num_classes = _data(opts, tmp, probe)
    u = round(opts.unlabeled_fraction * opts.batch_size)
    settings = LoaderSettings(batch_size=opts.batch_size, validation_batch_size=None, workers=0, pin_mem=False)
    part = {"labelled": replace(settings, batch_size=opts.batch_size - u),
            "unlabelled": replace(settings, batch_size=u)}
    unlabeled_view = replace(view, augment=replace(view.augment, seed=unlabeled_seed(view.augment.seed)))
    teacher = DistillationTeacher.create(timm.create_model(opts.teacher, num_classes=num_classes),
                                         num_classes=num_classes, data_mean=view.mean, data_std=view.std,
                                         input_size=(3, opts.img_size, opts.img_size))
    build_cache(train_ds, view, settings, teacher, tmp / "cache", epochs=1, store="hard")
    build_cache(unlabeled_ds, unlabeled_view, part["unlabelled"], teacher, tmp / "cache-u", epochs=1, store="hard")
    cache, cache_u = TeacherTargetCache.open(tmp / "cache"), TeacherTargetCache.open(tmp / "cache-u")
    cache.check_training(view, train_ds, 1, distill_type="hard")
    cache_u.check_training(unlabeled_view, unlabeled_ds, 1, distill_type="hard")
    _log(f"student {opts.student} at {opts.img_size}px, batch {opts.batch_size} ({u} unlabelled); teacher "
         f"{opts.teacher} ({teacher.description['precision']}); {len(train_ds)} labelled, {len(unlabeled_ds)} "
         "unlabelled images")

    def plain_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, Callable[[], torch.Tensor]]]:
        for inputs, labels, views in epoch0_batches(build_train_loader(train_ds, view, settings)):
            yield inputs, labels, lambda views=views: cache.targets(0, views)

    def mixed_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, Callable[[], torch.Tensor]]]:
        lab = build_train_loader(train_ds, view, part["labelled"])
        unl = build_train_loader(unlabeled_ds, unlabeled_view, part["unlabelled"], unlabeled_per_epoch=len(lab))
        assert len(unlabeled_ds) // u >= len(lab), "the unlabelled batches of epoch 0 must come from pass 0"
        while True:
            for (x, y, v), (xu, _, vu) in zip(epoch0_batches(lab), epoch0_batches(unl), strict=False):
                yield torch.cat([x, xu]), y, lambda v=v, vu=vu: torch.cat([cache.targets(0, v), cache_u.targets(0, vu)])

    def runner(kind: str, batches: Iterator[Any], cached: bool) -> Callable[[], float]:
        torch.manual_seed(0)
        model = timm.create_model(opts.student, num_classes=num_classes, img_size=opts.img_size)
        model.set_distilled_training(kind != "none")
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        criterion = DistillationLoss(SoftTargetCrossEntropy(), None, kind, 0.5, 1.0)

        def step() -> float:
            t0 = clock()
            inputs, labels, from_cache = next(batches)
            targets = None if kind == "none" else (from_cache() if cached else teacher(inputs))
            loss = criterion.parts(model(inputs), labels, targets)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return clock() - t0

        return step

    steps = {"plain": runner("none", plain_batches(), False), "online": runner("hard", plain_batches(), False),
             "cached": runner("hard", plain_batches(), True),
             "unlabeled_online": runner("hard", mixed_batches(), False),
             "unlabeled_cached": runner("hard", mixed_batches(), True)}
    return _cycles(steps, opts.cycles)


def _cycles(steps: dict[str, Callable[[], float]], cycles: int) -> dict[str, float]:
    """Medians over cycles of each mode's step time over the plain step's in the same cycle (order rotating)."""
    names = list(steps)
    for name in names:  # warm-up: allocator, kernels, first loader pass
        steps[name]()
    ratios: dict[str, list[float]] = {name: [] for name in names if name != "plain"}
    plain: list[float] = []
    for cycle in range(cycles):
        order = names[cycle % len(names):] + names[:cycle % len(names)]
        t = {name: steps[name]() for name in order}
        plain.append(t["plain"])
        for name in ratios:
            ratios[name].append(t[name] / t["plain"])
        if (cycle + 1) % max(1, cycles // 4) == 0:
            _log(f"cycle {cycle + 1}/{cycles}: plain {statistics.median(plain):.3f}s/step")
    return {"plain_s": statistics.median(plain), **{n: statistics.median(r) for n, r in ratios.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default="deit_tiny_distilled_patch16_224")
    parser.add_argument("--teacher", default="regnety_160")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--unlabeled-fraction", type=float, default=0.5)
    parser.add_argument("--per-class", type=int, default=12, help="labelled training images per digit class")
    parser.add_argument("--cycles", type=int, default=12, help="timed cycles of one step per mode")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time steps by wall clock, or by this process's CPU time (for shared machines)")
    parser.add_argument("--quick", action="store_true", help="32px student and a small teacher: a smoke run")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.student, opts.teacher, opts.img_size = "deit_tiny_distilled_patch4_32", "resnet50", 32
    r = measure(opts)
    print(f"online={r['online']:.2f} unlabeled_online={r['unlabeled_online']:.2f} cached={r['cached']:.2f} "
          f"unlabeled_cached={r['unlabeled_cached']:.2f}  (over plain, {opts.clock} clock; plain step "
          f"{r['plain_s'] * 1e3:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
