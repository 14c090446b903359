"""A file that turns bad during training ends the run with exit code 2 and one line naming it; the last good
checkpoint stays. (A teacher cache chunk changing mid-run: tests/test_distill_sources.py.)"""

from __future__ import annotations

import pytest
from train_fixtures import FAST, STUDENT, digits, load

from timm_deit_distill.commands import train
from timm_deit_distill.factory import loop


def _break_before_epoch(monkeypatch, victim, broken_epoch):
    """Make ``victim`` stop being an image as epoch ``broken_epoch`` starts; returns the trainer's own epoch."""
    original = loop.train_one_epoch

    def break_it(run, epoch):
        if epoch == broken_epoch:
            victim.write_bytes(b"no longer an image")
        return original(run, epoch)

    monkeypatch.setattr(loop, "train_one_epoch", break_it)
    return original


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_that_stops_decoding_mid_run_stops_it_in_one_line(tmp_path, capsys, monkeypatch, workers):
    data = digits(tmp_path / "digits", train_per_class=5)
    victim = sorted((data / "train" / "7").iterdir())[0]
    _break_before_epoch(monkeypatch, victim, 1)
    # FAST's --workers 0 is overridden: with a worker, torch re-raises its error with a multi-line message.
    code = train.main(["--data-dir", str(data), *STUDENT, *FAST, "--workers", str(workers), "--epochs", "3",
                       "--output", str(tmp_path), "--experiment", "run"])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert err.count("\n") == 1 and "Traceback" not in err and "DataLoader worker" not in err, err
    assert err.startswith(f"deit-distill train: error: stopped in epoch 1: cannot decode image {victim}: ")
    assert f"The last good checkpoint is kept: {tmp_path / 'run' / 'last.pth.tar'} (epoch 0)." in err
    assert load(tmp_path / "run" / "last.pth.tar")["epoch"] == 0


@pytest.mark.slow
def test_a_stop_before_any_checkpoint_says_to_rerun_the_same_command_and_that_works(tmp_path, capsys, monkeypatch):
    """With no checkpoint there is nothing to --resume: the advice is to rerun, after deleting the named folder
    (which, holding a run without a checkpoint, is refused as it is); following it trains."""
    import shutil

    data = digits(tmp_path / "digits", train_per_class=2)
    victim = sorted((data / "train" / "7").iterdir())[0]
    image = victim.read_bytes()
    original = _break_before_epoch(monkeypatch, victim, 0)
    argv = ["--data-dir", str(data), *STUDENT, *FAST, "--epochs", "1", "--output", str(tmp_path), "--experiment", "run"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    folder = tmp_path / "run"
    assert err.count("\n") == 1 and "--resume" not in err, err
    assert err.rstrip().endswith(f"No checkpoint had been written yet, so there is nothing to resume. Fix the file, "
                                 f"then delete {folder} (it holds this run's first files only) and rerun the same "
                                 "command."), err
    assert not (folder / "last.pth.tar").exists()

    monkeypatch.setattr(loop, "train_one_epoch", original)
    victim.write_bytes(image)  # the problem fixed
    assert train.main(argv) == 2  # the folder kept as it is: refused, as the advice says
    assert "saved no checkpoint" in capsys.readouterr().err
    shutil.rmtree(folder)
    assert train.main(argv) == 0 and load(folder / "last.pth.tar")["epoch"] == 0


@pytest.mark.parametrize("experiment,has_checkpoint,says", [
    ("", False, "No checkpoint had been written yet, so there is nothing to resume. Fix the file, then rerun the "
                "same command (it trains in a new folder; {folder} holds no checkpoint and can be deleted)."),
    ("run", False, "Fix the file, then delete {folder} (it holds this run's first files only) and rerun the same "
                   "command."),
    ("run", True, "The last good checkpoint is kept: {folder}/last.pth.tar (epoch 4). Fix the file, then --resume."),
])
def test_the_advice_after_a_stop_follows_what_was_saved(experiment, has_checkpoint, says, tmp_path):
    import types

    folder = tmp_path / "20260101-000000-model-32"
    folder.mkdir()
    (folder / "args.yaml").write_text("model: x\n")
    if has_checkpoint:
        (folder / "last.pth.tar").write_bytes(b"x")
    run = types.SimpleNamespace(output_dir=str(folder), last_saved_epoch=4 if has_checkpoint else None,
                                settings=types.SimpleNamespace(run=types.SimpleNamespace(experiment=experiment)))
    advice = train._kept(run, "Fix the file")
    assert says.format(folder=folder) in advice
    assert ("--resume" in advice) == has_checkpoint
