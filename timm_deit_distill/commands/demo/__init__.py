"""`deit-distill demo`: DeiT's Table 3 and Table 4 (disagreement), on a laptop CPU.

On scikit-learn's bundled handwritten digits (real data, no download) with scarce labels, a timm
convnet teacher is trained, then the paper's students with the same budget, for several seeds: a DeiT-Ti-sized
vision transformer without the distillation token trained with no, usual (soft) and hard distillation, and the
same transformer with the token (DeiT⚗) trained with hard distillation (read from its class head, its
distillation head and both) and with soft distillation. Every run is a ``deit-distill train`` run
(``timm_deit_distill.train``, the flags as keywords) measured by ``deit-distill eval``
(``timm_deit_distill.evaluate``); the hard-distilled DeiT⚗'s class and distillation tokens are compared as in the
paper's section 4 (``analysis.token_cosine``), and every pair of models by how often they disagree
(``analysis.disagreement_table``).

Writes into ``--out``::

    digits/                  the dataset as an ImageFolder (fixed stratified split)
    runs/<regime>/<run>/     one trainer run each: checkpoints, summary.csv, args.yaml, eval.json
    results.json             teacher and per-student top-1 per read-out, paired differences, agreement, token
                             cosines, the disagreement table (means, stds, per seed)
    results.md               Table 3 and Table 4 of the paper, as this demo measured them
    curves.png               every student's validation accuracy and training loss per epoch
    best_student/            the best student as a Hub-ready folder (safetensors, config.json, card)

With ``--unlabeled`` it measures unlabelled images instead (:mod:`.unlabeled`): ``results_unlabeled.json`` and
``results_unlabeled.md``, the teacher and Table 3's runs reused.

Finished runs are reused when the demo is run again with the same settings and an interrupted run
resumes from its last checkpoint (saved at every evaluation), so a kill loses at most ``val_interval``
epochs. Runs train side by side in worker processes of one CPU thread each (``--jobs``): a 5M-parameter
model on 12x12 images keeps one core busy far better than it splits across two.

The default regime (docs/demo.md) is the paper's setting scaled to a CPU budget of 10 minutes on 2 cores,
venv included: scarce labels (20 per class), a convnet teacher that is clearly stronger and trained with the
students' augmentation, and a stable recipe (warm-up, clipping, label smoothing, AdamW at 1e-3 for batch 32).
Whatever the table shows is reported; docs/demo.md gives the measurements and their reading.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ...analysis import disagreement_table
from ...errors import DeitDistillError, DemoError, UsageError
from ...stops import run_stoppable
from ..common import ArgumentParser
from .regime import (
    DEFAULT_REGIME,
    MODES,
    PLAIN_STUDENT,
    PLAIN_STUDENT_KWARGS,
    QUICK_REGIME,
    STUDENT,
    STUDENTS,
    TEACHER,
    Regime,
    student_options,
    teacher_options,
)
from .report import (
    DISAGREEMENT_MODELS,
    TOKEN_COSINE_STUDENT,
    aggregate,
    disagreement_models,
    fill_agreement,
    mean_std,
    paired_differences,
    plot_students,
    results_table,
)
from .runner import Job, Progress, duration, run_jobs, run_training

__all__ = ["Regime", "DEFAULT_REGIME", "QUICK_REGIME", "MODES", "STUDENTS", "STUDENT", "PLAIN_STUDENT", "TEACHER", "DemoError", "main",
           "build_parser", "run_demo", "run_training", "teacher_options", "student_options", "aggregate",
           "paired_differences", "results_table"]

_logger = logging.getLogger("timm_deit_distill.demo")


def _default_jobs() -> int:
    # Small models use one core far better than two: two runs side by side beat one run on two threads.
    return max(1, min(4, os.cpu_count() or 1))


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="deit-distill demo",
        description="Distil DeiT-Ti students from a convnet teacher on scikit-learn's bundled digits as in DeiT's "
                    "Table 3 (no, usual and hard distillation without the distillation token; DeiT⚗ hard read from "
                    "each head, DeiT⚗ soft) and report it with the token similarity and the disagreement table.")
    p.add_argument("--out", default="demo_output", metavar="DIR",
                   help="output folder; finished runs in it are reused (default: demo_output)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                   help=f"student seeds (default: {' '.join(map(str, DEFAULT_REGIME.seeds))}; --quick: "
                        f"{' '.join(map(str, QUICK_REGIME.seeds))})")
    p.add_argument("--quick", action="store_true",
                   help="a sub-minute smoke run (tiny data, 2 epochs, one seed): checks the pipeline, not the science")
    p.add_argument("--jobs", type=int, default=_default_jobs(), metavar="N",
                   help="runs trained at once, each in its own process (default: the CPU count, at most 4)")
    p.add_argument("--unlabeled", action="store_true",
                   help="instead of Table 3: the same labels plus the other training digits as unlabelled images "
                        "(no distillation, DeiT⚗ hard and soft, a single-head student with pseudo-labels), into "
                        "results_unlabeled.json/.md; the teacher and Table 3's runs in --out are reused")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help=f"student epochs (default {DEFAULT_REGIME.epochs}); changing it changes the regime")
    return p


def _regime_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Regime:
    regime = QUICK_REGIME if args.quick else DEFAULT_REGIME
    if args.seeds is not None:
        if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
            parser.error(f"--seeds {' '.join(map(str, args.seeds))}: give distinct non-negative integers.")
        regime = replace(regime, seeds=tuple(args.seeds))
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs} must be at least 1.")
    if args.epochs is not None:
        if args.epochs < 1:
            parser.error(f"--epochs {args.epochs} must be at least 1.")
        if args.epochs != regime.epochs:
            regime = replace(regime, name=f"{regime.name}-{args.epochs}ep", epochs=args.epochs)
    return regime


def check_can_run(out: Path) -> None:
    """Refuse, before anything is written, a demo that cannot run: scikit-learn (the ``[demo]`` extra, whose bundled
    digits are the demo's data) not installed, or an ``--out`` that cannot be a folder."""
    from ...atomic import unwritable_reason

    try:
        import sklearn.datasets  # noqa: F401
        import sklearn.model_selection  # noqa: F401
    except ImportError as e:
        raise UsageError(f"the demo needs scikit-learn (its bundled digits are the demo's data), which cannot be "
                         f"imported here ({e}); fix: pip install 'timm-deit-distill[demo]'.") from None
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; fix: give the folder the demo writes into (created "
                         "if missing; a folder of an earlier demo is reused).")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out {out} cannot be created: {parent} is a file, not a folder; fix: give another --out.")
    reason = unwritable_reason(parent)
    if reason is not None:
        raise UsageError(f"--out {out}: no file can be written in {parent} ({reason}); fix: give another --out.")


def run_demo(regime: Regime, out: Path, *, workers: int = 1) -> dict[str, Any]:
    """Train and evaluate everything, write the reports; returns the results dict (also results.json)."""

    from ...atomic import atomic_write_text
    from ...data.digits import write_digits_imagefolder
    from ...hub import save_pretrained

    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / f"digits-{regime.train_per_class}-per-class"
    write_digits_imagefolder(data_dir, val_fraction=regime.val_fraction, train_per_class=regime.train_per_class,
                             seed=regime.split_seed)
    train_images = sum(1 for _ in (data_dir / "train").rglob("*.png"))
    val_images = sum(1 for _ in (data_dir / "validation").rglob("*.png"))
    runs_dir = out / "runs" / regime.name
    progress = Progress(1 + len(MODES) * len(regime.seeds))
    _logger.info("deit-distill demo: teacher %s, then DeiT's Table 3 students (%s; with the distillation token: %s, "
                 "without: %s) x seeds %s; %d training / %d validation digits at %dpx (%d patches).", TEACHER,
                 ", ".join(k.label for k in STUDENTS), STUDENT, PLAIN_STUDENT, list(regime.seeds), train_images,
                 val_images, regime.img_size, (regime.img_size // 4) ** 2)

    teacher_job = Job(regime, data_dir, runs_dir)
    jobs = [teacher_job, *(Job(regime, data_dir, runs_dir, mode, seed) for seed in regime.seeds for mode in MODES)]
    records = run_jobs(jobs, min(workers, len(jobs)), progress)
    teacher_eval = records[0]
    per_seed: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    run_dirs: dict[str, list[Path]] = {m: [] for m in MODES}
    for job, record in zip(jobs[1:], records[1:], strict=True):
        per_seed[job.mode].append(record)
        run_dirs[job.mode].append(job.run_dir)
    fill_agreement(teacher_eval["predictions"], per_seed)
    disagreement = {"models": [key for key, _, _ in DISAGREEMENT_MODELS],
                    "table": disagreement_table(disagreement_models(teacher_eval["predictions"], per_seed))}
    for rows in per_seed.values():  # the predictions live on in the disagreement table, not in results.json
        for row in rows:
            row.pop("predictions")
    cosines = [r["token_cosine"] for r in per_seed[TOKEN_COSINE_STUDENT]]

    students = aggregate(per_seed)
    best_mode, best = max(((m, r) for m in MODES for r in per_seed[m]), key=lambda mr: mr[1]["top1_fused"])
    best_dir = runs_dir / f"{best_mode}-seed{best['seed']}"
    # the demo owns best_student/: a rerun exports the (possibly other) best student over the earlier one
    hub_dir = save_pretrained(best_dir / "last.pth.tar", out / "best_student", use_ema=regime.ema, overwrite=True)

    token = None
    if cosines:
        token = {"student": TOKEN_COSINE_STUDENT}
        for key in ("input", "output"):
            token[key], token[f"{key}_std"] = mean_std([c[key] for c in cosines])
        token["layers"] = [statistics.fmean(c["layers"][i] for c in cosines) for i in range(len(cosines[0]["layers"]))]
    results: dict[str, Any] = {
        "teacher": {"model": TEACHER, "top1": teacher_eval["top1"], "top5": teacher_eval["top5"]},
        "student_model": STUDENT,
        "plain_student_model": PLAIN_STUDENT,
        "plain_student_kwargs": dict(PLAIN_STUDENT_KWARGS),
        "students": students,
        "vs_none": paired_differences(per_seed),
        "token_cosine": token,
        "disagreement": disagreement,
        "seeds": list(regime.seeds),
        "data": {"dataset": "sklearn.datasets.load_digits", "train_images": train_images, "val_images": val_images,
                 "train_per_class": regime.train_per_class, "img_size": regime.img_size, "dir": str(data_dir)},
        "regime": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(regime).items()},
        "weights": "ema" if regime.ema else "raw",
        "best_student": {"mode": best_mode, "seed": best["seed"], "top1_fused": best["top1_fused"],
                         "run": str(best_dir), "hub_folder": str(hub_dir)},
        "paper": {"token_cosine": {"input": 0.06, "output": 0.93}},
        "elapsed_s": round(time.time() - started, 1),
        "parallel_runs": min(workers, len(jobs)),
        "cpu_count": os.cpu_count(),
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", results_table(results))
    plot_students(run_dirs, teacher_eval["top1"], out / "curves.png")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run `deit-distill demo`; returns 0 on success, 2 for bad options, 1 when a step failed, 130 / 143 when
    SIGINT / SIGTERM stopped it (a rerun goes on from there)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    regime = _regime_from(args, parser)
    out = Path(args.out)
    from ..common import refuse, setup_logging

    try:
        check_can_run(out)
    except DeitDistillError as e:
        return refuse("demo", e)
    setup_logging()
    command = shlex.join(["deit-distill", "demo", *(sys.argv[1:] if argv is None else argv)])
    run = _run_unlabeled if args.unlabeled else _run
    return run_stoppable("demo", lambda: run(regime, out, args.jobs), lambda stop: (
        f"stopped by {stop.name}; the finished runs are kept in {out / 'runs'} and a stopped one resumes from its "
        f"last checkpoint. Rerun the same command to go on: {command}"))


def _run(regime: Regime, out: Path, jobs: int) -> int:
    from ..common import refuse

    try:
        results = run_demo(regime, out, workers=jobs)
    except (DemoError, FileExistsError) as e:  # a failed step: 1 (its log kept); a folder in the way: 2
        return refuse("demo", e)
    print()
    print(results_table(results))
    print(f"Done in {duration(results['elapsed_s'])}. Wrote {out / 'results.json'}, {out / 'results.md'}, "
          f"{out / 'curves.png'} and the best student ({results['best_student']['mode']}, seed "
          f"{results['best_student']['seed']}) as a Hub-ready folder: {results['best_student']['hub_folder']}")
    return 0


def _run_unlabeled(regime: Regime, out: Path, jobs: int) -> int:
    from ..common import refuse
    from .unlabeled import run_unlabeled_demo, unlabeled_table

    try:
        results = run_unlabeled_demo(regime, out, workers=jobs)
    except (DemoError, FileExistsError) as e:  # as _run
        return refuse("demo", e)
    print()
    print(unlabeled_table(results))
    print(f"Done in {duration(results['elapsed_s'])}. Wrote {out / 'results_unlabeled.json'} and "
          f"{out / 'results_unlabeled.md'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
