"""The teacher runs at its own input size and is measured before it teaches (issue 11, part 1).

The references are independent of the code under test: timm's own model fed an ``F.interpolate``-resized
batch, timm's ``accuracy``, the class permutation a test applied itself, the sizes the test wrote into
each checkpoint or config.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from source_fixtures import open_folder
from timm.data import create_transform
from timm.models import save_for_hf
from timm.utils import CheckpointSaver, accuracy
from train_fixtures import STUDENT_KWARGS, load, teacher_checkpoint

from timm_deit_distill.commands import cache as cache_cli
from timm_deit_distill.commands import evaluate, train
from timm_deit_distill.commands.args import parse_args
from timm_deit_distill.data import build_check_loader
from timm_deit_distill.hub.card import CardFacts, build_model_card
from timm_deit_distill.teacher import DistillationTeacher, TeacherCheck, TeacherError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LABELS = [str(i) for i in range(10)]


def data_config(size: int) -> dict:
    """A student's data config at ``size`` px (crop_pct 1: the whole digit)."""
    return {"input_size": (3, size, size), "mean": MEAN, "std": STD, "crop_pct": 1.0, "interpolation": "bicubic"}


def create(source, size: int, **kwargs) -> DistillationTeacher:
    """A teacher for a student whose data pipeline gives ``size`` px batches normalised with MEAN/STD."""
    kwargs.setdefault("precision", "fp32")
    return DistillationTeacher.create(source, data_mean=MEAN, data_std=STD, input_size=(3, size, size), **kwargs)


def seen_sizes(teacher: DistillationTeacher) -> list[tuple[int, int]]:
    """The (H, W) of every batch the wrapped model receives."""
    sizes: list[tuple[int, int]] = []
    teacher.model.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
    return sizes


def _convnet(classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", num_classes=classes).eval()


def _vit(img_size: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=img_size, patch_size=8, depth=1, num_classes=10).eval()


@pytest.fixture(scope="module")
def val(trained_teacher):
    _, val_ds = open_folder(str(trained_teacher["data"]))
    return val_ds


@pytest.fixture(scope="module")
def trained(trained_teacher) -> dict:
    """The 32px-trained teacher's state dict, and a plain timm resnet10t holding it (the reference)."""
    checkpoint = load(trained_teacher["checkpoint"])
    model = timm.create_model("resnet10t", num_classes=10)
    model.load_state_dict(checkpoint["state_dict"])
    return {"checkpoint": checkpoint, "model": model.eval()}


def reference_top1(model: nn.Module, loader, size: tuple[int, int]) -> float:
    """timm's accuracy of ``model`` on ``loader``'s batches resized to ``size`` (bicubic, antialiased)."""
    outputs, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
            outputs.append(model(x))
            targets.append(y)
    return accuracy(torch.cat(outputs), torch.cat(targets), topk=(1,))[0].item()


# ---- the case -------------------------------------------------------------------------------------

def test_a_32px_teacher_of_a_16px_student_runs_at_32_and_scores_high(trained_teacher, trained, val, caplog):
    with caplog.at_level(logging.INFO, logger="timm_deit_distill.teacher"):
        teacher = create(None, 16, checkpoint_path=trained_teacher["checkpoint"], label_names=LABELS)
        check = teacher.check(build_check_loader(val, data_config(16), max_images=512))
    assert teacher.input_hw == (32, 32)
    assert teacher.description["input_size"] == [3, 32, 32]
    assert teacher.description["input_size_source"] == "checkpoint"
    assert "recorded in its checkpoint" in caplog.text and "16x16 batches resized to 32x32" in caplog.text
    assert "Teacher check" in caplog.text and f"{check.top1:.2f}%" in caplog.text

    # The teacher sees the student's batch resized to 32: timm's model on F.interpolate gives its logits.
    x = next(iter(build_check_loader(val, data_config(16), max_images=8)))[0]
    sizes = seen_sizes(teacher)
    torch.testing.assert_close(teacher(x), trained["model"](F.interpolate(
        x, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)), rtol=1e-4, atol=1e-4)
    assert sizes == [(32, 32)]

    reference = reference_top1(trained["model"], build_check_loader(val, data_config(16)), (32, 32))
    assert check.top1 == pytest.approx(reference, abs=1e-4) and check.top1 > 85
    assert check.passed is True and check.images == len(val) and check.diagnosis is None
    assert json.loads(json.dumps(check.as_dict())) == check.as_dict()


def test_forcing_the_students_16px_collapses_it_and_the_check_refuses_in_one_line(trained_teacher, trained, val):
    teacher = create(None, 16, checkpoint_path=trained_teacher["checkpoint"], teacher_input_size=16)
    assert teacher.description["input_size"] == [3, 16, 16] and teacher.description["input_size_source"] == "override"
    loader = build_check_loader(val, data_config(16))
    measured = teacher.check(loader, min_top1=None)  # measured, not refused
    assert measured.passed is None and measured.min_top1 is None
    assert measured.top1 == pytest.approx(reference_top1(trained["model"], loader, (16, 16)), abs=1e-4)
    assert measured.top1 < 40  # the collapse the issue measured (94.5 % -> 23 %)

    with pytest.raises(TeacherError) as error:
        teacher.check(loader)
    message = str(error.value)
    assert "\n" not in message
    assert f"{measured.top1:.2f}%" in message and f"{error.value.check.min_top1:.2f}%" in message
    assert "runs at 16x16" in message and "trained at 32x32" in message and "--teacher-input-size" in message
    for cause in ("class order", "normalisation", "wrong checkpoint", "--teacher-min-top1", "--no-teacher-check"):
        assert cause in message, cause
    assert error.value.check.passed is False


# ---- where the size comes from, per source -----------------------------------------------------------------

def _timm_checkpoint(tmp_path: Path, **args) -> Path:
    model = _convnet()
    saver = CheckpointSaver(model, torch.optim.SGD(model.parameters(), lr=0.1),
                            args=argparse.Namespace(model="resnet10t", mean=None, std=None, **args),
                            checkpoint_dir=str(tmp_path))
    saver.save_checkpoint(epoch=0, metric=1.0)
    return tmp_path / "last.pth.tar"


@pytest.mark.parametrize("args,expected", [
    ({"input_size": [3, 24, 20], "img_size": 40}, (24, 20)),  # timm's --input-size C H W wins over --img-size
    ({"input_size": None, "img_size": 40}, (40, 40)),
    ({"input_size": None, "img_size": None}, (176, 176)),  # resnet10t's default cfg: what timm trained at
])
def test_timm_train_py_checkpoint(tmp_path, args, expected):
    teacher = create(None, 16, checkpoint_path=_timm_checkpoint(tmp_path, **args), use_ema=None)
    sizes = seen_sizes(teacher)
    teacher(torch.randn(2, 3, 16, 16))
    assert sizes == [expected] and teacher.description["input_size"] == [3, *expected]
    assert teacher.description["input_size_source"] == "checkpoint"


def test_facebookresearch_deit_checkpoint(tmp_path):
    path = tmp_path / "deit.pth"
    torch.save({"model": _convnet().state_dict(), "epoch": 299,
                "args": argparse.Namespace(model="resnet10t", input_size=48)}, path)
    teacher = create("resnet10t", 16, checkpoint_path=path)
    sizes = seen_sizes(teacher)
    teacher(torch.randn(2, 3, 16, 16))
    assert sizes == [(48, 48)] and teacher.description["input_size_source"] == "checkpoint"


def test_plain_state_dict_runs_at_the_students_size_and_says_it_is_unknown(tmp_path, caplog):
    path = teacher_checkpoint(tmp_path / "plain.pth")
    with caplog.at_level(logging.INFO, logger="timm_deit_distill.teacher"):
        teacher = create("resnet10t", 16, checkpoint_path=path)
    sizes = seen_sizes(teacher)
    teacher(torch.randn(2, 3, 16, 16))
    # not resnet10t's registry size (176): nothing says these weights were trained at it
    assert sizes == [(16, 16)] and teacher.input_hw is None
    assert teacher.description["input_size"] == [3, 16, 16] and teacher.description["input_size_source"] == "student"
    assert "unknown: running at the student's size" in caplog.text and "--teacher-input-size" in caplog.text


def test_nn_module_runs_at_the_students_size_unless_its_checkpoint_records_one(tmp_path, trained_teacher):
    module = _convnet()
    assert module.pretrained_cfg["input_size"] != (3, 16, 16)  # its architecture's default, not its training size
    teacher = create(module, 16)
    sizes = seen_sizes(teacher)
    teacher(torch.randn(2, 3, 16, 16))
    assert sizes == [(16, 16)] and teacher.description["input_size_source"] == "student"
    loaded = create(_convnet(), 16, checkpoint_path=trained_teacher["checkpoint"])
    assert loaded.input_hw == (32, 32) and loaded.description["input_size_source"] == "checkpoint"


def test_local_dir_takes_its_config_jsons_input_size_or_else_its_test_input_size(tmp_path):
    model = _convnet()
    save_for_hf(model, str(tmp_path / "a"), safe_serialization=True, data_config={"input_size": (3, 24, 24)})
    teacher = create(f"local-dir:{tmp_path / 'a'}", 16)
    sizes = seen_sizes(teacher)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(teacher(x), model(F.interpolate(x, size=(24, 24), mode="bicubic",
                                                                  align_corners=False, antialias=True)))
    assert sizes == [(24, 24)] and teacher.description["input_size_source"] == "pretrained_cfg"

    save_for_hf(model, str(tmp_path / "b"), safe_serialization=True)
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    del config["pretrained_cfg"]["input_size"]
    config["pretrained_cfg"]["test_input_size"] = [3, 28, 28]
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    assert create(f"local-dir:{tmp_path / 'b'}", 16).input_hw == (28, 28)  # not timm's dataclass default 224


def test_timm_name_with_pretrained_weights_takes_the_tags_input_size_not_its_test_size(tmp_path):
    path = tmp_path / "in1k.pth"
    torch.save(_convnet(classes=1000).state_dict(), path)
    # timm loads the tag's weights from a local file here; its cfg says input 176, test 224
    teacher = create("resnet10t.c3_in1k", 16, model_kwargs={"pretrained_cfg_overlay": {"file": str(path)}})
    assert teacher.input_hw == (176, 176) and teacher.description["input_size_source"] == "pretrained_cfg"


def test_fixed_size_architecture_and_explicit_overrides(tmp_path):
    vit = create(_vit(img_size=32), 16)
    assert vit.input_hw == (32, 32) and vit.description["input_size_source"] == "fixed_size"
    assert create(_vit(img_size=32), 16, teacher_input_size=(32, 32)).input_hw == (32, 32)
    with pytest.raises(TeacherError, match="fixed-size architecture that only takes 32x32"):
        create(_vit(img_size=32), 16, teacher_input_size=24)

    path = teacher_checkpoint(tmp_path / "plain.pth")
    for size, expected in ((24, (24, 24)), ((20, 28), (20, 28)), ((3, 20, 28), (20, 28))):
        teacher = create("resnet10t", 16, checkpoint_path=path, teacher_input_size=size)
        sizes = seen_sizes(teacher)
        teacher(torch.randn(1, 3, 16, 16))
        assert sizes == [expected] and teacher.description["input_size_source"] == "override"
    with pytest.raises(TeacherError, match="1 channels but the teacher takes 3"):
        create("resnet10t", 16, checkpoint_path=path, teacher_input_size=(1, 20, 20))
    for bad in (0, (1, 2, 3, 4), (16.5, 16)):
        with pytest.raises(TeacherError, match="teacher_input_size must be"):
            create("resnet10t", 16, checkpoint_path=path, teacher_input_size=bad)


# ---- the check's threshold --------------------------------------------------------------------------------

def test_a_random_teacher_is_refused_near_chance_and_min_top1_none_only_measures(tmp_path, val):
    teacher = create("resnet10t", 32, checkpoint_path=teacher_checkpoint(tmp_path / "random.pth"))
    loader = build_check_loader(val, data_config(32), max_images=200, seed=1)
    with pytest.raises(TeacherError, match="below the") as error:
        teacher.check(loader)
    check = error.value.check
    targets = torch.cat([y for _, y in loader])
    chance = 100 * torch.bincount(targets).max().item() / len(targets)  # always the commonest class
    assert check.images == 200 and check.chance == pytest.approx(chance)
    assert check.min_top1 == pytest.approx(chance + 0.25 * (100 - chance)) and check.top1 < check.min_top1
    measured = teacher.check(loader, min_top1=None)
    assert measured.passed is None and measured.top1 == pytest.approx(check.top1)
    assert teacher.check(loader, min_top1=0.0).passed is True


def test_an_explicit_threshold_and_the_image_budget(trained_teacher, val):
    teacher = create(None, 32, checkpoint_path=trained_teacher["checkpoint"])
    loader = build_check_loader(val, data_config(32), max_images=100, batch_size=32)
    assert teacher.check(loader, max_images=40).images == 40  # stops inside a batch
    with pytest.raises(TeacherError, match=r"below the 99\.99%"):
        teacher.check(loader, min_top1=99.99)


class _Constant(nn.Module):
    """A 'teacher' that always predicts class 0."""

    num_classes = 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(torch.zeros(len(x), dtype=torch.int64), 10).float()


def test_on_imbalanced_labels_chance_is_the_commonest_class():
    # 40 % of the labels are class 0: a constant teacher scores 40 %, above 100/10 + a quarter (32.5 %).
    labels = torch.tensor([0] * 40 + [i % 9 + 1 for i in range(60)])
    loader = [(torch.randn(len(labels), 3, 8, 8), labels)]
    teacher = create(_Constant(), 8)
    with pytest.raises(TeacherError) as error:
        teacher.check(loader)
    assert error.value.check.top1 == pytest.approx(40.0) and error.value.check.chance == pytest.approx(40.0)


def test_bad_check_arguments_are_refused(trained_teacher):
    teacher = create(None, 32, checkpoint_path=trained_teacher["checkpoint"])
    with pytest.raises(TeacherError, match="max_images"):
        teacher.check([], max_images=0)
    with pytest.raises(TeacherError, match="min_top1"):
        teacher.check([], min_top1="high")
    with pytest.raises(TeacherError, match="no images"):
        teacher.check([])


# ---- class order --------------------------------------------------------------------------------------------

PERMUTATION = [3, 0, 1, 2, 4, 5, 6, 7, 9, 8]  # head row j of the reordered teacher is class PERMUTATION[j]


def _reordered(trained: dict, path: Path, rows: list[int], *, names: list[str] | None) -> Path:
    checkpoint = dict(trained["checkpoint"])
    state = dict(checkpoint["state_dict"])
    for key in ("fc.weight", "fc.bias"):
        state[key] = state[key][rows]
    meta = dict(checkpoint["deit_distill"])
    if names is None:
        meta.pop("label_names")
    else:
        meta["label_names"] = names
    # an edited checkpoint: its tensor digest no longer holds, so it goes (as the reader's refusal advises)
    checkpoint.pop("deit_distill_digest", None)
    torch.save({**checkpoint, "state_dict": state, "deit_distill": meta}, path)
    return path


def test_recorded_label_names_in_another_order_are_refused_at_create(tmp_path, trained, caplog):
    path = _reordered(trained, tmp_path / "reordered.pth.tar", PERMUTATION, names=[LABELS[i] for i in PERMUTATION])
    with pytest.raises(TeacherError) as error:
        create(None, 32, checkpoint_path=path, label_names=LABELS)
    message = str(error.value)
    assert "another order" in message and "--class-map" in message and "\n" not in message
    assert "index 0: teacher '3', dataset '0'" in message and "index 8: teacher '9'" not in message  # first four
    assert "6 of 10 indices differ" in message
    # other names of the same count: a warning, not a refusal
    other = [f"digit-{i}" for i in range(10)]
    with caplog.at_level(logging.WARNING, logger="timm_deit_distill.teacher"):
        create(None, 32, checkpoint_path=path, label_names=other)
    assert "other class names" in caplog.text
    # some of the dataset's classes at other indices (one name more, one less, the rest shifted): refused too
    shifted = [*LABELS[1:], "ten"]
    with pytest.raises(TeacherError) as error:
        create(None, 32, checkpoint_path=path, label_names=shifted)
    message = str(error.value)
    assert "with some of them at other indices" in message and "index 0: teacher '3', dataset '1'" in message


def test_label_names_recorded_in_a_config_json_are_checked_too(tmp_path):
    save_for_hf(_convnet(), str(tmp_path / "t"), safe_serialization=True,
                model_config={"label_names": list(reversed(LABELS))})
    with pytest.raises(TeacherError, match="index 0: teacher '9', dataset '0'"):
        create(f"local-dir:{tmp_path / 't'}", 32, label_names=LABELS)


@pytest.mark.parametrize("rows", [
    PERMUTATION,  # 6 classes moved: plain top-1 about 40 %, above the 32.7 % threshold, still refused
    [(j + 1) % 10 for j in range(10)],  # every class moved: plain top-1 near 0
])
def test_a_reordered_head_without_names_is_diagnosed_from_the_confusion(tmp_path, trained, val, rows):
    path = _reordered(trained, tmp_path / "reordered.pth.tar", rows, names=None)
    teacher = create(None, 32, checkpoint_path=path, label_names=LABELS)  # nothing recorded to compare
    loader = build_check_loader(val, data_config(32))
    with pytest.raises(TeacherError) as error:
        teacher.check(loader)
    message = str(error.value)
    first = next(t for t in range(10) if rows.index(t) != t)  # dataset class t is teacher row rows.index(t)
    assert "class order differs" in message and "\n" not in message
    assert f"dataset class {first} ('{first}') -> teacher class {rows.index(first)}" in message
    assert f"for {sum(rows.index(t) != t for t in range(10))} of 10 classes" in message
    assert error.value.check.diagnosis is not None and error.value.check.passed is False
    # measured only: the diagnosis is kept in the result, nothing is refused
    assert "class order differs" in teacher.check(loader, min_top1=None).diagnosis


def test_an_honest_teacher_has_no_class_order_diagnosis(trained_teacher, val):
    check = create(None, 32, checkpoint_path=trained_teacher["checkpoint"]).check(build_check_loader(val, data_config(32)))
    assert check.diagnosis is None and check.passed is True


# ---- the check loader -------------------------------------------------------------------------------------

def test_check_loader_is_a_seeded_bounded_subset_without_replacement_with_the_eval_transform(val):
    loader = build_check_loader(val, data_config(16), max_images=50, batch_size=16, seed=5)
    indices = loader.dataset.indices
    assert len(indices) == 50 and len(set(indices)) == 50 and max(indices) < len(val)
    assert build_check_loader(val, data_config(16), max_images=50, seed=5).dataset.indices == indices
    assert build_check_loader(val, data_config(16), max_images=50, seed=6).dataset.indices != indices
    assert len(build_check_loader(val, data_config(16), max_images=10_000).dataset) == len(val)
    x, y = next(iter(loader))
    transform = create_transform(**{k: v for k, v in data_config(16).items()})
    from PIL import Image

    path, target = val.reader.samples[indices[0]]
    torch.testing.assert_close(x[0], transform(Image.open(path).convert("RGB")))
    assert int(y[0]) == target
    from timm_deit_distill.data import DataError

    with pytest.raises(DataError, match="--teacher-check-images 0"):
        build_check_loader(val, data_config(16), max_images=0)


# ---- flags --------------------------------------------------------------------------------------------------

def test_flags_parse_with_a_teacher():
    args = parse_args(["--distill-teacher", "resnet10t", "--teacher-input-size", "32", "--teacher-min-top1", "50",
                       "--teacher-check-images", "100"])
    assert (args.teacher_input_size, args.teacher_min_top1, args.teacher_check_images, args.no_teacher_check) == (
        [32], 50.0, 100, False)
    assert parse_args(["--distill-teacher", "resnet10t", "--teacher-input-size", "3", "24", "32"]).teacher_input_size \
        == [3, 24, 32]
    defaults = parse_args(["--distill-teacher", "resnet10t"])
    assert (defaults.teacher_input_size, defaults.teacher_min_top1, defaults.teacher_check_images,
            defaults.no_teacher_check) == (None, None, 512, False)


@pytest.mark.parametrize("argv,needle", [
    (["--teacher-min-top1", "101"], "--teacher-min-top1 101 is a top-1 in percent"),
    (["--teacher-min-top1", "-1"], "--teacher-min-top1 -1 is a top-1 in percent"),
    (["--teacher-check-images", "0"], "--teacher-check-images 0 must be >= 1"),
    (["--teacher-input-size", "0"], "--teacher-input-size 0: give N (square), H W, or C H W"),
    (["--teacher-input-size", "3", "32", "32", "32"], "--teacher-input-size 3 32 32 32: give N"),
    (["--no-teacher-check", "--teacher-min-top1", "20"], "contradict each other"),
    (["--no-teacher-check", "--teacher-check-images", "64"], "contradict each other"),
])
def test_bad_flag_values_are_refused_by_train_and_eval(argv, needle, capsys):
    assert train.main(["--distill-teacher", "resnet10t", *argv, "--data-dir", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert evaluate.main(["--checkpoint", "/nonexistent.pth.tar", "--data-dir", "/nonexistent",
                          "--distill-teacher", "resnet10t", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_teacher_flags_without_a_teacher_are_refused(capsys):
    assert train.main(["--teacher-input-size", "32", "--data-dir", "/nonexistent"]) == 2
    assert "--teacher-input-size configures the teacher, but no teacher is given" in capsys.readouterr().err
    assert evaluate.main(["--checkpoint", "x.pth.tar", "--data-dir", "/nonexistent", "--no-teacher-check"]) == 2
    assert "--no-teacher-check configures the teacher" in capsys.readouterr().err


def test_yaml_config_may_give_the_size_as_one_number(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("distill_teacher: resnet10t\nteacher_input_size: 40\n")
    assert parse_args(["-c", str(path)]).teacher_input_size == [40]


# ---- deit-distill eval and cache build ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def student_checkpoint(tmp_path_factory):
    """A 16px distilled student checkpoint in the trainer's format, on the digits classes."""
    from timm_deit_distill.checkpoint import CheckpointSaver as Saver

    root = tmp_path_factory.mktemp("student")
    kwargs = {"num_classes": 10, "img_size": 16, **STUDENT_KWARGS}
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch4_32", **kwargs)
    meta = {"model": "deit_tiny_distilled_patch4_32", "model_kwargs": kwargs,
            "pretrained_cfg": {"input_size": [3, 16, 16], "mean": list(MEAN), "std": list(STD), "crop_pct": 1.0,
                               "interpolation": "bicubic"},
            "label_names": LABELS, "distill": None, "recipe": None, "ema": False}
    saver = Saver(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  args=argparse.Namespace(model=meta["model"]), checkpoint_dir=str(root), recovery_dir=str(root),
                  extra_state=lambda: {"deit_distill": meta})
    saver.save_checkpoint(0, metric=1.0)
    return root / "last.pth.tar"


def _eval(student_checkpoint, data, out, *extra):
    return evaluate.main(["--checkpoint", str(student_checkpoint), "--data-dir", str(data), "--workers", "0",
                          "-b", "64", "--teacher-precision", "fp32", "--json", str(out), *extra])


@pytest.mark.slow
def test_eval_checks_the_teacher_first_and_records_the_check(trained_teacher, student_checkpoint, tmp_path, capsys):
    data = trained_teacher["data"]
    out = tmp_path / "eval.json"
    assert _eval(student_checkpoint, data, out, "--distill-teacher-path", str(trained_teacher["checkpoint"])) == 0
    result = json.loads(out.read_text())
    check = result["teacher"]["check"]
    assert check["passed"] is True and check["images"] == 360 and check["top1"] > 85
    assert check.keys() == TeacherCheck(0, 0, 0, 0, None, 0, None).as_dict().keys()
    assert result["teacher"]["description"]["input_size"] == [3, 32, 32]  # the 16px student's batches resized
    assert result["teacher"]["top1"] == pytest.approx(check["top1"])  # the check saw every validation image
    assert "teacher check before evaluating" in capsys.readouterr().out

    # the mistake, on the command line: refused in one line before the full evaluation, nothing written
    refused = tmp_path / "refused.json"
    assert _eval(student_checkpoint, data, refused, "--distill-teacher-path", str(trained_teacher["checkpoint"]),
                 "--teacher-input-size", "16") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and not refused.exists()
    assert "trained at 32x32" in err and "--no-teacher-check" in err

    random_teacher = teacher_checkpoint(tmp_path / "random.pth")
    assert _eval(student_checkpoint, data, refused, "--distill-teacher", "resnet10t",
                 "--distill-teacher-path", str(random_teacher)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "below the" in err and "Traceback" not in err
    assert not refused.exists()
    skipped = tmp_path / "skipped.json"
    assert _eval(student_checkpoint, data, skipped, "--distill-teacher", "resnet10t",
                 "--distill-teacher-path", str(random_teacher), "--no-teacher-check") == 0
    assert json.loads(skipped.read_text())["teacher"]["check"] is None


@pytest.mark.slow
def test_eval_refusal_from_the_real_command_is_one_line(trained_teacher, student_checkpoint, tmp_path):
    random_teacher = teacher_checkpoint(tmp_path / "random.pth")
    proc = subprocess.run(
        [sys.executable, "-m", "timm_deit_distill", "eval", "--checkpoint", str(student_checkpoint), "--data-dir",
         str(trained_teacher["data"]), "--workers", "0", "--distill-teacher", "resnet10t", "--distill-teacher-path",
         str(random_teacher), "--json", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "below the" in proc.stderr
    assert not (tmp_path / "out.json").exists()


def _cache_flags(data, out, *teacher):
    return ["build", "--data-dir", str(data), "--model", "deit_tiny_distilled_patch4_32", "--model-kwargs",
            "depth=1", "embed_dim=32", "num_heads=2", *teacher, "--epochs", "1", "-b", "64", "--workers", "0",
            "--teacher-precision", "fp32", "--hflip", "0", "--store", "hard", "--out", str(out)]


@pytest.mark.slow
def test_cache_build_checks_the_teacher_before_writing_anything(trained_teacher, tmp_path, capsys, caplog):
    data = trained_teacher["data"]
    random_teacher = ["--distill-teacher", "resnet10t", "--distill-teacher-path",
                      str(teacher_checkpoint(tmp_path / "random.pth"))]
    refused = tmp_path / "refused"
    assert cache_cli.main(_cache_flags(data, refused, *random_teacher)) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.strip()] == [err.strip()]  # one line
    assert err.startswith("deit-distill cache build: error: Teacher resnet10t scores top-1")
    assert "--no-teacher-check" in err and "Traceback" not in err
    assert not refused.exists()  # nothing written

    with caplog.at_level(logging.INFO, logger="timm_deit_distill.teacher"):
        assert cache_cli.main(_cache_flags(data, tmp_path / "trained", "--distill-teacher-path",
                                           str(trained_teacher["checkpoint"]))) == 0
    assert "Teacher check: resnet10t" in caplog.text and "passed" in caplog.text
    assert (tmp_path / "trained" / "manifest.json").exists()
    manifest = json.loads((tmp_path / "trained" / "manifest.json").read_text())
    assert manifest["teacher"]["input_size"] == [3, 32, 32] and manifest["teacher"]["input_size_source"] == "checkpoint"

    capsys.readouterr()
    assert cache_cli.main(_cache_flags(data, tmp_path / "skipped", *random_teacher, "--no-teacher-check")) == 0
    assert (tmp_path / "skipped" / "manifest.json").exists()


# ---- the model card -----------------------------------------------------------------------------------------

def _card(distill: dict) -> str:
    return build_model_card(CardFacts(
        variant="deit_tiny_distilled_patch4_32", timm_architecture="deit_tiny_distilled_patch16_224",
        model_args={"img_size": 32}, num_params=1000, num_classes=10,
        data_config={"input_size": (3, 16, 16), "mean": MEAN, "std": STD, "crop_pct": 1.0,
                     "interpolation": "bicubic"}, weights="raw", distill=distill))


def test_model_card_states_the_teacher_check_and_input_size():
    check = TeacherCheck(top1=94.5, images=512, num_classes=10, chance=10.25, min_top1=32.6875, seconds=1.5,
                         passed=True)
    distill = {"teacher": "resnet10t", "type": "hard", "alpha": 0.5, "tau": 1.0, "soft_reduction": "deit",
               "teacher_description": {"name": "resnet10t", "input_size": [3, 32, 32],
                                       "input_size_source": "checkpoint"},
               "teacher_check": check.as_dict()}
    text = _card(distill)
    assert "| teacher input size | 32x32 (recorded in its checkpoint) |" in text
    assert ("| teacher check before training | top-1 94.50% on 512 validation images (threshold 32.69%, "
            "chance 10.25%) |") in text
    assert "| teacher check before training | not run (--no-teacher-check) |" in _card({**distill, "teacher_check": None})
    assert "teacher check" not in _card({k: v for k, v in distill.items() if k != "teacher_check"})
    unchecked = _card({**distill, "teacher_check": {**check.as_dict(), "min_top1": None, "passed": None}})
    assert "(measured only, no threshold)" in unchecked
