"""`deit-distill eval` checks where its results go BEFORE evaluating, not after (when the work would be lost)."""

from __future__ import annotations

import argparse
import json

import pytest
import timm
import torch
from train_fixtures import STUDENT_KWARGS, digits

import timm_deit_distill  # noqa: F401  (registers the variants)
from timm_deit_distill.checkpoint import CheckpointSaver
from timm_deit_distill.commands import evaluate
from timm_deit_distill.factory import evaluating


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalout")
    data = digits(root / "digits", train_per_class=1)
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch4_32", num_classes=10, **STUDENT_KWARGS)
    meta = {"model": "deit_tiny_distilled_patch4_32", "model_kwargs": {"num_classes": 10, **STUDENT_KWARGS},
            "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "crop_pct": 1.0,
                               "interpolation": "bicubic"},
            "label_names": [str(i) for i in range(10)], "distill": None, "recipe": None, "ema": False}
    saver = CheckpointSaver(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                            args=argparse.Namespace(model=meta["model"]), checkpoint_dir=str(root),
                            recovery_dir=str(root), extra_state=lambda: {"deit_distill": meta})
    saver.save_checkpoint(0, metric=1.0)
    return {"data": data, "ckpt": root / "last.pth.tar"}


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the evaluation starts."""
    def refuse(settings):
        raise AssertionError("the evaluation ran before the output path was checked")

    monkeypatch.setattr(evaluating, "run_evaluation", refuse)


@pytest.mark.parametrize("flag", ["--json", "--predict"])
def test_output_in_a_missing_folder_is_refused_before_evaluating(flag, tmp_path, capsys, no_work):
    target = tmp_path / "no" / "such" / "out.file"
    code = evaluate.main(["--checkpoint", str(tmp_path / "c.pth.tar"), "--data-dir", str(tmp_path), flag,
                          str(target)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{flag} {target}: the folder {target.parent} does not exist" in err and "mkdir -p" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--json", "--predict"])
def test_output_that_is_a_folder_or_under_a_file_is_refused(flag, tmp_path, capsys, no_work):
    (tmp_path / "afile").write_text("x")
    assert evaluate.main(["--checkpoint", "c", "--data-dir", "d", flag, str(tmp_path)]) == 2
    assert f"{flag} {tmp_path} is a folder" in capsys.readouterr().err
    assert evaluate.main(["--checkpoint", "c", "--data-dir", "d", flag, str(tmp_path / "afile" / "x.json")]) == 2
    assert f"the folder {tmp_path / 'afile'} is not a folder" in capsys.readouterr().err


def test_predict_and_json_on_one_file_is_refused(tmp_path, capsys, no_work):
    same = str(tmp_path / "out.json")
    assert evaluate.main(["--checkpoint", "c", "--data-dir", "d", "--json", same, "--predict", same]) == 2
    assert "is also where the JSON results go" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--json", "--predict"])
def test_an_output_on_the_checkpoint_or_teacher_is_refused(flag, run, tmp_path, capsys, no_work):
    teacher = tmp_path / "teacher.pth"
    teacher.write_bytes(b"teacher weights")
    before = run["ckpt"].read_bytes()
    for target, name in ((run["ckpt"], "--checkpoint"), (teacher, "--distill-teacher-path")):
        assert evaluate.main(["--checkpoint", str(run["ckpt"]), "--data-dir", str(run["data"]),
                              "--distill-teacher-path", str(teacher), flag, str(target)]) == 2
        assert f"{flag} {target} is the {name} file; writing there would destroy it" in capsys.readouterr().err
    assert run["ckpt"].read_bytes() == before and teacher.read_bytes() == b"teacher weights"


def test_default_results_file_that_is_a_folder_is_refused(run, capsys, monkeypatch):
    default = run["ckpt"].parent / "eval-last-validation.json"
    default.mkdir()
    try:
        monkeypatch.setattr(evaluating, "run_evaluation", lambda settings: pytest.fail("evaluated before checking"))
        assert evaluate.main(["--checkpoint", str(run["ckpt"]), "--data-dir", str(run["data"])]) == 2
        assert f"{default} is a folder" in capsys.readouterr().err
    finally:
        default.rmdir()


def test_missing_checkpoint_is_still_reported_as_such(tmp_path, capsys):
    """The default results path lies next to the checkpoint: a missing checkpoint folder is the checkpoint's error."""
    assert evaluate.main(["--checkpoint", str(tmp_path / "gone" / "c.pth.tar"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--checkpoint" in err and "does not exist" in err and "pass the path of a checkpoint file" in err
    assert "mkdir" not in err


def test_end_to_end_refusal_then_success(run, tmp_path, capsys):
    missing = tmp_path / "reports" / "r.json"
    argv = ["--checkpoint", str(run["ckpt"]), "--data-dir", str(run["data"]), "--workers", "0"]
    assert evaluate.main([*argv, "--json", str(missing)]) == 2
    captured = capsys.readouterr()
    assert "the folder" in captured.err and "Traceback" not in captured.err and captured.out == ""
    missing.parent.mkdir()
    assert evaluate.main([*argv, "--json", str(missing)]) == 0
    images = [p for p in (run["data"] / "validation").rglob("*") if p.is_file()]
    assert json.loads(missing.read_text())["count"] == len(images) > 0


@pytest.mark.parametrize("flag, value, needle", [("-b", "0", "--batch-size 0 must be >= 1"),
                                                 ("-j", "-1", "--workers -1 must be >= 0")])
def test_loader_values_are_refused_before_the_checkpoint_is_read(flag, value, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(evaluating, "run_evaluation", lambda settings: pytest.fail("the evaluation started"))
    assert evaluate.main(["--checkpoint", str(tmp_path / "c.pth.tar"), "--data-dir", str(tmp_path), flag, value]) == 2
    assert needle in capsys.readouterr().err


# --- an existing file is never replaced unasked ----------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--json", "--predict"])
def test_an_existing_explicit_output_is_refused_unless_overwrite(flag, run, tmp_path, capsys):
    target = tmp_path / "args.yaml"  # any file of the user's: a run's args.yaml, a teacher, an image
    target.write_text("lr: 0.1\n")
    argv = ["--checkpoint", str(run["ckpt"]), "--data-dir", str(run["data"]), "--workers", "0", flag, str(target)]
    if flag == "--predict":
        argv += ["--json", str(tmp_path / "r.json")]
    assert evaluate.main(argv) == 2
    captured = capsys.readouterr()
    assert f"{flag} {target} already exists; writing there would replace it" in captured.err
    assert "--overwrite" in captured.err and len(captured.err.strip().splitlines()) == 1 and captured.out == ""
    assert target.read_text() == "lr: 0.1\n"
    assert evaluate.main([*argv, "--overwrite"]) == 0
    assert target.read_text() != "lr: 0.1\n"


def test_an_output_inside_the_dataset_is_refused_even_with_overwrite(run, capsys, no_work):
    image = next(p for p in (run["data"] / "validation").rglob("*.png"))
    before = image.read_bytes()
    assert evaluate.main(["--checkpoint", str(run["ckpt"]), "--data-dir", str(run["data"]), "--predict", str(image),
                          "--overwrite"]) == 2
    assert "is inside the dataset" in capsys.readouterr().err and image.read_bytes() == before


@pytest.mark.parametrize("flag", ["--predict", "--json"])
def test_a_new_output_inside_the_dataset_is_refused(flag, run, capsys, no_work):
    """A new file in a class folder is read as an (unreadable) image by the next run: refused, not only
    existing files."""
    target = run["data"] / "train" / "0" / "p.png"
    assert evaluate.main(["--checkpoint", str(run["ckpt"]), "--data-dir", str(run["data"]), flag, str(target)]) == 2
    err = capsys.readouterr().err
    assert "is inside the dataset" in err and err.count("\n") == 1 and not target.exists()


def test_the_default_results_file_is_never_replaced_the_next_free_name_is_taken(run, capsys):
    argv = ["--checkpoint", str(run["ckpt"]), "--data-dir", str(run["data"]), "--workers", "0"]
    default = run["ckpt"].parent / "eval-last-validation.json"
    first, second = default.with_name("eval-last-validation-1.json"), default.with_name("eval-last-validation-2.json")
    for path in (default, first, second):
        path.unlink(missing_ok=True)
    try:
        assert evaluate.main(argv) == 0
        kept = default.read_text()
        assert evaluate.main([*argv, "--head", "cls"]) == 0  # other settings: another file
        err = capsys.readouterr().err
        assert f"results written to {first} ({default} already exists and was kept" in err
        assert default.read_text() == kept and json.loads(first.read_text())["head"] == "cls"
        assert evaluate.main(argv) == 0 and second.exists()
        assert evaluate.main([*argv, "--overwrite", "--head", "dist"]) == 0  # asked: the default is replaced
        assert json.loads(default.read_text())["head"] == "dist"
    finally:
        for path in (default, first, second):
            path.unlink(missing_ok=True)


def test_an_output_folder_nothing_can_be_written_to_is_refused_before_evaluating(tmp_path, capsys, monkeypatch,
                                                                                  no_work):
    import errno

    from timm_deit_distill import atomic

    folder = tmp_path / "ro"
    folder.mkdir()

    def refused(*args, **kwargs):  # what /proc or a read-only mount answers, even to root (os.access says yes)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refused)
    assert evaluate.main(["--checkpoint", str(tmp_path / "c.pth.tar"), "--data-dir", str(tmp_path), "--predict",
                          str(folder / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert f"--predict {folder / 'x.csv'}: no file can be written in {folder}" in err and "Read-only" in err
