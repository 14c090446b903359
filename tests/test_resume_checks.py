"""--resume continues the same run or is refused: the student, the data, the seed and the teacher must not
change; every other changed setting is logged (old -> new) and recorded in args.yaml under ``resumed``."""

from __future__ import annotations

import copy
import logging
import shutil

import pytest
import torch
import yaml
from train_fixtures import FAST, STUDENT, digits, load

from timm_deit_distill.commands import train
from timm_deit_distill.commands.args import parse_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return {"small": digits(root / "small", train_per_class=5), "other": digits(root / "other", train_per_class=6)}


def argv(data_dir, *extra):
    return ["--data-dir", str(data_dir), *STUDENT, *FAST, "--checkpoint-hist", "2", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data):
    """A finished 2-epoch run without distillation (tests copy it before touching it)."""
    root = tmp_path_factory.mktemp("finished")
    assert train.main(argv(data["small"], "--epochs", "2", "--output", str(root), "--experiment", "run")) == 0
    return root / "run"


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".deit-distill.lock"}


def test_resume_refuses_a_changed_seed_data_and_teacher_naming_each(finished_run, data, trained_teacher, tmp_path,
                                                                     capsys):
    run = shutil.copytree(finished_run, tmp_path / "run")
    before = snapshot(run)
    last = run / "last.pth.tar"
    code = train.main(argv(data["other"], "--epochs", "3", "--seed", "4", "--resume", str(last),
                           "--distill-teacher-path", str(trained_teacher["checkpoint"])))
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in out + err, out + err
    assert "seed 3 -> 4" in err
    assert "training data 50 images in 10 classes (files sha256 " in err and "-> 60 images in 10 classes" in err
    assert "teacher none -> resnet10t (weights sha256 " in err
    assert f"-c {run / 'args.yaml'}" in err and f"--initial-checkpoint {last}" in err
    assert snapshot(run) == before

    # One at a time, each is refused by name.
    for extra, needle in ((["--seed", "5"], "seed 3 -> 5"), (["--data-dir", str(data["other"])], "training data"),
                          (["--distill-teacher-path", str(trained_teacher["checkpoint"])], "teacher none -> ")):
        code = train.main([*argv(data["small"], "--epochs", "3", "--resume", str(last)), *extra])
        err = capsys.readouterr().err
        assert code == 2 and needle in err, err
    assert snapshot(run) == before


@pytest.mark.slow
def test_resume_logs_and_records_every_other_changed_setting(finished_run, data, tmp_path, caplog):
    run = shutil.copytree(finished_run, tmp_path / "run")
    last = run / "last.pth.tar"
    caplog.set_level(logging.INFO)
    assert train.main(argv(data["small"], "--epochs", "3", "--lr", "2e-3", "-b", "8", "--resume", str(last))) == 0
    for line in ("lr 0.001 -> 0.002", "epochs 2 -> 3", "batch_size 16 -> 8"):
        assert f"Resumed with a changed setting: {line} (recorded in args.yaml)" in caplog.text, line
    record = yaml.safe_load((run / "args.yaml").read_text())
    assert record["lr"] == 2e-3 and record["epochs"] == 3
    assert "resume" not in record  # settings only: `-c args.yaml` repeats the run instead of resuming it
    assert record["resumed"] == [{"epoch": 2, "checkpoint": str(last),
                                  "changed": {"batch_size": [16, 8], "epochs": [2, 3], "lr": [0.001, 0.002]}}]
    assert load(last)["deit_distill"]["resumed"] == record["resumed"]

    # Resumed again from its args.yaml (which -c reads, 'resumed' aside): the records accumulate.
    caplog.clear()
    assert parse_args(["-c", str(run / "args.yaml")]).lr == 2e-3
    assert train.main(["-c", str(run / "args.yaml"), "--epochs", "4", "--resume", str(last)]) == 0
    assert "Resumed with a changed setting: epochs 3 -> 4" in caplog.text
    assert "changed setting: lr" not in caplog.text and "changed setting: batch_size" not in caplog.text
    record = yaml.safe_load((run / "args.yaml").read_text())
    assert [r["epoch"] for r in record["resumed"]] == [2, 3]
    assert record["resumed"][1]["changed"] == {"epochs": [3, 4]}
    assert load(last)["epoch"] == 3


@pytest.mark.slow
def test_a_checkpoint_from_before_data_fingerprints_resumes_saying_the_data_was_not_compared(
        finished_run, data, tmp_path, caplog):
    run = shutil.copytree(finished_run, tmp_path / "run")
    last = run / "last.pth.tar"
    state = load(last)
    del state["deit_distill"]["data"], state["deit_distill"]["seed"]  # as written by earlier versions
    torch.save(state, last)
    caplog.set_level(logging.INFO)
    assert train.main(argv(data["small"], "--epochs", "3", "--resume", str(last))) == 0
    assert "the training data could not be compared" in caplog.text
    assert load(last)["deit_distill"]["data"]["num_samples"] == 50  # recorded from now on


def test_compare_resume_names_what_changed(finished_run):
    from timm_deit_distill.checkpoint import compare_resume

    saved = load(finished_run / "last.pth.tar")
    settings = dict(vars(saved["args"]))
    meta = copy.deepcopy(saved["deit_distill"])
    same = compare_resume(saved, settings=settings, metadata=meta)
    assert (same.refused, same.changed, same.notes) == ([], {}, [])

    teacher = {"name": "resnet10t", "sha256": "a" * 64}
    with_teacher = copy.deepcopy(saved)
    with_teacher["deit_distill"]["distill"]["teacher_description"] = teacher
    other = {**meta, "distill": {**meta["distill"], "teacher_description": {**teacher, "sha256": "b" * 64}}}
    assert compare_resume(with_teacher, settings=settings, metadata=other).refused == [
        "teacher resnet10t (weights sha256 aaaaaaaaaaaa) -> resnet10t (weights sha256 bbbbbbbbbbbb)"]
    assert compare_resume(with_teacher, settings=settings, metadata=meta).refused == [
        "teacher resnet10t (weights sha256 aaaaaaaaaaaa) -> none"]
    # the same weights at another path are the same teacher
    moved = {**meta, "distill": {**meta["distill"], "teacher_description": {**teacher, "file": "/elsewhere"}}}
    assert compare_resume(with_teacher, settings=settings, metadata=moved).refused == []

    bigger = {**meta, "model_kwargs": {**meta["model_kwargs"], "depth": 2}, "world_size": 2}
    result = compare_resume(saved, settings={**settings, "smoothing": 0.2}, metadata=bigger)
    assert [r.split(" {")[0] for r in result.refused] == ["architecture"]
    assert result.changed == {"smoothing": [0.1, 0.2], "world_size": [1, 2]}

    timm_file = {k: v for k, v in saved.items() if k != "deit_distill"}  # e.g. written by timm's train.py
    assert "could not be compared" in compare_resume(timm_file, settings=settings, metadata=meta).notes[0]


# --- the ways out a refusal names work -------------------------------------------------------------------------

@pytest.mark.slow
def test_the_resume_a_refusal_suggests_runs(finished_run, data, tmp_path, capsys):
    """It suggested `-c RUN/args.yaml --resume OLDER_CHECKPOINT`, itself refused (the yaml's folder holds a run)."""
    import re
    import shlex

    run = shutil.copytree(finished_run, tmp_path / "run")
    older = run / "checkpoint-0.pth.tar"
    code = train.main(argv(data["small"], "--seed", "4", "--resume", str(older), "--output", str(tmp_path),
                           "--experiment", "branch"))
    err = capsys.readouterr().err
    assert code == 2 and "seed 3 -> 4" in err, err
    suggested = re.search(r"fix: resume with the original values: (.*?); or ", err).group(1)
    assert f"--resume {older}" in suggested and "--experiment branch" in suggested
    assert train.main(shlex.split(suggested)) == 0
    capsys.readouterr()
    assert load(tmp_path / "branch" / "last.pth.tar")["epoch"] == 1 and load(run / "last.pth.tar")["epoch"] == 1


def test_after_a_model_change_no_weights_flag_that_cannot_fit_is_suggested(finished_run, data, tmp_path, capsys):
    run = shutil.copytree(finished_run, tmp_path / "run")
    last = run / "last.pth.tar"
    deeper = ["--model-kwargs", "depth=2", "embed_dim=32", "num_heads=2"]
    code = train.main([*argv(data["small"], "--epochs", "3", "--resume", str(last)), *deeper])
    err = capsys.readouterr().err
    assert code == 2 and "architecture" in err, err
    assert "--initial-checkpoint" not in err and "--pretrained-path" not in err
    assert "these weights do not fit the new architecture" in err
    # only the input size differs: the weights fit with their position embedding resampled
    code = train.main([*argv(data["small"], "--epochs", "3", "--resume", str(last)), "--img-size", "16"])
    err = capsys.readouterr().err
    assert code == 2 and f"--pretrained --pretrained-path {last}" in err and "--initial-checkpoint" not in err
    code = train.main(["--data-dir", str(data["small"]), "--model", "resnet10t", *FAST, "--epochs", "3", "--resume",
                       str(last)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot start from these weights" in err and "--initial-checkpoint" not in err


def test_a_resume_with_nothing_left_to_train_is_refused_before_writing(finished_run, data, tmp_path, capsys):
    run = shutil.copytree(finished_run, tmp_path / "run")
    before = snapshot(run)
    for epochs in ("1", "2"):  # the run trained epochs 0-1: nothing left; it used to exit 0 and rewrite args.yaml
        code = train.main(argv(data["small"], "--epochs", epochs, "--resume", str(run / "last.pth.tar")))
        err = capsys.readouterr().err
        assert code == 2 and "has already trained epochs 0-1 (2 epochs)" in err and "--epochs 3 or more" in err
        assert err.count("\n") == 1
    assert snapshot(run) == before
    code = train.main(argv(data["small"], "--epochs", "2", "--start-epoch", "2", "--output", str(tmp_path),
                           "--experiment", "late"))
    assert code == 2 and "--start-epoch 2 is at or past the end of the schedule" in capsys.readouterr().err
    assert not (tmp_path / "late").exists()


def _renamed_class(src, dst):
    """A copy of the image folder ``src`` whose class 9 is named 'x' in both splits."""
    shutil.copytree(src, dst)
    for split in ("train", "validation"):
        (dst / split / "9").rename(dst / split / "x")
    return dst


def test_other_class_names_are_refused_naming_the_first_that_differs(finished_run, data, tmp_path, capsys):
    run = shutil.copytree(finished_run, tmp_path / "run")
    before = snapshot(run)
    last = run / "last.pth.tar"
    renamed = _renamed_class(data["small"], tmp_path / "renamed")
    # --resume: one line naming the class, not the two whole lists (a thousand names on ImageNet)
    code = train.main(argv(renamed, "--epochs", "3", "--resume", str(last)))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "classes: class 9 is '9' in the checkpoint but 'x' in this run's data (10 and 10 classes)" in err
    assert snapshot(run) == before
    # --initial-checkpoint: its head rows would start on the wrong classes
    code = train.main(argv(renamed, "--epochs", "1", "--initial-checkpoint", str(last), "--output", str(tmp_path),
                           "--experiment", "new"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert (f"class 9 is '9' in the classes of --initial-checkpoint {last} but 'x' in the training data" in err
            and f"--pretrained --pretrained-path {last}" in err)
    assert not (tmp_path / "new").exists()
    # the same classes: it starts from those weights
    assert train.main(argv(data["small"], "--epochs", "1", "--initial-checkpoint", str(last), "--output",
                           str(tmp_path), "--experiment", "same")) == 0
