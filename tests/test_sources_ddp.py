"""Two processes (torchrun, gloo) reading wds shards as the trainer does: each process reads its own disjoint
share of the shards and the shares' union is the epoch, for loader workers 0 and 2, in two epochs (dealt anew
each epoch from (seed, epoch)); distributed evaluation reads every validation sample exactly once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_two_processes_read_disjoint_shares_of_the_shards_whose_union_is_the_epoch(sources, tmp_path):
    # 8 equal shards of 20 per split; the sample id (json 'idx') is the target, so the class list goes
    shards = tmp_path / "wds"
    shutil.copytree(sources["wds"], shards)
    info = json.loads((shards / "_info.json").read_text())
    del info["classes"], info["num_classes"]
    (shards / "_info.json").write_text(json.dumps(info))
    out = tmp_path / "ids.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(__file__).parent / "ddp_stream_worker.py"), str(shards), str(out)],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ids = json.loads(out.read_text())
    everything = set(range(160))
    for case, (a, b) in ids.items():
        assert len(a) == len(b) == 80, case  # the same step count on both processes (no hang)
        assert len(set(a)) == len(a) and len(set(b)) == len(b), case  # no sample twice within a process
        assert not set(a) & set(b), case  # disjoint
        assert set(a) | set(b) == everything, case  # whose union is the epoch
    for workers in (0, 2):
        # each epoch deals the shards anew (seed + epoch), so a process's share changes between epochs
        assert set(ids[f"train workers {workers} epoch 0"][0]) != set(ids[f"train workers {workers} epoch 1"][0])
    # the dealing depends on the global worker count only through timm's islice: with 2 workers per process
    # each process still holds whole shards (20 consecutive ids after the writer's shuffle are one shard)
    shard_of = {}
    for i in range(160):
        shard_of[i] = i // 20
    for case, (a, b) in ids.items():
        assert {shard_of[i] for i in a}.isdisjoint({shard_of[i] for i in b}), case


@pytest.mark.slow
def test_torchrun_distils_on_wds_shards_and_reduces_the_evaluation_across_processes(sources, trained_teacher,
                                                                                    tmp_path, capsys):
    from train_fixtures import STUDENT

    from timm_deit_distill.commands import evaluate
    from timm_deit_distill.records import read_summary

    argv = ["--dataset", "wds/digits", "--data-dir", str(sources["wds"]), *STUDENT, "-b", "8", "--workers", "0",
            "--epochs", "1", "--opt", "adamw", "--lr", "5e-3", "--warmup-epochs", "0", "--img-size", "16",
            "--distill-teacher", "resnet10t", "--distill-teacher-path", str(trained_teacher["checkpoint"]),
            "--teacher-precision", "fp32", "--teacher-compile", "no", "--seed", "3", "--log-interval", "100", "--output", str(tmp_path),
            "--experiment", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "timm_deit_distill", "train", *argv], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 processes on cpu" in proc.stdout and "Teacher check: resnet10t" in proc.stdout
    (row,) = read_summary(tmp_path / "ddp" / "summary.csv")
    # the two processes' evaluation counts, reduced: one process evaluating the saved weights on every image
    out = tmp_path / "eval.json"
    assert evaluate.main(["--checkpoint", str(tmp_path / "ddp" / "last.pth.tar"), "--data-dir",
                          str(sources["folder"]), "--json", str(out)]) == 0
    capsys.readouterr()
    single = json.loads(out.read_text())
    assert single["count"] == 160
    assert row["eval_top1"] == pytest.approx(single["top1"], abs=1e-3)
    assert row["eval_loss"] == pytest.approx(single["loss"], rel=1e-4)
