"""How much a teacher slows a DeiT training step: timm's TokenDistillationTask vs this package's teacher.

In one process, interleaved (the order rotates every round) and with medians over several steps, it
times one training step (forward, loss, backward, AdamW step) of

* ``plain``: the student alone (cross-entropy on its fused logits);
* ``timm``:  timm's ``TokenDistillationTask`` (hard, ``task_loss_weight=0.5``) with the teacher module;
* ``ours``:  :class:`~timm_deit_distill.task.DeiTDistillationTask` (hard, ``alpha=0.5``) with the same
  teacher weights at default settings (precision ``auto``, channels_last for convnets, inference mode).

Defaults: DeiT-Ti/16 distilled at 224px, batch 16, a RegNetY-16GF teacher (random weights: timing only).

``agreement`` is the fraction of real images (scikit-learn's bundled 1,797 handwritten digits) on which
our default teacher path's argmax equals the plain fp32 teacher's, for a small RegNetY trained here on
the digits for a few epochs. Prints one line::

    overhead_timm=X.XX overhead_ours=Y.YY agreement=Z.ZZZ

(each overhead is a distillation step's median time over the plain step's); details go to stderr.
Run: ``python benchmarks/teacher_overhead.py`` (about 2 minutes on 2 idle CPU cores).
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

import timm
import torch
import torch.nn as nn
from timm.task import TokenDistillationTask

import timm_deit_distill  # noqa: F401  (registers the distilled variants)
from timm_deit_distill.data.digits import write_digits_imagefolder
from timm_deit_distill.task import DeiTDistillationTask
from timm_deit_distill.teacher import DistillationTeacher


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss_fn().backward()
    optimizer.step()


def measure_overheads(args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    student = timm.create_model(args.student, pretrained=False)
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
    return {"overhead_timm": medians["timm"] / medians["plain"], "overhead_ours": medians["ours"] / medians["plain"]}


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


def measure_agreement(args: argparse.Namespace) -> float:
    """Train a small teacher on the digits, then compare our default path's argmax to fp32's."""
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
    teacher = DistillationTeacher.create(copy.deepcopy(model), num_classes=10, input_size=images.shape[1:])
    ours = torch.cat([teacher(chunk) for chunk in images.split(128)]).argmax(1)
    agreement = (ours == reference).float().mean().item()
    _log(f"digits teacher {args.agreement_teacher}: val top-1 {val_top1:.3f}; our path "
         f"({teacher.description['precision']}) agrees with fp32 on {agreement:.4f} of {len(images)} images")
    if teacher.compute_dtype != torch.bfloat16:  # show what bf16 would give, for CPUs where auto is fp32
        bf16 = DistillationTeacher.create(copy.deepcopy(model), num_classes=10, precision="bf16")
        forced = (torch.cat([bf16(chunk) for chunk in images.split(128)]).argmax(1) == reference).float().mean()
        _log(f"forced bf16 path agrees with fp32 on {forced.item():.4f} of the images")
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
    parser.add_argument("--also-precision", nargs="*", default=[], choices=["fp32", "bf16", "fp16"],
                        help="also time our teacher forced to these precisions (reported on stderr)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    _log(f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
         f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    agreement = measure_agreement(args)
    overheads = measure_overheads(args)
    print(f"overhead_timm={overheads['overhead_timm']:.2f} overhead_ours={overheads['overhead_ours']:.2f} "
          f"agreement={agreement:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
