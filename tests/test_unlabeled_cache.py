"""The teacher target cache with unlabelled images (issue 22): an unlabelled view's identity is (pass, position)
under the unlabelled seed, whatever the process count, so a cache of every position of passes 0..P-1 serves any
run that consumes at most P of them. A run replaying the cache trains exactly as the same run with its teacher
online; other unlabelled images, or too few passes, are refused in one line before the first step."""

from __future__ import annotations

import shutil

import pytest
import torch
from test_unlabeled import DEIT, _argv, files  # noqa: F401  (the module's fixture, reused)

# soft targets from every logit: a random teacher's argmax hardly varies, its logits do (a wrong row shows)
CACHE_RUN = [*DEIT, "--distill-type", "soft", "--deterministic-aug", "--sched", "constant",
             "--unlabeled-fraction", "0.75"]  # 4 passes over them in 2 epochs


def _build(data, teacher, unlabelled, out, *extra):
    from timm_deit_distill.commands import cache as cache_cli

    argv = _argv(data, teacher, out.parent / "x", "x", *CACHE_RUN, "--unlabeled-data-dir", str(unlabelled), *extra)
    return cache_cli.main(["build", *argv, "--store", "full", "--out", str(out)])


def _cache_argv(data, teacher, out, name, cache, *extra):
    """A training run from the cache: no teacher flag (the cache holds its targets)."""
    argv = _argv(data, teacher, out, name, *CACHE_RUN, *extra, "--distill-cache", str(cache))
    drop = {"--distill-teacher": 1, "--distill-teacher-path": 1, "--teacher-precision": 1, "--teacher-compile": 1}
    kept, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
        elif a in drop:
            skip = drop[a]
        else:
            kept.append(a)
    return kept


@pytest.fixture(scope="module")
def built(files):  # noqa: F811
    root, data, unlabelled, teacher = files
    cache = root / "ucache"
    assert _build(data, teacher, unlabelled, cache) == 0
    return cache


@pytest.mark.slow
def test_a_run_from_the_cache_trains_as_the_same_run_with_its_teacher_online(files, built):  # noqa: F811
    from train_fixtures import load

    from timm_deit_distill.commands import train

    root, data, unlabelled, teacher = files
    u = ["--unlabeled-data-dir", str(unlabelled)]
    out = root / "replay"
    assert train.main(_argv(data, teacher, out, "online", *CACHE_RUN, *u)) == 0
    assert train.main(_cache_argv(data, teacher, out, "cached", built, *u)) == 0
    a, b = load(out / "online" / "last.pth.tar"), load(out / "cached" / "last.pth.tar")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, value in a["state_dict"].items():  # test_cache_cli's tolerance: the teacher ran on other batches
        torch.testing.assert_close(b["state_dict"][name], value, rtol=1e-5, atol=1e-6, msg=f"{name} differs")


def _refused(argv, capsys, needle):
    from timm_deit_distill.commands import train

    capsys.readouterr()
    assert train.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert needle in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in captured.out + captured.err
    return err


def test_other_unlabelled_images_are_refused_before_the_first_step(files, built, tmp_path, capsys):  # noqa: F811
    root, data, unlabelled, teacher = files
    other = tmp_path / "other"
    shutil.copytree(unlabelled, other)
    next(other.rglob("*.png")).unlink()  # one image fewer: other content, other views
    err = _refused(_cache_argv(data, teacher, tmp_path / "runs", "r", built, "--unlabeled-data-dir", str(other)),
                   capsys, "was built with other unlabelled images")
    assert "fix:" in err
    assert not (tmp_path / "runs" / "r").exists()


def test_a_cache_without_unlabelled_views_is_refused_for_a_run_with_them(files, tmp_path, capsys):  # noqa: F811
    from timm_deit_distill.commands import cache as cache_cli

    root, data, unlabelled, teacher = files
    labelled_only = tmp_path / "labelled-only"
    argv = _argv(data, teacher, tmp_path / "x", "x", *CACHE_RUN, "--epochs", "1")
    argv = [a for a in argv if a not in ("--unlabeled-fraction", "0.75")]
    assert cache_cli.main(["build", *argv, "--store", "full", "--out", str(labelled_only)]) == 0
    _refused(_cache_argv(data, teacher, tmp_path / "runs", "r", labelled_only, "--epochs", "1",
                         "--unlabeled-data-dir", str(unlabelled)), capsys, "holds no unlabelled views")
    assert not (tmp_path / "runs" / "r").exists()


@pytest.mark.slow
def test_too_few_passes_are_refused_with_the_numbers_and_an_extension_serves_the_run(files, tmp_path,  # noqa: F811
                                                                                    capsys):
    from timm_deit_distill.commands import train

    root, data, unlabelled, teacher = files
    short = tmp_path / "short"
    assert _build(data, teacher, unlabelled, short, "--unlabeled-passes", "2") == 0
    u = ["--unlabeled-data-dir", str(unlabelled)]
    argv = _cache_argv(data, teacher, tmp_path / "runs", "r", short, *u)
    # 2 epochs of 10 batches with 12 unlabelled images each, 5 batches a pass over the 70 images: 4 passes
    err = _refused(argv, capsys, "training consumes 4 pass(es) over the 70 unlabelled images but the cache in")
    assert "holds 2; fix:" in err and "--unlabeled-passes 4" in err
    assert not (tmp_path / "runs" / "r").exists()
    assert _build(data, teacher, unlabelled, short, "--unlabeled-passes", "4") == 0  # extended, passes 0-1 kept
    assert train.main(argv) == 0


def test_cache_info_shows_the_unlabelled_part(files, built, tmp_path, capsys):  # noqa: F811
    from timm_deit_distill.commands import cache as cache_cli

    root, data, unlabelled, teacher = files
    capsys.readouterr()
    assert cache_cli.main(["info", str(built)]) == 0
    out = capsys.readouterr().out
    n = len(list(unlabelled.rglob("*.png")))
    assert (f"unlabelled images: {n} from --unlabeled-data-dir {unlabelled} (--unlabeled-fraction 0.75, 12 a batch); "
            f"4/4 passes built, {n} views a pass") in out
    # --verify hashes the unlabelled passes too: one altered is named
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    chunk = copy / "unlabeled" / "epoch-0002.safetensors"
    data_bytes = bytearray(chunk.read_bytes())
    data_bytes[-1] ^= 1
    chunk.write_bytes(bytes(data_bytes))
    assert cache_cli.main(["info", str(copy), "--verify"]) == 1
    out = capsys.readouterr().out
    assert f"damaged: cache chunk {chunk} does not match its sha256" in out
    assert "chunks: 5 of 6 match the sha256" in out  # 2 epochs and 4 passes


def test_unlabeled_passes_without_unlabelled_images_is_refused(files, tmp_path, capsys):  # noqa: F811
    from timm_deit_distill.commands import cache as cache_cli

    root, data, unlabelled, teacher = files
    argv = _argv(data, teacher, tmp_path / "x", "x", *DEIT, "--distill-type", "soft")
    assert cache_cli.main(["build", *argv, "--unlabeled-passes", "3", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--unlabeled-passes 3 caches passes over unlabelled images, but none are given" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_under_torchrun_the_cache_of_one_process_serves_each_process_its_share(files, built, tmp_path):  # noqa: F811
    """Two torchrun processes (gloo) with half the batch each, replaying the cache one process built, reach the
    weights of one process with the whole batch and its teacher online: an unlabelled view is (pass, position),
    whatever the process count."""

    from train_fixtures import load, run_cli, run_torchrun

    root, data, unlabelled, teacher = files
    # SGD as in test_unlabeled's torchrun test: AdamW's normalised steps magnify the float noise of a split batch
    u = ["--unlabeled-data-dir", str(unlabelled), "--opt", "sgd", "--lr", "0.05"]
    ddp = run_torchrun(_cache_argv(data, teacher, tmp_path, "ddp", built, *u, "-b", "8"))
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    single = run_cli(_argv(data, teacher, tmp_path, "single", *CACHE_RUN, *u))
    assert single.returncode == 0, single.stdout + single.stderr
    a, b = load(tmp_path / "ddp" / "last.pth.tar"), load(tmp_path / "single" / "last.pth.tar")
    for name, value in a["state_dict"].items():
        if value.is_floating_point():
            assert torch.allclose(value, b["state_dict"][name], rtol=1e-4, atol=1e-6), name


@pytest.mark.slow
def test_a_resumed_run_from_the_cache_equals_the_uninterrupted_one(files, built, tmp_path):  # noqa: F811
    """The resumed epoch draws on the unlabelled passes where the stopped run left them (pass 2 of 4 here)."""
    from train_fixtures import load

    from timm_deit_distill.commands import train

    root, data, unlabelled, teacher = files
    u = ["--unlabeled-data-dir", str(unlabelled)]
    assert train.main(_cache_argv(data, teacher, tmp_path, "straight", built, *u)) == 0
    assert train.main(_cache_argv(data, teacher, tmp_path, "legs", built, *u, "--epochs", "1")) == 0
    assert train.main(_cache_argv(data, teacher, tmp_path, "legs", built, *u, "--resume",
                                  str(tmp_path / "legs" / "last.pth.tar"))) == 0
    a, b = load(tmp_path / "straight" / "last.pth.tar"), load(tmp_path / "legs" / "last.pth.tar")
    assert a["epoch"] == b["epoch"] == 1
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), f"{name} differs after resume"
