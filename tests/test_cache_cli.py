"""`deit-distill cache build|info` end to end, and `deit-distill train --distill-cache` against online teaching."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from timm_deit_distill.commands import cache as cache_cli
from timm_deit_distill.data.digits import write_digits_imagefolder


@pytest.fixture(scope="module")
def setup_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cachecli")
    data = write_digits_imagefolder(root / "digits", train_per_class=4)
    torch.manual_seed(0)
    teacher = root / "teacher.pth"
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), teacher)
    return root, data, teacher


def flags(data, teacher, *extra):
    """A DeiT-like command line at toy size: RandAugment, random erasing, Mixup + CutMix, repeats x3."""
    return ["--data-dir", str(data), "--model", "deit_tiny_distilled_patch4_32", "--model-kwargs", "depth=2",
            "--distill-teacher", "resnet18", "--distill-teacher-path", str(teacher), "--distill-type", "hard",
            "--epochs", "2", "--batch-size", "8", "--workers", "0", "--aa", "rand-m9-mstd0.5-inc1",
            "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0", "--aug-repeats", "3", "--deterministic-aug",
            "--opt", "adamw", "--lr", "1e-3", "--warmup-epochs", "0", "--teacher-precision", "fp32",
            "--teacher-compile", "no",  # torchrun's processes time on this machine's clock: no compile by chance
            "--seed", "3", "--no-teacher-check", *extra]  # a random-weight teacher: these tests are about plumbing


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def read_summary(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_train_from_cache_equals_online_teaching(setup_files, capsys):
    from timm_deit_distill.commands import train

    root, data, teacher = setup_files
    out = root / "cache"
    assert cache_cli.main(["build", *flags(data, teacher), "--store", "hard", "--out", str(out)]) == 0
    assert "2/2 epochs (complete), 40 views per epoch, 3 bytes per view" in capsys.readouterr().out
    runs = root / "runs"
    assert train.main([*flags(data, teacher), "--output", str(runs), "--experiment", "online"]) == 0
    assert train.main([*flags(data, teacher), "--distill-cache", str(out), "--output", str(runs),
                       "--experiment", "cached"]) == 0
    online, cached = read_summary(runs / "online"), read_summary(runs / "cached")
    for a, b in zip(online, cached, strict=True):
        for column in ("train_loss", "train_task_loss", "train_distill_loss", "eval_loss", "eval_top1"):
            assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-5, abs=1e-6), column
    # identical teacher targets, identical steps: the same student weights
    sd_online = load_state_dict(runs / "online" / "last.pth.tar")
    sd_cached = load_state_dict(runs / "cached" / "last.pth.tar")
    for key, value in sd_online.items():
        torch.testing.assert_close(sd_cached[key], value, rtol=1e-5, atol=1e-6)

    # one changed augmentation setting: refused before training, naming the field
    capsys.readouterr()
    assert train.main([*flags(data, teacher, "--reprob", "0.1"), "--distill-cache", str(out), "--output",
                       str(runs), "--experiment", "changed"]) == 2
    err = capsys.readouterr().err
    assert "views.reprob: cache 0.25, now 0.1" in err and "Traceback" not in err
    assert train.main([*flags(data, teacher), "--epochs", "3", "--distill-cache", str(out), "--output",
                       str(runs), "--experiment", "longer"]) == 2
    assert "holds 2 (epochs 0-1); missing: 2" in capsys.readouterr().err

    assert cache_cli.main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "store hard" in info and "teacher: resnet18" in info and "aa=rand-m9-mstd0.5-inc1" in info


def test_bad_cache_commands_are_refused(setup_files, capsys, tmp_path):
    root, data, teacher = setup_files
    cases = [
        (["build", *flags(data, teacher), "--store", "hard"], "no --out DIR given"),
        (["build", *flags(data, teacher), "--store", "top5", "--out", str(tmp_path / "new")], "use hard, topk:K"),
        (["build", "--data-dir", str(data), "--out", str(tmp_path / "new")], "no teacher given"),
        (["build", *flags(tmp_path / "nope", teacher), "--out", str(tmp_path / "new")], "does not exist"),
        # a folder of someone's files (a run folder): the chunks would be mixed into it
        (["build", *flags(data, teacher), "--out", str(tmp_path / "list" / "..")], "holds files but no cache"),
        # inside the dataset: a folder there is read as a class, its chunks as images
        (["build", *flags(data, teacher), "--out", str(Path(data) / "train" / "cache")], "is inside the dataset"),
        (["info", str(tmp_path / "none")], "no teacher target cache"),
        (["info", str(tmp_path / "list")], "is not a teacher target cache manifest"),
        # a damaged manifest (text or binary): one line that says to clear the folder, which a build then accepts
        (["info", str(tmp_path / "broken")], "fix: move or delete"),
        (["info", str(tmp_path / "binary")], "fix: move or delete"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        # a file where the cache folder goes: a FileExistsError traceback, after the data scan and the teacher
        (["build", *flags(data, teacher), "--out", str(tmp_path / "afile")], "is a file, not a folder"),
        (["build", *flags(data, teacher), "--out", str(tmp_path / "afile" / "c")], "is a file, not a folder"),
    ]
    (tmp_path / "afile").write_text("mine")
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "manifest.json").write_text("[]\n")  # JSON, but not a manifest
    for name, content in (("broken", b"{bad"), ("binary", b"\xff\xfe\x00")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_bytes(content)
    for argv, message in cases:
        assert cache_cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert (tmp_path / "afile").read_text() == "mine"
    assert not (Path(data) / "train" / "cache").exists() and not (tmp_path / "new").exists()


def test_a_folder_holding_another_programs_manifest_is_refused_before_the_teacher_is_built(setup_files, tmp_path,
                                                                                         capsys, monkeypatch):
    """--out onto a folder with someone else's manifest.json was refused only after the data scan, the teacher's
    build, its path measurement and its check; now before any of them, in one line, nothing written."""
    from timm_deit_distill import factory

    root, data, teacher = setup_files

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was built before --out was checked")

    monkeypatch.setattr(factory, "create_teacher", no_teacher)
    monkeypatch.setattr(factory, "open_datasets", no_teacher)
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "their-app", "version": 3}\n')
    assert cache_cli.main(["build", *flags(data, teacher), "--out", str(out)]) == 2
    _one_line(capsys, 2, f"--out {out} holds a manifest.json that is not a teacher target cache's", "new or empty")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    # this format's manifest, damaged: refused as early, with the fix load_manifest gives
    (out / "manifest.json").write_text('{"format": "timm-deit-distill/teacher-target-cache", "vers')
    assert cache_cli.main(["build", *flags(data, teacher), "--out", str(out)]) == 2
    _one_line(capsys, 2, "fix: move or delete")


@pytest.mark.slow
def test_torchrun_processes_share_the_build(setup_files, tmp_path):
    root, data, teacher = setup_files
    out = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "timm_deit_distill", "cache", "build",
           *flags(data, teacher, "--epochs", "3"), "--store", "topk:3", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and [c["epoch"] for c in manifest["chunks"]] == [0, 1, 2]
    # the same cache a single process writes
    single = tmp_path / "single"
    assert cache_cli.main(["build", *flags(data, teacher, "--epochs", "3"), "--store", "topk:3",
                           "--out", str(single)]) == 0
    reference = json.loads((single / "manifest.json").read_text())
    assert [c["sha256"] for c in manifest["chunks"]] == [c["sha256"] for c in reference["chunks"]]


def test_a_build_locks_its_cache_and_removes_only_its_own_partial_files(setup_files, tmp_path, capsys, caplog):
    from timm_deit_distill.run_folder import RunLock

    root, data, teacher = setup_files
    out = tmp_path / "cache"
    out.mkdir()
    ours = out / ".epoch-0000.safetensors.k2j4h_x1.deit-distill.tmp"  # what a build killed mid-write leaves
    ours.write_bytes(b"half a chunk")
    theirs = out / ".notes.txt.tmp"  # not a cache file: never touched
    theirs.write_text("mine")
    backup = out / ".manifest.json.q1.tmp"  # a user's file named like a temporary of a cache file: never touched
    backup.write_text("my backup")
    live = RunLock.acquire(out)  # a build still writing here
    try:
        assert cache_cli.main(["build", *flags(data, teacher), "--epochs", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "is in use: another deit-distill cache build" in err and err.count("\n") == 1
        assert ours.exists() and not (out / "manifest.json").exists()  # a live build's files are left alone
        # the build that took the lock was killed, its loader workers still hold it: not called a live build
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
        (out / ".deit-distill.lock").write_text(f"{dead}\n")
        assert cache_cli.main(["build", *flags(data, teacher), "--epochs", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert (f"the deit-distill cache build that held it (pid {dead}) has ended, but processes it started "
                "(e.g. its data loader workers) still hold the lock; retry in a few seconds.") in err
        assert err.count("\n") == 1 and ours.exists()
    finally:
        live.release()
    caplog.set_level("INFO")
    assert cache_cli.main(["build", *flags(data, teacher), "--epochs", "1", "--out", str(out)]) == 0
    assert not ours.exists() and theirs.read_text() == "mine" and backup.read_text() == "my backup"
    assert "Removed 1 partial file(s)" in caplog.text


@pytest.mark.slow
def test_an_unmeasured_cache_needs_no_teacher_check_to_train_from_and_info_says_so(setup_files, tmp_path, capsys,
                                                                                   caplog):
    from timm_deit_distill.commands import train

    root, data, teacher = setup_files
    out = tmp_path / "cache"
    caplog.set_level("WARNING")
    assert cache_cli.main(["build", *flags(data, teacher, "--epochs", "1"), "--out", str(out)]) == 0  # unchecked
    assert "Teacher check skipped (--no-teacher-check): teacher resnet18 is not measured" in caplog.text
    caplog.clear()
    capsys.readouterr()
    assert cache_cli.main(["info", str(out)]) == 0
    assert "teacher check: none (built with --no-teacher-check" in capsys.readouterr().out
    checked = [f for f in flags(data, teacher, "--epochs", "1") if f != "--no-teacher-check"]
    runs = tmp_path / "runs"
    for extra in ([], ["--teacher-min-top1", "50"]):
        assert train.main([*checked, *extra, "--distill-cache", str(out), "--output", str(runs),
                           "--experiment", "r"]) == 2
        err = capsys.readouterr().err
        assert "was never measured (it was built with --no-teacher-check)" in err and err.count("\n") == 1
        assert not runs.exists()
    assert train.main([*checked, "--no-teacher-check", "--distill-cache", str(out), "--output", str(runs),
                       "--experiment", "r"]) == 0
    assert "Teacher check skipped (--no-teacher-check)" in caplog.text


def test_info_into_a_closed_pipe_stops_quietly(setup_files, tmp_path):
    """`deit-distill cache info DIR | head -1`: the reader goes away; no BrokenPipeError traceback."""
    from timm_deit_distill.commands.cli import BROKEN_PIPE_EXIT

    root, data, teacher = setup_files
    out = tmp_path / "cache"
    assert cache_cli.main(["build", *flags(data, teacher, "--epochs", "1"), "--out", str(out)]) == 0
    for argv in (["cache", "info", str(out)], ["models"]):
        proc = subprocess.Popen([sys.executable, "-m", "timm_deit_distill", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
        proc.stdout.close()  # the reader is gone before the command prints
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == BROKEN_PIPE_EXIT, err
        assert "Traceback" not in err and "BrokenPipeError" not in err


def test_info_verify_hashes_every_chunk_and_names_each_damaged_one(setup_files, tmp_path, capsys):
    root, data, teacher = setup_files
    out = tmp_path / "cache"
    assert cache_cli.main(["build", *flags(data, teacher), "--out", str(out)]) == 0
    capsys.readouterr()
    assert cache_cli.main(["info", str(out), "--verify"]) == 0
    assert "chunks: 2 of 2 match the sha256 recorded when they were written" in capsys.readouterr().out
    chunk = out / "epoch-0001.safetensors"
    altered = bytearray(chunk.read_bytes())
    altered[-1] ^= 0x01  # same size: only a hash sees it
    chunk.write_bytes(bytes(altered))
    assert cache_cli.main(["info", str(out)]) == 0  # without --verify it says it has not looked
    assert "not hashed here (--verify hashes them" in capsys.readouterr().out
    assert cache_cli.main(["info", str(out), "--verify"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("damaged: ")] == [
        f"damaged: cache chunk {chunk} does not match its sha256 in manifest.json (corrupted or replaced); "
        "fix: delete it and its .json sidecar and rerun `deit-distill cache build` (only that epoch is recomputed)."]
    assert lines[-1] == "chunks: 1 of 2 match the sha256 recorded when they were written"
    (out / "epoch-0000.safetensors").unlink()
    assert cache_cli.main(["info", str(out), "--verify"]) == 1
    out_text = capsys.readouterr().out
    assert "epoch-0000.safetensors is missing" in out_text and "chunks: 0 of 2 match" in out_text


@pytest.fixture(scope="module")
def built_cache(setup_files, tmp_path_factory):
    root, data, teacher = setup_files
    out = tmp_path_factory.mktemp("built") / "cache"
    assert cache_cli.main(["build", *flags(data, teacher), "--out", str(out)]) == 0
    return out


def _damaged_copy(built_cache, tmp_path, damage):
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(built_cache, copy)
    damage(copy)
    return copy


def _one_line(capsys, code, *fragments):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return code


@pytest.mark.parametrize("damage, fragment", [
    (lambda c: _edit_manifest(c, lambda m: m.pop("chunks")), "is damaged (no 'chunks')"),
    (lambda c: _edit_manifest(c, lambda m: m["chunks"].__setitem__(1, "x")), "chunks[1] is str, not an object"),
    (lambda c: _edit_manifest(c, lambda m: m["chunks"][0].__setitem__("file", "../decoy.txt")),
     "chunks[0].file is '../decoy.txt', not 'epoch-0000.safetensors'"),
    (lambda c: _edit_manifest(c, lambda m: m["chunks"][0].__setitem__("bytes", True)),
     "chunks[0].bytes is missing or not int"),
])
def test_a_manifest_of_the_wrong_shape_is_refused_in_one_line(built_cache, setup_files, tmp_path, capsys, damage,
                                                               fragment):
    from timm_deit_distill.commands import train

    root, data, teacher = setup_files
    cache = _damaged_copy(built_cache, tmp_path, damage)
    for argv in (["info", str(cache)], ["info", str(cache), "--verify"]):
        assert cache_cli.main(argv) == 2
        _one_line(capsys, 2, fragment, "move or delete")
    runs = tmp_path / "runs"
    assert train.main([*flags(data, teacher), "--distill-cache", str(cache), "--output", str(runs)]) == 2
    _one_line(capsys, 2, fragment)
    assert not runs.exists()


def _edit_manifest(cache, edit):
    manifest = json.loads((cache / "manifest.json").read_text())
    edit(manifest)
    (cache / "manifest.json").write_text(json.dumps(manifest))


def test_a_folder_where_a_chunk_goes_is_named_and_the_build_refuses_it_before_any_work(built_cache, setup_files,
                                                                                          tmp_path, capsys):
    root, data, teacher = setup_files

    def folder_for_chunk(c):
        (c / "epoch-0000.safetensors").unlink()
        (c / "epoch-0000.safetensors").mkdir()

    cache = _damaged_copy(built_cache, tmp_path, folder_for_chunk)
    assert cache_cli.main(["info", str(cache), "--verify"]) == 1
    assert "epoch-0000.safetensors is a folder, not a file; fix: remove that folder" in capsys.readouterr().out
    assert cache_cli.main(["build", *flags(data, teacher), "--out", str(cache)]) == 2
    _one_line(capsys, 2, "epoch-0000.safetensors is a folder where the cache writes its files; fix: remove it")
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]  # refused before computing anything


def test_an_unreadable_chunk_or_cache_folder_is_named_not_a_traceback(built_cache, setup_files, tmp_path, capsys,
                                                                      monkeypatch):
    # the tests may run as root, whom chmod does not stop: the operating system's refusal is simulated
    import builtins
    from pathlib import Path as _Path

    root, data, teacher = setup_files
    cache = _damaged_copy(built_cache, tmp_path, lambda c: None)
    blocked = str(cache / "epoch-0001.safetensors")
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if str(file) == blocked:
            raise PermissionError(13, "Permission denied", blocked)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    assert cache_cli.main(["info", str(cache), "--verify"]) == 1
    assert (f"damaged: cache chunk {blocked} cannot be read (Permission denied); fix: give this user read permission"
            in capsys.readouterr().out)
    assert cache_cli.main(["build", *flags(data, teacher), "--out", str(cache)]) == 2
    _one_line(capsys, 2, f"cache chunk {blocked} cannot be read (Permission denied)")
    monkeypatch.undo()

    real_exists = _Path.exists

    def refusing_exists(self, *args, **kwargs):
        if self == cache / "manifest.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(_Path, "exists", refusing_exists)
    assert cache_cli.main(["info", str(cache)]) == 2
    _one_line(capsys, 2, f"cannot look into the cache folder {cache} (Permission denied); fix: give this user read "
                         "and search permission")


def test_info_on_a_file_says_it_is_no_folder(built_cache, capsys):
    assert cache_cli.main(["info", str(built_cache / "manifest.json")]) == 2
    _one_line(capsys, 2, "manifest.json is a file, not a cache folder; fix: give the folder that holds manifest.json")


def test_a_garbage_sidecar_is_ignored_and_written_again_by_the_next_build(built_cache, setup_files, tmp_path, capsys,
                                                                          caplog):
    root, data, teacher = setup_files
    cache = _damaged_copy(built_cache, tmp_path, lambda c: (c / "epoch-0001.json").write_text("garbage"))
    with caplog.at_level("WARNING"):
        assert cache_cli.main(["build", *flags(data, teacher), "--out", str(cache)]) == 0
    assert "epoch-0001.json cannot be read (JSONDecodeError): ignoring it" in caplog.text
    assert json.loads((cache / "epoch-0001.json").read_text())["file"] == "epoch-0001.safetensors"
    capsys.readouterr()
    assert cache_cli.main(["info", str(cache), "--verify"]) == 0
    assert "chunks: 2 of 2 match" in capsys.readouterr().out


def test_verify_reads_which_epoch_a_chunk_holds_when_chunks_and_their_entries_were_swapped(built_cache, tmp_path,
                                                                                           capsys):
    def swap(c):
        a, b = c / "epoch-0000.safetensors", c / "epoch-0001.safetensors"
        a.rename(c / "x")
        b.rename(a)
        (c / "x").rename(b)
        _edit_manifest(c, lambda m: [m["chunks"][0].__setitem__("sha256", m["chunks"][1]["sha256"]),
                                     m["chunks"][1].__setitem__("sha256", json.loads((c / "epoch-0000.json")
                                                                                      .read_text())["sha256"]),
                                     m["chunks"][0].__setitem__("bytes", a.stat().st_size),
                                     m["chunks"][1].__setitem__("bytes", b.stat().st_size)])

    cache = _damaged_copy(built_cache, tmp_path, swap)
    assert cache_cli.main(["info", str(cache), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "epoch-0000.safetensors holds epoch 1, not 0" in out and "epoch-0001.safetensors holds epoch 0, not 1" in out
