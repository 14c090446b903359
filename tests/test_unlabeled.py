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
# a single-head student without BatchNorm, whose statistics would differ between one process and two
VIT = ["--model", "vit_tiny_patch16_224", "--img-size", "16", "--model-kwargs", "patch_size=4", "depth=1",
       "embed_dim=32", "num_heads=2"]


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
        "fraction alone": (["--unlabeled-fraction", "0.25"], "no unlabelled images are given"),
        "split of a folder": ([*u, "--unlabeled-split", "validation"], "which is not given"),
        "fraction": ([*u, "--unlabeled-fraction", "1"], "must be in (0, 1)"),
        "no labelled left": ([*u, "--unlabeled-fraction", "0.99"], "both must be >= 1"),
        "mixup off epoch": ([*u, "--mixup", "0.8", "--mixup-off-epoch", "1"], "--mixup-off-epoch"),
        "odd mix": ([*u, "--mixup", "0.8", "-b", "15", "--unlabeled-fraction", "0.34"],
                    "leaves 5 unlabelled images a batch"),
        "too few": (["--unlabeled-data-dir", str(broken), "--skip-bad-images"], "fewer than the 8 a batch takes"),
        # the source's own refusal names the flag the user gave, not the labelled data's --dataset / --data-dir
        "unknown hub dataset": (["--unlabeled-dataset", "hfds/acme/nothing-here", "--unlabeled-data-dir",
                                 str(tmp_path / "hf-cache")],
                                "error: --unlabeled-dataset hfds/acme/nothing-here: not found locally"),
    }


@pytest.mark.parametrize("case", ["empty", "missing", "unreadable", "all unreadable", "the training folder",
                                  "validation by content", "the data root", "no teacher", "pseudo labels alone",
                                  "fraction alone", "split of a folder",
                                  "fraction", "no labelled left", "mixup off epoch", "odd mix", "too few",
                                  "unknown hub dataset"])
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


# the target cache with unlabelled images: tests/test_unlabeled_cache.py


# --- every feature works with it --------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_stopped_and_resumed_equals_the_uninterrupted_one(files, capsys):
    """Mixup within each kind, EMA, soft distillation: the unlabelled passes continue across the resume."""
    from train_fixtures import load

    from timm_deit_distill.commands import train

    root, data, unlabelled, teacher = files
    extra = [*DEIT, "--distill-type", "soft", "--sched", "constant", "--model-ema", "--model-ema-decay", "0.9",
             "--mixup", "0.8", "--unlabeled-data-dir", str(unlabelled), "--unlabeled-fraction", "0.25"]
    out = root / "resume"
    assert train.main(_argv(data, teacher, out, "straight", *extra, "--epochs", "3")) == 0
    assert train.main(_argv(data, teacher, out, "legs", *extra, "--epochs", "1")) == 0
    legs = out / "legs"
    assert train.main(_argv(data, teacher, out, "legs", *extra, "--epochs", "3", "--resume",
                            str(legs / "last.pth.tar"))) == 0
    a, b = load(out / "straight" / "last.pth.tar"), load(legs / "last.pth.tar")
    assert a["epoch"] == b["epoch"] == 2
    for key in ("state_dict", "state_dict_ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    # a resume with other unlabelled images would draw other batches: refused in one line
    capsys.readouterr()
    other = root / "other-unlabelled"
    shutil.copytree(unlabelled, other)
    next(other.rglob("*.png")).unlink()
    argv = [a if a != str(unlabelled) else str(other) for a in extra]
    assert train.main(_argv(data, teacher, out, "legs", *argv, "--epochs", "4", "--resume",
                            str(legs / "last.pth.tar"))) == 2
    err = capsys.readouterr().err.strip()
    assert "unlabelled images" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_the_python_api_eval_and_the_hub_card_know_the_unlabelled_images(files, capsys):
    import json

    import yaml
    from huggingface_hub import ModelCard
    from train_fixtures import keywords

    import timm_deit_distill
    from timm_deit_distill.commands import evaluate
    from timm_deit_distill.commands.args import parse_args
    from timm_deit_distill.hub import save_pretrained

    root, data, unlabelled, teacher = files
    argv = _argv(data, teacher, root / "api", "run", *SINGLE, "--distill-type", "soft", "--pseudo-labels",
                 "--model-ema", "--unlabeled-data-dir", str(unlabelled), "--epochs", "1")
    result = timm_deit_distill.train(**keywords(argv))
    assert "train_distill_loss_unlabeled" in result.summary[0]
    run_dir = root / "api" / "run"
    # args.yaml repeats the run, unlabelled images included
    saved = yaml.safe_load((run_dir / "args.yaml").read_text())
    assert saved["unlabeled_data_dir"] == str(unlabelled) and saved["pseudo_labels"] is True
    again = parse_args(["-c", str(run_dir / "args.yaml")])
    assert (again.unlabeled_data_dir, again.unlabeled_fraction, again.pseudo_labels) == (str(unlabelled), 0.5, True)
    # eval reads the checkpoint as any other
    capsys.readouterr()
    out = root / "api.json"
    assert evaluate.main(["--checkpoint", str(run_dir / "last.pth.tar"), "--data-dir", str(data), "--workers", "0",
                          "--use-ema", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["count"] > 0
    # the Hub card says which unlabelled source taught the student, and how many images
    n = len(list(unlabelled.rglob("*.png")))
    card = ModelCard.load(save_pretrained(run_dir / "last.pth.tar", root / "hub", use_ema=True) / "README.md").text
    assert (f"| unlabelled images | {n} images from `folder` at `{unlabelled.name}`, 8 of each batch; on them the "
            "distillation term, the teacher's argmax as the class term (pseudo-labels) |") in card


def test_print_config_shows_the_unlabelled_settings(files, capsys):
    from timm_deit_distill.commands import train

    root, data, unlabelled, teacher = files
    argv = _argv(data, teacher, root / "cfg", "cfg", *DEIT, "--distill-type", "hard", "--unlabeled-data-dir",
                 str(unlabelled), "--unlabeled-fraction", "0.25", "--print-config")
    assert train.main(argv) == 0
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["unlabeled_data_dir"] == str(unlabelled) and printed["unlabeled_fraction"] == 0.25
    assert printed["pseudo_labels"] is False and printed["unlabeled_dataset"] is None


@pytest.mark.slow
def test_under_torchrun_each_process_takes_its_share_of_both_kinds(files, tmp_path):
    """Two torchrun processes (gloo) with half the batch each reach the weights of one process with the whole
    batch: each process draws its share of the labelled and of the unlabelled images."""

    from train_fixtures import load, run_cli, run_torchrun

    root, data, unlabelled, teacher = files

    def argv(name, batch):
        return _argv(data, teacher, tmp_path, name, *VIT, "-b", str(batch), "--deterministic-aug", "--opt", "sgd",
                     "--lr", "0.05", "--distill-type", "soft", "--pseudo-labels", "--unlabeled-data-dir",
                     str(unlabelled))

    ddp = run_torchrun(argv("ddp", 8))
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    single = run_cli(argv("single", 16))
    assert single.returncode == 0, single.stdout + single.stderr
    a, b = load(tmp_path / "ddp" / "last.pth.tar"), load(tmp_path / "single" / "last.pth.tar")
    for name, value in a["state_dict"].items():
        if value.is_floating_point():
            assert torch.allclose(value, b["state_dict"][name], rtol=1e-4, atol=1e-6), name


def test_the_teacher_is_checked_on_the_labelled_validation_images(files, tmp_path, capsys, caplog):
    """Unlabelled images carry no label to measure a teacher on: the check reads the validation split."""
    from timm_deit_distill.commands import train

    root, data, unlabelled, teacher = files
    caplog.set_level("INFO", logger="timm_deit_distill")
    argv = [a for a in _argv(data, teacher, tmp_path, "checked", *DEIT, "--distill-type", "soft",
                             "--unlabeled-data-dir", str(unlabelled)) if a != "--no-teacher-check"]
    assert train.main(argv) == 2  # the random teacher fails its check, before anything is written
    assert "it would distil noise" in capsys.readouterr().err
    n_val = len(list((data / "validation").rglob("*.png")))
    assert f"on {n_val} images" in caplog.text and not (tmp_path / "checked").exists()


@pytest.mark.slow
def test_unlabelled_images_from_a_hugging_face_dataset_and_its_leak_found_by_pixels(files, tmp_path, capsys):
    """--unlabeled-dataset: any map-style source, labels ignored; its validation split holds the labelled run's
    validation images (other files, same pixels): refused naming the first row."""
    from source_fixtures import records, write_hf_parquet

    from timm_deit_distill.commands import train
    from timm_deit_distill.records import read_summary

    root, data, _, teacher = files
    recs = records(root / "full", per_class=3)  # the same validation split as `data`, other training digits
    hf = write_hf_parquet(tmp_path / "hf", recs, shards=1)
    argv = _argv(data, teacher, tmp_path / "runs", "hf", *DEIT, "--distill-type", "soft", "--epochs", "1",
                 "--unlabeled-dataset", f"hfds/{hf}")
    assert train.main(argv) == 0, capsys.readouterr().err
    rows = read_summary(tmp_path / "runs" / "hf" / "summary.csv")
    assert float(rows[0]["train_distill_loss_unlabeled"]) > 0
    capsys.readouterr()
    leak = [*argv[:-2], "--experiment", "leak", "--unlabeled-dataset", f"hfds/{hf}", "--unlabeled-split",
            "validation"]
    assert train.main(leak) == 2
    err = capsys.readouterr().err.strip()
    assert "is the validation image" in err and "(same content)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs" / "leak").exists()


def test_a_streamed_unlabelled_source_is_refused(files, tmp_path, capsys):
    """Unlabelled images are drawn by index (seeded, resumable): a stream has none."""
    from source_fixtures import records, write_wds

    from timm_deit_distill.commands import train

    root, data, _, teacher = files
    wds = write_wds(tmp_path / "wds", records(root / "full", per_class=2), shards=2)
    argv = _argv(data, teacher, tmp_path / "out", "run", *DEIT, "--distill-type", "soft",
                 "--unlabeled-dataset", "wds/digits", "--unlabeled-data-dir", str(wds))
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "is a stream" in err and len(err.splitlines()) == 1 and not (tmp_path / "out" / "run").exists()
