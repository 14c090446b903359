"""The teacher check: its top-1 on real validation images, measured through the path the loss uses, before
it teaches; a teacher near chance is refused in one line that names the likely causes and their fixes."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..data.loaders import CHECK_IMAGES
from ..errors import TeacherError
from .fit import fmt_floats, fmt_hw

__all__ = ["TeacherCheck", "auto_min_top1", "measure_teacher"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherCheck:
    """What :meth:`DistillationTeacher.check` measured (percentages, as timm reports top-1)."""

    top1: float  # teacher top-1 on the sample, in percent
    images: int  # images measured
    num_classes: int
    chance: float  # percent: the top-1 of always predicting the sample's most common class
    min_top1: float | None  # the threshold applied (None: measured only)
    seconds: float  # wall time of the measurement
    passed: bool | None  # None when no threshold was applied
    diagnosis: str | None = None  # a class order that differs from the dataset's, when the predictions show one

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (for eval.json and checkpoint metadata)."""
        return dataclasses.asdict(self)


def auto_min_top1(chance: float) -> float:
    """The default threshold: a quarter of the way from chance to 100 % (32.5 % for 10 balanced classes).

    Far below any teacher worth distilling from, far above what a broken one scores: random weights, a
    wrong resolution, normalisation or class order all land near ``chance``.
    """
    return chance + 0.25 * (100.0 - chance)


def measure_teacher(teacher: nn.Module, loader: Iterable[Any], *, max_images: int = CHECK_IMAGES,
                    min_top1: float | str | None = "auto") -> TeacherCheck:
    """What :meth:`DistillationTeacher.check <timm_deit_distill.teacher.DistillationTeacher.check>` does (see there), for ``teacher``."""
    if max_images < 1:
        raise TeacherError(f"max_images must be >= 1, got {max_images}.")
    if isinstance(min_top1, str) and min_top1 != "auto":
        raise TeacherError(f"min_top1 must be 'auto', a percentage or None, got {min_top1!r}.")
    device = teacher.input_scale.device
    # (true, predicted) pair counts: at most max_images entries, whatever the class count
    pairs: Counter[tuple[int, int]] = Counter()
    seen = 0
    # An unknown training size is a guess (the student's): the first images are kept to measure other sizes on.
    sweep = min_top1 is not None and teacher.info.get("input_size_source") in ("student", "unknown")
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (inputs, targets, correct) on the CPU
    start = time.perf_counter()
    for batch in loader:
        inputs, targets = batch[0], batch[1]
        inputs, targets = inputs[: max_images - seen], targets[: max_images - seen]
        if targets.dim() == 2:  # soft (mixed) targets: the dominant class
            targets = targets.argmax(1)
        targets = targets.to("cpu", torch.int64)
        if len(targets) and (targets.min() < 0 or targets.max() >= teacher.num_classes):
            raise TeacherError(f"the check images have labels up to {int(targets.max())} but the teacher "
                               f"predicts {teacher.num_classes} classes; check the dataset's classes.")
        predicted = teacher(inputs.to(device)).argmax(1).cpu()
        pairs.update(zip(targets.tolist(), predicted.tolist(), strict=True))
        if sweep and seen < SWEEP_IMAGES:
            n = SWEEP_IMAGES - seen
            kept.append((inputs[:n].cpu(), targets[:n], (predicted == targets)[:n]))
        seen += len(targets)
        if seen >= max_images:
            break
    seconds = time.perf_counter() - start
    if seen == 0:
        raise TeacherError("the teacher check got no images: the validation split is empty; add images "
                           "(or skip the check with --no-teacher-check).")
    per_class: Counter[int] = Counter()
    for (t, _), n in pairs.items():
        per_class[t] += n
    top1 = 100.0 * sum(n for (t, p), n in pairs.items() if t == p) / seen
    chance = 100.0 * max(max(per_class.values()) / seen, 1.0 / teacher.num_classes)
    threshold = auto_min_top1(chance) if min_top1 == "auto" else (None if min_top1 is None else float(min_top1))
    relabelled = _relabelling(teacher, pairs, per_class, auto_min_top1(chance) if threshold is None else threshold)
    passed = None if threshold is None else (top1 >= threshold and relabelled is None)
    better = _other_sizes(teacher, kept, threshold) if kept and threshold is not None else None
    passed = False if better is not None else passed
    result = TeacherCheck(top1=top1, images=seen, num_classes=teacher.num_classes, chance=chance,
                          min_top1=threshold, seconds=seconds, passed=passed, diagnosis=relabelled)
    _logger.info("Teacher check: %s top-1 %.2f%% on %d images (chance %.2f%%, threshold %s): %s, in %.2f s.",
                 teacher.name, top1, seen, chance, "none" if threshold is None else f"{threshold:.2f}%",
                 {True: "passed", False: "FAILED", None: "measured only"}[passed], seconds)
    if better is not None:  # before the causes below: at the size it was trained at, it may be fine
        error = TeacherError(better)
        error.check = result  # type: ignore[attr-defined]
        raise error
    if passed is False:
        error = TeacherError(_refusal(teacher, result, relabelled))
        error.check = result  # type: ignore[attr-defined]  # for callers that record the figure
        raise error
    if relabelled is not None:
        _logger.warning("Teacher check: %s.", relabelled)
    return result


SWEEP_IMAGES = 256  # images the other sizes are measured on (bounded: at most 3 more passes over them)
SWEEP_MIN_HW = 8  # smaller sizes are not tried (a convnet's stride leaves nothing to classify)
SWEEP_MARGIN = 1.5  # another size is "clearly better" above the threshold and this many times the top-1


def _sweep_sizes(teacher: nn.Module, run_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """The sizes tried besides ``run_hw``: its double, its half, the architecture's default cfg size."""
    h, w = run_hw
    sizes = [(2 * h, 2 * w), (h // 2, w // 2)]
    cfg_size = (getattr(teacher.model, "pretrained_cfg", None) or {}).get("input_size")
    if cfg_size:
        sizes.append((int(cfg_size[-2]), int(cfg_size[-1])))
    out: list[tuple[int, int]] = []
    for size in sizes:
        if size != tuple(run_hw) and min(size) >= SWEEP_MIN_HW and size not in out:
            out.append(size)
    return out


def _other_sizes(teacher: nn.Module, kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                 threshold: float) -> str | None:
    """When the teacher's training size is unknown, measure it at a few other sizes on the kept images; the
    refusal's text when one scores clearly better (above ``threshold`` and ``SWEEP_MARGIN`` x), else None.

    A plain state dict records no size: it runs at the student's, and a 32px teacher of a 16px student still
    scores above the threshold there while teaching far worse than it can. The sweep and its cost are logged.
    """
    device = teacher.input_scale.device
    run_hw = tuple(teacher.input_hw or kept[0][0].shape[-2:])
    images = sum(len(t) for _, t, _ in kept)
    here = 100.0 * sum(int(c.sum()) for _, _, c in kept) / images
    measured: dict[tuple[int, int], float] = {}
    start = time.perf_counter()
    original = teacher.input_hw
    try:
        for size in _sweep_sizes(teacher, run_hw):
            teacher.input_hw = size
            try:
                correct = sum(int((teacher(x.to(device)).argmax(1).cpu() == t).sum()) for x, t, _ in kept)
            except RuntimeError as e:  # a size the architecture cannot take: not a candidate
                _logger.info("Teacher check: %s cannot run at %s (%s); not measured there.", teacher.name,
                             fmt_hw(size), str(e).splitlines()[0][:120])
                continue
            measured[size] = 100.0 * correct / images
    finally:
        teacher.input_hw = original
    seconds = time.perf_counter() - start
    _logger.info("Teacher check: %s records no training size, so it runs at %s; measured on %d images at other "
                 "sizes too: %s (%s there), in %.2f s.", teacher.name, fmt_hw(run_hw), images,
                 ", ".join(f"{fmt_hw(k)} {v:.2f}%" for k, v in measured.items()) or "none could run",
                 f"{here:.2f}%", seconds)
    if not measured:
        return None
    best, top1 = max(measured.items(), key=lambda kv: kv[1])
    if top1 <= threshold or top1 <= SWEEP_MARGIN * here:
        return None
    size_flag = str(best[0]) if best[0] == best[1] else f"{best[0]} {best[1]}"
    run_flag = str(run_hw[0]) if run_hw[0] == run_hw[1] else f"{run_hw[0]} {run_hw[1]}"
    return (f"Teacher {teacher.name} records no training size, so it runs at {fmt_hw(run_hw)} (the student's), "
            f"where it scores top-1 {here:.2f}% on {images} validation images; at {fmt_hw(best)} it scores "
            f"{top1:.2f}%, so it was most likely trained at {fmt_hw(best)}. Fix: --teacher-input-size {size_flag} "
            f"(teacher_input_size) to run it there; to keep {fmt_hw(run_hw)}, say so with --teacher-input-size "
            f"{run_flag}.")


def _relabelling(teacher: nn.Module, pairs: Counter[tuple[int, int]], per_class: Counter[int], threshold: float) -> str | None:
    """'class order differs ...' when the sample's (true, predicted) pairs show a consistent relabelling.

    Consistent: mapping each true class to the teacher class it is most often predicted as is one-to-one
    and not the identity; every moved class has at least 2 images, most of them predicted as its image;
    and the relabelled top-1 clears ``threshold``. An honest teacher that confuses class A with B still
    predicts B for B's images, which breaks the one-to-one mapping.
    """
    best: dict[int, tuple[int, int]] = {}  # true class -> (count, predicted class); ties: lowest class
    for (t, p), n in sorted(pairs.items()):
        if t not in best or n > best[t][0]:
            best[t] = (n, p)
    mapping = {t: p for t, (_, p) in best.items()}
    moved = [(t, p) for t, p in sorted(mapping.items()) if t != p]
    if len(set(mapping.values())) != len(mapping) or not moved:
        return None
    if any(per_class[t] < 2 or 2 * pairs[(t, p)] <= per_class[t] for t, p in moved):
        return None
    relabelled_top1 = 100.0 * sum(pairs[(t, p)] for t, p in mapping.items()) / sum(per_class.values())
    if relabelled_top1 < threshold:
        return None
    data_names = teacher.dataset_label_names or []
    teacher_names = teacher.info.get("label_names") or []

    def named(i: int, names: Sequence[str]) -> str:
        return f"{i} ({names[i]!r})" if i < len(names) else str(i)

    shown = ", ".join(f"dataset class {named(t, data_names)} -> teacher class {named(p, teacher_names)}"
                      for t, p in moved[:4])
    return (f"class order differs: the teacher consistently predicts another class index for {len(moved)} of "
            f"{len(mapping)} classes ({shown}{', ...' if len(moved) > 4 else ''}); relabelled this way it "
            f"would score {relabelled_top1:.1f}%. Fix: give the dataset the teacher's class order with "
            "--class-map FILE, or use a teacher trained with this dataset's class order")

def _refusal(teacher: nn.Module, result: TeacherCheck, relabelled: str | None) -> str:
    info = teacher.info
    size = info.get("input_size")
    where = f" (sha256 {teacher.description['sha256'][:12]})" if info.get("file") else ""
    same_norm = "identical" if not teacher.adapts_normalisation else "converted"
    causes = [
        "class order / label mapping differs from the dataset's (same class count, different order): "
        "--class-map FILE with the teacher's order, or a teacher trained on this dataset",
        f"normalisation: the teacher expects mean {fmt_floats(teacher.teacher_mean)} std "
        f"{fmt_floats(teacher.teacher_std)} ({info.get('normalisation_source', 'given')}), the data pipeline "
        f"gives mean {fmt_floats(teacher.data_mean)} std {fmt_floats(teacher.data_std)} ({same_norm}); if the "
        "teacher was trained with another, give it with --teacher-mean/--teacher-std (teacher_mean/teacher_std; "
        "--mean/--std change the student's data, not what the teacher expects)",
        _resolution_cause(teacher),
        f"wrong checkpoint: check that {info.get('file') or info.get('hub_id') or info.get('name')}{where} "
        f"holds the trained teacher ({info.get('weights')} weights; --teacher-ema/--no-teacher-ema choose "
        "between raw and EMA)",
    ]
    assert result.min_top1 is not None
    if result.top1 >= result.min_top1:  # refused for its relabelling alone
        head = (f"Teacher {teacher.name} scores top-1 {result.top1:.2f}% on {result.images} validation images "
                f"(threshold {result.min_top1:.2f}%, chance {result.chance:.2f}%), but mostly by teaching "
                "other classes than the dataset's.")
    else:
        head = (f"Teacher {teacher.name} scores top-1 {result.top1:.2f}% on {result.images} validation images, "
                f"below the {result.min_top1:.2f}% a teacher needs (chance {result.chance:.2f}%): it would "
                "distil noise.")
    recorded = info.get("input_hw")
    if relabelled is not None:
        head += f" Diagnosis: {relabelled}."
        causes = causes[1:]
    elif recorded and size and tuple(recorded) != tuple(size[-2:]):
        head += f" Diagnosis: {causes.pop(2)}."
    lead = "Other possible causes" if "Diagnosis:" in head else "Likely causes"
    if relabelled is not None:  # a lower threshold still refuses a teacher that teaches other classes
        accept = ("--no-teacher-check to skip the check (min_top1=None); --teacher-min-top1 cannot accept a "
                  "class order that differs")
    elif result.top1 >= result.min_top1:
        accept = "--no-teacher-check to skip the check (min_top1=None)"
    else:
        accept = ("--teacher-min-top1 PCT (min_top1=) below the measured figure, or --no-teacher-check to skip "
                  "the check")
    return (f"{head} {lead}: " + "; ".join(f"({i + 1}) {c}" for i, c in enumerate(causes))
            + f". To accept it anyway: {accept}.")

def _resolution_cause(teacher: nn.Module) -> str:
    info = teacher.info
    size, recorded = info.get("input_size"), info.get("input_hw")
    runs = fmt_hw(size[-2:]) if size else "the size it is given"
    if recorded and size and tuple(recorded) != tuple(size[-2:]):
        return (f"resolution: it runs at {runs} ({info.get('input_size_reason')}) but its weights were trained "
                f"at {fmt_hw(recorded)} ({info.get('input_hw_source')}); drop --teacher-input-size "
                "(teacher_input_size) so it runs at its own size")
    if info.get("input_size_source") in ("student", "unknown"):
        return (f"resolution: its weights record no training size, so it runs at {runs} (the student's); "
                "if it was trained at another, pass --teacher-input-size H W (teacher_input_size)")
    return (f"resolution: it runs at {runs} ({info.get('input_size_reason')}); if it was trained at another, "
            "pass --teacher-input-size H W (teacher_input_size)")
