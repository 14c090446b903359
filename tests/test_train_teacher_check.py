"""`deit-distill train` measures its teacher before step 1: the issue's 32px teacher of a 16px student runs at
32px and passes; forced to the student's 16px, or with random weights, it is refused in one line before
anything is written; the figure is recorded in the checkpoint and args.yaml; the check leaves training as it
would have been without it; a run from a cache reports the check measured when the cache was built."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml
from train_fixtures import FAST, STUDENT, digits, load, teacher_checkpoint

from timm_deit_distill.commands import cache as cache_cli
from timm_deit_distill.commands import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # The teacher's own validation split (val_fraction 0.2, seed 0), with few training images.
    root = tmp_path_factory.mktemp("check")
    return {"digits": digits(root / "digits", train_per_class=5, val_fraction=0.2),
            "random_teacher": teacher_checkpoint(root / "random.pth")}


def _argv(data, teacher, out, *extra):
    return ["--data-dir", str(data["digits"]), *STUDENT, *FAST, "--epochs", "1", "--img-size", "16",
            "--distill-teacher", "resnet10t", "--distill-teacher-path", str(teacher), "--teacher-precision", "fp32",
            "--output", str(out), *extra]


def _refused(argv, capsys):
    code = train.main(argv)
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert err.startswith("deit-distill train: error: ") and err.count("\n") == 1 and "Traceback" not in out + err
    return err


@pytest.mark.slow
def test_a_32px_teacher_of_a_16px_student_runs_at_32_passes_and_is_recorded(data, trained_teacher, tmp_path,
                                                                           capsys, caplog):
    caplog.set_level(logging.INFO)
    code = train.main(_argv(data, trained_teacher["checkpoint"], tmp_path, "--experiment", "ok"))
    out, err = capsys.readouterr()
    assert code == 0, out + err
    # the teacher's own size, not the student's 16
    assert "input 32x32 (recorded in its checkpoint" in caplog.text
    assert "the student's 16x16 batches resized to 32x32" in caplog.text
    assert "Teacher check: resnet10t top-1" in caplog.text
    check = load(tmp_path / "ok" / "last.pth.tar")["deit_distill"]["distill"]["teacher_check"]
    assert check["passed"] is True and check["top1"] > 80 and check["images"] == 360
    assert check["min_top1"] == pytest.approx(check["chance"] + 0.25 * (100 - check["chance"]))
    recorded = yaml.safe_load((tmp_path / "ok" / "args.yaml").read_text())["teacher_check"]
    assert recorded == check
    # args.yaml still repeats the run: its record of the check is not a setting
    assert train.parse_args(["-c", str(tmp_path / "ok" / "args.yaml")]).teacher_input_size is None


@pytest.mark.slow
def test_forced_to_the_students_16px_the_teacher_collapses_and_nothing_is_written(data, trained_teacher, tmp_path,
                                                                                  capsys):
    err = _refused(_argv(data, trained_teacher["checkpoint"], tmp_path, "--experiment", "forced",
                         "--teacher-input-size", "16"), capsys)
    assert "scores top-1" in err and "resolution" in err and "--teacher-input-size" in err
    assert not (tmp_path / "forced").exists()


def test_a_random_teacher_is_refused_before_anything_is_written(data, tmp_path, capsys):
    err = _refused(_argv(data, data["random_teacher"], tmp_path, "--experiment", "random"), capsys)
    assert "it would distil noise" in err and "--no-teacher-check" in err
    assert not (tmp_path / "random").exists()


def test_a_student_run_named_as_a_resnet_teacher_is_refused_naming_its_architecture(data, tmp_path, capsys):
    """A DeiT run's last.pth.tar given as --distill-teacher resnet10t: the TypeError of ResNet's constructor
    (the file's img_size/depth passed to it) is now one line naming the architecture the file records."""
    import argparse

    import timm

    kwargs = {"depth": 1, "embed_dim": 32, "num_heads": 2, "num_classes": 10}
    model = timm.create_model("deit_tiny_distilled_patch4_32", **kwargs)
    student_run = tmp_path / "student-last.pth.tar"
    torch.save({"epoch": 0, "arch": "deit_tiny_distilled_patch4_32", "state_dict": model.state_dict(),
                "args": argparse.Namespace(model="deit_tiny_distilled_patch4_32"),
                "deit_distill": {"model": "deit_tiny_distilled_patch4_32", "model_kwargs": kwargs}}, student_run)
    err = _refused(_argv(data, student_run, tmp_path, "--experiment", "wrong-arch"), capsys)
    assert "records the architecture 'deit_tiny_distilled_patch4_32'" in err
    assert "--distill-teacher deit_tiny_distilled_patch4_32" in err
    assert not (tmp_path / "wrong-arch").exists()


@pytest.mark.slow
def test_no_teacher_check_skips_it_and_says_so_in_the_records(data, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    code = train.main(_argv(data, data["random_teacher"], tmp_path, "--experiment", "skip", "--no-teacher-check"))
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "Teacher check: " not in caplog.text  # nothing measured...
    assert "Teacher check skipped (--no-teacher-check)" in caplog.text  # ...and the log says so
    assert load(tmp_path / "skip" / "last.pth.tar")["deit_distill"]["distill"]["teacher_check"] is None
    assert yaml.safe_load((tmp_path / "skip" / "args.yaml").read_text())["teacher_check"] is None


@pytest.mark.slow
def test_the_check_does_not_change_what_the_student_learns(data, trained_teacher, tmp_path, capsys):
    # The check runs the teacher on its own loader (own generator): the global RNG the student's dropout,
    # drop-path and augmentation draw on is where it would have been without the check.
    extra = ["--drop", "0.3"]  # dropout draws on the global generator at every step
    assert train.main(_argv(data, trained_teacher["checkpoint"], tmp_path, "--experiment", "checked", *extra)) == 0
    assert train.main(_argv(data, trained_teacher["checkpoint"], tmp_path, "--experiment", "unchecked",
                            "--no-teacher-check", *extra)) == 0
    capsys.readouterr()
    a = load(tmp_path / "checked" / "last.pth.tar")["state_dict"]
    b = load(tmp_path / "unchecked" / "last.pth.tar")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_run_from_a_cache_reports_the_check_measured_when_it_was_built(data, trained_teacher, tmp_path, capsys):
    flags = ["--data-dir", str(data["digits"]), *STUDENT, *FAST, "--epochs", "1", "--img-size", "16",
             "--distill-teacher-path", str(trained_teacher["checkpoint"]), "--teacher-precision", "fp32"]
    cache = tmp_path / "cache"
    assert cache_cli.main(["build", *flags, "--store", "hard", "--out", str(cache)]) == 0
    built = json.loads((cache / "manifest.json").read_text())["teacher_check"]
    assert built["passed"] is True and built["top1"] > 80
    run_flags = [*flags[:-4], "--distill-cache", str(cache), "--output", str(tmp_path)]  # no teacher in memory
    # a teacher setting given with a cache must be the cache's: no teacher runs, so it would be ignored
    err = _refused([*run_flags, "--experiment", "bad", "--teacher-input-size", "16"], capsys)
    assert "teacher input size: cache 32x32" in err
    assert train.main([*run_flags, "--experiment", "cached"]) == 0
    capsys.readouterr()
    assert load(tmp_path / "cached" / "last.pth.tar")["deit_distill"]["distill"]["teacher_check"] == built
    assert cache_cli.main(["info", str(cache)]) == 0
    assert f"teacher check: top-1 {built['top1']:.2f}% on {built['images']} validation images" in capsys.readouterr().out
