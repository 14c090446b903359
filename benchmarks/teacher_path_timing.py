"""How to time a teacher's candidate paths: the package's interleaved loop against ``torch.utils.benchmark.Timer``.

:func:`timm_deit_distill.teacher.paths.measure_paths` times eager fp32 and bf16 in rounds: each round runs
every candidate once on the same real batch, in an order that rotates, and keeps the medians (the argmax
agreement is counted on the same batches). This compares it, on one teacher and the same batches, with

* ``timer-rounds``: the same rounds, each call timed by ``Timer(...).timeit(1)`` (Timer always runs
  ``max(number // 100, 2)`` warm-up calls before the timed one: 3 forward passes per timed sample);
* ``timer-autorange``: Timer's own way, ``blocked_autorange(min_run_time=budget / 2)`` for each candidate in
  turn (not interleaved: a change of load between the two blocks lands on one candidate).

Every method gets the same wall budget per repetition, the repetitions rotate through the methods, and
``Timer`` runs with this process's thread count (its default is one thread). For each method it prints the
timed samples per candidate, forward passes per sample, wall seconds, and the bf16 / fp32 speed ratio
(median, min-max over the repetitions) with how often bf16 would be chosen (more than
:data:`~timm_deit_distill.teacher.paths.NOISE_MARGIN` cheaper). Agreement is not compared: the methods
differ only in timing.

Run: ``python benchmarks/teacher_path_timing.py`` (about 2 minutes on 2 CPU cores);
``--model resnet50 --img-size 112`` for a larger teacher.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch
from torch.utils.benchmark import Timer

from timm_deit_distill.teacher import DistillationTeacher, TeacherPath
from timm_deit_distill.teacher import paths as P

FP32, BF16 = TeacherPath("fp32"), TeacherPath("bf16")
Run = Callable[[torch.Tensor], torch.Tensor]


def _loop(runners: dict[TeacherPath, Run], batches: list[torch.Tensor], budget_s: float) -> dict[str, float]:
    stream = iter([(x, list(range(i * len(x), (i + 1) * len(x)))) for i, x in enumerate(batches * 100)])
    tallies = P.measure_paths(runners, stream, budget_s=budget_s)
    ms = {p: 1000 * statistics.median(t.times) for p, t in tallies.items()}
    return {"ratio": ms[FP32] / ms[BF16], "samples": len(tallies[FP32].times), "calls": 1.0}


def _timer_rounds(runners: dict[TeacherPath, Run], batches: list[torch.Tensor], budget_s: float) -> dict[str, float]:
    times: dict[TeacherPath, list[float]] = {p: [] for p in runners}
    order = list(runners)
    started = time.perf_counter()
    for index in range(P.MAX_ROUNDS):
        if index >= P.MIN_ROUNDS and time.perf_counter() - started > budget_s:
            break
        x = batches[index % len(batches)]
        shift = index % len(order)
        for path in order[shift:] + order[:shift]:
            box: list[torch.Tensor] = []
            timer = Timer("box.append(run(x))", globals={"run": runners[path], "x": x, "box": box},
                          num_threads=torch.get_num_threads())
            with torch.inference_mode():
                times[path].append(timer.timeit(1).median)
    ms = {p: 1000 * statistics.median(t) for p, t in times.items()}
    return {"ratio": ms[FP32] / ms[BF16], "samples": len(times[FP32]), "calls": 3.0}


def _timer_autorange(runners: dict[TeacherPath, Run], batches: list[torch.Tensor], budget_s: float,
                     ) -> dict[str, float]:
    ms, samples = {}, 0
    for path, run in runners.items():
        timer = Timer("run(x)", globals={"run": run, "x": batches[0]}, num_threads=torch.get_num_threads())
        with torch.inference_mode():
            measured = timer.blocked_autorange(min_run_time=budget_s / len(runners))
        ms[path] = 1000 * measured.median
        samples = measured.number_per_run * len(measured.raw_times)
    return {"ratio": ms[FP32] / ms[BF16], "samples": samples, "calls": 1.0}


METHODS = {"loop": _loop, "timer-rounds": _timer_rounds, "timer-autorange": _timer_autorange}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--budget", type=float, default=P.MEASURE_BUDGET_S, help="wall seconds per measurement")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=10)
    teacher = DistillationTeacher.create(model, num_classes=10, input_size=(3, args.img_size, args.img_size),
                                         precision="fp32", compile="no")
    batches = [teacher.prepare_input(torch.randn(args.batch_size, 3, args.img_size, args.img_size))
               for _ in range(4)]
    runners = {FP32: teacher._runner(FP32), BF16: teacher._runner(BF16)}
    with torch.inference_mode():
        for run in runners.values():
            run(batches[0])
    results: dict[str, list[dict[str, float]]] = {name: [] for name in METHODS}
    names = list(METHODS)
    for repeat in range(args.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            row = METHODS[name](runners, batches, args.budget)
            row["wall"] = time.perf_counter() - start
            results[name].append(row)
    bar = 1 / (1 - P.NOISE_MARGIN)
    print(f"{args.model} at {args.img_size}px, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats of a {args.budget:g} s budget each")
    print(f"  {'method':<16} {'samples':>8} {'calls/sample':>13} {'wall s':>7} {'bf16/fp32 speed':>16} "
          f"{'min-max':>12} {'bf16 chosen':>12}")
    for name, rows in results.items():
        ratios = [r["ratio"] for r in rows]
        chosen = sum(r > bar for r in ratios)
        print(f"  {name:<16} {statistics.median(r['samples'] for r in rows):8.0f} {rows[0]['calls']:13.0f} "
              f"{statistics.median(r['wall'] for r in rows):7.1f} {statistics.median(ratios):15.2f}x "
              f"{min(ratios):5.2f}-{max(ratios):<5.2f} {chosen:>6}/{len(rows)}")


if __name__ == "__main__":
    main()
