"""A teacher whose weights record no training size runs at the student's; the check then also measures a few
other sizes and refuses when one is clearly better, naming it and --teacher-input-size (issue 11 follow-up 4).

References: timm's own model fed ``F.interpolate``-resized batches of the same images, timm's ``accuracy``.
"""

from __future__ import annotations

import logging

import pytest
import torch
from source_fixtures import open_folder
from test_teacher_check import LABELS, create, data_config, reference_top1
from train_fixtures import FAST, STUDENT, load

from timm_deit_distill.commands import train
from timm_deit_distill.data import build_check_loader
from timm_deit_distill.teacher import TeacherError
from timm_deit_distill.teacher.check import SWEEP_IMAGES


@pytest.fixture(scope="module")
def val(trained_teacher):
    return open_folder(str(trained_teacher["data"]))[1]


@pytest.fixture(scope="module")
def plain(trained_teacher, tmp_path_factory) -> dict:
    """The 32px-trained teacher as a plain state dict (no size recorded), and timm's model holding it."""
    import timm

    state = load(trained_teacher["checkpoint"])["state_dict"]
    path = tmp_path_factory.mktemp("plain") / "teacher.pth"
    torch.save(state, path)
    model = timm.create_model("resnet10t", num_classes=10)
    model.load_state_dict(state)
    return {"path": path, "model": model.eval()}


def _batches(val, size: int) -> list:
    return [(x, y) for x, y in build_check_loader(val, data_config(size), max_images=512)]


def test_a_32px_plain_teacher_of_a_16px_student_is_refused_naming_32(plain, val, caplog):
    teacher = create("resnet10t", 16, checkpoint_path=plain["path"], label_names=LABELS)
    assert teacher.info["input_size_source"] == "student" and teacher.input_hw is None
    batches = _batches(val, 16)
    first = []  # the images the sweep measures: the first SWEEP_IMAGES
    for x, y in batches:
        first.append((x[: SWEEP_IMAGES - sum(len(t) for _, t in first)], y[: SWEEP_IMAGES - sum(len(t) for _, t in first)]))
    first = [(x, y) for x, y in first if len(y)]
    at_16 = reference_top1(plain["model"], first, (16, 16))
    at_32 = reference_top1(plain["model"], first, (32, 32))
    assert at_32 > 1.5 * at_16  # the situation, measured independently

    caplog.set_level(logging.INFO, logger="timm_deit_distill.teacher")
    with pytest.raises(TeacherError) as error:
        teacher.check(batches)
    message = str(error.value)
    assert "\n" not in message and error.value.check.passed is False
    assert f"runs at 16x16 (the student's), where it scores top-1 {at_16:.2f}% on {SWEEP_IMAGES}" in message
    assert f"at 32x32 it scores {at_32:.2f}%" in message
    assert "--teacher-input-size 32 (teacher_input_size)" in message and "--teacher-input-size 16" in message
    assert teacher.input_hw is None  # the sweep leaves the teacher as it was
    sweep = [r.getMessage() for r in caplog.records if "records no training size" in r.getMessage()]
    assert len(sweep) == 1 and "32x32" in sweep[0] and "8x8" in sweep[0] and "176x176" in sweep[0]
    assert " s." in sweep[0]  # its cost

    # the case: a threshold the figure at the student's size clears (there 34.7 % > 32.7 %) still refuses
    cleared = reference_top1(plain["model"], batches, (16, 16)) - 1.0
    with pytest.raises(TeacherError, match="most likely trained at 32x32. Fix: --teacher-input-size 32 "):
        teacher.check(batches, min_top1=cleared)

    # measured only (min_top1=None): no sweep, no refusal
    assert teacher.check(batches, min_top1=None).passed is None


def test_the_sweep_passes_a_teacher_at_its_own_size_and_an_explicit_size_skips_it(plain, val, caplog):
    caplog.set_level(logging.INFO, logger="timm_deit_distill.teacher")
    check = create("resnet10t", 32, checkpoint_path=plain["path"], label_names=LABELS).check(_batches(val, 32))
    assert check.passed is True and check.top1 > 85
    assert any("records no training size" in r.getMessage() and "64x64" in r.getMessage() for r in caplog.records)
    caplog.clear()
    # said explicitly, the student's size is measured as given: no sweep, the plain threshold decides
    forced = create("resnet10t", 16, checkpoint_path=plain["path"], label_names=LABELS, teacher_input_size=16)
    batches = _batches(val, 16)
    measured = forced.check(batches, min_top1=None)
    assert measured.top1 == pytest.approx(reference_top1(plain["model"], batches, (16, 16)), abs=1e-4)
    forced.check(batches, min_top1=0)
    assert not any("records no training size" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_train_refuses_it_before_writing_anything(plain, trained_teacher, tmp_path, capsys):
    code = train.main(["--data-dir", str(trained_teacher["data"]), *STUDENT, *FAST, "--epochs", "1",
                       "--img-size", "16", "--distill-teacher", "resnet10t", "--distill-teacher-path",
                       str(plain["path"]), "--teacher-precision", "fp32", "--output", str(tmp_path),
                       "--experiment", "run"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--teacher-input-size 32" in err and not (tmp_path / "run").exists()
