"""Exact resumption: a run killed with SIGKILL and resumed from last.pth.tar ends bit-identical to one left alone.

Everything random is on: RandAugment, random erasing, Mixup/CutMix, repeated augmentation, drop-path, EMA,
soft distillation from a teacher. CPU, one process, fixed seed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_fixtures import STUDENT, digits, load, run_cli, teacher_checkpoint

from timm_deit_distill.records import read_summary


def _argv(data, teacher, out, name):
    return ["--data-dir", str(data), *STUDENT, "-b", "16", "--workers", "0", "--epochs", "2", "--opt", "adamw",
            "--lr", "1e-3", "--warmup-epochs", "1", "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25",
            "--mixup", "0.8", "--cutmix", "1.0", "--aug-repeats", "3", "--drop-path", "0.1", "--model-ema",
            "--model-ema-decay", "0.9", "--distill-teacher", "resnet10t", "--distill-teacher-path", str(teacher),
            "--no-teacher-check",
            # The legs are separate processes that this machine's clock would time: one path for all, given.
            "--teacher-precision", "fp32", "--teacher-compile", "no",
            "--distill-type", "soft", "--seed", "7", "--log-interval", "100", "--output", str(out),
            "--experiment", name]


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    data = digits(tmp_path / "digits", train_per_class=5)
    teacher = teacher_checkpoint(tmp_path / "teacher.pth")

    straight = run_cli(_argv(data, teacher, tmp_path, "straight"))
    assert straight.returncode == 0, straight.stdout + straight.stderr

    # Same run, killed as soon as the first epoch's checkpoint is on disk.
    argv = [sys.executable, "-m", "timm_deit_distill", "train", *_argv(data, teacher, tmp_path, "killed")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    last = tmp_path / "killed" / "last.pth.tar"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = load(last)["epoch"]
    assert killed_at == 0

    resumed = run_cli([*_argv(data, teacher, tmp_path, "killed"), "--resume", str(last)])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"at epoch {killed_at + 1}" in resumed.stdout

    a, b = load(tmp_path / "straight" / "last.pth.tar"), load(last)
    assert a["epoch"] == b["epoch"] == 1
    for key in ("state_dict", "state_dict_ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    # The record continues too: one row per epoch, same numbers.
    assert read_summary(tmp_path / "straight" / "summary.csv") == read_summary(tmp_path / "killed" / "summary.csv")
