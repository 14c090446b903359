"""The teacher's path (precision x eager/compiled) chosen by measurement: what is chosen, what never is, what is
remembered, what is skipped. Timings come from a fake clock (conftest's ``teacher_timings``; no wall-clock
assertions): each path's runner advances it by the cost the test gives, so "fastest" is decided by the test, not
by the CPU or its load. The tests marked ``real_teacher_timings`` let this machine time the paths and check the
rule, whichever path it finds fastest."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn

from timm_deit_distill.teacher import DistillationTeacher, PathMemory, TeacherError, TeacherPath
from timm_deit_distill.teacher import paths as teacher_paths
from timm_deit_distill.teacher.path_memory import default_memory_file, machine_identity

FP32, BF16 = TeacherPath("fp32"), TeacherPath("bf16")
FP32_C, BF16_C = TeacherPath("fp32", True), TeacherPath("bf16", True)


def _teacher(precision: str = "auto", compile: str | bool = "auto", seed: int = 0) -> DistillationTeacher:
    torch.manual_seed(seed)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    return DistillationTeacher.create(model, num_classes=5, input_size=(3, 16, 16), precision=precision,
                                      compile=compile)


def _images(n: int = 40) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return [(x[i:i + 8], torch.zeros(len(x[i:i + 8]), dtype=torch.int64)) for i in range(0, n, 8)]


def _fake_costs(teacher: DistillationTeacher, timings, costs_ms: dict[TeacherPath, float], **figures) -> None:
    """The paths of ``teacher`` cost ``costs_ms`` (conftest's TeacherTimings: ``warmup_s``, ``wrong``, ``fail``);
    its compiled runners really compile, but cheaply."""
    teacher.compile_options = {"backend": "eager"}
    timings.set(costs_ms, **figures)


def test_the_cheapest_path_that_agrees_is_chosen(teacher_timings, tmp_path):
    teacher = _teacher(compile="no")
    _fake_costs(teacher, teacher_timings, {FP32: 10.0, BF16: 4.0})
    choice = teacher.select_path(_images(), batch_size=8, steps=10_000, memory=PathMemory(tmp_path / "p.json"))
    assert teacher.path == BF16 and choice.path == BF16 and choice.how == "measured"
    assert teacher.compute_dtype == torch.bfloat16 and teacher.description["precision"] == "bf16"
    rows = {m.path: m for m in choice.measurements}
    assert rows[FP32].ms == pytest.approx(10.0) and rows[BF16].ms == pytest.approx(4.0)
    assert rows[BF16].agreement == 1.0 and rows[BF16].images == 40  # every real image counted once
    assert "<- chosen" in choice.table().splitlines()[2] and "2.50x" in choice.table()


def test_a_faster_path_that_disagrees_with_fp32_is_never_chosen(teacher_timings, tmp_path, caplog):
    teacher = _teacher(compile="no")
    _fake_costs(teacher, teacher_timings, {FP32: 10.0, BF16: 1.0}, wrong={BF16})
    with caplog.at_level(logging.INFO, logger="timm_deit_distill.teacher"):
        choice = teacher.select_path(_images(), batch_size=8, steps=10_000, memory=PathMemory(tmp_path / "p.json"))
    assert choice.path == FP32 and teacher.compute_dtype == torch.float32
    bf16 = next(m for m in choice.measurements if m.path == BF16)
    assert bf16.agreement == pytest.approx(0.5) and bf16.ms == pytest.approx(1.0)  # 10x faster, still refused
    assert "bf16 eager" in caplog.text and "fp32 eager" in caplog.text  # the table is logged


def test_min_agreement_is_the_bar(teacher_timings, tmp_path):
    teacher = _teacher(compile="no")
    _fake_costs(teacher, teacher_timings, {FP32: 10.0, BF16: 1.0}, wrong={BF16})
    choice = teacher.select_path(_images(), batch_size=8, steps=10_000, min_agreement=0.5,
                                 memory=PathMemory(tmp_path / "p.json"))
    assert choice.path == BF16  # 50 % agreement clears a 0.5 bar
    with pytest.raises(TeacherError, match="min_agreement"):
        teacher.select_path(_images(), steps=10, min_agreement=0.0, memory=PathMemory(None))


def test_a_path_within_noise_of_fp32_loses_to_it(teacher_timings, tmp_path):
    teacher = _teacher(compile="no")
    _fake_costs(teacher, teacher_timings, {FP32: 10.0, BF16: 9.9})
    choice = teacher.select_path(_images(), batch_size=8, steps=10_000, memory=PathMemory(tmp_path / "p.json"))
    assert choice.path == FP32


@pytest.mark.parametrize("bf16_ms, chosen", [(4.0, BF16), (15.0, FP32), (9.8, FP32), (9.6, BF16)],
                         ids=["bf16-faster", "bf16-slower", "bf16-within-noise", "bf16-beyond-noise"])
def test_bf16_against_fp32_each_outcome(bf16_ms, chosen, teacher_timings):
    """fp32 at 10 ms: bf16 wins only when it agrees and is more than NOISE_MARGIN (3 %) cheaper."""
    teacher = _teacher(compile="no")
    _fake_costs(teacher, teacher_timings, {FP32: 10.0, BF16: bf16_ms})
    choice = teacher.select_path(_images(24), batch_size=8, steps=10_000, budget_s=0.0, memory=PathMemory(None))
    assert (choice.path, choice.how, teacher.path) == (chosen, "measured", chosen)
    rows = {m.path: m for m in choice.measurements}
    assert rows[FP32].ms == pytest.approx(10.0) and rows[BF16].ms == pytest.approx(bf16_ms)
    assert rows[BF16].agreement == 1.0 and teacher.description["precision"] == chosen.precision


@pytest.mark.parametrize("fp32_ms", [0.5, 500.0], ids=["fast-machine", "slow-machine"])
def test_a_run_is_measured_once_it_is_long_enough_to_repay_it(fp32_ms, teacher_timings):
    """The measurement costs a few rounds of the batches the run serves, so whether a run repays it depends on its
    length alone: the same threshold on a fast machine and a slow one."""
    threshold = teacher_paths.MEASURE_PAYBACK * (1 + teacher_paths.MIN_ROUNDS) * 2  # 2 precisions timed on CPU
    for steps, chosen, how in ((int(threshold) - 1, FP32, "default"), (int(threshold) + 1, BF16, "measured")):
        teacher = _teacher(compile="no")
        _fake_costs(teacher, teacher_timings, {FP32: fp32_ms, BF16: fp32_ms / 2})
        choice = teacher.select_path(_images(24), batch_size=8, steps=steps, budget_s=0.0, memory=PathMemory(None))
        assert (choice.path, choice.how) == (chosen, how), steps
        if how == "default":
            assert "too short to repay measuring" in choice.reason and set(teacher_timings.calls) == {FP32}
        else:
            assert BF16 in teacher_timings.calls


@pytest.mark.parametrize("steps, chosen", [(1_000, FP32), (1_000_000, FP32_C)],
                         ids=["compile-cannot-repay", "compile-repays"])
def test_an_explicit_precision_is_compiled_only_when_the_run_repays_it(steps, chosen, teacher_timings):
    teacher = _teacher(precision="fp32")  # compile 'auto'
    _fake_costs(teacher, teacher_timings, {FP32: 10.0, FP32_C: 4.0}, warmup_s=30.0)
    choice = teacher.select_path(_images(24), batch_size=8, steps=steps, budget_s=0.0, memory=PathMemory(None))
    assert choice.path == teacher.path == chosen
    compiled = [p for p in teacher_timings.calls if p.compiled]
    if chosen == FP32:  # 30 s of compiling against 1,000 x 10 ms: not even tried
        assert choice.how == "requested" and "cannot repay" in choice.reason and not compiled
    else:  # 1,000,000 x 6 ms saved repays 30 s: compiled and timed (the warm-up is paid by now)
        assert choice.how == "measured" and compiled and "its compile warm-up already paid" in choice.reason
        assert next(m for m in choice.measurements if m.path == FP32_C).warmup_s == pytest.approx(30.004)


def test_the_one_call_estimate_is_a_warm_call_on_the_processs_threads(teacher_timings):
    """torch's Timer.timeit(1): its two warm-up calls absorb the one-time set-up; it runs on the threads the teacher
    will run on (Timer's own default is one thread)."""
    from timm_deit_distill.teacher.tuning import _time_once

    costs, threads = iter([0.5, 0.5, 0.01]), []

    def runner(x: torch.Tensor) -> torch.Tensor:
        threads.append(torch.get_num_threads())
        teacher_timings.now += next(costs)
        return x

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ms = _time_once(runner, torch.zeros(1), torch.device("cpu"), teacher_timings)
    finally:
        torch.set_num_threads(before)
    assert ms == pytest.approx(10.0) and threads == [2, 2, 2]


@pytest.mark.real_teacher_timings
def test_on_this_machines_own_timings_the_choice_follows_the_rule():
    """Whichever path this CPU runs fastest (bf16 is 2x faster on some, slower on others): the choice is the rule
    applied to the table it measured, and the teacher runs what it recorded."""
    teacher = _teacher(compile="no")
    choice = teacher.select_path(_images(), batch_size=8, steps=10_000, memory=PathMemory(None))
    rows = {m.path: m for m in choice.measurements}
    assert choice.how == "measured" and set(rows) == {FP32, BF16} and all(m.ms > 0 for m in rows.values())
    rule, _ = teacher_paths.choose_path(choice.measurements, {FP32, BF16}, steps=10_000,
                                        min_agreement=choice.min_agreement)
    assert choice.path == rule == teacher.path and teacher.description["precision"] == rule.precision
    bf16_earns_it = rows[BF16].agreement >= choice.min_agreement and \
        rows[BF16].ms < (1 - teacher_paths.NOISE_MARGIN) * rows[FP32].ms
    assert choice.path == (BF16 if bf16_earns_it else FP32) or \
        rows[BF16].ms == pytest.approx((1 - teacher_paths.NOISE_MARGIN) * rows[FP32].ms)  # exactly at the margin


def test_compile_is_tried_only_where_it_can_repay_its_warm_up(teacher_timings, tmp_path):
    calls = teacher_timings.calls
    teacher = _teacher()
    costs = {FP32: 10.0, BF16: 5.0, FP32_C: 8.0, BF16_C: 2.0}
    _fake_costs(teacher, teacher_timings, costs, warmup_s=30.0)
    # 100 batches x 5 ms = 0.5 s of teacher time: no 30 s compile can pay for itself; nothing is compiled.
    short = teacher.select_path(_images(), batch_size=8, steps=2_000, memory=PathMemory(tmp_path / "a.json"))
    assert short.path == BF16 and not any(p.compiled for p in calls)
    notes = {m.path: m.note for m in short.measurements}
    assert "cannot repay" in notes[BF16_C] and "would not beat 5.0 ms eager" in notes[FP32_C]

    calls.clear()
    teacher = _teacher()
    _fake_costs(teacher, teacher_timings, costs, warmup_s=30.0)
    long = teacher.select_path(_images(), batch_size=8, steps=1_000_000, memory=PathMemory(tmp_path / "b.json"))
    # bf16 compiled could save 0.5 x 5 ms x 1e6 >> 30 s: tried and chosen. fp32 compiled could at best reach
    # 5 ms, no better than bf16 eager: never compiled.
    assert long.path == BF16_C and BF16_C in calls and FP32_C not in calls
    assert next(m for m in long.measurements if m.path == BF16_C).warmup_s == pytest.approx(30.002)  # + 1st call


def test_the_warm_up_counts_against_the_batches_it_serves(teacher_timings, tmp_path):
    memory = PathMemory(tmp_path / "p.json")
    teacher = _teacher()
    _fake_costs(teacher, teacher_timings, {FP32: 10.0, BF16: 5.0, FP32_C: 8.0, BF16_C: 4.0}, warmup_s=30.0)
    measured = teacher.select_path(_images(), batch_size=8, steps=200_000, memory=memory)
    assert measured.path == BF16_C  # already compiled here: only 4 ms vs 5 ms per batch counts
    # A rerun pays the warm-up again: over 20,000 batches 1 ms saved each (20 s) does not repay 30 s.
    rerun = _teacher()
    _fake_costs(rerun, teacher_timings, {FP32: 10.0, BF16: 5.0, FP32_C: 8.0, BF16_C: 4.0}, warmup_s=30.0)
    choice = rerun.select_path(_images(), batch_size=8, steps=20_000, memory=memory)
    assert choice.how == "remembered" and choice.path == BF16
    longer = _teacher()
    _fake_costs(longer, teacher_timings, {FP32: 10.0, BF16: 5.0, FP32_C: 8.0, BF16_C: 4.0}, warmup_s=30.0)
    assert longer.select_path(_images(), batch_size=8, steps=60_000, memory=memory).path == BF16_C


def test_a_compile_that_fails_is_reported_skipped_and_remembered(teacher_timings, tmp_path, caplog):
    memory = PathMemory(tmp_path / "p.json")
    teacher = _teacher(compile="yes")
    _fake_costs(teacher, teacher_timings, {FP32: 10.0, BF16: 5.0}, fail={FP32_C, BF16_C})
    with caplog.at_level(logging.WARNING, logger="timm_deit_distill.teacher"):
        choice = teacher.select_path(_images(), batch_size=8, steps=1_000, memory=memory)
    assert choice.path == FP32  # the safe fallback, said in a warning
    notes = {m.path: m.note for m in choice.measurements}
    assert notes[BF16_C] == "failed: RuntimeError: C++ compile error: no compiler found"
    assert "running eager fp32" in caplog.text
    calls = teacher_timings.calls
    again = _teacher(compile="yes")
    _fake_costs(again, teacher_timings, {FP32: 10.0, BF16: 5.0}, fail={FP32_C, BF16_C})
    assert again.select_path(_images(), batch_size=8, steps=1_000, memory=memory).how == "remembered"
    assert not any(p.compiled for p in calls)  # not compiled again to fail again


def test_explicit_precision_and_compile_skip_measuring(teacher_timings):
    calls = teacher_timings.calls
    teacher = _teacher(precision="bf16", compile="no")
    _fake_costs(teacher, teacher_timings, {FP32: 10.0, BF16: 5.0})
    choice = teacher.select_path(_images(), batch_size=8, steps=1_000_000, memory=PathMemory(None))
    assert (choice.path, choice.how, calls) == (BF16, "requested", [])
    assert teacher.path == BF16  # fixed at creation already
    assert _teacher(precision="fp16", compile=True).path == TeacherPath("fp16", True)


def test_a_run_too_short_to_repay_measuring_runs_fp32_unmeasured(teacher_timings, tmp_path):
    calls = teacher_timings.calls
    teacher = _teacher()
    _fake_costs(teacher, teacher_timings, {FP32: 10.0, BF16: 1.0})
    memory = PathMemory(tmp_path / "p.json")
    choice = teacher.select_path(_images(), batch_size=8, steps=20, memory=memory)
    assert (choice.path, choice.how) == (FP32, "default") and set(calls) == {FP32}
    assert not memory.file.exists()


def test_a_forward_before_any_choice_runs_fp32_without_measuring(teacher_timings, tmp_path, monkeypatch, caplog):
    """Measuring is select_path's job alone: a teacher left on 'auto' runs eager fp32 at its first batch (even where
    bf16 would be faster), measures and writes nothing, and says once which call measures."""
    import logging

    caplog.set_level(logging.INFO)
    monkeypatch.setenv("DEIT_DISTILL_TEACHER_PATHS", str(tmp_path / "p.json"))
    calls = teacher_timings.calls
    teacher = _teacher()
    _fake_costs(teacher, teacher_timings, {FP32: 10.0, BF16: 4.0})
    assert teacher.path is None and teacher.description["precision"] == "auto"
    x = torch.randn(6, 3, 16, 16)
    out = teacher(x)
    assert teacher.path == FP32 and teacher.path_choice.how == "default" and calls == [FP32]
    torch.testing.assert_close(out, teacher._runner(FP32)(teacher.prepare_input(x)).float())
    teacher(x)
    assert [r.getMessage() for r in caplog.records].count(f"Teacher {teacher.name} runs "
                                                          f"{teacher.path_choice.summary()}.") == 1
    assert "select_path(...) is the call that measures" in teacher.path_choice.reason
    assert not (tmp_path / "p.json").exists()
    choice = teacher.select_path(_images(), batch_size=8, steps=10_000)  # the explicit call measures
    assert choice.how == "measured" and teacher.path == BF16


def test_remembered_per_machine_teacher_and_batch_shape(teacher_timings, tmp_path):
    memory = PathMemory(tmp_path / "sub" / "paths.json")
    calls = teacher_timings.calls
    costs = {FP32: 10.0, BF16: 4.0}
    first = _teacher(compile="no")
    _fake_costs(first, teacher_timings, costs)
    assert first.select_path(_images(), batch_size=8, steps=10_000, memory=memory).how == "measured"
    data = json.loads(memory.file.read_text())
    (entry,) = data["entries"].values()
    assert entry["key"]["batch_shape"] == [8, 3, 16, 16] and entry["key"]["machine"] == machine_identity("cpu")
    assert entry["key"]["weights_sha256"] == first.description["sha256"]

    calls.clear()
    same = _teacher(compile="no")
    _fake_costs(same, teacher_timings, costs)
    choice = same.select_path(_images(), batch_size=8, steps=10_000, memory=memory)
    assert (choice.how, choice.path, calls) == ("remembered", BF16, [])  # nothing run at all

    other_batch = _teacher(compile="no")
    _fake_costs(other_batch, teacher_timings, costs)
    assert other_batch.select_path(_images(), batch_size=4, steps=10_000, memory=memory).how == "measured"
    other_weights = _teacher(compile="no", seed=1)
    _fake_costs(other_weights, teacher_timings, costs)
    assert other_weights.select_path(_images(), batch_size=8, steps=10_000, memory=memory).how == "measured"
    assert len(json.loads(memory.file.read_text())["entries"]) == 3


@pytest.mark.parametrize("damage", ["{not json", '{"format": "something else"}', '{"format": "timm-deit-distill '
                                    'teacher paths", "version": 1, "entries": {"x": {"key": 1, "rows": 2}}}'])
def test_a_damaged_memory_file_is_ignored_with_a_warning(teacher_timings, tmp_path, caplog, damage):
    file = tmp_path / "paths.json"
    file.write_text(damage)
    teacher = _teacher(compile="no")
    _fake_costs(teacher, teacher_timings, {FP32: 10.0, BF16: 4.0})
    with caplog.at_level(logging.WARNING, logger="timm_deit_distill.teacher"):
        choice = teacher.select_path(_images(), batch_size=8, steps=10_000, memory=PathMemory(file))
    assert choice.how == "measured" and choice.path == BF16
    assert len(json.loads(file.read_text())["entries"]) >= 1  # a working file again
    if damage.startswith("{not") or "else" in damage:
        assert "damaged" in caplog.text and (tmp_path / "paths.json.damaged").read_text() == damage


def test_an_unwritable_memory_folder_only_warns(teacher_timings, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    teacher = _teacher(compile="no")
    _fake_costs(teacher, teacher_timings, {FP32: 10.0, BF16: 4.0})
    with caplog.at_level(logging.WARNING, logger="timm_deit_distill.teacher"):
        choice = teacher.select_path(_images(), batch_size=8, steps=10_000, memory=PathMemory(blocker / "p.json"))
    assert choice.path == BF16 and "Could not remember" in caplog.text


def test_memory_file_location(monkeypatch, tmp_path):
    monkeypatch.setenv("DEIT_DISTILL_TEACHER_PATHS", str(tmp_path / "x.json"))
    assert default_memory_file() == tmp_path / "x.json"
    monkeypatch.setenv("DEIT_DISTILL_TEACHER_PATHS", "")
    assert default_memory_file() is None
    monkeypatch.delenv("DEIT_DISTILL_TEACHER_PATHS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_memory_file() == tmp_path / "cache" / "timm-deit-distill" / "teacher-paths.json"


def test_a_compiled_path_runs_one_batch_shape(tmp_path):
    """Smaller or larger batches are cut and padded to the compiled size: one compile, the same rows."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    eager = DistillationTeacher.create(model, input_size=(3, 16, 16), precision="fp32", compile="no")
    compiled = DistillationTeacher.create(model, input_size=(3, 16, 16), precision="fp32").compile(backend="eager")
    shapes: list[tuple[int, ...]] = []
    inner = compiled._runner(FP32_C)
    compiled._runners[FP32_C] = compiled._fixed_batch(lambda x: (shapes.append(tuple(x.shape)), inner(x))[1], FP32_C)
    compiled._compiled_batch = 8
    for n in (8, 5, 13, 16):
        x = torch.randn(n, 3, 16, 16)
        torch.testing.assert_close(compiled(x), eager(x))
    assert {s[0] for s in shapes} == {8}
    assert compiled.description["compiled"] is True and "compiled" not in eager.description


def test_moving_the_teacher_forgets_compiled_runners_and_a_measured_choice(teacher_timings, tmp_path):
    teacher = _teacher(compile="no")
    _fake_costs(teacher, teacher_timings, {FP32: 10.0, BF16: 4.0})
    teacher.select_path(_images(), batch_size=8, steps=10_000, memory=PathMemory(None))
    teacher.to(torch.float64)  # same device: the choice stands
    assert teacher.path == BF16
    teacher._runners[FP32_C] = lambda x: x
    teacher.to("meta")
    assert teacher.path is None and teacher._runners == {}


@pytest.mark.slow
def test_faster_paths_give_fp32s_hard_targets_on_the_digits(trained_teacher):
    """bf16 and the inductor-compiled paths (with freezing) agree with eager fp32 on the real digits, for a teacher
    trained on them: the hard targets they would teach are fp32's."""
    from source_fixtures import open_folder

    from timm_deit_distill.data import build_check_loader

    train_ds, val_ds = open_folder(str(trained_teacher["data"]))
    config = {"input_size": (3, 32, 32), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
              "crop_pct": 1.0, "interpolation": "bicubic"}
    images = torch.cat([x for x, _ in build_check_loader(val_ds, config, max_images=len(val_ds), batch_size=128)])
    teacher = DistillationTeacher.create(None, checkpoint_path=trained_teacher["checkpoint"], use_ema=False,
                                         num_classes=10, data_mean=config["mean"], data_std=config["std"],
                                         input_size=config["input_size"], precision="fp32", compile="no")
    reference = torch.cat([teacher(b) for b in images.split(64)]).argmax(1)
    for path in (BF16, FP32_C, BF16_C):
        teacher.use_path(path)
        teacher._compiled_batch = 64
        predicted = torch.cat([teacher(b) for b in images.split(64)]).argmax(1)
        agreement = (predicted == reference).float().mean().item()
        assert agreement >= 0.995, (path, agreement)
    assert len(images) >= 300


# ---- the commands' flags ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_min_agreement_outside_0_1_is_refused_by_train_eval_and_cache_build(value, capsys):
    from timm_deit_distill.commands import cache as cache_cli
    from timm_deit_distill.commands import evaluate, train

    flags = ["--distill-teacher", "resnet10t", "--teacher-min-agreement", value]
    for command in (lambda: train.main([*flags, "--data-dir", "/nonexistent"]),
                    lambda: evaluate.main(["--checkpoint", "/nonexistent.pth.tar", "--data-dir", "/nonexistent",
                                           *flags]),
                    lambda: cache_cli.main(["build", *flags, "--data-dir", "/nonexistent", "--out", "/nonexistent/c"])):
        code = command()
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert f"--teacher-min-agreement {float(value):g} is a fraction of images" in err


def test_path_flags_without_a_teacher_are_refused(capsys):
    from timm_deit_distill.commands import train

    for flags in (["--teacher-compile", "yes"], ["--teacher-min-agreement", "0.9"]):
        assert train.main([*flags, "--data-dir", "/nonexistent"]) == 2
        err = capsys.readouterr().err
        assert f"{flags[0]} configures the teacher, but no teacher is given" in err


def test_path_flags_reach_the_teacher_settings():
    from timm_deit_distill.commands.args import parse_args
    from timm_deit_distill.factory.settings import settings_from_options

    args = parse_args(["--distill-teacher", "resnet10t", "--teacher-precision", "bf16", "--teacher-compile", "no",
                       "--teacher-min-agreement", "0.99"])
    teacher = settings_from_options(args).teacher
    assert (teacher.precision, teacher.compile, teacher.min_agreement) == ("bf16", "no", 0.99)
    defaults = settings_from_options(parse_args(["--distill-teacher", "resnet10t"])).teacher
    assert (defaults.precision, defaults.compile, defaults.min_agreement) == ("auto", "auto", 0.995)


@pytest.mark.slow
@pytest.mark.real_teacher_timings  # the road end to end, on whatever this machine measures fastest
def test_train_records_the_path_its_teacher_ran_and_was_checked_on(trained_teacher, tmp_path, capsys, caplog,
                                                                 monkeypatch):
    from train_fixtures import FAST, STUDENT, load

    from timm_deit_distill.commands import train

    monkeypatch.setenv("DEIT_DISTILL_TEACHER_PATHS", str(tmp_path / "paths.json"))
    caplog.set_level(logging.INFO)
    argv = ["--data-dir", str(trained_teacher["data"]), *STUDENT, *FAST, "--epochs", "1", "--img-size", "16",
            "--distill-teacher", "resnet10t", "--distill-teacher-path", str(trained_teacher["checkpoint"]),
            "--teacher-compile", "no", "--output", str(tmp_path), "--experiment", "auto"]
    assert train.main(argv) == 0, capsys.readouterr()
    distill = load(tmp_path / "auto" / "last.pth.tar")["deit_distill"]["distill"]
    recorded = distill["teacher_path"]
    assert recorded["path"] in ("fp32 eager", "bf16 eager") and recorded["how"] == "measured"  # 90+ batches
    # The rule, applied to the table the run recorded, gives the path it recorded.
    rows = [teacher_paths.PathMeasurement.from_dict(row) for row in recorded["measurements"]]
    rule, _ = teacher_paths.choose_path(rows, {FP32, BF16}, steps=recorded["steps"],
                                        min_agreement=recorded["min_agreement"])
    assert recorded["path"] == str(rule) and recorded["steps"] > 0
    assert recorded["batch_shape"][1:] == [3, 32, 32]  # the teacher's own size, not the student's 16
    # What the cache and the card read: the precision the teacher really ran at, not 'auto'.
    assert distill["teacher_description"]["precision"] == recorded["path"].split()[0]
    assert "Teacher resnet10t runs " + recorded["path"] in caplog.text
    assert distill["teacher_check"]["passed"] is True


@pytest.mark.slow
@pytest.mark.parametrize("started, fresh", [(BF16, FP32), (FP32, BF16)], ids=["bf16-then-fp32", "fp32-then-bf16"])
def test_a_resumed_run_keeps_the_path_it_started_on(started, fresh, trained_teacher, tmp_path, capsys,
                                                    teacher_timings):
    """The first leg measures and records its path; by the resume the timings say the other path is faster (a
    fresh run of the same length chooses it), and the resumed leg still keeps the recorded one."""
    from train_fixtures import FAST, STUDENT, load

    from timm_deit_distill.commands import train

    def recorded(name: str) -> dict:
        return load(tmp_path / name / "last.pth.tar")["deit_distill"]["distill"]

    base = ["--data-dir", str(trained_teacher["data"]), *STUDENT, *FAST, "--img-size", "16", "--distill-teacher",
            "resnet10t", "--distill-teacher-path", str(trained_teacher["checkpoint"]), "--output", str(tmp_path)]
    teacher_timings.set({started: 4.0, fresh: 10.0})
    assert train.main([*base, "--epochs", "1", "--experiment", "first"]) == 0, capsys.readouterr()
    first = recorded("first")["teacher_path"]
    assert (first["path"], first["how"]) == (str(started), "measured")  # long enough to measure (90+ batches)

    teacher_timings.set({fresh: 4.0, started: 10.0})
    assert train.main([*base, "--epochs", "2", "--experiment", "second",
                       "--resume", str(tmp_path / "first" / "last.pth.tar")]) == 0, capsys.readouterr()
    distill = recorded("second")
    assert distill["teacher_path"]["path"] == str(started) and "before --resume" in distill["teacher_path"]["reason"]
    assert distill["teacher_description"]["precision"] == started.precision
    assert set(teacher_timings.calls) == {started}  # not measured again: every batch ran on the recorded path

    assert train.main([*base, "--epochs", "1", "--experiment", "fresh"]) == 0, capsys.readouterr()
    assert recorded("fresh")["teacher_path"]["path"] == str(fresh)  # what the resume would have chosen afresh


def test_timing_with_torchs_timer_prints_nothing_on_a_cpu_machine_with_a_cuda_toolkit(tmp_path):
    """torch.utils.benchmark imports torch.utils.cpp_extension, which warns on stderr at import when nvcc is on
    the PATH and no CUDA runtime is (these CPU machines): neither importing the package nor timing a path may add
    that line to a command whose stderr is one line."""
    fake = tmp_path / "cuda" / "bin"
    fake.mkdir(parents=True)
    (fake / "nvcc").write_text("#!/bin/sh\nexit 0\n")
    (fake / "nvcc").chmod(0o755)
    code = ("import sys, torch, timm_deit_distill.commands.cli, timm_deit_distill.teacher.tuning as t\n"
            "assert 'torch.utils.cpp_extension' not in sys.modules\n"
            "t._time_once(lambda x: x, torch.zeros(1), torch.device('cpu'), __import__('time').perf_counter)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    env["PATH"] = f"{fake}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
