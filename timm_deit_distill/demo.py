"""`deit-distill demo`: the paper's comparison of no, soft and hard distillation, on a laptop CPU.

On scikit-learn's bundled handwritten digits (real data, no download) with scarce labels, a timm
convnet teacher is trained, then a DeiT-Ti-sized distilled student under each distillation type with
the same budget, for several seeds. Every run goes through ``deit-distill train`` (``train.main``) and
is measured by ``deit-distill eval`` (``evaluate.main``); the hard-distilled students' class and
distillation tokens are compared as in the paper's section 4 (``analysis.token_cosine``).

Writes into ``--out``::

    digits/                  the dataset as an ImageFolder (fixed stratified split)
    runs/<regime>/<run>/     one trainer run each: checkpoints, summary.csv, args.yaml, eval.json
    results.json             teacher and per-student top-1, agreement, token cosines (means, stds, per seed)
    results.md               the table, in the spirit of the paper's Table 3
    curves.png               every student's validation accuracy and training loss per epoch
    best_student/            the best student as a Hub-ready folder (safetensors, config.json, card)

Finished runs are reused when the demo is run again with the same settings and an interrupted run
resumes from its last checkpoint (saved at every evaluation), so a kill loses at most ``val_interval``
epochs. Runs train side by side in worker processes of one CPU thread each (``--jobs``): a 5M-parameter
model on 12x12 images keeps one core busy far better than it splits across two.

The default regime (README, "The demo's regime") is the paper's setting scaled to a CPU budget of 10
minutes on 2 cores: scarce labels (20 per class), a convnet teacher that is clearly stronger and
trained with the students' augmentation, and a stable recipe (warm-up, clipping, label smoothing,
AdamW at 1e-3 for batch 32). Whatever the table shows is reported; at this scale soft distillation
helps a little (11 of 12 seed-paired runs over four schedules) and hard distillation does not (6 of 12); the
README gives the measurements and the reasons.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import DemoError

__all__ = ["Regime", "DEFAULT_REGIME", "QUICK_REGIME", "MODES", "main", "build_parser"]

_logger = logging.getLogger("timm_deit_distill.demo")

MODES = ("none", "soft", "hard")
STUDENT = "deit_tiny_distilled_patch4_32"
TEACHER = "resnet10t"
_RUN_SPEC = "demo_run.json"  # beside each run: the exact trainer command line it was started with


@dataclass(frozen=True)
class Regime:
    """Everything that decides what the demo trains; the README explains the default's choices.

    Teacher and students share every augmentation and optimisation setting; only the schedule length
    (``teacher_epochs``) and drop-path (off for the convnet) differ.
    """

    name: str
    train_per_class: int  # labelled training images per class (the scarce-data regime)
    val_fraction: float  # held-out share of the 1,797 digits (stratified, fixed by split_seed)
    img_size: int  # 8x8 digits upsampled; the student's tokens are (img_size / 4) ** 2
    epochs: int
    teacher_epochs: int
    batch_size: int
    lr: float
    warmup_epochs: int
    weight_decay: float
    clip_grad: float
    smoothing: float
    drop_path: float
    ema_decay: float  # 0 turns EMA off
    scale: tuple[float, float]  # RandomResizedCrop area range, shared by teacher and students
    val_interval: int
    seeds: tuple[int, ...]
    split_seed: int = 0
    teacher_seed: int = 0
    distill_alpha: float = 0.5  # DeiT's defaults for the loss
    distill_tau: float = 1.0
    # Measure the teacher before it teaches (--teacher-min-top1 auto); off only where the teacher is a
    # smoke-test stand-in trained too briefly to beat chance.
    teacher_check: bool = True
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ema(self) -> bool:
        return self.ema_decay > 0


DEFAULT_REGIME = Regime(
    name="default", train_per_class=20, val_fraction=0.2, img_size=12, epochs=80, teacher_epochs=60,
    batch_size=32, lr=1e-3, warmup_epochs=10, weight_decay=0.05, clip_grad=1.0, smoothing=0.1, drop_path=0.1,
    ema_decay=0.0, scale=(0.25, 1.0), val_interval=10, seeds=(0, 1, 2))
QUICK_REGIME = replace(
    DEFAULT_REGIME, name="quick", train_per_class=5, epochs=2, teacher_epochs=2, warmup_epochs=1, val_interval=1,
    seeds=(0,), teacher_check=False)  # a 2-epoch teacher on 50 images scores near chance: nothing to check


# ----------------------------------------------------------------------------------------------------------
# Command lines: the demo's runs are ordinary `deit-distill train` / `deit-distill eval` invocations.


def _common_train_args(regime: Regime, data_dir: Path) -> list[str]:
    args = [
        "--data-dir", str(data_dir), "--img-size", str(regime.img_size),
        "--batch-size", str(regime.batch_size), "--opt", "adamw", "--lr", f"{regime.lr:g}",
        "--weight-decay", f"{regime.weight_decay:g}", "--sched", "cosine", "--warmup-epochs", str(regime.warmup_epochs),
        "--warmup-lr", "1e-6", "--min-lr", "1e-5", "--clip-grad", f"{regime.clip_grad:g}",
        "--smoothing", f"{regime.smoothing:g}",
        # Digits are not mirror-symmetric and have no colour; crops keep most of the stroke.
        "--scale", f"{regime.scale[0]:g}", f"{regime.scale[1]:g}", "--hflip", "0", "--color-jitter", "0",
        "--train-interpolation", "bicubic",
        "--crop-pct", "1",  # evaluate the whole digit (a centre crop would cut strokes), teacher and students alike
        "--workers", "0",  # 8x8 PNGs decode faster than worker processes start
        # A 64 MB checkpoint each epoch costs ~10 % of a run; saving at evaluations bounds a kill's loss just as well.
        "--val-interval", str(regime.val_interval), "--checkpoint-interval", str(regime.val_interval),
        "--checkpoint-hist", "1", "--log-interval", "1000",
    ]
    if regime.ema:
        args += ["--model-ema", "--model-ema-decay", f"{regime.ema_decay:g}"]
    return args + list(regime.extra_args)


def teacher_args(regime: Regime, data_dir: Path, output: Path) -> list[str]:
    """`deit-distill train` arguments of the convnet teacher (same augmentation as the students)."""
    return [*_common_train_args(regime, data_dir), "--model", TEACHER, "--epochs", str(regime.teacher_epochs),
            "--drop-path", "0", "--distill-type", "none", "--seed", str(regime.teacher_seed),
            "--output", str(output), "--experiment", "teacher"]


def student_args(regime: Regime, data_dir: Path, output: Path, mode: str, seed: int,
                 teacher_checkpoint: Path) -> list[str]:
    """`deit-distill train` arguments of one student; the budget is the same for every mode."""
    args = [*_common_train_args(regime, data_dir), "--model", STUDENT, "--epochs", str(regime.epochs),
            "--drop-path", f"{regime.drop_path:g}", "--distill-type", mode, "--seed", str(seed),
            "--output", str(output), "--experiment", f"{mode}-seed{seed}"]
    if mode != "none":
        args += ["--distill-teacher", TEACHER, "--distill-teacher-path", str(teacher_checkpoint),
                 "--distill-alpha", f"{regime.distill_alpha:g}", "--distill-tau", f"{regime.distill_tau:g}",
                 "--distill-soft-reduction", "deit", "--teacher-precision", "fp32"]
        if regime.ema:
            args += ["--teacher-ema"]
        if not regime.teacher_check:
            args += ["--no-teacher-check"]
    return args


# ----------------------------------------------------------------------------------------------------------
# Running (or reusing) one training run.


def _finished_epochs(run_dir: Path) -> int:
    from .records import read_summary

    path = run_dir / "summary.csv"
    if not path.exists():
        return 0
    rows = read_summary(path)
    return (int(rows[-1]["epoch"]) + 1) if rows else 0


def run_training(argv: list[str], run_dir: Path, epochs: int, label: str) -> Path:
    """Train through ``train.main`` unless ``run_dir`` already holds this exact run; returns its last checkpoint.

    A run with the same command line that stopped early resumes from ``last.pth.tar``; one killed before
    its first checkpoint starts over (the demo owns the folder, so it clears the trainer's files, which
    the trainer itself never overwrites); a folder holding a different run is refused rather than overwritten.
    """
    from . import train
    from .atomic import atomic_write_text
    from .run_folder import RunFolderError, clear_run_files

    last = run_dir / "last.pth.tar"
    spec_path = run_dir / _RUN_SPEC
    if run_dir.exists() and any(run_dir.iterdir()):
        spec = json.loads(spec_path.read_text()) if spec_path.exists() else None
        if spec != {"argv": argv}:
            raise DemoError(f"{run_dir} holds a different run (settings changed or not written by the demo); "
                            "delete it or pass another --out.")
        if last.exists() and _finished_epochs(run_dir) >= epochs:
            _logger.info("%s: reusing the finished run in %s", label, run_dir)
            return last
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec_path, json.dumps({"argv": argv}, indent=1) + "\n")
    full = list(argv)
    if last.exists():
        _logger.info("%s: resuming from %s (epoch %d of %d)", label, last, _finished_epochs(run_dir), epochs)
        full += ["--resume", str(last)]
    else:
        try:
            removed = clear_run_files(run_dir)
        except RunFolderError as e:
            raise DemoError(f"{label}: {e}") from None
        if removed:
            _logger.info("%s: starting over in %s (killed before its first checkpoint; removed %s)", label,
                         run_dir, ", ".join(removed))
    code = train.main(full)
    if code != 0 or not last.exists():
        raise DemoError(f"{label}: `deit-distill train {' '.join(full)}` exited with code {code}; see the lines above.")
    _prune_checkpoints(run_dir)
    return last


def _prune_checkpoints(run_dir: Path) -> None:
    """Keep ``last.pth.tar`` only: the demo reports the final weights, not an epoch picked on validation."""
    for path in [*run_dir.glob("checkpoint-*.pth.tar"), run_dir / "model_best.pth.tar"]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def run_eval(checkpoint: Path, data_dir: Path, teacher_checkpoint: Path | None, use_ema: bool,
             teacher_check: bool = True) -> dict[str, Any]:
    """``deit-distill eval`` on the validation split; its JSON is kept beside the checkpoint."""
    from . import evaluate

    out = checkpoint.parent / "eval.json"
    argv = ["--checkpoint", str(checkpoint), "--data-dir", str(data_dir), "--workers", "0",
            "--use-ema" if use_ema else "--no-ema", "--json", str(out)]
    if teacher_checkpoint is not None:
        argv += ["--distill-teacher", TEACHER, "--distill-teacher-path", str(teacher_checkpoint),
                 "--teacher-precision", "fp32"]
        argv += ["--teacher-ema"] if use_ema else ["--no-teacher-ema"]
        argv += [] if teacher_check else ["--no-teacher-check"]
    log = io.StringIO()  # eval prints its full JSON; the demo prints one line and keeps the file
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = evaluate.main(argv)
    if code != 0:
        raise DemoError(f"`deit-distill eval {' '.join(argv)}` exited with code {code}:\n{log.getvalue()}")
    return json.loads(out.read_text())


def measure_token_cosine(checkpoint: Path, data_dir: Path, use_ema: bool) -> dict[str, Any]:
    """Class/distillation token cosine of a student checkpoint over the validation images."""
    from .analysis import token_cosine
    from .checkpoint import create_model_from_checkpoint
    from .data import LoaderSettings, build_datasets, build_eval_loader

    model, _ = create_model_from_checkpoint(str(checkpoint), use_ema=use_ema)
    _, val_ds = build_datasets(str(data_dir))
    cfg = model.pretrained_cfg
    data_config = {k: cfg[k] for k in ("input_size", "mean", "std", "crop_pct", "interpolation")}
    data_config["input_size"] = tuple(data_config["input_size"])
    loader = build_eval_loader(val_ds, data_config, LoaderSettings(batch_size=128, validation_batch_size=None,
                                                                    workers=0, pin_mem=False))
    return token_cosine(model, loader).as_dict()


# ----------------------------------------------------------------------------------------------------------
# Aggregation and reports.


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value: no spread can be measured)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


_STUDENT_METRICS = ("top1_cls", "top1_dist", "top1_fused", "agreement")


def student_record(evaluation: dict[str, Any]) -> dict[str, float]:
    """One student's figures from its ``deit-distill eval`` JSON: top-1 in percent, agreement a fraction."""
    heads = evaluation["heads"]
    return {"top1_cls": heads["cls"]["top1"], "top1_dist": heads["dist"]["top1"],
            "top1_fused": heads["fused"]["top1"], "agreement": evaluation["teacher"]["agreement"]}


def aggregate(per_seed: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Means over seeds with the standard deviation beside each (``<metric>_std``), plus the per-seed rows."""
    out: dict[str, dict[str, Any]] = {}
    for mode, rows in per_seed.items():
        entry: dict[str, Any] = {}
        for key in _STUDENT_METRICS:
            entry[key], entry[f"{key}_std"] = _mean_std([r[key] for r in rows])
        entry["per_seed"] = rows
        out[mode] = entry
    return out


_PAIRED_METRICS = ("top1_fused", "agreement")


def paired_differences(per_seed: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each distilled student minus the undistilled one *of the same seed*, then mean and std over seeds.

    A seed fixes the student's initial weights and its sequence of training views whatever the distillation
    type, so the per-seed difference removes the share of the spread the modes have in common. ``outside_spread``
    says whether the mean difference is larger than its own standard deviation across seeds.
    """
    base = {r["seed"]: r for r in per_seed.get("none", [])}
    out: dict[str, dict[str, Any]] = {}
    for mode in ("soft", "hard"):
        rows = [r for r in per_seed.get(mode, []) if r["seed"] in base]
        if not rows:
            continue
        diffs = [{"seed": r["seed"], **{k: r[k] - base[r["seed"]][k] for k in _PAIRED_METRICS}} for r in rows]
        entry: dict[str, Any] = {}
        for key in _PAIRED_METRICS:
            entry[key], entry[f"{key}_std"] = _mean_std([d[key] for d in diffs])
        entry["per_seed"] = diffs
        std = entry["top1_fused_std"]
        entry["outside_spread"] = None if std is None else abs(entry["top1_fused"]) > std
        out[mode] = entry
    return out


def _fmt(mean: float | None, std: float | None, *, scale: float = 1.0, digits: int = 1) -> str:
    if mean is None:
        return "-"
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def results_table(results: dict[str, Any]) -> str:
    """The comparison as a Markdown table (Table 3 of the paper, in spirit)."""
    teacher = results["teacher"]
    n = len(results["seeds"])
    lines = [
        f"Validation top-1 (%) on {results['data']['val_images']} held-out digits; students trained on "
        f"{results['data']['train_images']} labelled images; mean ± std over {n} seed{'s' if n > 1 else ''} "
        f"({', '.join(str(s) for s in results['seeds'])}).",
        "",
        "| model | distillation | class head | distillation head | class+distillation | agreement with teacher |",
        "|---|---|---:|---:|---:|---:|",
        f"| {teacher['model']} (teacher) | - | | | {teacher['top1']:.1f} | |",
    ]
    for mode in MODES:
        s = results["students"].get(mode)
        if s is None:
            continue
        lines.append(
            f"| {results['student_model']} | {mode} | {_fmt(s['top1_cls'], s['top1_cls_std'])} | "
            f"{_fmt(s['top1_dist'], s['top1_dist_std'])} | {_fmt(s['top1_fused'], s['top1_fused_std'])} | "
            f"{_fmt(s['agreement'], s['agreement_std'], scale=100)} % |")
    paired = results.get("vs_none") or {}
    if paired:
        verdict = {True: "outside the spread", False: "within the spread", None: "one seed: no spread"}
        parts = [f"{mode} {'+' if d['top1_fused'] >= 0 else ''}{_fmt(d['top1_fused'], d['top1_fused_std'])} "
                 f"({verdict[d['outside_spread']]})" for mode, d in paired.items()]
        lines += ["", "Class+distillation top-1 minus no distillation's, paired by seed (same initial weights and "
                      "training views), in points: " + "; ".join(parts) + "."]
    tc = results.get("token_cosine")
    if tc:
        lines += ["", f"Cosine similarity of the class and distillation tokens of the hard-distilled student: "
                      f"{_fmt(tc['input'], tc['input_std'], digits=2)} at the input, "
                      f"{_fmt(tc['output'], tc['output_std'], digits=2)} at the output (the paper: 0.06 and 0.93)."]
    return "\n".join(lines) + "\n"


def plot_students(runs: dict[str, list[Path]], teacher_top1: float, path: Path) -> None:
    """curves.png: validation top-1 (fused) and training loss per epoch for every student run."""
    from .plots import Panel, Series, plot_panels
    from .records import read_summary

    colors = {"none": "tab:gray", "soft": "tab:blue", "hard": "tab:red"}
    accuracy: list[Series] = []
    loss: list[Series] = []
    for mode, run_dirs in runs.items():
        for i, run_dir in enumerate(run_dirs):
            rows = read_summary(run_dir / "summary.csv")
            label = mode if i == 0 else None
            accuracy.append(Series([(r["epoch"] + 1, r.get("eval_top1_ema") or r["eval_top1"]) for r in rows
                                    if r.get("eval_top1") is not None], label,
                                   dict(color=colors[mode], alpha=0.8, marker="o", markersize=2.5)))
            loss.append(Series([(r["epoch"] + 1, r["train_loss"]) for r in rows if r.get("train_loss") is not None],
                               label, dict(color=colors[mode], alpha=0.8)))
    teacher_line = (teacher_top1, "teacher", dict(color="black", linestyle="--", linewidth=1))
    plot_panels(path, [
        Panel(accuracy, "epoch", "validation top-1 (%), class+distillation", "accuracy (one line per seed)",
              hlines=[teacher_line]),
        Panel(loss, "epoch", "training loss (total)", "training loss"),
    ], size=(11, 4.2))


# ----------------------------------------------------------------------------------------------------------
# The command.


def _default_jobs() -> int:
    # Small models use one core far better than two: two runs side by side beat one run on two threads.
    return max(1, min(4, os.cpu_count() or 1))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deit-distill demo",
        description="Distil DeiT-Ti students from a convnet teacher on scikit-learn's bundled digits with no, soft "
                    "and hard distillation, and report the paper's comparison (Table 3) and token similarity.")
    p.add_argument("--out", default="demo_output", metavar="DIR",
                   help="output folder; finished runs in it are reused (default: demo_output)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                   help=f"student seeds (default: {' '.join(map(str, DEFAULT_REGIME.seeds))}; --quick: "
                        f"{' '.join(map(str, QUICK_REGIME.seeds))})")
    p.add_argument("--quick", action="store_true",
                   help="a sub-minute smoke run (tiny data, 2 epochs, one seed): checks the pipeline, not the science")
    p.add_argument("--jobs", type=int, default=_default_jobs(), metavar="N",
                   help="runs trained at once, each in its own process (default: the CPU count, at most 4)")
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


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class _Progress:
    """One line per finished run: how many are done, time spent and a rough time left."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.time()

    def status(self) -> str:
        elapsed = time.time() - self.started
        eta = f", about {_duration(elapsed / self.done * (self.total - self.done))} left" if self.done else ""
        return f"[{self.done}/{self.total} runs done, elapsed {_duration(elapsed)}{eta}]"


class _NotATerminal(io.TextIOBase):
    """stderr for runs sharing a terminal: two progress bars on one screen garble each other, so the trainer
    (which draws a bar only on a terminal) writes plain log lines instead."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()


@dataclass(frozen=True)
class Job:
    """One run of the demo: the teacher (``mode=None``) or a student with a distillation type and a seed."""

    regime: Regime
    data_dir: Path
    runs_dir: Path
    mode: str | None = None
    seed: int = 0

    @property
    def label(self) -> str:
        return "teacher" if self.mode is None else f"{self.mode}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.label

    @property
    def teacher_checkpoint(self) -> Path:
        return self.runs_dir / "teacher" / "last.pth.tar"

    @property
    def needs_teacher(self) -> bool:
        return self.mode in ("soft", "hard")


def run_job(job: Job) -> dict[str, Any]:
    """Train (or reuse) one run and measure it: the teacher's top-1, or a student's per-seed record."""
    regime = job.regime
    if job.mode is None:
        ckpt = run_training(teacher_args(regime, job.data_dir, job.runs_dir), job.run_dir, regime.teacher_epochs,
                            "teacher")
        evaluation = run_eval(ckpt, job.data_dir, None, regime.ema)
        return {"top1": evaluation["top1"], "top5": evaluation["top5"]}
    argv = student_args(regime, job.data_dir, job.runs_dir, job.mode, job.seed, job.teacher_checkpoint)
    ckpt = run_training(argv, job.run_dir, regime.epochs, f"student {job.label}")
    record: dict[str, Any] = {"seed": job.seed,
                              **student_record(run_eval(ckpt, job.data_dir, job.teacher_checkpoint, regime.ema,
                                                       regime.teacher_check))}
    if job.mode == "hard":
        cos = measure_token_cosine(ckpt, job.data_dir, regime.ema)
        record["token_cosine"] = {"input": cos["input"], "output": cos["output"], "layers": cos["layers"]}
    return record


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    sys.stderr = _NotATerminal(sys.stderr)
    from .train import setup_logging

    setup_logging()


def _worker_run(job: Job) -> dict[str, Any]:
    # Every line a run logs names the run, since the runs of one pool share the screen.
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(f"[{job.label}] %(message)s"))
    return run_job(job)


def _describe(job: Job, record: dict[str, Any]) -> str:
    if job.mode is None:
        return f"teacher {TEACHER}: top-1 {record['top1']:.2f}%"
    text = (f"student {job.label}: top-1 cls {record['top1_cls']:.2f}%, dist {record['top1_dist']:.2f}%, "
            f"fused {record['top1_fused']:.2f}%; agreement with teacher {record['agreement']:.3f}")
    if "token_cosine" in record:
        tc = record["token_cosine"]
        text += f"; token cosine input {tc['input']:.3f}, output {tc['output']:.3f}"
    return text


def run_jobs(jobs: Sequence[Job], workers: int, progress: _Progress) -> list[dict[str, Any]]:
    """Every run, ``workers`` at a time in separate processes of one CPU thread each when ``workers > 1``.

    Runs that need the teacher start once it is trained; the others (the teacher itself and the students
    without distillation) start right away, so no core waits for the teacher.
    """
    records: list[dict[str, Any] | None] = [None] * len(jobs)
    order = sorted(range(len(jobs)), key=lambda i: jobs[i].needs_teacher)  # stable: teacher-free runs first
    if workers <= 1:
        for i in order:
            epochs = jobs[i].regime.teacher_epochs if jobs[i].mode is None else jobs[i].regime.epochs
            _logger.info("\n=== %s, %d epochs %s ===", jobs[i].label, epochs, progress.status())
            records[i] = run_job(jobs[i])
            progress.done += 1
            _logger.info("%s %s", _describe(jobs[i], records[i]), progress.status())
        return records  # type: ignore[return-value]

    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import torch

    threads = max(1, torch.get_num_threads() // workers)
    _logger.info("Training %d runs, %d at a time (%d CPU thread%s each); each line names its run.",
                 len(jobs), workers, threads, "s" if threads > 1 else "")
    teacher = next((i for i in order if jobs[i].mode is None), None)
    waiting = [i for i in order if jobs[i].needs_teacher and teacher is not None]
    context = multiprocessing.get_context("spawn")  # fork would copy the parent's torch thread pools
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(threads,)) as pool:
        pending = {pool.submit(_worker_run, jobs[i]): i for i in order if i not in waiting}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    i = pending.pop(future)
                    records[i] = future.result()
                    progress.done += 1
                    _logger.info("%s %s", _describe(jobs[i], records[i]), progress.status())
                    if i == teacher:
                        pending.update({pool.submit(_worker_run, jobs[w]): w for w in waiting})
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return records  # type: ignore[return-value]


def run_demo(regime: Regime, out: Path, *, workers: int = 1) -> dict[str, Any]:
    """Train and evaluate everything, write the reports; returns the results dict (also results.json)."""

    from .atomic import atomic_write_text
    from .data.digits import write_digits_imagefolder
    from .hub import save_pretrained

    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / f"digits-{regime.train_per_class}-per-class"
    write_digits_imagefolder(data_dir, val_fraction=regime.val_fraction, train_per_class=regime.train_per_class,
                             seed=regime.split_seed)
    train_images = sum(1 for _ in (data_dir / "train").rglob("*.png"))
    val_images = sum(1 for _ in (data_dir / "validation").rglob("*.png"))
    runs_dir = out / "runs" / regime.name
    progress = _Progress(1 + len(MODES) * len(regime.seeds))
    _logger.info("deit-distill demo: teacher %s, then %s students with %s distillation x seeds %s; %d training "
                 "/ %d validation digits at %dpx (%d tokens).", TEACHER, STUDENT, "/".join(MODES),
                 list(regime.seeds), train_images, val_images, regime.img_size, (regime.img_size // 4) ** 2)

    teacher_job = Job(regime, data_dir, runs_dir)
    jobs = [teacher_job, *(Job(regime, data_dir, runs_dir, mode, seed) for seed in regime.seeds for mode in MODES)]
    records = run_jobs(jobs, min(workers, len(jobs)), progress)
    teacher_eval = records[0]
    per_seed: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    run_dirs: dict[str, list[Path]] = {m: [] for m in MODES}
    for job, record in zip(jobs[1:], records[1:], strict=True):
        per_seed[job.mode].append(record)
        run_dirs[job.mode].append(job.run_dir)
    cosines = [r["token_cosine"] for r in per_seed["hard"]]

    students = aggregate(per_seed)
    best_mode, best = max(((m, r) for m in MODES for r in per_seed[m]), key=lambda mr: mr[1]["top1_fused"])
    best_dir = runs_dir / f"{best_mode}-seed{best['seed']}"
    hub_dir = save_pretrained(best_dir / "last.pth.tar", out / "best_student", use_ema=regime.ema)

    token = None
    if cosines:
        token = {"student": "hard"}
        for key in ("input", "output"):
            token[key], token[f"{key}_std"] = _mean_std([c[key] for c in cosines])
        token["layers"] = [statistics.fmean(c["layers"][i] for c in cosines) for i in range(len(cosines[0]["layers"]))]
    results: dict[str, Any] = {
        "teacher": {"model": TEACHER, "top1": teacher_eval["top1"], "top5": teacher_eval["top5"]},
        "student_model": STUDENT,
        "students": students,
        "vs_none": paired_differences(per_seed),
        "token_cosine": token,
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
    """Run `deit-distill demo`; returns 0 on success, 2 for bad options, 1 when a step failed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    regime = _regime_from(args, parser)
    out = Path(args.out)
    from .train import setup_logging

    setup_logging()
    try:
        results = run_demo(regime, out, workers=args.jobs)
    except (DemoError, FileExistsError) as e:
        print(f"deit-distill demo: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, FileExistsError) else 1
    print()
    print(results_table(results))
    print(f"Done in {_duration(results['elapsed_s'])}. Wrote {out / 'results.json'}, {out / 'results.md'}, "
          f"{out / 'curves.png'} and the best student ({results['best_student']['mode']}, seed "
          f"{results['best_student']['seed']}) as a Hub-ready folder: {results['best_student']['hub_folder']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
