"""Every file the package writes atomically gets the mode a plain ``open()`` would give: 0o666 & ~umask.

mkstemp creates its temporary file 0o600, and some writers re-create the file they are given (safetensors'
``save_file`` does, 0o600 again): a teacher cache or checkpoint written that way could not be read by the
other users or jobs it is shared with. The reference is the mode of a file created by ``open(path, "w")``
under the same umask.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from timm_deit_distill.atomic import atomic_path, atomic_write_text
from timm_deit_distill.cache.store import write_chunk, write_json
from timm_deit_distill.checkpoint import CheckpointSaver
from timm_deit_distill.plots import plot_curves
from timm_deit_distill.records import write_args_yaml, write_summary


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def plain_mode(folder: Path) -> int:
    """What the OS gives a file created the ordinary way under the current umask (the independent reference)."""
    ref = folder / "reference.txt"
    with open(ref, "w") as f:
        f.write("x")
    return mode(ref)


def test_reference_is_0666_under_the_umask(tmp_path, umask):
    assert plain_mode(tmp_path) == 0o666 & ~umask


def test_cache_chunk_and_manifest(tmp_path, umask):
    chunk = tmp_path / "epoch-0000.safetensors"
    write_chunk(chunk, {"hard": np.arange(12, dtype=np.int16)}, {"timm_deit_distill_cache": "{}"})
    write_json(tmp_path / "manifest.json", {"format": 1})
    expected = plain_mode(tmp_path)
    assert mode(chunk) == expected
    assert mode(tmp_path / "manifest.json") == expected


def test_safetensors_torch_writer(tmp_path, umask):
    from safetensors.torch import save_file

    with atomic_path(tmp_path / "model.safetensors") as tmp:
        save_file({"w": torch.zeros(3)}, tmp)
    assert mode(tmp_path / "model.safetensors") == plain_mode(tmp_path)


def test_training_checkpoints(tmp_path, umask):
    model = torch.nn.Linear(2, 2)
    saver = CheckpointSaver(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                            checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path), max_history=2)
    saver.save_checkpoint(0, metric=1.0)
    expected = plain_mode(tmp_path)
    written = sorted(p for p in tmp_path.glob("*.pth.tar"))
    assert {p.name for p in written} >= {"checkpoint-0.pth.tar", "last.pth.tar", "model_best.pth.tar"}
    assert {p.name: mode(p) for p in written} == {p.name: expected for p in written}


def test_text_files(tmp_path, umask):
    atomic_write_text(tmp_path / "eval.json", "{}\n")
    write_summary(tmp_path / "summary.csv", [{"epoch": 0, "train_loss": 1.0}], ema=False)
    write_args_yaml(tmp_path / "args.yaml", {"model": "resnet10t"})
    expected = plain_mode(tmp_path)
    for name in ("eval.json", "summary.csv", "args.yaml"):
        assert mode(tmp_path / name) == expected, name


def test_plot(tmp_path, umask):
    plot_curves([{"epoch": 0, "train_loss": 1.0, "eval_loss": 1.2, "eval_top1": 50.0}], tmp_path / "curves.png")
    assert mode(tmp_path / "curves.png") == plain_mode(tmp_path)


def test_a_writer_that_recreates_the_file_with_0600(tmp_path, umask):
    with atomic_path(tmp_path / "out.bin") as tmp:
        os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"data")
        os.close(fd)
    assert mode(tmp_path / "out.bin") == plain_mode(tmp_path)
    assert (tmp_path / "out.bin").read_bytes() == b"data"
