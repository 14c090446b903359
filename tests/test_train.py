"""`deit-distill train` end to end on real digits, and every refusal before the first step.

End-to-end runs are small (a one-block DeiT on 32x32 digits) and marked slow; refusals are fast.
"""

from __future__ import annotations

import logging
import shutil

import pytest
import timm
import torch
import yaml
from timm.models import load_checkpoint, resume_checkpoint
from timm.optim import create_optimizer_v2
from train_fixtures import (
    FAST,
    STUDENT,
    STUDENT_KWARGS,
    digits,
    load,
    run_cli_on_terminal,
    teacher_checkpoint,
)

from timm_deit_distill.commands import train
from timm_deit_distill.commands.args import parse_args
from timm_deit_distill.records import read_summary, summary_columns

BRIEF_COLUMNS = ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr", "train_task_loss",
                 "train_distill_loss", "eval_top1_cls", "eval_top1_dist", "teacher_top1", "teacher_agreement"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"small": digits(root / "small", train_per_class=5),  # 50 train / 90 validation images
            "tiny": digits(root / "tiny", train_per_class=1),  # 10 train images: fewer than one batch
            "teacher": teacher_checkpoint(root / "teacher10.pth", 10),
            "teacher7": teacher_checkpoint(root / "teacher7.pth", 7)}


def _run(argv, capsys):
    code = train.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- refusals ---------------------------------------------------------------------------------------------------

def _refusal_cases(data, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    differ = tmp_path / "differ"
    shutil.copytree(data["small"], differ)
    shutil.rmtree(differ / "validation" / "9")
    bad = tmp_path / "bad"
    shutil.copytree(data["small"], bad)
    (bad / "train" / "3" / "broken.png").write_bytes(b"not a png at all")
    teacher = ["--distill-teacher", "resnet10t", "--distill-teacher-path", str(data["teacher"])]
    return {
        "missing data dir": (["--data-dir", str(tmp_path / "nope"), *STUDENT], "does not exist"),
        "empty data dir": (["--data-dir", str(empty), *STUDENT], "no 'train' split folder"),
        "class folders differ": (["--data-dir", str(differ), *STUDENT],
                                 "class 9 is '9' in the train split but missing in the validation split"),
        # DeiT's soft/hard on a single-head student is the paper's usual/hard distillation (tests/test_heads.py);
        # timm's token distillation needs the distillation head
        "non-distilled student": (["--data-dir", str(data["small"]), "--model", "resnet10t", "--kd-model-name",
                                   "resnet10t", "--distill-teacher-path", str(data["teacher"]), "--kd-distill-type",
                                   "token"], "--model resnet10t has none"),
        "teacher classes": (["--data-dir", str(data["small"]), *STUDENT, "--teacher-model", "resnet10t",
                             "--teacher-path", str(data["teacher7"])], "predicts 7 classes but the dataset has 10"),
        "unknown model": (["--data-dir", str(data["small"]), "--model", "deit_tiny_distiled_patch4_32"],
                          "Did you mean deit_tiny_distilled_patch4_32"),
        "unknown teacher": (["--data-dir", str(data["small"]), *STUDENT, "--distill-teacher", "resnet10tt"],
                            "Did you mean resnet10t"),
        "unknown teacher tag": (["--data-dir", str(data["small"]), *STUDENT, "--teacher-model",
                                 "regnety_160.deit_in21k"], "regnety_160.deit_in1k"),
        "unreadable image": (["--data-dir", str(bad), *STUDENT], "broken.png"),
        "num classes": (["--data-dir", str(data["small"]), *STUDENT, "--num-classes", "12"], "12"),
        "cuda absent": (["--data-dir", str(data["small"]), *STUDENT, "--device", "cuda"], "CUDA is not available"),
        "tau zero": (["--data-dir", str(data["small"]), *STUDENT, *teacher, "--distill-tau", "0"], "must be > 0"),
        "alpha": (["--data-dir", str(data["small"]), *STUDENT, *teacher, "--distill-alpha", "2"], "outside [0, 1]"),
    }


CASES = ["missing data dir", "empty data dir", "class folders differ", "non-distilled student", "teacher classes",
         "unknown model", "unknown teacher", "unknown teacher tag", "unreadable image", "num classes", "tau zero",
         "alpha"] + (["cuda absent"] if not torch.cuda.is_available() else [])


@pytest.mark.parametrize("case", CASES)
def test_refused_before_the_first_step(case, data, tmp_path, capsys):
    argv, needle = _refusal_cases(data, tmp_path)[case]
    out_dir = tmp_path / "out"
    code, out, err = _run([*argv, *FAST, "--output", str(out_dir), "--experiment", "run"], capsys)
    assert code == 2, (out, err)
    assert needle in err and err.startswith("deit-distill train: error: ")
    assert "Traceback" not in err + out
    assert not (out_dir / "run" / "last.pth.tar").exists()  # nothing trained


def test_teacher_class_refusal_names_both_counts(data, tmp_path, capsys):
    code, _, err = _run(["--data-dir", str(data["small"]), *STUDENT, *FAST, "--distill-teacher", "resnet10t",
                         "--distill-teacher-path", str(data["teacher7"]), "--output", str(tmp_path)], capsys)
    assert code == 2 and "predicts 7 classes but the dataset has 10" in err


# --- end to end -------------------------------------------------------------------------------------------------

def _student(arch_kwargs):
    return timm.create_model("deit_tiny_distilled_patch4_32", **arch_kwargs)


def _check_timm_reads(run_dir, arch_kwargs, *, ema: bool):
    """timm's own loaders read the files; the weights are the ones stored."""
    last = run_dir / "last.pth.tar"
    ckpt = load(last)
    model = _student(arch_kwargs)
    load_checkpoint(model, str(last), use_ema=False)  # strict
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][k])
    if ema:
        load_checkpoint(model, str(last), use_ema=True)
        assert all(torch.equal(v, ckpt["state_dict_ema"][k]) for k, v in model.state_dict().items())
    model = _student(arch_kwargs)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=ckpt["args"].weight_decay)
    assert resume_checkpoint(model, str(last), optimizer=optimizer) == ckpt["epoch"] + 1
    assert ckpt["arch"] == "deit_tiny_distilled_patch4_32" and ckpt["version"] == 2
    assert not any(k.startswith(("teacher", "module.teacher")) for k in ckpt["state_dict"])  # student only
    return ckpt


def _check_summary(run_dir, *, epochs, ema, alpha, teacher):
    rows = read_summary(run_dir / "summary.csv")
    header = (run_dir / "summary.csv").read_text().splitlines()[0].split(",")
    assert header == summary_columns(ema=ema)
    assert set(BRIEF_COLUMNS) <= set(header) and (("raw_eval_top1" in header) == ema)
    assert [r["epoch"] for r in rows] == list(range(epochs))
    for r in rows:
        # Each logged part is a sample mean, so the total is the same mix of the parts.
        assert r["train_loss"] == pytest.approx((1 - alpha) * r["train_task_loss"] + alpha * r["train_distill_loss"],
                                                rel=1e-4, abs=1e-6)
        for key in ("eval_top1", "eval_top1_cls", "eval_top1_dist"):
            assert 0.0 <= r[key] <= 100.0
        assert (r["teacher_top1"] is not None) == teacher and (r["teacher_agreement"] is not None) == teacher
    return rows


@pytest.mark.slow
def test_no_distillation_run_skipping_a_bad_image(data, tmp_path, capsys, caplog):
    bad = tmp_path / "digits"
    shutil.copytree(data["small"], bad)
    (bad / "train" / "4" / "broken.png").write_bytes(b"\x89PNG truncated")
    caplog.set_level(logging.INFO)
    code, _, err = _run(["--data-dir", str(bad), *STUDENT, *FAST, "--epochs", "2", "--skip-bad-images",
                         "--output", str(tmp_path), "--experiment", "none"], capsys)
    assert code == 0, err
    assert "Skipped 1 unreadable image(s) in the train split" in caplog.text
    run_dir = tmp_path / "none"
    rows = _check_summary(run_dir, epochs=2, ema=False, alpha=0.0, teacher=False)
    assert all(r["train_distill_loss"] == 0 for r in rows)
    ckpt = _check_timm_reads(run_dir, dict(num_classes=10, **STUDENT_KWARGS), ema=False)
    meta = ckpt["deit_distill"]
    assert meta["distill"] == {"teacher": None, "teacher_description": None, "type": "none", "alpha": 0.5,
                               "tau": 1.0, "soft_reduction": "deit"}
    assert meta["label_names"] == [str(i) for i in range(10)]
    assert {p.name for p in run_dir.iterdir()} >= {"last.pth.tar", "model_best.pth.tar", "checkpoint-0.pth.tar",
                                                    "checkpoint-1.pth.tar", "summary.csv", "args.yaml", "curves.png"}
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # args.yaml repeats the run: reloading it gives the same settings.
    saved = yaml.safe_load((run_dir / "args.yaml").read_text())
    assert parse_args(["-c", str(run_dir / "args.yaml")]).model_kwargs == saved["model_kwargs"] == STUDENT_KWARGS


@pytest.mark.slow
def test_soft_distillation_run_with_img_size(data, tmp_path, capsys):
    code, _, err = _run(["--data-dir", str(data["small"]), *STUDENT, *FAST, "--epochs", "2", "--img-size", "40",
                         "--distill-type", "soft", "--distill-tau", "2", "--distill-alpha", "0.3",
                         "--distill-teacher", "resnet10t", "--distill-teacher-path", str(data["teacher"]),
                         "--no-teacher-check",  # random weights: the subject is the plumbing
                         "--checkpoint-hist", "1",
                         "--output", str(tmp_path), "--experiment", "soft"], capsys)
    assert code == 0, err
    run_dir = tmp_path / "soft"
    rows = _check_summary(run_dir, epochs=2, ema=False, alpha=0.3, teacher=True)
    assert all(r["train_distill_loss"] > 0 for r in rows)
    # --img-size reached the model: 10x10 patches of 4 pixels (+ class and distillation tokens).
    ckpt = _check_timm_reads(run_dir, dict(num_classes=10, img_size=40, **STUDENT_KWARGS), ema=False)
    assert ckpt["state_dict"]["pos_embed"].shape[1] == 10 * 10 + 2
    meta = ckpt["deit_distill"]
    assert meta["pretrained_cfg"]["input_size"] == [3, 40, 40] and meta["model_kwargs"]["img_size"] == 40
    assert meta["distill"]["type"] == "soft" and meta["distill"]["tau"] == 2.0
    assert meta["distill"]["teacher_description"]["num_classes"] == 10
    # --checkpoint-hist 1 keeps one numbered checkpoint besides last and best
    assert len(list(run_dir.glob("checkpoint-*.pth.tar"))) == 1


@pytest.mark.slow
def test_recipe_run_hard_distillation_on_fewer_images_than_a_batch(data, tmp_path, capsys):
    # DeiT-Ti's recipe (RandAugment m9 with Pillow-13-safe posterize, Mixup/CutMix, repeated augmentation x3,
    # random erasing, EMA, hard distillation), shrunk: 10 training images, a batch of 16, one process.
    code, _, err = _run(["--recipe", "deit_tiny", "--data-dir", str(data["tiny"]), *STUDENT, "-b", "16",
                         "--workers", "0", "--epochs", "2", "--warmup-epochs", "1", "--model-ema-decay", "0.9",
                         "--distill-teacher", "resnet10t", "--distill-teacher-path", str(data["teacher"]),
                         "--no-teacher-check",  # random weights: the subject is the plumbing
                         "--log-interval", "1", "--output", str(tmp_path), "--experiment", "hard"], capsys)
    assert code == 0, err
    run_dir = tmp_path / "hard"
    rows = _check_summary(run_dir, epochs=2, ema=True, alpha=0.5, teacher=True)
    assert all(r["raw_eval_top1"] is not None for r in rows)
    ckpt = _check_timm_reads(run_dir, dict(num_classes=10, **STUDENT_KWARGS), ema=True)
    meta = ckpt["deit_distill"]
    assert meta["recipe"] == "deit_tiny" and meta["ema"] is True and meta["distill"]["type"] == "hard"
    args = ckpt["args"]
    assert (args.aa, args.aug_repeats, args.mixup, args.cutmix, args.opt) == (
        "rand-m9-mstd0.5-inc1", 3, 0.8, 1.0, "adamw")
    assert args.lr == pytest.approx(5e-4 * 16 / 512)  # linear scaling from the recipe's base
    assert ckpt["num_updates"] == 2  # one (smaller) batch per epoch: 10 views < 16


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(data, tmp_path):
    # Epoch 0 trains at the warm-up rate; epoch 1's rate of 1e30 sends the loss to NaN.
    # stderr is a terminal here: the progress bar replaces the per-step log lines.
    proc, tty = run_cli_on_terminal(["--data-dir", str(data["small"]), *STUDENT, *FAST, "--opt", "sgd", "--lr",
                                     "1e30", "--warmup-epochs", "1", "--warmup-lr", "1e-6", "--epochs", "3",
                                     "--log-interval", "1", "--output", str(tmp_path), "--experiment", "nan"])
    assert proc.returncode == 1, proc.stdout
    assert "the training loss became nan at epoch 1, step" in proc.stdout
    assert "last good checkpoint is kept" in proc.stdout
    ckpt = load(tmp_path / "nan" / "last.pth.tar")
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert [r["epoch"] for r in read_summary(tmp_path / "nan" / "summary.csv")] == [0]
    assert "train 0" in tty and "it/s" in tty  # tqdm's bar on the terminal
    assert "Train: 0 [" not in proc.stdout  # ... instead of plain per-step lines


def test_checkpoint_interval_saves_every_evaluation_and_the_last_epoch(data, tmp_path, capsys, monkeypatch):
    from timm_deit_distill import checkpoint as ckpt_module

    saved = []
    original = ckpt_module.CheckpointSaver.save_checkpoint

    def spy(self, epoch, metric=None):
        saved.append(epoch)
        return original(self, epoch, metric=metric)

    monkeypatch.setattr(ckpt_module.CheckpointSaver, "save_checkpoint", spy)
    code, _, err = _run(["--data-dir", str(data["small"]), *STUDENT, *FAST, "--epochs", "7", "--val-interval", "3",
                         "--checkpoint-interval", "4", "--checkpoint-hist", "2", "--output", str(tmp_path),
                         "--experiment", "sparse"], capsys)
    assert code == 0, err
    # Evaluated at epochs 2, 5 and 6 (the last); epoch 3 ends the first interval of 4; 0, 1 and 4 are skipped.
    assert saved == [2, 3, 5, 6]
    run_dir = tmp_path / "sparse"
    rows = read_summary(run_dir / "summary.csv")
    assert [r["epoch"] for r in rows] == list(range(7))  # the summary still has every epoch
    evaluated = [r for r in rows if r["eval_top1"] is not None]
    best = max(evaluated, key=lambda r: r["eval_top1"])  # ties keep the earlier epoch, as timm's saver does
    assert load(run_dir / "model_best.pth.tar")["epoch"] == best["epoch"]
    assert load(run_dir / "last.pth.tar")["epoch"] == 6
    numbered = sorted(p.name for p in run_dir.glob("checkpoint-*.pth.tar"))
    assert len(numbered) == 2 and all(int(n.split("-")[1].split(".")[0]) in (2, 5, 6) for n in numbered)


def test_checkpoint_interval_must_be_positive(data, tmp_path, capsys):
    code, _, err = _run(["--data-dir", str(data["small"]), *STUDENT, *FAST, "--checkpoint-interval", "0",
                         "--output", str(tmp_path)], capsys)
    assert code == 2 and "--checkpoint-interval 0 must be >= 1" in err
