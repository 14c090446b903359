"""The schedule's state survives a checkpoint: timm's plateau schedule keeps its patience and cooldown counters, so
a resumed run cuts its learning rate at the epochs the run left alone does (timm's own state_dict loses them)."""

from __future__ import annotations

import warnings

import pytest
import torch
from timm.scheduler import create_scheduler_v2

from timm_deit_distill.checkpoint import load_scheduler_state, resume, scheduler_state

# eval top-1 per epoch: improves, then stalls twice (patience 2 -> a cut), improves, stalls again
METRICS = [10.0, 20.0, 30.0, 30.0, 29.0, 40.0, 40.0, 39.0, 38.0, 38.0, 50.0, 49.0, 48.0, 47.0]


def plateau(params=None, **changes):
    optimizer = torch.optim.SGD(params or [torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    kwargs = dict(sched="plateau", num_epochs=len(METRICS), patience_epochs=2, decay_rate=0.5, warmup_epochs=1,
                  cooldown_epochs=1)
    kwargs.update(changes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm deprecates the plateau schedule
        scheduler, _ = create_scheduler_v2(optimizer, **kwargs)
    return optimizer, scheduler


def lrs(optimizer, scheduler, epochs):
    out = []
    for epoch in epochs:
        scheduler.step(epoch + 1, METRICS[epoch])
        out.append(optimizer.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize("stop", [4, 8, 13])
def test_a_resumed_plateau_schedule_cuts_the_rate_at_the_epochs_of_the_run_left_alone(stop):
    optimizer, scheduler = plateau()
    straight = lrs(optimizer, scheduler, range(len(METRICS)))
    assert len(set(straight)) >= 3  # the metrics do make it cut the rate more than once

    optimizer, scheduler = plateau()
    first = lrs(optimizer, scheduler, range(stop))
    saved, saved_optimizer = scheduler_state(scheduler), optimizer.state_dict()
    optimizer, scheduler = plateau()
    optimizer.load_state_dict(saved_optimizer)
    assert load_scheduler_state(scheduler, saved)
    assert first + lrs(optimizer, scheduler, range(stop, len(METRICS))) == straight

    if stop == 4:
        return  # the metric improves right after: restarting the counters would not show
    # timm's state_dict alone (what a checkpoint held before) restarts the counters: another schedule
    optimizer, scheduler = plateau()
    lrs(optimizer, scheduler, range(stop))
    assert scheduler.lr_scheduler.num_bad_epochs == 2  # one more bad epoch cuts the rate
    timm_only, saved_optimizer = scheduler.state_dict(), optimizer.state_dict()
    optimizer, scheduler = plateau()
    optimizer.load_state_dict(saved_optimizer)
    assert load_scheduler_state(scheduler, timm_only)
    assert first + lrs(optimizer, scheduler, range(stop, len(METRICS))) != straight


def test_a_plateau_state_without_its_counters_is_restored_with_a_warning(caplog):
    optimizer, scheduler = plateau()
    lrs(optimizer, scheduler, range(4))
    timm_only = scheduler.state_dict()
    _, fresh = plateau()
    with caplog.at_level("WARNING"):
        assert load_scheduler_state(fresh, timm_only, source="'old.pth.tar'")
    assert "'old.pth.tar'" in caplog.text and "patience and cooldown counters" in caplog.text
    assert fresh.lr_scheduler.best == scheduler.lr_scheduler.best


def test_changed_plateau_settings_are_not_restored_and_other_schedules_round_trip():
    optimizer, scheduler = plateau()
    lrs(optimizer, scheduler, range(5))
    saved = scheduler_state(scheduler)
    _, other = plateau(patience_epochs=3)
    assert not load_scheduler_state(other, saved)
    assert other.lr_scheduler.num_bad_epochs == 0 and other.lr_scheduler.best == float("-inf")  # untouched

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    cosine, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=10, warmup_epochs=2)
    cosine.step(3)
    state = scheduler_state(cosine)
    assert state == cosine.state_dict()  # nothing added to timm's own schedules
    again, _ = create_scheduler_v2(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), sched="cosine",
                                   num_epochs=10, warmup_epochs=2)
    assert load_scheduler_state(again, state) and again.state_dict() == state


@pytest.mark.slow
def test_a_training_run_resumed_on_a_plateau_schedule_ends_as_the_run_left_alone(tmp_path):
    from train_fixtures import FAST, STUDENT, digits, load, run_cli

    from timm_deit_distill.records import read_summary

    data = digits(tmp_path / "digits", train_per_class=3, val_fraction=0.3)
    # A rate too small to move top-1: every epoch after the first fails to improve, so with patience 1 the rate is
    # cut every second epoch on any CPU, and the run stopped after epoch 2 is mid-way to a cut.
    argv = ["--data-dir", str(data), *STUDENT, *FAST, "--lr", "1e-6", "--weight-decay", "0", "--sched", "plateau", "--patience-epochs", "1",
            "--decay-rate", "0.5", "--cooldown-epochs", "0", "--output", str(tmp_path)]
    straight = run_cli([*argv, "--epochs", "5", "--experiment", "straight"])
    assert straight.returncode == 0, straight.stderr
    stopped = run_cli([*argv, "--epochs", "2", "--experiment", "stopped"])
    assert stopped.returncode == 0, stopped.stderr
    counters = load(tmp_path / "stopped" / "last.pth.tar")["scheduler"]["deit_distill_plateau"]
    assert counters["reduce_lr_on_plateau"]["num_bad_epochs"] == 1  # what timm's own state_dict leaves out
    resumed = run_cli([*argv, "--epochs", "5", "--experiment", "stopped", "--resume",
                       str(tmp_path / "stopped" / "last.pth.tar")])
    assert resumed.returncode == 0, resumed.stderr
    rows = read_summary(tmp_path / "straight" / "summary.csv")
    assert [r["lr"] for r in read_summary(tmp_path / "stopped" / "summary.csv")] == [r["lr"] for r in rows]
    assert len({r["lr"] for r in rows}) > 1, rows  # the rate was cut: the schedule had something to lose


def test_resume_restores_the_plateau_counters_from_a_checkpoint_file(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = plateau(model.parameters())
    lrs(optimizer, scheduler, range(4))
    assert scheduler.lr_scheduler.num_bad_epochs > 0
    path = tmp_path / "last.pth.tar"
    torch.save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3,
                "scheduler": scheduler_state(scheduler)}, path)
    optimizer, fresh = plateau(model.parameters())
    state = resume(str(path), model, optimizer=optimizer, lr_scheduler=fresh)
    assert state.scheduler_restored
    assert fresh.lr_scheduler.state_dict() == scheduler.lr_scheduler.state_dict()


def test_the_trainer_builds_the_plateau_schedule_without_timms_warning_that_its_state_is_not_saved():
    """timm warns that a resumed plateau run restarts its counters; this trainer saves them, so the warning is wrong
    here and silenced, that one only: timm's factory itself still gives it."""
    from timm.scheduler import scheduler_kwargs

    from timm_deit_distill.commands.args import parse_args
    from timm_deit_distill.factory.run import build_schedule
    from timm_deit_distill.factory.settings import settings_from_options

    args = parse_args(["--sched", "plateau", "--epochs", "5"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with warnings.catch_warnings(record=True) as timms:
        warnings.simplefilter("always")
        create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=3)
    assert any(issubclass(w.category, FutureWarning) and "not saved in checkpoints" in str(w.message) for w in timms)
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        scheduler, epochs = build_schedule(settings_from_options(args), optimizer, 3)
        warnings.warn("a later FutureWarning", FutureWarning, stacklevel=1)  # the filter does not outlive the build
    assert [str(w.message) for w in ours] == ["a later FutureWarning"]
    assert type(scheduler).__name__ == "PlateauLRScheduler" and epochs == 5


@pytest.mark.parametrize("argv,start_epoch,changed,says", [
    (["--sched", "plateau", "--warmup-epochs", "1"], 3, {"lr": [1e-3, 5e-3]}, True),
    (["--sched", "plateau", "--warmup-epochs", "1"], 3, {"epochs": [5, 9]}, False),  # --lr unchanged
    (["--sched", "plateau", "--warmup-epochs", "1", "--no-resume-opt"], 3, {"lr": [1e-3, 5e-3]}, False),
    (["--sched", "plateau", "--warmup-epochs", "4"], 3, {"lr": [1e-3, 5e-3]}, False),  # warm-up ramps to the new --lr
    (["--sched", "cosine", "--warmup-epochs", "1"], 3, {"lr": [1e-3, 5e-3]}, False),  # cosine sets the rate itself
])
def test_a_changed_lr_on_a_plateau_resume_is_said_to_have_no_effect(argv, start_epoch, changed, says):
    from timm_deit_distill.commands.args import parse_args
    from timm_deit_distill.factory.resuming import plateau_keeps_lr
    from timm_deit_distill.factory.run import build_schedule
    from timm_deit_distill.factory.settings import settings_from_options

    settings = settings_from_options(parse_args([*argv, "--lr", "5e-3", "--epochs", "9"]))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-3)
    scheduler, _ = build_schedule(settings, optimizer, 3)
    optimizer.param_groups[0]["lr"] = 2.5e-4  # as the checkpoint's optimizer state restores it: cut twice
    scheduler.step(start_epoch)
    warning = plateau_keeps_lr(settings, changed, optimizer_restored=True, lr_scheduler=scheduler, optimizer=optimizer,
                               start_epoch=start_epoch)
    if not says:
        assert warning is None
        return
    assert warning is not None and optimizer.param_groups[0]["lr"] == 2.5e-4  # the rate it trains at
    assert "--lr 0.005 (was 0.001)" in warning and "keeps the learning rate the checkpoint's run reached (0.00025" in warning
    assert "--lr applies to new runs only" in warning


@pytest.mark.slow
def test_a_plateau_resume_with_changed_settings_says_what_starts_anew_and_what_lr_it_keeps(tmp_path):
    from train_fixtures import FAST, STUDENT, digits, load, run_cli

    from timm_deit_distill.factory.run import PLATEAU_NOTE

    data = digits(tmp_path / "digits", train_per_class=2, val_fraction=0.3)
    # as above: a rate too small to move top-1, so patience 1 cuts it at epoch 2
    argv = ["--data-dir", str(data), *STUDENT, *FAST, "--weight-decay", "0", "--sched", "plateau",
            "--decay-rate", "0.5", "--output", str(tmp_path), "--experiment", "r"]
    first = run_cli([*argv, "--lr", "1e-6", "--patience-epochs", "1", "--epochs", "3"])
    assert first.returncode == 0, first.stderr
    assert "FutureWarning" not in first.stderr and "not saved in checkpoints" not in first.stderr
    assert PLATEAU_NOTE in first.stdout
    last = tmp_path / "r" / "last.pth.tar"
    reached = load(last)["optimizer"]["param_groups"][0]["lr"]
    assert reached < 1e-6  # cut: the rate the run reached is not its --lr

    resumed = run_cli([*argv, "--lr", "2e-6", "--patience-epochs", "3", "--epochs", "4", "--resume", str(last)])
    assert resumed.returncode == 0, resumed.stderr
    assert "FutureWarning" not in resumed.stderr
    assert ("schedule rebuilt from these flags: the plateau's best metric and its patience and cooldown counters "
            "start anew") in resumed.stdout
    assert (f"Resumed with --lr 2e-06 (was 1e-06), which has no effect here: the plateau schedule keeps the learning "
            f"rate the checkpoint's run reached ({reached:g},") in resumed.stdout
    from timm_deit_distill.records import read_summary
    assert read_summary(tmp_path / "r" / "summary.csv")[-1]["lr"] == pytest.approx(reached)  # it did keep it


@pytest.mark.slow
@pytest.mark.parametrize("how", ["start-epoch", "no-resume-opt"])
def test_a_plateau_schedule_started_past_its_warm_up_with_a_fresh_optimizer_trains_at_lr(tmp_path, how):
    # timm's plateau sets --warmup-lr when built and no rate past the warm-up: the run would keep --warmup-lr
    from train_fixtures import FAST, STUDENT, digits, run_cli

    from timm_deit_distill.records import read_summary

    data = digits(tmp_path / "digits", train_per_class=3, val_fraction=0.3)
    argv = ["--data-dir", str(data), *STUDENT, *FAST, "--sched", "plateau", "--lr", "1e-3", "--warmup-epochs", "1",
            "--warmup-lr", "1e-5", "--patience-epochs", "10", "--output", str(tmp_path)]
    if how == "start-epoch":
        run = run_cli([*argv, "--epochs", "4", "--start-epoch", "2", "--experiment", "late"])
        assert run.returncode == 0, run.stderr
    else:
        first = run_cli([*argv, "--epochs", "2", "--experiment", "late"])
        assert first.returncode == 0, first.stderr
        run = run_cli([*argv, "--epochs", "4", "--experiment", "late", "--resume",
                       str(tmp_path / "late" / "last.pth.tar"), "--no-resume-opt"])
        assert run.returncode == 0, run.stderr
    rows = [r for r in read_summary(tmp_path / "late" / "summary.csv") if int(r["epoch"]) >= 2]
    assert [float(r["lr"]) for r in rows] == [1e-3, 1e-3]
