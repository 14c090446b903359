"""summary.csv's columns mean what timm's train.py writes under them, EMA included.

timm's train.py (main loop): it validates the raw weights, then, with ``--model-ema`` and without
``--model-ema-force-cpu``, the EMA, and ``eval_metrics = ema_eval_metrics``: ``update_summary`` writes the EMA's
``eval_loss``/``eval_top1``/``eval_top5`` and ``saver.save_checkpoint(epoch, metric=eval_metrics[eval_metric])``
ranks ``model_best`` by them. The reference here is independent of the trainer: each epoch's checkpoint
(timm's ``state_dict_ema`` and ``state_dict``) evaluated with timm's model, dataset, transform and accuracy.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.data import create_dataset, create_transform, resolve_data_config
from timm.utils import accuracy
from train_fixtures import FAST, STUDENT, STUDENT_KWARGS, digits, load

from timm_deit_distill.commands import train
from timm_deit_distill.records import current_row, read_summary, summary_columns, weights_view

VARIANT = "deit_tiny_distilled_patch4_32"


def _timm_validate(weights, data_dir):
    """timm's validate(): loss (cross-entropy of the model's eval output), top-1 and top-5 on the split."""
    model = timm.create_model(VARIANT, num_classes=10, **STUDENT_KWARGS)
    model.load_state_dict(weights)
    model.eval()
    ds = create_dataset("", root=str(data_dir / "validation"),
                        transform=create_transform(**resolve_data_config({}, model=model)))
    x, y = torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.inference_mode():
        out = model(x)
        top1, top5 = accuracy(out, y, topk=(1, 5))
        return {"loss": F.cross_entropy(out, y).item(), "top1": top1.item(), "top5": top5.item()}


def test_with_model_ema_the_eval_columns_and_model_best_follow_the_ema_as_in_timm(tmp_path, capsys):
    data = digits(tmp_path / "digits", train_per_class=5)
    assert train.main(["--data-dir", str(data), *STUDENT, *FAST, "--epochs", "2", "--model-ema",
                       "--model-ema-decay", "0.5", "--output", str(tmp_path), "--experiment", "ema"]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "ema"
    header = (run_dir / "summary.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"]  # timm's, in order
    assert header == summary_columns(ema=True) and "eval_top1_ema" not in header
    rows = read_summary(run_dir / "summary.csv")
    for row in rows:
        ckpt = load(run_dir / f"checkpoint-{row['epoch']}.pth.tar")
        ema, raw = _timm_validate(ckpt["state_dict_ema"], data), _timm_validate(ckpt["state_dict"], data)
        assert ema["loss"] != pytest.approx(raw["loss"], rel=1e-4)  # the EMA is another model here
        for key in ("loss", "top1", "top5"):  # timm's columns: the EMA's; the raw weights' under their own name
            assert row[f"eval_{key}"] == pytest.approx(ema[key], rel=1e-4, abs=1e-3), key
            assert row[f"raw_eval_{key}"] == pytest.approx(raw[key], rel=1e-4, abs=1e-3), key
    # timm's CheckpointSaver ranks by the metric it was given (eval_metrics['top1']: the EMA's), first best kept
    best_epoch = max(rows, key=lambda r: (r["eval_top1"], -r["epoch"]))["epoch"]
    best = load(run_dir / "model_best.pth.tar")
    assert best["epoch"] == best_epoch and best["metric"] == pytest.approx(rows[best_epoch]["eval_top1"], abs=1e-3)


def test_rows_of_runs_from_before_the_rule_read_in_todays_columns():
    legacy = {"epoch": "1", "eval_loss": "1.5", "eval_top1": "40.0", "eval_top5": "90.0", "eval_top1_cls": "39.0",
              "eval_top1_ema": "42.0", "eval_top5_ema": "91.0", "teacher_agreement": "0.5"}
    row = current_row(legacy)
    assert (row["eval_top1"], row["eval_top5"], row["eval_loss"], row["eval_top1_cls"]) == ("42.0", "91.0", None, None)
    assert (row["raw_eval_top1"], row["raw_eval_loss"], row["raw_eval_top1_cls"]) == ("40.0", "1.5", "39.0")
    assert row["raw_teacher_agreement"] == "0.5" and row["teacher_agreement"] is None
    assert "eval_top1_ema" not in row
    raw, ema = weights_view(legacy, "raw"), weights_view(legacy, "ema")
    assert (raw["eval_top1"], raw["teacher_agreement"], ema["eval_top1"], ema["teacher_agreement"]) == (
        "40.0", "0.5", "42.0", None)
    plain = {"epoch": 0, "eval_top1": 50.0, "teacher_agreement": 0.7}  # no EMA: one set of weights
    assert current_row(plain) == weights_view(plain, "raw") == plain
    assert weights_view(plain, "ema")["eval_top1"] is None
