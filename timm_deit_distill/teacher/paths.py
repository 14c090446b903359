"""The path a teacher runs on (precision x eager/compiled), chosen by measurement on the machine, not by CPU flags.

Which path is fastest cannot be read from the hardware: on one AVX512-BF16 CPU bf16 runs 2x faster than fp32,
on another 1.3-1.8x slower; ``torch.compile`` saves 15 % on one model and several times on another, after a
warm-up of 15-45 s. So :func:`select_path` times the candidate paths on batches of the run's own shape and
checks each one's argmax against eager fp32 on real images, then picks the cheapest over the batches the run
will serve::

    cost(path) = steps x ms/batch (+ its compile warm-up, unless this process has already paid it)

among the paths whose agreement with eager fp32 reaches ``min_agreement`` (0.995 by default). A path within
:data:`NOISE_MARGIN` of eager fp32 loses to it: a reduced precision has to earn its place.

What is measured and when:

* eager candidates (fp32, bf16; fp16 too on CUDA) in interleaved rounds on real batches: each round runs every
  candidate once, in an order that rotates, on one batch, and the medians are kept. The rounds stop after
  :data:`MEASURE_BUDGET_S` (at least :data:`MIN_ROUNDS` rounds); the agreement is counted on the same batches.
* compiled candidates (``torch.compile`` with inductor freezing) only where they could pay for themselves:
  compiling precision p is tried when ``warm-up + steps x ms(p eager) x (1 - COMPILE_GAIN_MAX)`` beats the best
  eager cost, the warm-up estimated from the compile warm-ups this machine has measured before (else
  :data:`COMPILE_WARMUP_ESTIMATE_S`). A compile that fails is reported in the table and skipped.
* nothing at all when the run is too short to repay the measurement (:data:`MEASURE_PAYBACK`), or when both the
  precision and compilation are given explicitly.

The measurements are remembered (:mod:`.path_memory`) per machine, versions, teacher weights and batch shape,
so a rerun chooses without measuring; the choice is recomputed from them for the new run's length.

Why a loop of its own and not ``torch.utils.benchmark.Timer`` (which times the one-call estimate in
:mod:`.tuning`): Timer times one statement. Timed per round with ``Timer.timeit(1)``, every sample costs three
forward passes (Timer always makes ``max(number // 100, 2)`` warm-up calls first) and returns no output to count
agreement on; ``blocked_autorange`` times one candidate after the other, so a change of load lands on one of
them. Measured by ``benchmarks/teacher_path_timing.py`` (resnet18 at 64 px, batch 16, one thread, eight 5 s
measurements on a shared 2-core AMD EPYC): quiet, all three put bf16 at 1.7-1.8x fp32, but ``timeit(1)`` rounds
took 5.1 s for 20 samples a path where this loop took 2.2 s for 25; under load, this loop gave 1.73-2.03x,
``timeit(1)`` rounds 1.22-2.61x, ``blocked_autorange`` 1.28-5.62x.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import TeacherError

__all__ = [
    "TeacherPath", "PathMeasurement", "PathChoice", "COMPILE_CHOICES", "PATH_PRECISIONS", "MIN_AGREEMENT",
    "MEASURE_BUDGET_S", "COMPILE_WARMUP_ESTIMATE_S", "COMPILE_GAIN_MAX", "MIN_ROUNDS", "NOISE_MARGIN",
    "MEASURE_PAYBACK", "parse_compile", "candidate_precisions", "choose_path", "compile_worth_trying",
    "measure_paths", "fixed_batches",
]

_logger = logging.getLogger(__name__)

PATH_PRECISIONS = ("fp32", "bf16", "fp16")
COMPILE_CHOICES = ("auto", "yes", "no")
MIN_AGREEMENT = 0.995  # argmax agreement with eager fp32 a faster path needs (the default of --teacher-min-agreement)
MEASURE_BUDGET_S = 5.0  # wall seconds of timing rounds per phase (eager, then compiled), beyond the minimum rounds
MIN_ROUNDS = 3  # timing rounds per phase, whatever the budget: a median needs a few
MAX_ROUNDS = 25
COMPILE_WARMUP_ESTIMATE_S = 30.0  # first compile of a convnet teacher on a 2-core CPU: 15-47 s measured
COMPILE_GAIN_MAX = 0.5  # the most a compile is assumed to save of an eager path, when deciding to try it
NOISE_MARGIN = 0.03  # a path must be this much cheaper than eager fp32 to be preferred to it
MEASURE_PAYBACK = 10.0  # measure only when the run's teacher time at fp32 is this many times the measurement's

REFERENCE_PRECISION = "fp32"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Every timing of a path reads this clock. Tests replace it (tests/conftest.py, TeacherTimings) with one that each
# path's runner advances by a fixed cost: which path is fastest is then the test's choice, not the CPU's.
_clock: Callable[[], float] = time.perf_counter


@dataclass(frozen=True, order=True)
class TeacherPath:
    """One way to run the teacher: a compute precision (autocast dtype), eager or ``torch.compile``d."""

    precision: str
    compiled: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PATH_PRECISIONS:
            raise TeacherError(f"precision must be one of {PATH_PRECISIONS}, got {self.precision!r}.")

    def __str__(self) -> str:
        return f"{self.precision} {'compiled' if self.compiled else 'eager'}"

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    @classmethod
    def parse(cls, text: str) -> TeacherPath:
        """The inverse of ``str(path)``: ``'bf16 compiled'``, ``'fp32 eager'``."""
        precision, _, how = str(text).partition(" ")
        if how not in ("eager", "compiled"):
            raise TeacherError(f"not a teacher path: {text!r} (expected e.g. 'bf16 compiled').")
        return cls(precision, how == "compiled")


REFERENCE = TeacherPath(REFERENCE_PRECISION, False)


@dataclass(frozen=True)
class PathMeasurement:
    """What was measured for one path: median ms per batch, argmax agreement with eager fp32 on ``images`` real
    images, the compile warm-up (seconds of its first call), or a ``note`` saying why it has no figures."""

    path: TeacherPath
    ms: float | None = None
    agreement: float | None = None
    images: int = 0
    warmup_s: float | None = None
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "ms": self.ms, "agreement": self.agreement, "images": self.images,
                "warmup_s": self.warmup_s, "note": self.note}

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> PathMeasurement:
        def number(key: str) -> float | None:
            value = row.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"{key} {value!r} is not a non-negative number")
            return float(value)

        images = row.get("images", 0)
        if isinstance(images, bool) or not isinstance(images, int) or images < 0:
            raise ValueError(f"images {images!r} is not a count")
        note = row.get("note")
        return cls(TeacherPath.parse(row["path"]), number("ms"), number("agreement"), images, number("warmup_s"),
                   None if note is None else str(note))

    @property
    def usable(self) -> bool:
        return self.ms is not None and self.note is None


@dataclass(frozen=True)
class PathChoice:
    """The path a teacher runs on and why: ``how`` is ``'measured'``, ``'remembered'`` (measured by an earlier run
    on this machine), ``'requested'`` (given explicitly) or ``'default'`` (not worth measuring, or no data)."""

    path: TeacherPath
    how: str
    reason: str
    measurements: tuple[PathMeasurement, ...] = ()
    batch_shape: tuple[int, ...] | None = None
    steps: int | None = None
    min_agreement: float = MIN_AGREEMENT
    seconds: float = 0.0  # spent measuring in this process (compile warm-ups included)
    machine: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (for checkpoint metadata and cache manifests)."""
        return {"path": str(self.path), "how": self.how, "reason": self.reason,
                "measurements": [m.as_dict() for m in self.measurements],
                "batch_shape": list(self.batch_shape) if self.batch_shape else None, "steps": self.steps,
                "min_agreement": self.min_agreement, "seconds": round(self.seconds, 2), "machine": self.machine}

    def table(self) -> str:
        """The measured candidates, one line each: ms/batch, speed against eager fp32, agreement, warm-up."""
        reference = next((m.ms for m in self.measurements if m.path == REFERENCE and m.ms), None)
        lines = [f"  {'path':<14} {'ms/batch':>9} {'vs fp32 eager':>14} {'agreement':>17} {'warm-up':>9}"]
        for m in self.measurements:
            ms = f"{m.ms:9.1f}" if m.ms is not None else f"{'-':>9}"
            speed = f"{reference / m.ms:13.2f}x" if reference and m.ms else f"{'-':>14}"
            agree = f"{m.agreement:.4f} ({m.images:>4})" if m.agreement is not None else "-"
            warm = f"{m.warmup_s:8.1f}s" if m.warmup_s is not None else f"{'-':>9}"
            tail = "  <- chosen" if m.path == self.path else ""
            if m.note:
                tail += f"  {m.note}"
            lines.append(f"  {str(m.path):<14} {ms} {speed} {agree:>17} {warm}{tail}")
        return "\n".join(lines)

    def summary(self) -> str:
        """One line: the path, how it was chosen and why."""
        return f"{self.path} ({self.how}: {self.reason})"


def parse_compile(compile: bool | str | None) -> str:
    """``compile=`` as ``'auto'``, ``'yes'`` or ``'no'`` (``True``/``False`` are ``'yes'``/``'no'``)."""
    if compile is None:
        return "auto"
    if isinstance(compile, bool):
        return "yes" if compile else "no"
    if compile not in COMPILE_CHOICES:
        raise TeacherError(f"compile must be one of {COMPILE_CHOICES} (or True/False), got {compile!r}.")
    return str(compile)


def candidate_precisions(device: torch.device | str) -> list[str]:
    """The precisions worth timing on ``device``: fp32 and bf16 (CPU, and CUDA with native bf16), fp16 on CUDA.

    fp16 on CPU is left out: without AMX-FP16 it is emulated, far slower than fp32 everywhere measured.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return ["fp32", "bf16"]
    if device.type == "cuda":
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return ["fp32", *(["bf16"] if native_bf16 else []), "fp16"]
    return ["fp32"]


# ----------------------------------------------------------------------------------------------------------
# Choosing from measurements


def _cost(m: PathMeasurement, steps: int | None, warm: set[TeacherPath]) -> float:
    assert m.ms is not None
    work = m.ms / 1000.0 * (steps if steps is not None else 1)
    if m.path.compiled and m.path not in warm and steps is not None:
        work += m.warmup_s or 0.0
    return work


def choose_path(
    measurements: Sequence[PathMeasurement],
    allowed: Iterable[TeacherPath],
    *,
    steps: int | None,
    min_agreement: float,
    warm: Iterable[TeacherPath] = (),
    trusted: Iterable[TeacherPath] = (),
    default: TeacherPath = REFERENCE,
) -> tuple[TeacherPath, str]:
    """The cheapest allowed path over ``steps`` batches whose agreement reaches ``min_agreement``, and why.

    ``warm``: compiled paths whose warm-up this process has already paid. ``trusted``: paths that need no
    agreement (eager fp32, the reference, and a precision the user asked for). ``default`` wins unless another
    path is more than :data:`NOISE_MARGIN` cheaper.
    """
    allowed, warm, trusted = set(allowed), set(warm), {REFERENCE, *trusted}
    eligible = [m for m in measurements if m.path in allowed and m.usable
                and (m.path in trusted or (m.agreement is not None and m.agreement >= min_agreement))]
    over = f" over {steps:,} teacher batches" if steps is not None else ""
    if not eligible:
        return REFERENCE, (f"no allowed path could be measured or agrees with fp32 on >= {min_agreement:.2%} of the "
                           "images: eager fp32 is the safe fallback")
    best = min(eligible, key=lambda m: (_cost(m, steps, warm), m.path.compiled, m.path != REFERENCE))
    base = next((m for m in eligible if m.path == default), None)
    if base is not None and best.path != base.path and _cost(best, steps, warm) > (1 - NOISE_MARGIN) * _cost(base, steps, warm):
        return base.path, (f"no other path is more than {NOISE_MARGIN:.0%} cheaper{over} and agrees with fp32 on "
                           f">= {min_agreement:.2%} of the images")
    reference = next((m.ms for m in measurements if m.path == REFERENCE and m.ms), None)
    speed = f", {reference / best.ms:.2f}x eager fp32" if reference and best.ms else ""
    warmup = ""
    if best.path.compiled and steps is not None:
        warmup = (", its compile warm-up already paid" if best.path in warm
                  else f", {best.warmup_s or 0:.0f} s compile warm-up counted")
    if best.path == REFERENCE:
        return best.path, f"no faster path agrees with fp32 on >= {min_agreement:.2%} of the images{over}"
    agreement = ("the requested precision" if best.path in trusted else
                 f"agrees with fp32 on {best.agreement:.2%} of {best.images} images")
    return best.path, f"the cheapest{over}{speed}{warmup}; {agreement}"


def compile_worth_trying(eager_ms: float, best_ms: float, steps: int | None, warmup_s: float) -> bool:
    """Whether compiling a path whose eager form takes ``eager_ms`` could beat the best ``best_ms`` over ``steps``
    batches, paying ``warmup_s`` of compilation, if the compile saved :data:`COMPILE_GAIN_MAX` of it."""
    if steps is None:
        return False
    return warmup_s + steps * eager_ms / 1000.0 * (1 - COMPILE_GAIN_MAX) < steps * best_ms / 1000.0


# ----------------------------------------------------------------------------------------------------------
# Measuring


def fixed_batches(loader: Iterable[Any], batch_size: int, prepare: Callable[[torch.Tensor], torch.Tensor],
                  ) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Endless batches of exactly ``batch_size`` real images from ``loader`` (which yields ``(inputs, ...)`` or
    tensors), each ``prepare``d, with each row's image number (its position in one pass over ``loader``).

    The loader is read again from its start when it runs out, so an image can come back: a path's agreement
    counts each image once, by its number.
    """
    rows: list[torch.Tensor] = []
    ids: list[int] = []
    while True:
        got = 0
        for batch in loader:
            inputs = batch if isinstance(batch, torch.Tensor) else batch[0]
            for row in inputs:
                rows.append(row)
                ids.append(got)
                got += 1
                if len(rows) == batch_size:
                    with torch.inference_mode():
                        x = prepare(torch.stack(rows).float())
                    yield x, ids
                    rows, ids = [], []
        if got == 0:
            raise TeacherError("no images to measure the teacher's paths on: the validation split is empty.")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _failure(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"failed: {type(e).__name__}: {first[:160]}"


@dataclass
class _Tally:
    times: list[float] = field(default_factory=list)
    agree: int = 0
    images: int = 0
    seen: set[int] = field(default_factory=set)
    warmup_s: float | None = None
    note: str | None = None


def measure_paths(
    runners: Mapping[TeacherPath, Callable[[torch.Tensor], torch.Tensor]],
    batches: Iterator[tuple[torch.Tensor, list[int]]],
    *,
    device: torch.device | str = "cpu",
    budget_s: float = MEASURE_BUDGET_S,
    min_rounds: int = MIN_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
    tallies: dict[TeacherPath, _Tally] | None = None,
) -> dict[TeacherPath, _Tally]:
    """Warm every runner up once (a compiled one compiles: its warm-up), then time them in interleaved rounds.

    ``runners`` must include :data:`REFERENCE` (eager fp32): each round's agreement is counted against its
    argmax on the same batch. A runner that raises is noted and dropped. Rounds stop at ``max_rounds``, or after
    ``min_rounds`` once ``budget_s`` seconds have passed. ``tallies`` carries figures over from an earlier phase.
    """
    if REFERENCE not in runners:
        raise TeacherError("measuring teacher paths needs the eager fp32 reference.")
    device = torch.device(device)
    tallies = tallies if tallies is not None else {}
    live = dict(runners)
    x, _ = next(batches)
    for path in list(live):
        tally = tallies.setdefault(path, _Tally())
        if tally.times:
            continue  # already warm (measured in an earlier phase)
        try:
            _sync(device)
            start = _clock()
            with torch.inference_mode():
                live[path](x)
            _sync(device)
            if path.compiled:
                tally.warmup_s = _clock() - start
        except Exception as e:  # noqa: BLE001 - a path that cannot run is simply not a candidate
            if path == REFERENCE:
                raise
            tally.note = _failure(e)
            del live[path]
    started = _clock()
    order = list(live)
    for round_index in range(max_rounds):
        if round_index >= min_rounds and _clock() - started > budget_s:
            break
        x, ids = next(batches)
        predicted: dict[TeacherPath, torch.Tensor] = {}
        shift = round_index % len(order)
        for path in order[shift:] + order[:shift]:
            try:
                _sync(device)
                start = _clock()
                with torch.inference_mode():
                    out = live[path](x)
                _sync(device)
                tallies[path].times.append(_clock() - start)
            except Exception as e:  # noqa: BLE001
                if path == REFERENCE:
                    raise
                tallies[path].note = _failure(e)
                continue
            predicted[path] = out.argmax(1)
        order = [p for p in order if p in predicted]
        reference = predicted[REFERENCE].tolist()
        for path, p in predicted.items():
            tally = tallies[path]
            for image, mine, theirs in zip(ids, p.tolist(), reference, strict=True):
                if image not in tally.seen:  # each image once per path, however often the loader repeats it
                    tally.seen.add(image)
                    tally.agree += mine == theirs
                    tally.images += 1
    return tallies


def to_measurements(tallies: Mapping[TeacherPath, _Tally]) -> list[PathMeasurement]:
    rows = []
    for path, t in sorted(tallies.items(), key=lambda kv: (kv[0].compiled, PATH_PRECISIONS.index(kv[0].precision))):
        ms = 1000.0 * statistics.median(t.times) if t.times and t.note is None else None
        agreement = t.agree / t.images if t.images else None
        rows.append(PathMeasurement(path, ms, agreement, t.images, t.warmup_s, t.note))
    return rows


def noted(path: TeacherPath, note: str) -> PathMeasurement:
    """A row for a path that was not measured, saying why."""
    return PathMeasurement(path, note=note)


def merge(old: Sequence[PathMeasurement], new: Sequence[PathMeasurement]) -> list[PathMeasurement]:
    """``old`` rows replaced by ``new`` ones for the same path; a measured row is never replaced by a note."""
    rows = {m.path: m for m in old}
    for m in new:
        if m.ms is None and m.path in rows and rows[m.path].ms is not None and m.note and m.note.startswith("not "):
            continue
        rows[m.path] = m
    return sorted(rows.values(), key=lambda m: (m.path.compiled, PATH_PRECISIONS.index(m.path.precision)))


def with_note(m: PathMeasurement, note: str) -> PathMeasurement:
    return replace(m, note=note)
