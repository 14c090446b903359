"""Unlabelled images (issue 22): the loss on a batch of labelled then unlabelled samples, checked against the
formulas computed here by hand, and `deit-distill train --unlabeled-data-dir` end to end on real digits.

On an unlabelled sample the distillation head learns from the teacher and the class head nothing (or, with
pseudo-labels, the teacher's argmax); each term is a mean over the samples it applies to.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

from timm_deit_distill.losses import DistillationLoss

B, N, C = 12, 5, 7  # a batch of 12 samples, the first 5 labelled, 7 classes


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cls = torch.randn(B, C, generator=g)
    dist = torch.randn(B, C, generator=g)
    teacher = torch.randn(B, C, generator=g) * 3
    labels = torch.randint(0, C, (N,), generator=g)
    return cls, dist, teacher, labels


def _kl_per_sample(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(teacher || student) at temperature tau for each sample, written from the definition."""
    p = torch.softmax(teacher / tau, dim=1)
    return (p * (torch.log(p) - torch.log_softmax(student / tau, dim=1))).sum(dim=1) * tau * tau


def _soft(student, teacher, tau, reduction):
    per_sample = _kl_per_sample(student, teacher, tau)
    # DeiT divides the summed KL by B * C, timm's batchmean by B: a per-sample mean either way
    return per_sample.mean() / (student.shape[1] if reduction == "deit" else 1)


@pytest.mark.parametrize("reduction", ["deit", "batchmean"])
def test_soft_two_heads_class_term_on_the_labelled_distillation_term_on_every_sample(reduction):
    cls, dist, teacher, labels = _batch()
    loss = DistillationLoss(nn.CrossEntropyLoss(), None, "soft", 0.3, 2.0, soft_reduction=reduction)
    parts = loss.parts((cls, dist), labels, teacher)
    task = F.cross_entropy(cls[:N], labels)  # the class head sees only the labelled samples
    distill = _soft(dist, teacher, 2.0, reduction)
    torch.testing.assert_close(parts["loss"], 0.7 * task + 0.3 * distill)
    torch.testing.assert_close(parts["task_loss"], task)
    torch.testing.assert_close(parts["distill_loss"], distill)
    torch.testing.assert_close(parts["task_loss_labeled"], task)
    torch.testing.assert_close(parts["pseudo_loss"], torch.tensor(0.0))
    torch.testing.assert_close(parts["distill_loss_labeled"], _soft(dist[:N], teacher[:N], 2.0, reduction))
    torch.testing.assert_close(parts["distill_loss_unlabeled"], _soft(dist[N:], teacher[N:], 2.0, reduction))


def test_the_class_head_gets_no_gradient_from_unlabelled_samples():
    cls, dist, teacher, labels = _batch(1)
    cls.requires_grad_(True)
    loss = DistillationLoss(nn.CrossEntropyLoss(), None, "hard", 0.5, 1.0)
    loss.parts((cls, dist), labels, teacher)["loss"].backward()
    assert cls.grad[N:].abs().sum() == 0 and cls.grad[:N].abs().sum() > 0


def test_hard_two_heads_with_pseudo_labels():
    cls, dist, teacher, labels = _batch(2)
    loss = DistillationLoss(nn.CrossEntropyLoss(), None, "hard", 0.5, 1.0, pseudo_labels=True)
    parts = loss.parts((cls, dist), labels, teacher)
    argmax = teacher.argmax(dim=1)
    labelled = F.cross_entropy(cls[:N], labels)
    pseudo = F.cross_entropy(cls[N:], argmax[N:])
    # the class term is a mean over every sample it applies to: the labelled ones and the pseudo-labelled ones
    task = F.cross_entropy(cls, torch.cat([labels, argmax[N:]]))
    distill = F.cross_entropy(dist, argmax)
    torch.testing.assert_close(parts["task_loss"], task)
    torch.testing.assert_close(parts["loss"], 0.5 * task + 0.5 * distill)
    torch.testing.assert_close(parts["task_loss_labeled"], labelled)
    torch.testing.assert_close(parts["pseudo_loss"], pseudo)
    torch.testing.assert_close(parts["distill_loss_labeled"], F.cross_entropy(dist[:N], argmax[:N]))
    torch.testing.assert_close(parts["distill_loss_unlabeled"], F.cross_entropy(dist[N:], argmax[N:]))


def test_a_single_head_student_learns_both_terms_on_its_one_head():
    out, _, teacher, labels = _batch(3)
    loss = DistillationLoss(nn.CrossEntropyLoss(), None, "soft", 0.5, 1.0, single_head=True, pseudo_labels=True)
    parts = loss.parts(out, labels, teacher)
    task = F.cross_entropy(out, torch.cat([labels, teacher[N:].argmax(dim=1)]))
    distill = _soft(out, teacher, 1.0, "deit")
    torch.testing.assert_close(parts["loss"], 0.5 * task + 0.5 * distill)


def test_mixup_soft_targets_get_one_hot_pseudo_labels():
    """Under Mixup the class head's criterion takes soft targets: the teacher's argmax arrives one-hot."""
    cls, dist, teacher, labels = _batch(4)
    soft_labels = torch.softmax(torch.randn(N, C, generator=torch.Generator().manual_seed(9)), dim=1)
    loss = DistillationLoss(SoftTargetCrossEntropy(), None, "hard", 0.5, 1.0, pseudo_labels=True)
    parts = loss.parts((cls, dist), soft_labels, teacher)
    log_p = torch.log_softmax(cls, dim=1)
    per_sample = torch.cat([-(soft_labels * log_p[:N]).sum(dim=1), -log_p[N:].gather(
        1, teacher[N:].argmax(dim=1, keepdim=True)).squeeze(1)])
    torch.testing.assert_close(parts["task_loss"], per_sample.mean())


def test_unlabelled_samples_without_a_teacher_output_are_refused():
    cls, dist, _, labels = _batch()
    with pytest.raises(ValueError, match="learn only from the teacher"):
        DistillationLoss(nn.CrossEntropyLoss(), None, "none", 0.5, 1.0).parts((cls, dist), labels, None)


# --- end to end -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from train_fixtures import digits, teacher_checkpoint

    root = tmp_path_factory.mktemp("unlabeled")
    labelled = digits(root / "digits", train_per_class=4, val_fraction=0.2)
    full = digits(root / "full", None, val_fraction=0.2)  # same validation split, every training digit
    unlabelled = root / "unlabelled" / "nested"
    unlabelled.mkdir(parents=True)
    taken = {p.name for p in (labelled / "train").rglob("*.png")}
    rest = [p for p in sorted((full / "train").rglob("*.png")) if p.name not in taken]
    for p in rest[::20]:  # ~70 training digits without their class folders, one level down
        shutil.copy(p, unlabelled / f"u{p.name}")
    return root, labelled, root / "unlabelled", teacher_checkpoint(root / "t.pth")


def _argv(data, teacher, out, name, *extra):
    return ["--data-dir", str(data), "-b", "16", "--workers", "0", "--opt", "adamw", "--lr", "1e-3",
            "--warmup-epochs", "0", "--epochs", "2", "--seed", "3", "--log-interval", "100",
            "--distill-teacher", "resnet10t", "--distill-teacher-path", str(teacher), "--teacher-precision", "fp32",
            "--teacher-compile", "no", "--no-teacher-check", "--output", str(out), "--experiment", name, *extra]


DEIT = ["--model", "deit_tiny_distilled_patch4_32", "--model-kwargs", "depth=1", "embed_dim=32", "num_heads=2"]
SINGLE = ["--model", "resnet10t", "--img-size", "16"]


@pytest.mark.slow
@pytest.mark.parametrize("name, extra", [
    ("soft", [*DEIT, "--distill-type", "soft"]),
    ("hard", [*DEIT, "--distill-type", "hard", "--unlabeled-fraction", "0.25"]),
    ("single", [*SINGLE, "--distill-type", "hard", "--pseudo-labels"]),
])
def test_train_with_unlabelled_images_records_each_kinds_terms(files, name, extra, caplog):
    from timm_deit_distill.commands import train
    from timm_deit_distill.records import read_summary

    root, data, unlabelled, teacher = files
    caplog.set_level("INFO", logger="timm_deit_distill")
    assert train.main(_argv(data, teacher, root / "runs", name, *extra, "--unlabeled-data-dir", str(unlabelled))) == 0
    log = caplog.text
    assert f"Unlabelled images: {len(list(unlabelled.rglob('*.png')))} from --unlabeled-data-dir" in log
    fraction = 0.25 if name == "hard" else 0.5
    u = round(16 * fraction)
    assert f"each batch of 16 holds {16 - u} labelled and {u} unlabelled images" in log
    assert "unlabelled: pseudo" in log
    rows = read_summary(root / "runs" / name / "summary.csv")
    assert len(rows) == 2
    pseudo = "--pseudo-labels" in extra
    for r in rows:
        v = {k: float(r[k]) for k in ("train_task_loss", "train_distill_loss", "train_task_loss_labeled",
                                       "train_pseudo_loss", "train_distill_loss_labeled",
                                       "train_distill_loss_unlabeled")}
        assert v["train_distill_loss_unlabeled"] > 0 and v["train_distill_loss_labeled"] > 0
        assert (v["train_pseudo_loss"] > 0) == pseudo
        # each term is a mean over its samples: the whole-batch terms are the kinds' terms weighted by count
        assert v["train_distill_loss"] == pytest.approx(
            ((16 - u) * v["train_distill_loss_labeled"] + u * v["train_distill_loss_unlabeled"]) / 16, rel=1e-3)
        expected_task = ((16 - u) * v["train_task_loss_labeled"] + u * v["train_pseudo_loss"]) / 16 if pseudo \
            else v["train_task_loss_labeled"]
        assert v["train_task_loss"] == pytest.approx(expected_task, rel=1e-3)


# --- refusals: one line before work -----------------------------------------------------------------------------

def _refusals(root, data, unlabelled, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(next(unlabelled.rglob("*.png")), broken / "fine.png")
    (broken / "broken.png").write_bytes(b"not a png at all")
    all_broken = tmp_path / "all-broken"
    all_broken.mkdir()
    (all_broken / "x.png").write_bytes(b"not a png either")
    leak = tmp_path / "leak"
    shutil.copytree(unlabelled, leak)
    val = sorted((data / "validation" / "7").glob("*.png"))[0]
    (leak / "deeper").mkdir()
    shutil.copy(val, leak / "deeper" / "zz-renamed.png")  # a validation digit under another name, one level down
    u = ["--unlabeled-data-dir", str(unlabelled)]
    return {
        "empty": (["--unlabeled-data-dir", str(empty)], f"--unlabeled-data-dir {empty} holds no images"),
        "missing": (["--unlabeled-data-dir", str(tmp_path / "nope")], "does not exist"),
        "unreadable": (["--unlabeled-data-dir", str(broken)], "broken.png"),
        "all unreadable": (["--unlabeled-data-dir", str(all_broken), "--skip-bad-images"], "is unreadable"),
        "the training folder": (["--unlabeled-data-dir", str(data / "train")], "is the labelled training split"),
        "validation by content": (["--unlabeled-data-dir", str(leak)],
                                  f"zz-renamed.png is the validation image {val}"),
        "the data root": (["--unlabeled-data-dir", str(data)], "is the validation image"),
        "no teacher": ([*u, "--distill-type", "none"], "nothing learns from them"),
        "pseudo labels alone": (["--pseudo-labels"], "no unlabelled images are given"),
        "fraction": ([*u, "--unlabeled-fraction", "1"], "must be in (0, 1)"),
        "no labelled left": ([*u, "--unlabeled-fraction", "0.99"], "both must be >= 1"),
        "cache": ([*u, "--distill-cache", str(tmp_path / "cache")], "the cache holds the teacher's targets"),
        "mixup off epoch": ([*u, "--mixup", "0.8", "--mixup-off-epoch", "1"], "--mixup-off-epoch"),
        "odd mix": ([*u, "--mixup", "0.8", "-b", "15", "--unlabeled-fraction", "0.34"], "leaves 5 unlabelled images a batch"),
        "too few": (["--unlabeled-data-dir", str(broken), "--skip-bad-images"], "fewer than the 8 a batch takes"),
    }


@pytest.mark.parametrize("case", ["empty", "missing", "unreadable", "all unreadable", "the training folder",
                                  "validation by content", "the data root", "no teacher", "pseudo labels alone",
                                  "fraction", "no labelled left", "cache", "mixup off epoch", "odd mix", "too few"])
def test_refused_in_one_line_before_anything_is_written(files, case, tmp_path, capsys):
    from timm_deit_distill.commands import train

    root, data, unlabelled, teacher = files
    extra, needle = _refusals(root, data, unlabelled, tmp_path)[case]
    argv = _argv(data, teacher, tmp_path / "out", "run", *DEIT, "--distill-type", "soft", *extra)
    if case == "no teacher":  # no teacher flag at all
        argv = [a for a in argv if a not in ("--distill-teacher", "resnet10t", "--distill-teacher-path", str(teacher),
                                             "--teacher-precision", "fp32", "--teacher-compile", "no",
                                             "--no-teacher-check")]
    assert train.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert needle in err, err
    assert len(err.splitlines()) == 1 and err.startswith("deit-distill train: error: ")
    assert "Traceback" not in captured.out + captured.err
    assert not (tmp_path / "out" / "run").exists()


def test_a_cache_of_a_run_with_unlabelled_images_is_refused(files, tmp_path, capsys):
    from timm_deit_distill.commands import cache as cache_cli

    root, data, unlabelled, teacher = files
    argv = _argv(data, teacher, tmp_path / "x", "x", *DEIT, "--distill-type", "soft", "--unlabeled-data-dir",
                 str(unlabelled))
    assert cache_cli.main(["build", *argv, "--out", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unlabelled images" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "cache").exists()
