"""torchrun with 2 CPU processes (gloo over loopback) against the same run in one process.

With deterministic views (``--deterministic-aug``) the two processes see exactly the one process's images
and mixes split in two, and DDP averages their gradients: 2 x batch 8 must train like 1 x batch 16 (SGD: Adam would blow up the
float noise in gradients that are zero in exact arithmetic, such as the attention key bias's),
evaluate like it (counts reduced across ranks, timm's padding of the last rank left out), log once.
"""

from __future__ import annotations

import pytest
import torch
from train_fixtures import STUDENT, digits, load, run_cli, run_torchrun, teacher_checkpoint

from timm_deit_distill.commands import evaluate
from timm_deit_distill.records import read_summary


def _argv(data, teacher, out, name, batch):
    return ["--data-dir", str(data), *STUDENT, "-b", str(batch), "--workers", "0", "--epochs", "2",
            "--opt", "sgd", "--lr", "0.05", "--warmup-epochs", "0", "--deterministic-aug", "--mixup", "0.8",
            "--cutmix", "1.0", "--aug-repeats", "3", "--distill-teacher", "resnet10t", "--distill-teacher-path",
            str(teacher), "--no-teacher-check", "--seed", "5", "--log-interval", "1", "--output", str(out), "--experiment", name]


@pytest.mark.slow
def test_torchrun_two_processes_matches_one(tmp_path, capsys):
    # 89 validation images: the second rank's shard is padded by one, which must not be counted.
    data = digits(tmp_path / "digits", train_per_class=6, val_fraction=0.0495)
    teacher = teacher_checkpoint(tmp_path / "teacher.pth")
    ddp = run_torchrun(_argv(data, teacher, tmp_path, "ddp", 8))
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    # torchrun's rank 0 chose the teacher's path on this machine's clock (every rank took it); the one-process
    # run is given that path, so both teach the same targets whatever this CPU finds fastest.
    chosen = load(tmp_path / "ddp" / "last.pth.tar")["deit_distill"]["distill"]["teacher_path"]["path"]
    precision, _, how = chosen.partition(" ")
    single = run_cli([*_argv(data, teacher, tmp_path, "single", 16), "--teacher-precision", precision,
                      "--teacher-compile", "yes" if how == "compiled" else "no"])
    assert single.returncode == 0, single.stdout + single.stderr

    # Rank 0 alone logs; the log says two processes.
    assert ddp.stdout.count("Epoch 0:") == 1 and ddp.stdout.count("Epoch 1:") == 1
    assert "2 processes on cpu" in ddp.stdout

    a, b = load(tmp_path / "ddp" / "last.pth.tar"), load(tmp_path / "single" / "last.pth.tar")
    assert a["state_dict"].keys() == b["state_dict"].keys()  # the student only: the teacher stayed outside DDP
    for name, value in a["state_dict"].items():
        assert torch.allclose(value, b["state_dict"][name], rtol=1e-4, atol=1e-6), name
    assert len(a["rng"]) == 2 and not torch.equal(a["rng"][0]["torch"], a["rng"][1]["torch"])  # per-rank states

    rows_ddp, rows_single = read_summary(tmp_path / "ddp" / "summary.csv"), read_summary(tmp_path / "single" / "summary.csv")
    for r2, r1 in zip(rows_ddp, rows_single, strict=True):
        for key, value in r1.items():
            assert r2[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key

    # Reduced eval metrics equal a one-process evaluation of the saved weights on all 89 images.
    assert evaluate.main(["--checkpoint", str(tmp_path / "ddp" / "last.pth.tar"), "--data-dir", str(data),
                          "--workers", "0", "--json", str(tmp_path / "eval.json")]) == 0
    import json

    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["count"] == 89
    assert rows_ddp[-1]["eval_top1"] == pytest.approx(result["top1"], abs=1e-4)
    assert rows_ddp[-1]["eval_top1_cls"] == pytest.approx(result["heads"]["cls"]["top1"], abs=1e-4)
    assert rows_ddp[-1]["eval_loss"] == pytest.approx(result["loss"], rel=1e-5)
    capsys.readouterr()
