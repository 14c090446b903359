"""How much a teacher slows a DeiT training step: timm's TokenDistillationTask vs this package's teacher.

In one process, interleaved (the order rotates every round) and with medians over several steps, it
times one training step (forward, loss, backward, AdamW step) of

* ``plain``: the student alone (cross-entropy on its fused logits);
* ``timm``:  timm's ``TokenDistillationTask`` (hard, ``task_loss_weight=0.5``) with the teacher module;
* ``ours``:  :class:`~timm_deit_distill.task.DeiTDistillationTask` (hard, ``alpha=0.5``) with the same
  teacher weights at default settings (precision and compilation ``auto``, channels_last for convnets,
  inference mode): its path is chosen as `deit-distill train` chooses it, by
  :meth:`~timm_deit_distill.teacher.DistillationTeacher.select_path` on real images (the digits, resized to
  the run's size) for a run of ``--run-steps`` teacher batches, compile warm-up counted against them.

Defaults: DeiT-Ti/16 distilled at 224px, batch 16, a RegNetY-16GF teacher (random weights: timing only).

``agreement`` is the fraction of real images (scikit-learn's bundled 1,797 handwritten digits) on which
the chosen path's argmax equals the plain fp32 teacher's, for a small RegNetY trained here on the digits
for a few epochs (the timing teacher has random weights, so its own agreement figures, in the table, say
little). Prints the candidate table (ms/batch, speed against eager fp32, agreement, compile warm-up) and
which path was chosen, then one line::

    overhead_timm=X.XX overhead_ours=Y.YY agreement=Z.ZZZ chosen=PATH

(each overhead is a distillation step's median time over the plain step's); details go to stderr.
Run: ``python benchmarks/teacher_overhead.py`` (several minutes on 2 CPU cores when a compiled path is
tried); ``--quick``: a RegNetY-200MF teacher at 112px, a smoke run (a few minutes on 2 cores, most of it compiling).
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.task import TokenDistillationTask

import timm_deit_distill  # noqa: F401  (registers the distilled variants)
from timm_deit_distill.data.digits import write_digits_imagefolder
from timm_deit_distill.task import DeiTDistillationTask
from timm_deit_distill.teacher import DistillationTeacher, PathMemory, TeacherPath


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss_fn().backward()
    optimizer.step()


def measure_overheads(args: argparse.Namespace, real_images: torch.Tensor) -> tuple[dict[str, float], Any]:
    torch.manual_seed(0)
    student = timm.create_model(args.student, pretrained=False,
                                **({"img_size": args.img_size} if args.img_size else {}))
    size = args.img_size or student.pretrained_cfg["input_size"][-1]
    teacher = timm.create_model(args.teacher, pretrained=False, num_classes=student.num_classes).eval()
    x = torch.randn(args.batch_size, 3, size, size)
    y = torch.randint(0, student.num_classes, (args.batch_size,))
    ce = nn.CrossEntropyLoss()

    plain_student = copy.deepcopy(student).train()
    timm_task = TokenDistillationTask(copy.deepcopy(student), teacher, criterion=nn.CrossEntropyLoss(),
                                      distill_type="hard", task_loss_weight=0.5, verbose=False).train()
    # Same weights for our teacher; a copy, because channels_last converts the module in place.
    ours_teacher = DistillationTeacher.create(copy.deepcopy(teacher), num_classes=student.num_classes,
                                              input_size=(3, size, size))
    # Chosen as `deit-distill train` chooses it: real images of the run's shape, the run's length.
    images = nn.functional.interpolate(real_images[: max(args.batch_size, args.agreement_images)], size=(size, size),
                                       mode="bilinear", align_corners=False)
    memory = PathMemory.default() if args.remember else PathMemory(None)
    choice = ours_teacher.select_path([(b,) for b in images.split(args.batch_size)], batch_size=args.batch_size,
                                      steps=args.run_steps, memory=memory,
                                      min_agreement=args.timing_min_agreement)
    print(f"teacher {args.teacher} at {size}px, batch {args.batch_size}, {choice.machine}; paths for "
          f"{args.run_steps:,} teacher batches ({choice.how} in {choice.seconds:.1f} s):\n{choice.table()}\n"
          f"chosen: {choice.summary()}", flush=True)
    ours_task = DeiTDistillationTask(copy.deepcopy(student), ours_teacher, nn.CrossEntropyLoss(),
                                     distillation_type="hard", alpha=0.5, verbose=False).train()
    _log(f"our teacher: {ours_teacher.description['precision']}, channels_last={ours_teacher.channels_last}")
    extra = {}
    for precision in args.also_precision:  # e.g. to see what forcing bf16 would cost on this CPU
        forced = DistillationTeacher.create(copy.deepcopy(teacher), num_classes=student.num_classes,
                                            input_size=(3, size, size), precision=precision)
        extra[f"ours_{precision}"] = DeiTDistillationTask(copy.deepcopy(student), forced, nn.CrossEntropyLoss(),
                                                          distillation_type="hard", alpha=0.5, verbose=False).train()

    def optim(module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(module.parameters(), lr=1e-4)

    steps = {
        "plain": (plain_student, optim(plain_student), lambda: ce(plain_student(x), y)),
        "timm": (timm_task, optim(timm_task.trainable_module), lambda: timm_task(x, y)["loss"]),
        "ours": (ours_task, optim(ours_task.trainable_module), lambda: ours_task(x, y)["loss"]),
    }
    for name, task in extra.items():
        steps[name] = (task, optim(task.trainable_module), lambda task=task: task(x, y)["loss"])
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for round_index in range(args.warmup + args.steps):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            model, optimizer, loss_fn = steps[name]
            start = time.perf_counter()
            _train_step(model, optimizer, loss_fn)
            elapsed = time.perf_counter() - start
            if round_index >= args.warmup:
                times[name].append(elapsed)
        if round_index >= args.warmup:
            _log(f"round {round_index - args.warmup + 1}/{args.steps}: "
                 + " ".join(f"{n}={times[n][-1]:.2f}s" for n in names))
    medians = {name: statistics.median(values) for name, values in times.items()}
    _log("median step seconds: " + " ".join(f"{n}={medians[n]:.3f}" for n in names))
    for name in extra:
        _log(f"overhead_{name}={medians[name] / medians['plain']:.2f}")
    return ({"overhead_timm": medians["timm"] / medians["plain"], "overhead_ours": medians["ours"] / medians["plain"]},
            choice)


def _digits_tensors(root: str, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from timm.data import ImageDataset, create_transform

    write_digits_imagefolder(root)
    transform = create_transform(size, is_training=False, crop_pct=1.0, interpolation="bicubic")
    splits = []
    for split in ("train", "validation"):
        dataset = ImageDataset(f"{root}/{split}", transform=transform)
        images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
        splits += [torch.stack(images), torch.tensor(labels)]
    return splits[0], splits[1], splits[2], splits[3]


def digits_teacher(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small teacher trained here on the digits; its images; and its plain fp32 argmax on them."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        x_train, y_train, x_val, y_val = _digits_tensors(f"{tmp}/digits", args.digits_size)
    model = timm.create_model(args.agreement_teacher, pretrained=False, num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    batches = torch.arange(len(x_train)).split(64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=args.digits_epochs * len(batches))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and far faster on a busy machine
    model.train()
    for _ in range(args.digits_epochs):
        for idx in torch.randperm(len(x_train)).split(64):
            _train_step(model, optimizer, lambda idx=idx: nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]))
            schedule.step()
    torch.set_num_threads(threads)
    model.eval()
    images = torch.cat([x_train, x_val])
    with torch.no_grad():  # the reference: plain fp32, as timm's task runs its teacher
        reference = torch.cat([model(chunk) for chunk in images.split(128)]).argmax(1)
        val_top1 = (reference[len(x_train):] == y_val).float().mean().item()
    _log(f"digits teacher {args.agreement_teacher}: val top-1 {val_top1:.3f} on {len(x_val)} images")
    return model, images, reference


def measure_agreement(model: nn.Module, images: torch.Tensor, reference: torch.Tensor, path: TeacherPath) -> float:
    """The fraction of ``images`` on which ``model`` run on our ``path`` has plain fp32's argmax."""
    teacher = DistillationTeacher.create(copy.deepcopy(model), num_classes=10, input_size=images.shape[1:])
    teacher.use_path(path)
    ours = torch.cat([teacher(chunk) for chunk in images.split(128)]).argmax(1)
    agreement = (ours == reference).float().mean().item()
    _log(f"digits teacher on {path} agrees with fp32 on {agreement:.4f} of {len(images)} images")
    return agreement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default="deit_tiny_distilled_patch16_224")
    parser.add_argument("--teacher", default="regnety_160", help="timing teacher (random weights)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=None, help="default: the student's")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds (medians over these)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--agreement-teacher", default="regnety_002")
    parser.add_argument("--digits-size", type=int, default=32)
    parser.add_argument("--digits-epochs", type=int, default=15)
    parser.add_argument("--run-steps", type=int, default=100_000,
                        help="teacher batches the run serves, against which a compile's warm-up is counted")
    parser.add_argument("--timing-min-agreement", type=float, default=0.95,
                        help="the agreement bar for the timing teacher, whose random weights give near-tied logits "
                             "that a real teacher does not have (train's default is 0.995); the chosen path's "
                             "agreement on a teacher trained on the digits is printed as agreement=")
    parser.add_argument("--agreement-images", type=int, default=256, help="real images the paths are checked on")
    parser.add_argument("--remember", action="store_true",
                        help="use and update the remembered teacher paths in the user's cache folder")
    parser.add_argument("--quick", action="store_true",
                        help="regnety_002 teacher at 112px, 3 timed rounds: a smoke run of a few minutes")
    parser.add_argument("--also-precision", nargs="*", default=[], choices=["fp32", "bf16", "fp16"],
                        help="also time our teacher forced to these precisions (reported on stderr)")
    args = parser.parse_args(argv)
    if args.quick:
        args.teacher, args.img_size, args.steps, args.digits_epochs = "regnety_002", 112, 3, 8
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    _log(f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
         f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    model, images, reference = digits_teacher(args)
    overheads, choice = measure_overheads(args, images)
    agreement = measure_agreement(model, images, reference, choice.path)
    if agreement < 0.995:
        print(f"warning: the chosen path agrees with fp32 on {agreement:.4f} of the digits, below train's default "
              "bar 0.995: with real weights `deit-distill train` would not choose it", flush=True)
    print(f"overhead_timm={overheads['overhead_timm']:.2f} overhead_ours={overheads['overhead_ours']:.2f} "
          f"agreement={agreement:.3f} chosen={str(choice.path).replace(' ', '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
