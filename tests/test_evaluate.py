"""Per-head evaluation and `deit-distill eval`, checked against timm's own forward pass and accuracy."""

from __future__ import annotations

import csv
import json

import pytest
import timm
import torch
from timm.data import create_dataset, create_transform, resolve_data_config
from timm.utils import ModelEmaV3, accuracy
from train_fixtures import STUDENT_KWARGS, digits, teacher_checkpoint

from timm_deit_distill.checkpoint import CheckpointSaver
from timm_deit_distill.commands import evaluate
from timm_deit_distill.evaluation import head_logits


def _student(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("deit_tiny_distilled_patch4_32", num_classes=10, **STUDENT_KWARGS).eval()


def _reference_heads(model, x):
    """cls/dist through timm's own forward_head (distilled training mode; no dropout in this model)."""
    model.set_distilled_training(True)
    model.train()
    try:
        cls, dist = model.forward_head(model.forward_features(x))
    finally:
        model.eval()
        model.set_distilled_training(False)
    return cls, dist, model(x)


def test_fused_head_is_timms_output_bit_for_bit():
    model = _student(0)
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        heads = head_logits(model, x)
        cls, dist, fused = _reference_heads(model, x)
    assert torch.equal(heads.fused, fused)
    assert torch.allclose(heads.cls, cls) and torch.allclose(heads.dist, dist)
    plain = timm.create_model("resnet10t", num_classes=10).eval()
    with torch.inference_mode():
        out = head_logits(plain, x)
        assert out.cls is None and out.dist is None and torch.equal(out.fused, plain(x))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A checkpoint written by the trainer's saver (raw + EMA weights, deit_distill metadata), a digits folder."""
    root = tmp_path_factory.mktemp("eval")
    data = digits(root / "digits", train_per_class=2)
    model = _student(1)
    ema = ModelEmaV3(model, decay=0.5)
    with torch.no_grad():  # make the EMA differ from the raw weights
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    meta = {"model": "deit_tiny_distilled_patch4_32", "model_kwargs": {"num_classes": 10, **STUDENT_KWARGS},
            "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.485, 0.456, 0.406],
                               "std": [0.229, 0.224, 0.225], "crop_pct": 1.0, "interpolation": "bicubic"},
            "label_names": [str(i) for i in range(10)], "distill": None, "recipe": None, "ema": True}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    import argparse

    saver = CheckpointSaver(model=model, optimizer=optimizer, args=argparse.Namespace(model=meta["model"]),
                            model_ema=ema, checkpoint_dir=str(root), recovery_dir=str(root),
                            extra_state=lambda: {"deit_distill": meta})
    saver.save_checkpoint(0, metric=1.0)
    return {"root": root, "data": data, "ckpt": root / "last.pth.tar", "model": model, "ema": ema.module,
            "teacher": teacher_checkpoint(root / "teacher.pth", seed=3)}


def _reference(model, data_dir, teacher=None):
    """timm's dataset, eval transform and accuracy; one batch holds the whole split."""
    cfg = resolve_data_config({}, model=model)
    ds = create_dataset("", root=str(data_dir / "validation"), transform=create_transform(**cfg))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.inference_mode():
        cls, dist, fused = _reference_heads(model, x)
        out = {"fused": fused, "cls": cls, "dist": dist}
        res = {name: [a.item() for a in accuracy(logits, y, topk=(1, 5))] for name, logits in out.items()}
        res["loss"] = torch.nn.functional.cross_entropy(fused, y).item()
        res["argmax"] = {name: logits.argmax(1) for name, logits in out.items()}
        if teacher is not None:
            t = teacher(x)
            res["teacher_top1"] = accuracy(t, y, topk=(1,))[0].item()
            res["agreement"] = (fused.argmax(1) == t.argmax(1)).float().mean().item()
    return res, len(ds)


def test_eval_cli_matches_timm_on_every_head(run, tmp_path, capsys):
    out_json = tmp_path / "result.json"
    predict = tmp_path / "pred.csv"
    code = evaluate.main(["--checkpoint", str(run["ckpt"]), "--data-dir", str(run["data"]), "--workers", "0",
                          "-b", "32", "--use-ema", "--distill-teacher", "resnet10t",
                          "--distill-teacher-path", str(run["teacher"]),
                          "--json", str(out_json), "--head", "dist", "--predict", str(predict),
                          "--no-teacher-check"])  # a random-weight teacher: this test is about the plumbing
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    teacher = timm.create_model("resnet10t", num_classes=10)
    teacher.load_state_dict(torch.load(run["teacher"], weights_only=True))
    ref, n = _reference(run["ema"], run["data"], teacher.eval())  # the EMA weights, as asked
    assert result["weights"] == "ema" and result["ema"] is True
    assert result["count"] == n and result["head"] == "dist"
    for head in ("fused", "cls", "dist"):
        assert result["heads"][head]["top1"] == pytest.approx(ref[head][0], abs=1e-6)
        assert result["heads"][head]["top5"] == pytest.approx(ref[head][1], abs=1e-6)
    assert (result["top1"], result["top5"]) == (result["heads"]["dist"]["top1"], result["heads"]["dist"]["top5"])
    assert result["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert result["teacher"]["top1"] == pytest.approx(ref["teacher_top1"], abs=1e-6)
    assert result["teacher"]["agreement"] == pytest.approx(ref["agreement"], abs=1e-9)
    assert "agreement with fused student" in printed and json.loads(printed[printed.index("{"):]) == result
    rows = list(csv.DictReader(predict.open()))
    assert len(rows) == n
    assert [int(r["pred1"]) for r in rows] == ref["argmax"]["dist"].tolist()


def test_eval_raw_weights_on_request(run, tmp_path):
    out_json = tmp_path / "raw.json"
    assert evaluate.main(["--checkpoint", str(run["ckpt"]), "--data-dir", str(run["data"]), "--workers", "0",
                          "--no-ema", "--json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    ref, _ = _reference(run["model"].eval(), run["data"])
    assert result["weights"] == "raw" and result["ema"] is False and result["teacher"] is None
    assert result["heads"]["fused"]["top1"] == pytest.approx(ref["fused"][0], abs=1e-6)
    assert result["loss"] == pytest.approx(ref["loss"], rel=1e-5)


def test_eval_refuses_other_classes_and_missing_files(run, tmp_path, capsys):
    other = digits(tmp_path / "letters", train_per_class=1)
    (other / "validation" / "9").rename(other / "validation" / "x")
    (other / "train" / "9").rename(other / "train" / "x")
    assert evaluate.main(["--checkpoint", str(run["ckpt"]), "--data-dir", str(other), "--workers", "0",
                          "--no-ema"]) == 2
    err = capsys.readouterr().err
    assert f"class 9 is '9' in the training classes of {run['ckpt']} but 'x' in {other}/validation" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert evaluate.main(["--checkpoint", str(tmp_path / "none.pth.tar"), "--data-dir", str(other)]) == 2
    assert "does not exist" in capsys.readouterr().err
