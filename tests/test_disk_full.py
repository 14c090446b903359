"""A full disk while writing (a checkpoint, a cache chunk, the eval results) ends in one line, exit 1: the folder,
the bytes needed and free, that nothing is lost, and how to go on; the writer's temporary file is removed.

No test fills a real disk: the writers are made to fail partway the ways they do on a full one (measured on a
256 kB tmpfs): Python's file objects raise ``OSError(ENOSPC)``, torch.save given such a file raises
``RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos ...')`` while handling it, and
safetensors raises ``SafetensorError('... No space left on device (os error 28)')``. ``shutil.disk_usage`` is
replaced so that the free space the message names is known.
"""

from __future__ import annotations

import errno
import json
import re
import shlex
import shutil
from collections import namedtuple

import pytest
import torch
from train_fixtures import FAST, STUDENT, digits, teacher_checkpoint

from timm_deit_distill import atomic
from timm_deit_distill.checkpoint import read_checkpoint
from timm_deit_distill.commands import cache as cache_cli
from timm_deit_distill.commands import evaluate, train
from timm_deit_distill.errors import DiskFullError

FREE = 12_345
_Usage = namedtuple("_Usage", "total used free")


@pytest.fixture
def little_free(monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: _Usage(10**9, 10**9 - FREE, FREE))


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def _torch_zip_writer_error() -> RuntimeError:
    """What torch.save raises when the file it writes to raises ENOSPC: a RuntimeError raised while handling it."""
    try:
        raise _enospc()
    except OSError:
        try:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904
        except RuntimeError as e:
            return e


def _debris(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name == "tmp.pth.tar")


@pytest.mark.parametrize("form", ["RuntimeError from torch's zip writer", "OSError"])
def test_every_form_a_writer_gives_becomes_one_disk_full_error_and_the_temporary_goes(tmp_path, little_free, form):
    import safetensors

    raised = {"RuntimeError from torch's zip writer": _torch_zip_writer_error(), "OSError": _enospc()}[form]
    target = tmp_path / "last.pth.tar"
    target.write_bytes(b"x" * 5000)  # the file being replaced: its size is the estimate when the writer gives none
    with pytest.raises(DiskFullError) as full, atomic.atomic_path(target) as tmp, open(tmp, "wb") as f:
        f.write(b"half a file")
        raise raised
    assert str(full.value) == (f"the disk is full: writing last.pth.tar in {tmp_path} needs about 5,000 bytes "
                               f"(5.0 kB), and 12,345 bytes (12.3 kB) are free there.")
    assert isinstance(full.value, OSError) and full.value.errno == errno.ENOSPC and full.value.exit_code == 1
    assert full.value.__cause__ is raised
    assert target.read_bytes() == b"x" * 5000 and _debris(tmp_path) == []
    rust = safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert atomic.disk_full_errno(rust) == errno.ENOSPC
    assert atomic.disk_full_errno(RuntimeError("unexpected pos 704 vs 598")) is None  # not without the ENOSPC
    assert atomic.disk_full_errno(OSError(errno.EACCES, "Permission denied")) is None


@pytest.mark.parametrize("form", ["RuntimeError from torch's zip writer", "OSError"])
def test_a_full_disk_during_a_checkpoint_save_stops_in_one_line_and_the_command_it_prints_resumes(
        tmp_path, capsys, monkeypatch, little_free, form):
    data = digits(tmp_path / "digits", train_per_class=2)
    argv = ["--data-dir", str(data), *STUDENT, *FAST, "--epochs", "3", "--output", str(tmp_path),
            "--experiment", "run"]
    folder = tmp_path / "run"
    real_save, calls = torch.save, []

    def full_at_the_second_save(obj, f, *args, **kwargs):
        calls.append(obj["epoch"])
        if len(calls) < 2:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 the first bytes of a zip")  # partway, as a real writer stops
        raise _torch_zip_writer_error() if form != "OSError" else _enospc()

    monkeypatch.setattr(torch, "save", full_at_the_second_save)
    assert train.main(argv) == 1
    monkeypatch.setattr(torch, "save", real_save)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "unexpected pos" not in err, err
    needed = int(re.search(r"needs about ([\d,]+) bytes", err).group(1).replace(",", ""))
    assert needed == (folder / "last.pth.tar").stat().st_size  # epoch 0's checkpoint: epoch 1's is about as big
    command = (f"deit-distill train -c {folder / 'args.yaml'} --resume {folder / 'last.pth.tar'} --output {tmp_path} "
               "--experiment run")
    assert err == (f"deit-distill train: error: the disk is full: writing the checkpoint of epoch 1 in {folder} needs "
                   f"about {needed:,} bytes ({atomic.format_size(needed)}), and 12,345 bytes (12.3 kB) are free there. "
                   f"Nothing is lost: {folder / 'last.pth.tar'} (epoch 0) is the last complete checkpoint and the "
                   f"partial file was removed. Free space there, then resume: {command}\n")
    assert _debris(folder) == []
    assert read_checkpoint(folder / "last.pth.tar")["epoch"] == 0  # whole, verified

    assert train.main(shlex.split(command)[2:]) == 0  # the printed command, as a user pastes it
    assert read_checkpoint(folder / "last.pth.tar")["epoch"] == 2
    assert (folder / "summary.csv").read_text().count("\n") == 4  # header + epochs 0, 1, 2


def test_a_full_disk_during_a_cache_build_keeps_the_finished_epochs_and_the_same_command_resumes(
        tmp_path, capsys, monkeypatch, little_free):
    import safetensors
    import safetensors.numpy

    data = digits(tmp_path / "digits", train_per_class=2)
    teacher = teacher_checkpoint(tmp_path / "teacher.pth")
    out = tmp_path / "cache"
    argv = ["build", "--data-dir", str(data), *STUDENT, "--distill-teacher", "resnet10t", "--distill-teacher-path",
            str(teacher), "--distill-type", "hard", "--epochs", "3", "-b", "8", "--workers", "0", "--seed", "3",
            "--teacher-precision", "fp32", "--teacher-compile", "no", "--no-teacher-check", "--store", "full",
            "--out", str(out)]
    real_save, calls = safetensors.numpy.save_file, []

    def full_at_the_second_chunk(arrays, filename, metadata=None):
        calls.append(filename)
        if len(calls) < 2:
            return real_save(arrays, filename, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.numpy, "save_file", full_at_the_second_chunk)
    assert cache_cli.main(argv) == 1
    monkeypatch.setattr(safetensors.numpy, "save_file", real_save)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "SafetensorError" not in err, err
    needed = int(re.search(r"needs about ([\d,]+) bytes", err).group(1).replace(",", ""))
    first_chunk = safetensors.numpy.load_file(out / "epoch-0000.safetensors")  # epoch 1's arrays are as big
    assert needed == sum(a.nbytes for a in first_chunk.values())
    assert err.startswith(f"deit-distill cache build: error: the disk is full: writing epoch-0001.safetensors in {out} "
                          f"needs about {needed:,} bytes"), err
    assert "12,345 bytes (12.3 kB) are free there." in err
    assert (f"Nothing is lost: 1 of 3 epochs are written in {out} and kept, the partial file was removed; the 2 "
            "missing need about") in err
    assert err.rstrip().endswith("Free space there, then rerun the same `deit-distill cache build` command: it "
                                 "resumes with the missing epochs."), err
    assert _debris(out) == []
    first = (out / "epoch-0000.safetensors").stat().st_mtime_ns

    assert cache_cli.main(argv) == 0  # the same command
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and [c["epoch"] for c in manifest["chunks"]] == [0, 1, 2]
    assert (out / "epoch-0000.safetensors").stat().st_mtime_ns == first  # kept, not recomputed


def test_a_full_disk_writing_the_eval_results_says_they_are_printed_above(tmp_path, capsys, monkeypatch, little_free):
    import os

    data = digits(tmp_path / "digits", train_per_class=2)
    assert train.main(["--data-dir", str(data), *STUDENT, *FAST, "--epochs", "1", "--output", str(tmp_path),
                       "--experiment", "run"]) == 0
    capsys.readouterr()

    def full_at_fsync(fd):  # where a full disk (or quota) shows on filesystems that allocate late (NFS, XFS)
        raise _enospc()

    monkeypatch.setattr(os, "fsync", full_at_fsync)
    results = tmp_path / "results.json"
    assert evaluate.main(["--checkpoint", str(tmp_path / "run" / "last.pth.tar"), "--data-dir", str(data),
                          "--workers", "0", "--json", str(results)]) == 1
    out, err = capsys.readouterr()
    printed = out[out.index("{"):]  # the JSON, printed before the write
    assert json.loads(printed)["heads"]["fused"]["top1"] is not None
    assert err.count("\n") == 1 and "Traceback" not in err, err
    size = len(printed.encode())
    assert err.startswith(f"deit-distill eval: error: the disk is full: writing results.json in {tmp_path} needs about "
                          f"{size:,} bytes ({atomic.format_size(size)}), and 12,345 bytes (12.3 kB) are free there. "
                          "The results are printed above (JSON included)"), err
    assert not results.exists() and _debris(tmp_path) == []
