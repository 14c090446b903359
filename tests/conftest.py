"""Shared test set-up: offline Hub, quiet telemetry, small thread pools on the 2-core CI machine, and teacher path
timings that do not depend on the machine (:class:`TeacherTimings`)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
# datasets reads these into module constants when first imported, so they are set here, before any test imports
# it (subprocesses inherit them): no Hub lookups or download-count pings from datasets (HF_DATASETS_OFFLINE, not
# HF_HUB_OFFLINE, which the Hub tests set per test), no progress bars, and a datasets cache of the session's own.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
if "HF_DATASETS_CACHE" not in os.environ:
    _datasets_cache = tempfile.mkdtemp(prefix="deit-distill-tests-datasets-")
    os.environ["HF_DATASETS_CACHE"] = _datasets_cache
    atexit.register(shutil.rmtree, _datasets_cache, ignore_errors=True)
# Teacher path decisions are not remembered across tests, nor read from or written into the user's cache folder
# (set, not defaulted: a user's own DEIT_DISTILL_TEACHER_PATHS would hand the tests this machine's timings). Tests of
# the memory pass their own file.
os.environ["DEIT_DISTILL_TEACHER_PATHS"] = ""


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory):
    """A resnet10t that has learned the digits at 32px (trained once per test session, ~15 s)."""
    from train_fixtures import train_teacher

    return train_teacher(tmp_path_factory.mktemp("trained-teacher"))


@pytest.fixture(scope="session")
def sources(tmp_path_factory, trained_teacher):
    """Every timm dataset source written from the trained teacher's digits (16 images per class and split, so the
    teacher knows them): {"folder", "tar", "hf_parquet", "hf_disk", "wds", "mnist"} -> path (see source_fixtures)."""
    from source_fixtures import write_sources

    return write_sources(tmp_path_factory.mktemp("sources"), trained_teacher["data"], per_class=16)


class TeacherTimings:
    """What each teacher path costs in this test, in place of what this CPU and its load would measure.

    ``teacher.paths`` reads its time from ``paths._clock``: this object is that clock, and every call of a path's
    runner (``DistillationTeacher._runner``) runs the real runner, then advances it by ``ms[path]`` milliseconds
    (a compiled path by ``warmup_s`` more at its first call on a teacher). Outputs, agreement and every rule of the
    choice stay real; only the timings are the test's. Which path is fastest flips between CPUs (bf16 is 2x faster
    on one AVX512-BF16 CPU, slower on another), so without this a test's outcome would depend on where it runs.

    Default: eager fp32 costs 1 ms a batch, eager bf16 and fp16 2 ms, a compiled path what its eager twin costs, so
    a teacher left to choose runs eager fp32 (measured, or unmeasured when the run is too short) and never
    compiles (trying a compile would need > 60,000 batches to repay its estimated warm-up). Tests of the choice
    set ``ms`` (e.g. ``{FP32: 10.0, BF16: 4.0}``), ``warmup_s``, ``wrong`` (paths whose argmax is moved on every
    other row) and ``fail`` (paths that raise), and read ``calls`` (the paths run, in order).
    ``@pytest.mark.real_teacher_timings`` leaves the real clock in place, for the tests that check the rule on
    whatever this machine measures.
    """

    DEFAULT_MS = 2.0  # a path in neither ``ms`` nor (compiled) with its eager twin there

    def __init__(self) -> None:
        self.real: tuple[Callable[[], float], Callable[..., Any]] | None = None  # the clock and runner replaced
        self.reset()

    def reset(self) -> None:
        """The default figures; no calls recorded, no compile warm-up paid; the clock back at 0 (a clock that ran
        on over a session would give 9.999... ms for 10 ms, and a rule comparing 10 x 0.5 with 5 would flip)."""
        from timm_deit_distill.teacher import TeacherPath

        self.now = 0.0
        self.ms: dict[Any, float] = {TeacherPath("fp32"): 1.0}
        self.warmup_s = 0.0
        self.wrong: set[Any] = set()
        self.fail: set[Any] = set()
        self.calls: list[Any] = []
        self._warm: weakref.WeakKeyDictionary[Any, set[Any]] = weakref.WeakKeyDictionary()

    def __call__(self) -> float:
        return self.now

    def set(self, ms: dict[Any, float], *, warmup_s: float = 0.0, wrong: set[Any] = frozenset(),
            fail: set[Any] = frozenset()) -> TeacherTimings:
        """Replace the figures (and forget the calls so far): a compiled path missing from ``ms`` costs what its
        eager twin does, any other missing path :attr:`DEFAULT_MS`."""
        self.ms, self.warmup_s, self.wrong, self.fail = dict(ms), warmup_s, set(wrong), set(fail)
        self.calls.clear()
        return self

    def cost_ms(self, path: Any) -> float:
        if path in self.ms:
            return self.ms[path]
        twin = type(path)(path.precision)
        return self.ms[twin] if path.compiled and twin in self.ms else self.DEFAULT_MS

    def wrap(self, teacher: Any, path: Any, inner: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``inner`` (the runner of ``path`` on ``teacher``), charged to this clock."""
        import torch

        def run(x: torch.Tensor) -> torch.Tensor:
            self.calls.append(path)
            if path in self.fail:
                raise RuntimeError("C++ compile error: no compiler found\nsecond line")
            out = inner(x)
            self.now += self.cost_ms(path) / 1000.0
            warm = self._warm.setdefault(teacher, set())
            if path.compiled and path not in warm:
                warm.add(path)
                self.now += self.warmup_s
            if path in self.wrong:
                out = out.float().clone()
                top = out.argmax(1)
                rows = torch.arange(0, len(out), 2)
                out[rows, (top[rows] + 1) % out.shape[1]] = out.max() + 10.0
            return out

        return run


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_teacher_timings: the teacher's paths are timed by this machine's clock "
                            "(the test must hold whichever path it measures fastest)")


@pytest.fixture(scope="session", autouse=True)
def _teacher_timings_installed() -> Iterator[TeacherTimings]:
    """The clock and runners of :class:`TeacherTimings`, for the whole session: set up before any other fixture, so
    module- and session-scoped fixtures that run a teacher (a cache build, say) get the fixed figures too."""
    from timm_deit_distill.teacher import DistillationTeacher
    from timm_deit_distill.teacher import paths as teacher_paths

    timings = TeacherTimings()
    real_runner = DistillationTeacher._runner
    timings.real = (teacher_paths._clock, real_runner)

    def runner(teacher: DistillationTeacher, path: Any) -> Callable[[Any], Any]:
        return timings.wrap(teacher, path, real_runner(teacher, path))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(teacher_paths, "_clock", timings)
        patch.setattr(DistillationTeacher, "_runner", runner)
        yield timings


@pytest.fixture(autouse=True)
def teacher_timings(request, monkeypatch, _teacher_timings_installed) -> Iterator[TeacherTimings | None]:
    """The fixed teacher path timings, at their defaults for each test (see :class:`TeacherTimings`); None under
    ``@pytest.mark.real_teacher_timings``, which puts this machine's clock and the real runners back."""
    timings = _teacher_timings_installed
    timings.reset()
    if request.node.get_closest_marker("real_teacher_timings") is not None:
        from timm_deit_distill.teacher import DistillationTeacher
        from timm_deit_distill.teacher import paths as teacher_paths

        clock, runner = timings.real
        monkeypatch.setattr(teacher_paths, "_clock", clock)
        monkeypatch.setattr(DistillationTeacher, "_runner", runner)
        yield None
    else:
        yield timings
    timings.reset()  # module-scoped fixtures set up before the next test's reset see the defaults too
