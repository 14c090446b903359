"""Distillation with the online teacher on every timm source, end to end: ``deit-distill train`` (teacher check,
per-part metrics, EMA), ``deit-distill eval`` and, on map-style sources, ``cache build`` + a run from the cache;
on streams, what needs a stable sample index refused in one line, a resume at an epoch boundary, and one whose
stream identity changed refused.

The sources hold the trained teacher's own digits (``sources`` in conftest: 16 images per class and split). The
independent reference for evaluation is the same checkpoint evaluated on the image folder those sources were
written from: same images, so the same top-1 whatever the source.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from train_fixtures import STUDENT, load

from timm_deit_distill.commands import cache as cache_cli
from timm_deit_distill.commands import evaluate, train
from timm_deit_distill.records import read_summary

TRAIN = [*STUDENT, "-b", "16", "--workers", "0", "--opt", "adamw", "--lr", "5e-3", "--warmup-epochs", "0",
         "--log-interval", "100", "--seed", "3", "--img-size", "16", "--teacher-precision", "fp32"]


def source_flags(sources, kind: str) -> list[str]:
    """``--dataset`` / ``--data-dir`` of each source (hfds/hfids read the session's datasets cache)."""
    return {"folder": ["--data-dir", str(sources["folder"])],
            "tar": ["--data-dir", str(sources["tar"])],
            "hfds": ["--dataset", f"hfds/{sources['hf_parquet']}"],
            "hfds_disk": ["--dataset", f"hfds/{sources['hf_disk']}"],
            "torch": ["--dataset", "torch/mnist", "--data-dir", str(sources["mnist"])],
            "wds": ["--dataset", "wds/digits", "--data-dir", str(sources["wds"])],
            "hfids": ["--dataset", f"hfids/{sources['hf_parquet']}"]}[kind]


def teacher_flags(trained_teacher) -> list[str]:
    return ["--distill-teacher", "resnet10t", "--distill-teacher-path", str(trained_teacher["checkpoint"])]


def run(argv, capsys, code=0) -> str:
    got = train.main(argv)
    out, err = capsys.readouterr()
    assert got == code, out + err
    return err


def refused(main, argv, capsys, prog="deit-distill train") -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1 and "Traceback" not in out + err, err
    return err


def evaluated(checkpoint, flags, capsys, tmp_path, name) -> dict:
    out = tmp_path / f"{name}.json"
    code = evaluate.main(["--checkpoint", str(checkpoint), "--no-ema", *flags, "--json", str(out)])
    o, e = capsys.readouterr()
    assert code == 0, o + e
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tar", "hfds", "torch", "wds", "hfids"])
def test_distilling_on_each_source_checks_the_teacher_records_the_source_and_evaluates(
        kind, sources, trained_teacher, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    flags = source_flags(sources, kind)
    run([*flags, *TRAIN, *teacher_flags(trained_teacher), "--epochs", "1", "--model-ema",
         "--output", str(tmp_path), "--experiment", kind], capsys)
    ckpt = load(tmp_path / kind / "last.pth.tar")
    meta = ckpt["deit_distill"]
    check = meta["distill"]["teacher_check"]
    assert check["passed"] is True and check["top1"] > 80, check
    data = meta["data"]
    assert data["num_samples"] == 160 and data["num_classes"] == 10
    if kind != "folder":
        assert data["source"] == (flags[1] if kind != "tar" else "tar") and data["split"] == "train"
    (row,) = read_summary(tmp_path / kind / "summary.csv")
    for column in ("train_task_loss", "train_distill_loss", "eval_top1_cls", "eval_top1_dist", "raw_eval_top1",
                   "teacher_top1", "teacher_agreement"):
        assert row[column] is not None, column
    assert ("stream" in meta) == (kind in ("wds", "hfids"))

    # eval on the source = eval on the image folder it was written from (same images, any order)
    got = evaluated(tmp_path / kind / "last.pth.tar", flags, capsys, tmp_path, f"{kind}-eval")
    assert got["count"] == 160
    if kind != "torch":  # torchvision names MNIST's classes '0 - zero', ...: the folder's '0' would be refused
        ref = evaluated(tmp_path / kind / "last.pth.tar", source_flags(sources, "folder"), capsys, tmp_path,
                        f"{kind}-folder")
        assert got["top1"] == pytest.approx(ref["top1"], abs=1e-9) and got["top5"] == pytest.approx(ref["top5"])
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    # and the trainer's last evaluation of the raw weights is that figure (eval_top1 is the EMA's, as in timm)
    assert row["raw_eval_top1"] == pytest.approx(got["top1"], abs=1e-3)


def states_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tar", "hfds_disk", "torch"])
def test_a_cache_built_on_a_map_style_source_replays_the_online_run_and_records_the_source(
        kind, sources, trained_teacher, tmp_path, capsys):
    flags = source_flags(sources, kind)
    cache = tmp_path / "cache"
    assert cache_cli.main(["build", *flags, *TRAIN, *teacher_flags(trained_teacher), "--epochs", "1",
                           "--store", "hard", "--out", str(cache)]) == 0
    capsys.readouterr()
    recorded = json.loads((cache / "manifest.json").read_text())["fingerprint"]["dataset"]
    spec = {"tar": "tar", "hfds_disk": f"hfds/{sources['hf_disk']}", "torch": "torch/mnist"}[kind]
    assert recorded["source"] == spec and recorded["split"] == "train" and recorded["num_samples"] == 160
    run([*flags, *TRAIN, "--epochs", "1", "--distill-cache", str(cache), "--output", str(tmp_path),
         "--experiment", "cached"], capsys)
    run([*flags, *TRAIN, *teacher_flags(trained_teacher), "--epochs", "1", "--deterministic-aug",
         "--output", str(tmp_path), "--experiment", "online"], capsys)
    # the cache holds the online teacher's targets of the same views: the same student, bit for bit
    assert states_equal(load(tmp_path / "cached" / "last.pth.tar")["state_dict"],
                        load(tmp_path / "online" / "last.pth.tar")["state_dict"])
    # another source with the same images is another dataset to the cache: refused before training
    other = source_flags(sources, "folder")
    err = refused(train.main, [*other, *TRAIN, "--epochs", "1", "--distill-cache", str(cache), "--output",
                               str(tmp_path), "--experiment", "other"], capsys)
    assert "cache" in err and not (tmp_path / "other").exists()


@pytest.mark.parametrize("kind", ["wds", "hfids"])
def test_a_stream_refuses_deterministic_views_and_the_cache_in_one_line(kind, sources, trained_teacher, tmp_path,
                                                                        capsys):
    flags = source_flags(sources, kind)
    for extra in (["--deterministic-aug"], ["--distill-cache", str(tmp_path / "c")], ["--aug-repeats", "3"]):
        err = refused(train.main, [*flags, *TRAIN, *teacher_flags(trained_teacher), *extra, "--output",
                                   str(tmp_path), "--experiment", "x"], capsys)
        assert ("stable sample index" in err or "no index" in err) and extra[0] in err, err
    err = refused(cache_cli.main, ["build", *flags, *TRAIN, *teacher_flags(trained_teacher), "--store", "hard",
                                   "--out", str(tmp_path / "c")], capsys, prog="deit-distill cache build")
    assert "cache build needs every view" in err and "hfds/" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_a_stream_resumes_at_the_epoch_boundary_and_refuses_a_changed_stream(sources, trained_teacher, tmp_path,
                                                                            capsys, caplog):
    caplog.set_level(logging.INFO)
    flags = [*source_flags(sources, "wds"), *TRAIN, *teacher_flags(trained_teacher), "--no-teacher-check",
             "--output", str(tmp_path)]
    run([*flags, "--epochs", "2", "--experiment", "whole"], capsys)
    run([*flags, "--epochs", "1", "--experiment", "first"], capsys)
    first = tmp_path / "first" / "last.pth.tar"
    stream = load(first)["deit_distill"]["stream"]
    assert stream["world_size"] == 1 and stream["workers"] == 0 and stream["batch_size"] == 16
    assert stream["num_samples"] == 160 and [s[0] for s in stream["shards"]] == [
        f"digits-train-{i:04d}.tar" for i in range(8)]
    # a resume whose loader would deal the shards differently is refused by name, before anything is written
    for extra, name in ((["--workers", "2"], "workers"), (["-b", "8"], "batch_size"), (["--seed", "4"], "seed")):
        before = first.read_bytes()
        err = refused(train.main, [*flags, "--epochs", "2", "--experiment", "first", "--resume", str(first), *extra],
                      capsys)
        assert name in err, err
        assert first.read_bytes() == before
    # the same stream resumes at epoch 1: the epoch's shard order is set by (seed, epoch) alone
    run([*flags, "--epochs", "2", "--experiment", "first", "--resume", str(first)], capsys)
    resumed = load(tmp_path / "first" / "last.pth.tar")
    assert resumed["epoch"] == 1 and [r["epoch"] for r in read_summary(tmp_path / "first" / "summary.csv")] == [0, 1]
