"""A file that turns bad during training ends the run with exit code 2 and one line naming it; the last good
checkpoint stays. (A teacher cache chunk changing mid-run: tests/test_distill_sources.py.)"""

from __future__ import annotations

import pytest
from train_fixtures import FAST, STUDENT, digits, load

from timm_deit_distill.commands import train


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_that_stops_decoding_mid_run_stops_it_in_one_line(tmp_path, capsys, monkeypatch, workers):
    data = digits(tmp_path / "digits", train_per_class=5)
    victim = sorted((data / "train" / "7").iterdir())[0]
    original = train.train_one_epoch

    def break_an_image_before_epoch_1(run, epoch):
        if epoch == 1:
            victim.write_bytes(b"no longer an image")
        return original(run, epoch)

    monkeypatch.setattr(train, "train_one_epoch", break_an_image_before_epoch_1)
    # FAST's --workers 0 is overridden: with a worker, torch re-raises its error with a multi-line message.
    code = train.main(["--data-dir", str(data), *STUDENT, *FAST, "--workers", str(workers), "--epochs", "3",
                       "--output", str(tmp_path), "--experiment", "run"])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert err.count("\n") == 1 and "Traceback" not in err and "DataLoader worker" not in err, err
    assert err.startswith(f"deit-distill train: error: stopped in epoch 1: cannot decode image {victim}: ")
    assert f"The last good checkpoint is kept: {tmp_path / 'run' / 'last.pth.tar'} (epoch 0)." in err
    assert load(tmp_path / "run" / "last.pth.tar")["epoch"] == 0
