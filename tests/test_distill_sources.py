"""Where the teacher's targets come from, said and checked: a cache implies deterministic views, accepts a
teacher file only when it is the cache's teacher, and has every chunk a run needs verified before step 1;
a teacher given by its file alone is named in the log."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
import yaml
from train_fixtures import FAST, STUDENT, digits, load

from timm_deit_distill.commands import cache as cache_cli
from timm_deit_distill.commands import train
from timm_deit_distill.commands.args import format_config, parse_args
from timm_deit_distill.factory import loop
from timm_deit_distill.factory.run import build_run
from timm_deit_distill.factory.settings import settings_from_options


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return digits(tmp_path_factory.mktemp("sources") / "digits", train_per_class=5)


def flags(data, teacher, *extra):
    return ["--data-dir", str(data), *STUDENT, *FAST, "--epochs", "2", "--distill-teacher-path", str(teacher),
            "--teacher-precision", "fp32", *extra]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, data, trained_teacher):
    """A 2-epoch hard-label cache of the trained teacher (tests copy it before touching it)."""
    out = tmp_path_factory.mktemp("cache") / "c"
    assert cache_cli.main(["build", *flags(data, trained_teacher["checkpoint"]), "--store", "hard",
                           "--out", str(out)]) == 0
    return out


def flip_a_byte(path):
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))


def refused(argv, capsys):
    code = train.main(argv)
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert err.startswith("deit-distill train: error: ") and err.count("\n") == 1 and "Traceback" not in out + err
    return err


# --- a cache implies deterministic views -----------------------------------------------------------------------

def test_a_cache_implies_deterministic_views_and_print_config_says_so():
    args = parse_args(["--distill-cache", "some/cache"])
    assert args.deterministic_aug is True
    assert "deterministic_aug: true  # implied by --distill-cache" in format_config(args)
    # without a cache nothing is implied; given explicitly, it is the command line's
    assert parse_args([]).deterministic_aug is False
    assert "deterministic_aug: true  # on the command line" in format_config(
        parse_args(["--distill-cache", "c", "--deterministic-aug"]))


@pytest.mark.slow
def test_training_from_a_cache_with_its_own_teacher_file_needs_no_other_flag(data, trained_teacher, cache_dir,
                                                                             tmp_path, caplog):
    caplog.set_level(logging.INFO)
    teacher = trained_teacher["checkpoint"]
    assert train.main([*flags(data, teacher), "--distill-cache", str(cache_dir), "--output", str(tmp_path),
                       "--experiment", "cached"]) == 0
    assert f"--distill-teacher-path {teacher} matches the cache's teacher (resnet10t, sha256 " in caplog.text
    assert f"teacher: cache {cache_dir}" in caplog.text
    record = yaml.safe_load((tmp_path / "cached" / "args.yaml").read_text())
    assert record["deterministic_aug"] is True and record["distill_cache"] == str(cache_dir)
    assert load(tmp_path / "cached" / "last.pth.tar")["epoch"] == 1


def test_a_teacher_file_that_is_not_the_caches_teacher_is_refused_naming_both(data, trained_teacher, cache_dir,
                                                                              tmp_path, capsys):
    other = tmp_path / "other-teacher.pth.tar"
    state = load(trained_teacher["checkpoint"])
    state["note"] = "same weights, other file"
    torch.save(state, other)
    err = refused([*flags(data, other), "--deterministic-aug", "--distill-cache", str(cache_dir),
                   "--output", str(tmp_path), "--experiment", "run"], capsys)
    assert "cache built with 'resnet10t' (weights sha256 " in err and f"--distill-teacher-path {other} has sha256" in err
    assert "drop --distill-teacher-path" in err and err.count("fix:") == 1
    assert not (tmp_path / "run").exists()


# --- every chunk checked before the first step -----------------------------------------------------------------

def test_a_tampered_chunk_is_refused_before_the_first_step_naming_it(data, trained_teacher, cache_dir, tmp_path,
                                                                     capsys):
    cache = shutil.copytree(cache_dir, tmp_path / "c")
    flip_a_byte(cache / "epoch-0001.safetensors")
    err = refused([*flags(data, trained_teacher["checkpoint"]), "--deterministic-aug", "--distill-cache", str(cache), "--output",
                   str(tmp_path), "--experiment", "run"], capsys)
    assert f"cache chunk {cache / 'epoch-0001.safetensors'} does not match its sha256" in err and "fix:" in err
    assert not (tmp_path / "run").exists()


def test_a_truncated_chunk_beyond_the_hashing_budget_is_refused_up_front(data, trained_teacher, cache_dir, tmp_path,
                                                                         capsys, monkeypatch):
    import timm_deit_distill.cache.replay as cache_module

    monkeypatch.setattr(cache_module, "HASH_UP_FRONT_BYTES", 0)  # sizes and headers only
    cache = shutil.copytree(cache_dir, tmp_path / "c")
    chunk = cache / "epoch-0001.safetensors"
    chunk.write_bytes(chunk.read_bytes()[:-10])
    err = refused([*flags(data, trained_teacher["checkpoint"]), "--deterministic-aug", "--distill-cache", str(cache), "--output",
                   str(tmp_path), "--experiment", "run"], capsys)
    assert f"cache chunk {chunk} has" in err and "truncated or replaced" in err


@pytest.mark.slow
def test_a_chunk_that_changes_mid_run_stops_it_in_one_line_keeping_the_last_checkpoint(
        data, trained_teacher, cache_dir, tmp_path, capsys, monkeypatch):
    cache = shutil.copytree(cache_dir, tmp_path / "c")
    original = loop.train_one_epoch

    def tamper_before_epoch_1(run, epoch):
        if epoch == 1:
            flip_a_byte(cache / "epoch-0001.safetensors")
        return original(run, epoch)

    monkeypatch.setattr(loop, "train_one_epoch", tamper_before_epoch_1)
    err = refused([*flags(data, trained_teacher["checkpoint"]), "--deterministic-aug", "--distill-cache", str(cache), "--output",
                   str(tmp_path), "--experiment", "run"], capsys)
    run = tmp_path / "run"
    assert f"stopped in epoch 1: cache chunk {cache / 'epoch-0001.safetensors'} does not match its sha256" in err
    assert f"The last good checkpoint is kept: {run / 'last.pth.tar'} (epoch 0)." in err
    assert load(run / "last.pth.tar")["epoch"] == 0


# --- the teacher named in the log ------------------------------------------------------------------------------

def test_a_teacher_given_by_its_file_alone_is_named_in_the_log(data, trained_teacher, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    teacher = trained_teacher["checkpoint"]
    run = build_run(settings_from_options(parse_args([*flags(data, teacher), "--output", str(tmp_path), "--experiment",
                                                      "run"])))
    getattr(run, "close", lambda: None)()
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Distillation: "))
    assert line.endswith(f"teacher: resnet10t ({teacher}).")
