"""The model card takes the run's summary.csv only for a checkpoint of that run: rows alone cannot tell apart
runs whose first epochs are identical (same seed and settings, another --epochs), so the checkpoint's own
settings must also be those of the args.yaml beside it (issue 11 follow-up 14)."""

from __future__ import annotations

import re
import shutil

import yaml
from hub_checkpoints import write_run
from huggingface_hub import ModelCard

from timm_deit_distill.hub import save_pretrained


def _card(folder) -> str:
    return ModelCard.load(folder / "README.md").text


def test_a_checkpoint_beside_a_longer_run_with_identical_first_rows_keeps_its_own(tmp_path, caplog):
    short = write_run(tmp_path / "s1", epoch=0, epochs=3)  # same seed and settings ...
    long = write_run(tmp_path / "ref6", epoch=5, epochs=6)  # ... six epochs: rows 0-2 are the same numbers
    assert long.summary_rows[0] == short.summary_rows[0]
    copied = long.checkpoint.parent / "checkpoint-0.pth.tar"
    shutil.copy(short.checkpoint, copied)
    text = _card(save_pretrained(copied, tmp_path / "out", use_ema=True))
    assert "Best fused top-1 during the run" not in text  # epoch 5 of the 6-epoch run, before
    assert "at epoch 5" not in text
    assert "epochs: 3 vs 6" in caplog.text and "another run's?" in caplog.text
    # ... and the card says where its results come from (it said "From the run's `summary.csv`")
    assert "From the epochs the checkpoint itself records (the `summary.csv` beside it is another run's)." in text
    assert "From the run's `summary.csv`." not in text


def test_a_checkpoint_of_the_run_still_takes_its_summary(tmp_path, caplog):
    run = write_run(tmp_path / "run", epoch=0, epochs=3)
    text = _card(save_pretrained(run.checkpoint, tmp_path / "out", use_ema=True))
    best = max(run.summary_rows, key=lambda r: r["eval_top1"])
    assert re.search(rf"Best fused top-1 during the run: {best['eval_top1']:.2f} at epoch {best['epoch']}\.", text)
    assert "another run's?" not in caplog.text and "From the run's `summary.csv`." in text
    # an args.yaml that records a resolved setting differently (lr scaled, classes counted) is the same run
    args = yaml.safe_load((run.checkpoint.parent / "args.yaml").read_text())
    (run.checkpoint.parent / "args.yaml").write_text(yaml.safe_dump(dict(args, lr=None, num_classes=None)))
    text = _card(save_pretrained(run.checkpoint, tmp_path / "again", use_ema=True))
    assert f"at epoch {best['epoch']}." in text and "another run's?" not in caplog.text
