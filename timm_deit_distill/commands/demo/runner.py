"""Running the demo's runs: each one resumable (reused when finished, resumed when killed), measured by
`deit-distill eval`, side by side in a pool of one-thread worker processes."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import DeitDistillError, DemoError, one_line
from ...stops import pool_worker, spawning, stop_of, working
from ..common import setup_logging
from .regime import STUDENTS, TEACHER, UNLABELED_STUDENTS, Regime, student_options, teacher_options
from .report import TOKEN_COSINE_STUDENT, student_record

__all__ = ["run_training", "run_eval", "measure_token_cosine", "Job", "run_job", "run_jobs", "schedule", "job_cost",
           "Progress", "duration"]

_logger = logging.getLogger("timm_deit_distill.demo")
_RUN_SPEC = "demo_run.json"  # beside each run: the exact trainer options it was started with


def _finished_epochs(run_dir: Path) -> int:
    """Epochs the run in ``run_dir`` has finished: its summary.csv's, or its last.pth.tar's when a kill came
    between the two writes (the trainer refuses to resume a run that has nothing left to train)."""
    from ...checkpoint import CheckpointError, checkpoint_epoch, read_checkpoint
    from ...records import read_summary

    path = run_dir / "summary.csv"
    rows = read_summary(path) if path.exists() else []
    finished = (int(rows[-1]["epoch"]) + 1) if rows else 0
    last = run_dir / "last.pth.tar"
    if last.exists():
        with contextlib.suppress(CheckpointError):
            finished = max(finished, checkpoint_epoch(read_checkpoint(last)) + 1)
    return finished


def run_training(options: dict[str, Any], run_dir: Path, epochs: int, label: str) -> Path:
    """Train through the Python API (``timm_deit_distill.train(**options)``, `deit-distill train`'s options as
    keywords) unless ``run_dir`` already holds this exact run; returns its last checkpoint.

    A run with the same options that stopped early resumes from ``last.pth.tar``; one killed before
    its first checkpoint starts over (the demo owns the folder, so it clears the trainer's files, which
    the trainer itself never overwrites); a folder holding a different run is refused rather than overwritten.
    """
    from ...atomic import atomic_write_text
    from ...factory.api import train
    from ...run_folder import RunFolderError, clear_run_files

    last = run_dir / "last.pth.tar"
    spec_path = run_dir / _RUN_SPEC
    spec = json.loads(json.dumps({"options": options}))  # as the file holds it (tuples as lists)
    if run_dir.exists() and any(run_dir.iterdir()):
        if (json.loads(spec_path.read_text()) if spec_path.exists() else None) != spec:
            raise DemoError(f"{run_dir} holds a different run (settings changed or not written by the demo); "
                            "delete it or pass another --out.")
        if last.exists() and _finished_epochs(run_dir) >= epochs:
            _logger.info("%s: reusing the finished run in %s", label, run_dir)
            return last
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec_path, json.dumps(spec, indent=1) + "\n")
    full = dict(options)
    if last.exists():
        _logger.info("%s: resuming from %s (epoch %d of %d)", label, last, _finished_epochs(run_dir), epochs)
        full["resume"] = str(last)
    else:
        try:
            removed = clear_run_files(run_dir)
        except RunFolderError as e:
            raise DemoError(f"{label}: {e}") from None
        if removed:
            _logger.info("%s: starting over in %s (killed before its first checkpoint; removed %s)", label,
                         run_dir, ", ".join(removed))
    try:
        train(**full)
    except DeitDistillError as e:
        raise DemoError(f"{label}: `deit-distill train` stopped: {one_line(e)}") from None
    if not last.exists():
        raise DemoError(f"{label}: `deit-distill train` wrote no {last}; see the lines above.")
    _prune_checkpoints(run_dir)
    return last


def _prune_checkpoints(run_dir: Path) -> None:
    """Keep ``last.pth.tar`` only: the demo reports the final weights, not an epoch picked on validation."""
    for path in [*run_dir.glob("checkpoint-*.pth.tar"), run_dir / "model_best.pth.tar"]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def run_eval(checkpoint: Path, data_dir: Path, teacher_checkpoint: Path | None, use_ema: bool,
             teacher_check: bool = True) -> dict[str, Any]:
    """``deit-distill eval`` on the validation split, through the Python API; its JSON is kept beside the
    checkpoint."""
    from ...factory.api import evaluate

    out = checkpoint.parent / "eval.json"
    options: dict[str, Any] = dict(checkpoint=str(checkpoint), data_dir=str(data_dir), workers=0, use_ema=use_ema,
                                   json=str(out),
                                   overwrite=True)  # the run manager owns eval.json: a rerun measures it again
    if teacher_checkpoint is not None:
        options.update(distill_teacher=TEACHER, distill_teacher_path=str(teacher_checkpoint),
                       teacher_precision="fp32", teacher_ema=use_ema, no_teacher_check=not teacher_check)
    try:
        evaluate(written=[], **options)  # the demo prints one line per run and keeps the file
    except DeitDistillError as e:
        raise DemoError(f"`deit-distill eval` of {checkpoint} stopped: {one_line(e)}") from None
    return json.loads(out.read_text())


def _model_and_validation(checkpoint: Path, data_dir: Path, use_ema: bool) -> tuple[Any, Any]:
    """A run's model (from its checkpoint) and a loader over the validation split as `deit-distill eval` reads it."""
    from timm.data import resolve_model_data_config

    from ...checkpoint import create_model_from_checkpoint
    from ...data import DataSettings, LoaderSettings, build_eval_loader, open_source

    model, _ = create_model_from_checkpoint(str(checkpoint), use_ema=use_ema)
    _, val_ds = open_source(DataSettings(data_dir=str(data_dir)), batch_size=128, seed=0)
    data_config = resolve_model_data_config(model)  # what the checkpoint's metadata set in its pretrained_cfg
    loader = build_eval_loader(val_ds, data_config, LoaderSettings(batch_size=128, validation_batch_size=None,
                                                                    workers=0, pin_mem=False))
    return model, loader


def measure_token_cosine(checkpoint: Path, data_dir: Path, use_ema: bool) -> dict[str, Any]:
    """Class/distillation token cosine of a student checkpoint over the validation images."""
    from ...analysis import token_cosine

    model, loader = _model_and_validation(checkpoint, data_dir, use_ema)
    return token_cosine(model, loader).as_dict()


def measure_predictions(checkpoint: Path, data_dir: Path, use_ema: bool, top1: float) -> dict[str, list[int]]:
    """A run's argmax on every validation image, per head (``fused``, and ``cls``/``dist`` for a distilled
    student), with the images' true classes (``labels``), for the disagreement table; checked against ``top1``,
    the fused top-1 `deit-distill eval` measured, so the table and the accuracy table read the same images the
    same way."""
    from ...analysis import head_predictions

    model, loader = _model_and_validation(checkpoint, data_dir, use_ema)
    targets: list[int] = []

    def inputs() -> Iterator[Any]:
        for images, labels in loader:
            targets.extend(labels.tolist())
            yield images

    predictions = head_predictions(model, inputs())
    correct = 100.0 * sum(p == t for p, t in zip(predictions["fused"], targets, strict=True)) / len(targets)
    if abs(correct - top1) > 1e-6:
        raise DemoError(f"{checkpoint}: its predictions give top-1 {correct:.4f}% where `deit-distill eval` measured "
                        f"{top1:.4f}%; the disagreement table would not describe the evaluated model.")
    return {**predictions, "labels": targets}


def duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class Progress:
    """One line per finished run: how many are done, time spent and a rough time left."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.time()

    def status(self) -> str:
        elapsed = time.time() - self.started
        eta = f", about {duration(elapsed / self.done * (self.total - self.done))} left" if self.done else ""
        return f"[{self.done}/{self.total} runs done, elapsed {duration(elapsed)}{eta}]"


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
    unlabeled_dir: Path | None = None  # the unlabelled images of an UNLABELED_MODES student

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
        return self.mode is not None and _KINDS[self.mode].distill_type != "none"


_KINDS = {kind.name: kind for kind in (*STUDENTS, *UNLABELED_STUDENTS)}


def run_job(job: Job) -> dict[str, Any]:
    """Train (or reuse) one run and measure it: the teacher's top-1, or a student's per-seed record; both with the
    run's validation predictions (``predictions``, per head) for the disagreement table."""
    regime = job.regime
    if job.mode is None:
        ckpt = run_training(teacher_options(regime, job.data_dir, job.runs_dir), job.run_dir,
                            regime.teacher_epochs, "teacher")
        evaluation = run_eval(ckpt, job.data_dir, None, regime.ema)
        return {"top1": evaluation["top1"], "top5": evaluation["top5"],
                "predictions": measure_predictions(ckpt, job.data_dir, regime.ema, evaluation["top1"])}
    options = student_options(regime, job.data_dir, job.runs_dir, job.mode, job.seed, job.teacher_checkpoint,
                              job.unlabeled_dir)
    ckpt = run_training(options, job.run_dir, regime.epochs, f"student {job.label}")
    # A student trained without the teacher may finish before it: its agreement with the teacher comes from the
    # two runs' predictions once both are done (run_demo), not from an evaluation that would need the teacher now.
    teacher = job.teacher_checkpoint if job.needs_teacher else None
    record: dict[str, Any] = {"seed": job.seed, **student_record(run_eval(ckpt, job.data_dir, teacher, regime.ema,
                                                                          regime.teacher_check))}
    if job.mode == TOKEN_COSINE_STUDENT:
        cos = measure_token_cosine(ckpt, job.data_dir, regime.ema)
        record["token_cosine"] = {"input": cos["input"], "output": cos["output"], "layers": cos["layers"]}
    record["predictions"] = measure_predictions(ckpt, job.data_dir, regime.ema, record["top1_fused"])
    return record


def _worker_init(threads: int) -> None:
    import torch

    pool_worker()  # a stop reaches the runs through the demo's own process, which passes it on
    torch.set_num_threads(threads)
    sys.stderr = _NotATerminal(sys.stderr)
    setup_logging()


def _worker_run(job: Job) -> dict[str, Any]:
    # Every line a run logs names the run, since the runs of one pool share the screen.
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(f"[{job.label}] %(message)s"))
    with working():
        return run_job(job)


def _describe(job: Job, record: dict[str, Any]) -> str:
    if job.mode is None:
        return f"teacher {TEACHER}: top-1 {record['top1']:.2f}%"
    heads = (f"cls {record['top1_cls']:.2f}%, dist {record['top1_dist']:.2f}%, fused "
             if record.get("top1_cls") is not None else "")
    text = f"student {job.label}: top-1 {heads}{record['top1_fused']:.2f}%"
    if record.get("agreement") is not None:  # measured later for a student trained without the teacher
        text += f"; agreement with teacher {record['agreement']:.3f}"
    if "token_cosine" in record:
        tc = record["token_cosine"]
        text += f"; token cosine input {tc['input']:.3f}, output {tc['output']:.3f}"
    return text


# Relative cost of one epoch of each kind of run (the student without distillation token or teacher = 1), measured
# with cProfile on the default regime (one thread per run, 2-core AMD EPYC): the convnet teacher ~0.45, the teacher's
# forward ~0.06 more per epoch, the distillation token ~0.08 more, the DeiT⚗ hard student's token-cosine pass a
# little more. Only their order matters: they set which run starts first, never what a run computes.
# A student with unlabelled images: 48 images a step instead of 32, the teacher on all of them (estimated, 1.5x).
_EPOCH_COST = {None: 0.45, "none": 1.0, "usual": 1.06, "hard": 1.06, "deit_soft": 1.14, "deit_hard": 1.16,
               "hard_pseudo_unlabeled": 1.6, "deit_hard_unlabeled": 1.75, "deit_soft_unlabeled": 1.75}


def job_cost(job: Job) -> float:
    """A run's estimated length, in epochs of a student without distillation."""
    epochs = job.regime.teacher_epochs if job.mode is None else job.regime.epochs
    return epochs * _EPOCH_COST.get(job.mode, 1.0)


def _makespan(costs: Sequence[float], after: Sequence[int | None], priority: Sequence[int], workers: int) -> float:
    """When the last run ends if a free worker always starts the first ready run in ``priority`` (list scheduling;
    ``after[i]``: the run that must finish before run i may start)."""
    free = [0.0] * workers
    end: dict[int, float] = {}
    left = list(priority)
    while left:
        worker = min(range(workers), key=free.__getitem__)
        now = free[worker]
        ready = [i for i in left if after[i] is None or (after[i] in end and end[after[i]] <= now)]
        if not ready:  # wait for the earliest prerequisite still running
            pending = [end[after[i]] for i in left if after[i] in end]
            free[worker] = min(pending) if pending else min(t for t in free if t > now)
            continue
        i = ready[0]
        left.remove(i)
        end[i] = free[worker] = now + costs[i]
    return max(end.values())


def _orders(counts: dict[Any, int]) -> Iterator[list[Any]]:
    """Every distinct sequence with ``counts[k]`` copies of each ``k`` (in the order of ``counts``' keys)."""
    if not any(counts.values()):
        yield []
        return
    for kind, n in counts.items():
        if n:
            for rest in _orders({**counts, kind: n - 1}):
                yield [kind, *rest]


def schedule(jobs: Sequence[Job], workers: int) -> list[int]:
    """The order in which free workers start the runs: the one that, simulated with :func:`job_cost`, ends soonest.

    Candidates: every order of the kinds of run (teacher, none, soft, hard), each kind's runs in seed order,
    the teacher's dependants never before the teacher. Ties keep the fewest changes from teacher-free-first.
    """
    teacher = next((i for i, j in enumerate(jobs) if j.mode is None), None)
    after = [teacher if (j.needs_teacher and teacher is not None) else None for j in jobs]
    costs = [job_cost(j) for j in jobs]
    baseline = sorted(range(len(jobs)), key=lambda i: jobs[i].needs_teacher)  # teacher-free runs first
    if workers <= 1:
        return baseline
    kinds: dict[str | None, list[int]] = {}
    for i in baseline:
        kinds.setdefault(jobs[i].mode, []).append(i)
    best, best_span = baseline, _makespan(costs, after, baseline, workers)
    # Every order of run kinds (each kind's runs in seed order) where that is cheap (10 runs of 4 kinds: 12,600
    # simulations); for more runs, longest first (the teacher first: it holds up its dependants).
    counts = {k: len(v) for k, v in kinds.items()}
    if len(jobs) <= 12:
        candidates: Iterator[list[int]] | list[list[int]] = (
            [kinds[k][n] for k, n in _numbered(order)] for order in _orders(counts))
    else:
        candidates = [sorted(baseline, key=lambda i: (jobs[i].mode is not None, -costs[i]))]
    for priority in candidates:
        span = _makespan(costs, after, priority, workers)
        if span < best_span - 1e-9:
            best, best_span = priority, span
    return best


def _numbered(order: Sequence[Any]) -> Iterator[tuple[Any, int]]:
    """Each kind in ``order`` with how many of that kind came before it."""
    seen: dict[Any, int] = {}
    for kind in order:
        yield kind, seen.get(kind, 0)
        seen[kind] = seen.get(kind, 0) + 1


def run_jobs(jobs: Sequence[Job], workers: int, progress: Progress) -> list[dict[str, Any]]:
    """Every run, ``workers`` at a time in separate processes of one CPU thread each when ``workers > 1``.

    Runs that need the teacher start once it is trained. A free worker starts the next ready run in the order
    :func:`schedule` found to end soonest (so the last runs do not leave cores idle longer than they must);
    each run computes exactly what it would in any order (its own process state, seeded from its flags).
    """
    records: list[dict[str, Any] | None] = [None] * len(jobs)
    if workers <= 1:
        for i in sorted(range(len(jobs)), key=lambda i: jobs[i].needs_teacher):  # teacher-free runs first
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
    order = schedule(jobs, workers)
    _logger.info("Training %d runs, %d at a time (%d CPU thread%s each), in the order %s; each line names its run.",
                 len(jobs), workers, threads, "s" if threads > 1 else "", ", ".join(jobs[i].label for i in order))
    teacher = next((i for i in order if jobs[i].mode is None), None)
    done: set[int] = set()
    context = multiprocessing.get_context("spawn")  # fork would copy the parent's torch thread pools
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(threads,)) as pool:
        pending: dict[Any, int] = {}
        left = list(order)
        try:
            while left or pending:
                # At most one run per worker in flight: the pool's own queue would start runs first come,
                # first served, not in the planned order once the teacher's dependants become ready.
                while len(pending) < workers:
                    ready = [i for i in left if not jobs[i].needs_teacher or teacher is None or teacher in done]
                    if not ready:
                        break
                    left.remove(ready[0])
                    with spawning():  # a worker may start here: it must not see a Ctrl-C before it ignores it
                        pending[pool.submit(_worker_run, jobs[ready[0]])] = ready[0]
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    i = pending.pop(future)
                    records[i] = future.result()
                    done.add(i)
                    progress.done += 1
                    _logger.info("%s %s", _describe(jobs[i], records[i]), progress.status())
        except BaseException as error:
            for future in pending:
                future.cancel()
            if stop_of(error) is not None:
                # the runs stop as a run stopped on its own does (whole files, lock released), then the pool ends
                for worker in multiprocessing.active_children():
                    worker.terminate()
            raise
    return records  # type: ignore[return-value]
