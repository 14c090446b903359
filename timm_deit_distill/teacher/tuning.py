"""Choosing a teacher's path for a run: what to measure, what to reuse, what to skip (see :mod:`.paths`).

:func:`select_path` is what :meth:`DistillationTeacher.select_path
<timm_deit_distill.teacher.DistillationTeacher.select_path>` runs: with the run's batch shape and length
(``steps``: the teacher batches it will serve) it measures the eager paths, then the compiled ones worth trying,
remembers the figures (:mod:`.path_memory`) and applies the cheapest path that agrees with eager fp32.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch

from . import paths as P
from .path_memory import PathMemory, describe_machine, machine_identity
from .paths import REFERENCE, PathChoice, PathMeasurement, TeacherPath

__all__ = ["select_path", "agree_on_path"]

_logger = logging.getLogger(__name__)


def agree_on_path(teacher: Any, choose: Callable[[], PathChoice], *, rank: int, world_size: int) -> PathChoice:
    """Choose the teacher's path on process 0 alone (``choose()``, e.g. a :func:`select_path` call) and put every
    other process of the group on it: one run's processes compute their targets on one path (measuring on each
    would compete for the same machine and could pick different precisions). A collective: every process of the
    default group must call it. An error of process 0 is raised on every process."""
    import torch.distributed as dist

    choice, error = None, None
    if rank == 0:
        try:
            choice = choose()
        except Exception as e:
            if world_size == 1:
                raise
            error = e
    if world_size > 1:
        box = [str(choice.path) if choice is not None else None, None if error is None else repr(error)]
        dist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        if box[1] is not None:
            raise RuntimeError(f"process 0 failed while choosing the teacher's path: {box[1]}")
        if rank != 0:
            teacher.use_path(box[0], reason="chosen by process 0")
            choice = teacher.path_choice
    assert choice is not None
    return choice


def _key(teacher: Any, shape: tuple[int, ...], machine: dict[str, Any]) -> dict[str, Any]:
    import timm

    return {"machine": machine, "torch": torch.__version__, "timm": timm.__version__,
            "teacher": teacher.name or type(teacher.model).__name__, "weights_sha256": teacher.description["sha256"],
            "batch_shape": list(shape), "channels_last": teacher.channels_last,
            "compile_options": repr(sorted(teacher.compile_options.items()))}


@dataclass(frozen=True)
class _Candidates:
    """The paths a teacher may run on for this request: eager ones timed (candidates, and under compile='yes' the
    guide), eager ones allowed, compiled ones allowed, a precision given explicitly (trusted), the default."""

    timed: list[TeacherPath]
    eager: list[TeacherPath]
    compiled: list[TeacherPath]
    trusted: set[TeacherPath]
    default: TeacherPath

    @property
    def allowed(self) -> set[TeacherPath]:
        return set(self.eager) | set(self.compiled)


def _candidates(teacher: Any, steps: int | None) -> _Candidates:
    requested, compile_mode = teacher.precision, teacher.compile_request
    precisions = P.candidate_precisions(teacher.device) if requested == "auto" else [requested]
    timed = [TeacherPath(p) for p in precisions]
    compiled = [TeacherPath(p, True) for p in precisions] if compile_mode != "no" else []
    if compile_mode == "auto" and steps is None:
        compiled = []  # a compile's warm-up can only be weighed against a known number of batches
    return _Candidates(timed=timed, eager=timed if compile_mode != "yes" else [], compiled=compiled,
                       trusted={TeacherPath(requested)} if requested != "auto" else set(),
                       default=TeacherPath(requested if requested != "auto" else "fp32", compile_mode == "yes"))


class _Rows:
    """The measurements so far (remembered, then measured here) and the measuring itself."""

    def __init__(self, teacher: Any, stream: Any, budget_s: float, remembered: list[PathMeasurement] | None) -> None:
        self.teacher, self.stream, self.budget_s = teacher, stream, budget_s
        self.rows: list[PathMeasurement] = list(remembered or [])
        self.tallies: dict[TeacherPath, Any] = {}
        self.measured_now = False

    @property
    def known(self) -> set[TeacherPath]:
        return {m.path for m in self.rows if m.ms is not None or (m.note or "").startswith("failed")}

    def measure(self, paths: list[TeacherPath]) -> None:
        runners = {p: self.teacher._runner(p) for p in [REFERENCE, *paths]}
        P.measure_paths(runners, self.stream, device=self.teacher.device, budget_s=self.budget_s,
                        tallies=self.tallies)
        self.rows = P.merge(self.rows, P.to_measurements(self.tallies))
        self.measured_now = True


def select_path(
    teacher: Any,
    batches: Iterable[Any],
    *,
    batch_size: int | None = None,
    steps: int | None = None,
    min_agreement: float = P.MIN_AGREEMENT,
    budget_s: float = P.MEASURE_BUDGET_S,
    memory: PathMemory | None = None,
) -> PathChoice:
    """Measure (or recall) the teacher's candidate paths on ``batches`` and switch it to the cheapest that agrees.

    ``batches`` yields real input batches as the data pipeline normalises them (``(inputs, ...)`` or tensors);
    ``batch_size`` is the run's (default: the first batch's); ``steps`` the teacher batches of that size the run
    will serve (None: unknown, so compiling is never tried under ``compile='auto'``).
    """
    if not 0.0 < min_agreement <= 1.0:
        from ..errors import TeacherError

        raise TeacherError(f"min_agreement must be in (0, 1], got {min_agreement!r}.")
    clock = P._clock
    started = clock()
    cand = _candidates(teacher, steps)
    if len(cand.allowed) == 1:
        return teacher._use_path(_the_only_path(teacher, cand, steps, min_agreement))
    if batch_size is None:
        first = next(iter(batches))
        first = first if isinstance(first, torch.Tensor) else first[0]
        batch_size = len(first)
    stream = P.fixed_batches(batches, int(batch_size), teacher.prepare_input)
    x0, ids0 = next(stream)
    shape = tuple(int(v) for v in x0.shape)
    teacher._compiled_batch = shape[0]
    machine = machine_identity(teacher.device)
    memory = memory if memory is not None else PathMemory.default()
    key = _key(teacher, shape, machine)
    remembered = memory.lookup(key)
    rows = _Rows(teacher, itertools.chain([(x0, ids0)], stream), budget_s, remembered)
    known = rows.known
    how = "remembered" if remembered else "measured"

    # Phase 1, eager: skipped when remembered, or when the run is too short to repay measuring at all.
    warmup = memory.warmup_estimate(machine, P.COMPILE_WARMUP_ESTIMATE_S)
    missing = [p for p in cand.timed if p not in known]
    if missing and steps is not None and teacher.compile_request != "yes":
        early = _not_worth_measuring(teacher, cand, x0, steps, warmup, min_agreement, clock)
        if early is not None:
            return teacher._use_path(replace(early, batch_shape=shape, seconds=clock() - started,
                                             machine=describe_machine(machine)))
    if missing:
        rows.measure(missing)
        how = "measured"

    # Phase 2, compiled: what could repay its warm-up over this run (under compile='yes': every precision whose
    # eager form agrees with fp32).
    to_try, notes, passing = _compiled_to_try(teacher, cand, rows.rows, known, steps, warmup, min_agreement)
    if to_try:
        _logger.info("Teacher %s: compiling %s (torch.compile %s) to time them; a first compile takes ~%.0f s (%s).",
                     teacher.name, " and ".join(map(str, to_try)), teacher.compile_options, *warmup)
        best = min((m for m in passing if m.path in cand.eager), key=lambda m: m.ms or float("inf"), default=None)
        rows.measure(([best.path] if best is not None and best.path != REFERENCE else []) + to_try)
        how = "measured"
    if rows.measured_now:
        memory.store(key, [m for m in rows.rows if m.ms is not None or (m.note or "").startswith("failed")])

    shown = P.merge(rows.rows, notes)
    path, reason = P.choose_path(shown, cand.allowed, steps=steps, min_agreement=min_agreement,
                                 warm=teacher._warm_paths(), trusted=cand.trusted, default=cand.default)
    if path not in cand.allowed:
        _logger.warning("Teacher %s: none of %s could be measured or agrees with eager fp32 on >= %.2f%% of the "
                        "images; running eager fp32.", teacher.name, ", ".join(map(str, sorted(cand.allowed))),
                        100 * min_agreement)
    choice = PathChoice(path, how, reason, tuple(shown), shape, steps, min_agreement, clock() - started,
                        describe_machine(machine))
    return teacher._use_path(choice)


def _the_only_path(teacher: Any, cand: _Candidates, steps: int | None, min_agreement: float) -> PathChoice:
    """The choice when the request leaves one path: nothing to measure."""
    (path,) = cand.allowed
    if teacher.precision == "auto":
        why = f"{path.precision} is the only precision timed on {teacher.device.type}"
    elif teacher.compile_request == "auto":
        why = "precision given explicitly; compiling is only weighed against a known run length (steps=)"
    else:
        why = "precision and compilation given explicitly"
    return PathChoice(path, "requested", why, steps=steps, min_agreement=min_agreement)


def _not_worth_measuring(teacher: Any, cand: _Candidates, x0: torch.Tensor, steps: int, warmup: tuple[float, str],
                         min_agreement: float, clock: Callable[[], float]) -> PathChoice | None:
    """The choice without measuring, when one timed call of eager fp32 shows that measuring cannot pay: an
    explicit precision whose compile cannot repay its warm-up, or a run too short to repay measuring the paths.
    None: measure."""
    device, timed = teacher.device, cand.timed
    ms = _time_once(teacher._runner(REFERENCE), x0, device, clock)
    if len(timed) == 1:  # an explicit precision: only compiling is open
        own = ms if timed[0] == REFERENCE else _time_once(teacher._runner(timed[0]), x0, device, clock)
        if not P.compile_worth_trying(own, own, steps, warmup[0]):
            reason = (f"precision given; compiling cannot repay a ~{warmup[0]:.0f} s compile ({warmup[1]}) "
                      f"over {steps:,} batches x {own:.1f} ms")
            return PathChoice(timed[0], "requested", reason, steps=steps, min_agreement=min_agreement)
        return None
    cost = (1 + P.MIN_ROUNDS) * len(timed) * ms / 1000.0
    if steps * ms / 1000.0 < P.MEASURE_PAYBACK * cost:
        reason = (f"a run of {steps:,} teacher batches (~{steps * ms / 1000.0:.1f} s at fp32) is too short to "
                  f"repay measuring the paths (~{cost:.1f} s)")
        return PathChoice(cand.default, "default", reason, steps=steps, min_agreement=min_agreement)
    return None


def _compiled_to_try(teacher: Any, cand: _Candidates, rows: list[PathMeasurement], known: set[TeacherPath],
                     steps: int | None, warmup: tuple[float, str], min_agreement: float,
                     ) -> tuple[list[TeacherPath], list[PathMeasurement], list[PathMeasurement]]:
    """The compiled paths worth timing, notes on the others, and the eager measurements that agree with fp32."""
    notes: list[PathMeasurement] = []
    to_try: list[TeacherPath] = []
    by_path = {m.path: m for m in rows}
    passing = [m for m in rows if m.path in cand.timed and m.usable
               and (m.path in cand.trusted or (m.agreement or 0.0) >= min_agreement)]
    best_eager = min((m.ms for m in passing if m.path in cand.eager and m.ms is not None), default=None)
    seconds, source = warmup
    for path in cand.compiled:
        if path in known:
            continue
        twin = by_path.get(TeacherPath(path.precision))
        if twin is None or twin not in passing or twin.ms is None:
            notes.append(P.noted(path, f"not tried: {path.precision} eager does not agree with fp32"))
        elif teacher.compile_request == "yes" or P.compile_worth_trying(twin.ms, best_eager or twin.ms, steps,
                                                                        seconds):
            to_try.append(path)
        elif best_eager is not None and twin.ms * (1 - P.COMPILE_GAIN_MAX) >= best_eager:
            notes.append(P.noted(path, f"not tried: even {P.COMPILE_GAIN_MAX:.0%} faster than its eager {twin.ms:.1f} ms "
                                       f"it would not beat {best_eager:.1f} ms eager"))
        else:
            notes.append(P.noted(path, f"not tried: {steps:,} batches x {twin.ms:.1f} ms cannot repay a ~{seconds:.0f} s "
                                       f"compile ({source})"))
    return to_try, notes, passing


def _time_once(runner: Any, x: torch.Tensor, device: torch.device, clock: Callable[[], float]) -> float:
    """ms of one call of ``runner`` on ``x``: ``torch.utils.benchmark.Timer.timeit(1)``, whose two warm-up calls pay
    the one-time set-up first, on this process's threads (Timer's default is one) and on ``clock``, synchronised
    with ``device``."""

    def timer() -> float:
        P._sync(device)
        return clock()

    with torch.inference_mode():
        measured = _timer_class()("run(x)", globals={"run": runner, "x": x}, timer=timer,
                                  num_threads=torch.get_num_threads()).timeit(1)
    return 1000.0 * measured.median


def _timer_class() -> Any:
    """torch's ``Timer``, imported when first needed: ``torch.utils.benchmark`` imports ``torch.utils.cpp_extension``
    (~90 ms), which on a machine with a CUDA toolkit but no CUDA runtime (``nvcc`` on the PATH of a CPU machine)
    logs a warning at import that has nothing to do with the run; it is kept quiet for that import only."""
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        quiet.setLevel(level)
    return Timer
