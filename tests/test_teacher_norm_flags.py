"""The teacher check's advice names what works: --teacher-mean/--teacher-std set the teacher's own normalisation
(train, cache build, eval; recorded in args.yaml, the checkpoint and the cache's fingerprint); a class order
that differs is not advised away with --teacher-min-top1, which cannot accept it."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from source_fixtures import open_folder
from test_teacher_check import LABELS, MEAN, STD, _reordered, create, data_config
from train_fixtures import FAST, STUDENT, load

from timm_deit_distill.commands import cache as cache_cli
from timm_deit_distill.commands import evaluate, train
from timm_deit_distill.commands.args import parse_args
from timm_deit_distill.data import build_check_loader
from timm_deit_distill.factory.settings import teacher_settings
from timm_deit_distill.teacher import TeacherError


@pytest.fixture(scope="module")
def val(trained_teacher):
    return open_folder(str(trained_teacher["data"]))[1]


@pytest.fixture(scope="module")
def trained(trained_teacher) -> dict:
    return {"checkpoint": load(trained_teacher["checkpoint"])}


def test_a_class_order_refusal_advises_only_what_accepts_it(tmp_path, trained, val):
    path = _reordered(trained, tmp_path / "moved.pth.tar", [(j + 1) % 10 for j in range(10)], names=None)
    teacher = create(None, 32, checkpoint_path=path, label_names=LABELS)
    loader = build_check_loader(val, data_config(32))
    with pytest.raises(TeacherError) as error:
        teacher.check(loader)
    message = str(error.value)
    assert "class order differs" in message and error.value.check.top1 < error.value.check.min_top1
    assert "below the measured figure" not in message  # what the message advised before, and does not work:
    with pytest.raises(TeacherError, match="class order differs"):
        teacher.check(loader, min_top1=0)
    accept = message.split("To accept it anyway: ")[1]
    assert "--no-teacher-check" in accept and "--teacher-min-top1 cannot accept a class order" in accept


def test_the_normalisation_advice_names_the_teachers_own_flags(trained_teacher, val):
    teacher = create(None, 32, checkpoint_path=trained_teacher["checkpoint"], teacher_mean=(0.0, 0.0, 0.0),
                     teacher_std=(1.0, 1.0, 1.0))
    with pytest.raises(TeacherError) as error:
        teacher.check(build_check_loader(val, data_config(32)))
    message = str(error.value)
    assert "--teacher-mean/--teacher-std" in message and "set --mean/--std" not in message
    assert "--mean/--std change the student's data" in message


def test_flags_parse_into_the_teacher_settings():
    args = parse_args(["--distill-teacher", "resnet10t", "--teacher-mean", "0.5", "--teacher-std", "0.2", "0.3", "0.4"])
    settings = teacher_settings(args, source="resnet10t", checkpoint_path=None, use_ema=None, channels_last=None)
    assert (settings.mean, settings.std) == ((0.5,), (0.2, 0.3, 0.4))
    defaults = teacher_settings(parse_args(["--distill-teacher", "resnet10t"]), source="resnet10t",
                                checkpoint_path=None, use_ema=None, channels_last=None)
    assert (defaults.mean, defaults.std) == (None, None)


@pytest.mark.parametrize("argv,needle", [
    (["--teacher-std", "0"], "--teacher-std 0: give 1 or 3 positive numbers"),
    (["--teacher-std", "0.2", "-0.2", "0.2"], "--teacher-std 0.2 -0.2 0.2: give 1 or 3 positive"),
    (["--teacher-mean", "0.1", "0.2"], "--teacher-mean 0.1 0.2: give 1 or 3 finite numbers"),
    (["--teacher-mean", "nan"], "--teacher-mean nan"),
])
def test_bad_values_are_refused_by_train_eval_and_cache_build(argv, needle, capsys):
    assert train.main(["--distill-teacher", "resnet10t", *argv, "--data-dir", "/nonexistent"]) == 2
    assert needle in capsys.readouterr().err
    assert evaluate.main(["--checkpoint", "/nonexistent.pth.tar", "--data-dir", "/nonexistent",
                          "--distill-teacher", "resnet10t", *argv]) == 2
    assert needle in capsys.readouterr().err
    assert cache_cli.main(["build", "--data-dir", "/nonexistent", "--distill-teacher", "resnet10t", *argv,
                           "--out", "/nonexistent/c"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err



def test_the_flags_without_a_teacher_are_refused(capsys):
    assert train.main(["--teacher-mean", "0.5", "--data-dir", "/nonexistent"]) == 2
    assert "--teacher-mean configures the teacher, but no teacher is given" in capsys.readouterr().err
    assert evaluate.main(["--checkpoint", "x.pth.tar", "--data-dir", "/nonexistent", "--teacher-std", "0.5"]) == 2
    assert "--teacher-std configures the teacher, but no teacher is given" in capsys.readouterr().err


def _train(data, teacher, out, *extra):
    return train.main(["--data-dir", str(data), *STUDENT, *FAST, "--epochs", "1", "--img-size", "16",
                       "--teacher-precision", "fp32", "--output", str(out), *teacher, *extra])


@pytest.mark.slow
def test_train_eval_and_cache_give_the_teacher_its_normalisation_and_record_it(trained_teacher, tmp_path, capsys):
    data, teacher = trained_teacher["data"], ["--distill-teacher-path", str(trained_teacher["checkpoint"])]
    wrong = ["--teacher-mean", "0", "--teacher-std", "1"]
    right = ["--teacher-mean", *map(str, MEAN), "--teacher-std", *map(str, STD)]
    # the flags reach the teacher: told it was trained without normalisation, it collapses and is refused
    assert _train(data, teacher, tmp_path, "--experiment", "wrong", *wrong) == 2
    err = capsys.readouterr().err
    assert "mean (0) std (1) (given)" in err and "--teacher-mean/--teacher-std" in err
    assert not (tmp_path / "wrong").exists()
    assert _train(data, teacher, tmp_path, "--experiment", "right", *right) == 0
    recorded = yaml.safe_load((tmp_path / "right" / "args.yaml").read_text())
    assert (recorded["teacher_mean"], recorded["teacher_std"]) == (list(MEAN), list(STD))
    description = load(tmp_path / "right" / "last.pth.tar")["deit_distill"]["distill"]["teacher_description"]
    assert description["mean"] == pytest.approx(MEAN) and description["std"] == pytest.approx(STD)

    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert evaluate.main(["--checkpoint", str(tmp_path / "right" / "last.pth.tar"), "--data-dir", str(data),
                          "--workers", "0", "--teacher-precision", "fp32", "--json", str(out), *teacher, *wrong]) == 2
    assert "--teacher-mean/--teacher-std" in capsys.readouterr().err and not out.exists()

    # a cache records the normalisation (in its fingerprint); a run giving another is refused
    cache = tmp_path / "cache"
    assert cache_cli.main(["build", "--data-dir", str(data), *STUDENT, "--img-size", "16", "-b", "64",
                           "--workers", "0", "--seed", "3", "--epochs", "1", "--teacher-precision", "fp32", "--store", "hard",
                           *teacher, *right, "--out", str(cache)]) == 0
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["teacher"]["mean"] == pytest.approx(MEAN)
    assert manifest["fingerprint"]["teacher"]["std"] == pytest.approx(STD)
    capsys.readouterr()
    assert _train(data, ["--distill-cache", str(cache)], tmp_path, "--experiment", "c", *wrong) == 2
    err = capsys.readouterr().err
    assert "teacher normalisation" in err and "--teacher-mean" in err and not (tmp_path / "c").exists()
    assert _train(data, ["--distill-cache", str(cache)], tmp_path, "--experiment", "c", *right) == 0
    assert torch.isfinite(torch.tensor([float(r["train_loss"]) for r in
                                        load(tmp_path / "c" / "last.pth.tar")["summary"]])).all()
