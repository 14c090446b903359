"""A run folder is never overwritten: refused when it holds another run, created fresh and atomically,
claimed (locked) only once every check has passed; partial files of a killed save are cleaned under the lock.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from train_fixtures import FAST, STUDENT, digits, keywords, load

from timm_deit_distill.commands import demo, train
from timm_deit_distill.commands.args import parse_args
from timm_deit_distill.factory import run as run_module
from timm_deit_distill.factory.run import build_run
from timm_deit_distill.factory.settings import settings_from_options
from timm_deit_distill.records import read_summary

# The new API is imported inside the tests that use it, so that the end-to-end tests also run (and fail)
# against code from before it.
LOCK_NAME = ".deit-distill.lock"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return digits(tmp_path_factory.mktemp("runfolder") / "digits", train_per_class=5)


def base_argv(data, *extra):
    return ["--data-dir", str(data), *STUDENT, *FAST, "--checkpoint-hist", "2", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data):
    """A finished 2-epoch run (checkpoint-0, checkpoint-1 = last, model_best, summary, args.yaml, curves).

    Module-scoped: tests copy it (:func:`copy_run`) before touching it.
    """
    root = tmp_path_factory.mktemp("finished")
    assert train.main(base_argv(data, "--epochs", "2", "--output", str(root), "--experiment", "run")) == 0
    return root / "run"


def copy_run(run, dest):
    shutil.copytree(run, dest)
    return dest


def snapshot(folder):
    """Every file's bytes (the lock file aside: it holds the pid of whichever process locked it last)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != LOCK_NAME}


def refused(argv, capsys):
    code = train.main(argv)
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert err.startswith("deit-distill train: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in out + err
    return err


# --- a folder holding a run is refused -------------------------------------------------------------------------

def test_a_second_run_into_the_same_experiment_is_refused_and_changes_nothing(finished_run, data, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run)
    err = refused(base_argv(data, "--epochs", "2", "--output", str(tmp_path), "--experiment", "run"), capsys)
    assert f"{run} already holds a run" in err
    assert f"--resume {run / 'last.pth.tar'}" in err and "another --experiment" in err
    assert snapshot(run) == before


def test_a_folder_whose_run_saved_no_checkpoint_is_refused_saying_so(data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "args.yaml").write_text("model: something\n")
    (run / "summary.csv").write_text("epoch,train_loss\n0,1.0\n")
    before = snapshot(run)
    err = refused(base_argv(data, "--output", str(tmp_path), "--experiment", "run"), capsys)
    assert "saved no checkpoint" in err and "nothing to resume" in err and "delete that folder" in err
    assert snapshot(run) == before


def test_a_folder_with_unrelated_files_only_is_used(data, tmp_path, capsys):
    """A folder the user made (or the demo, with its demo_run.json) holds no run: it is trained in."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert train.main(base_argv(data, "--epochs", "1", "--output", str(tmp_path), "--experiment", "run")) == 0
    assert (run / "notes.txt").read_text() == "mine" and (run / "last.pth.tar").exists()


def test_a_refused_run_writes_nothing(finished_run, data, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run)
    last = run / "last.pth.tar"
    # Refused late in set-up (the resumed weights do not fit a two-block student): args.yaml stays as it was.
    code = train.main(base_argv(data, "--epochs", "3", "--model-kwargs", "depth=2", "embed_dim=32", "num_heads=2",
                                "--resume", str(last)))
    assert code == 2 and snapshot(run) == before
    assert capsys.readouterr().err.count("\n") == 1
    # The same into a new folder: the folder is not even created.
    refused(base_argv(data, "--epochs", "3", "--model-kwargs", "depth=2", "embed_dim=32", "num_heads=2",
                      "--resume", str(last), "--output", str(tmp_path), "--experiment", "branch"), capsys)
    assert not (tmp_path / "branch").exists()
    assert snapshot(run) == before


def test_an_output_that_cannot_be_created_is_refused_before_any_work(data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    err = refused(base_argv(data, "--output", str(blocker / "runs"), "--experiment", "x"), capsys)
    assert "cannot create the run folder" in err and "--output" in err


def test_a_run_folder_inside_the_dataset_is_refused(data, tmp_path, capsys):
    """A run folder under a split is read back as a class (its curves.png as a training image)."""
    copy = tmp_path / "d"
    shutil.copytree(data, copy)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    for argv in (["--output", str(copy / "train"), "--experiment", "3"],  # an existing class folder
                 ["--output", str(copy / "train"), "--experiment", "zrun"],  # a new "class"
                 ["--output", str(copy / "runs")]):  # a fresh dated folder beside the splits
        err = refused(base_argv(copy, *argv), capsys)
        assert "is inside the dataset" in err and "--output" in err
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before


# --- fresh folders ---------------------------------------------------------------------------------------------

class _FrozenClock(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2024, 5, 6, 7, 8, 9)


def test_runs_started_in_the_same_second_get_their_own_folders(data, tmp_path, monkeypatch):
    monkeypatch.setattr(run_module.datetime, "datetime", _FrozenClock)
    argv = base_argv(data, "--epochs", "1", "--output", str(tmp_path))
    first = build_run(settings_from_options(parse_args(argv)))
    second = build_run(settings_from_options(parse_args(argv)))
    for run in (first, second):
        getattr(run, "close", lambda: None)()
    assert os.path.basename(first.output_dir) == "20240506-070809-deit_tiny_distilled_patch4_32-32"
    assert second.output_dir == first.output_dir + "-1"  # timm's get_outdir(inc=True) naming


def test_create_unique_never_hands_one_name_out_twice(tmp_path):
    from timm_deit_distill.run_folder import create_unique

    made, barrier = [], threading.Barrier(8)

    def make():
        barrier.wait()
        made.append(create_unique(tmp_path / "runs", "same"))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in made) == ["same", *(f"same-{i}" for i in range(1, 8))]


# --- resuming into the run's own folder ------------------------------------------------------------------------

@pytest.mark.slow
def test_resuming_an_older_checkpoint_into_its_folder_is_refused_and_a_new_folder_continues(
        finished_run, data, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run)
    older = run / "checkpoint-0.pth.tar"
    assert load(older)["epoch"] == 0 and load(run / "last.pth.tar")["epoch"] == 1
    err = refused(base_argv(data, "--epochs", "2", "--resume", str(older)), capsys)
    assert "saved up to epoch 1: its epoch 1 (summary rows and checkpoints) would be overwritten" in err
    assert f"--output {tmp_path} --experiment NEW" in err
    # --start-epoch pointing back into the run is the same overwrite.
    err = refused(base_argv(data, "--epochs", "2", "--resume", str(run / "last.pth.tar"), "--start-epoch", "1"),
                  capsys)
    assert "--start-epoch 1" in err and "--experiment NEW" in err
    assert snapshot(run) == before

    # The way out: a new folder continues from epoch 0's weights; the old run stays intact.
    assert train.main(base_argv(data, "--epochs", "2", "--resume", str(older), "--output", str(tmp_path),
                                "--experiment", "branch")) == 0
    assert snapshot(run) == before
    assert [r["epoch"] for r in read_summary(tmp_path / "branch" / "summary.csv")] == [0, 1]
    assert load(tmp_path / "branch" / "last.pth.tar")["epoch"] == 1


# --- the lock and the partial files it lets us remove ----------------------------------------------------------

def test_partial_files_are_recognised_by_the_trainers_own_temp_names(tmp_path):
    from timm_deit_distill.run_folder import RunLock, partial_files

    names = [".last.pth.tar.ab12cd_3.deit-distill.tmp", ".checkpoint-12.pth.tar.zzzzzzzz.deit-distill.tmp",
             ".tmp.pth.tar.0a1b2c3d.deit-distill.tmp", ".summary.csv.abcdefgh.deit-distill.tmp",
             ".args.yaml.k2j3h4g5.deit-distill.tmp", ".curves.png.q1w2e3r4.deit-distill.tmp",
             ".model_best.pth.tar.aaaaaaaa.deit-distill.tmp"]
    others = [".notes.txt.abcdefgh.deit-distill.tmp", "last.pth.tar.tmp", ".last.pth.tar.tmp",
              ".checkpoint-x.pth.tar.abcd.tmp", "last.pth.tar", ".epoch-0001.safetensors.abcdefgh.deit-distill.tmp",
              # a user's own files, named like temporaries of the trainer's files but not by this package
              ".args.yaml.mybackup.tmp", ".last.pth.tar.ab12cd_3.tmp", ".summary.csv.abcdefgh.tmp",
              ".args.yaml.toolong12.deit-distill.tmp"]
    for name in names + others:
        (tmp_path / name).write_bytes(b"x" * 10)
    assert sorted(p.name for p in partial_files(tmp_path)) == sorted(names)
    lock = RunLock.acquire(tmp_path)
    try:
        assert lock.remove_partial_files() == (len(names), 10 * len(names))
    finally:
        lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, LOCK_NAME])


def test_a_lock_is_exclusive_and_clearing_a_locked_folder_is_refused(tmp_path):
    from timm_deit_distill.run_folder import LOCK_NAME as lock_name
    from timm_deit_distill.run_folder import RunFolderError, RunLock, clear_run_files

    assert lock_name == LOCK_NAME
    (tmp_path / "args.yaml").write_text("x")
    lock = RunLock.acquire(tmp_path)
    try:
        with pytest.raises(RunFolderError, match=rf"in use: another deit-distill train \(pid {os.getpid()}\)"):
            RunLock.acquire(tmp_path)
        with pytest.raises(RunFolderError, match="in use"):
            clear_run_files(tmp_path)
        assert (tmp_path / "args.yaml").exists()
    finally:
        lock.release()
    assert clear_run_files(tmp_path) == ["args.yaml"]


def test_a_filesystem_without_locks_trains_unlocked_and_removes_nothing(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    from timm_deit_distill import run_folder

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    (tmp_path / LOCK_NAME).write_text("1\n")
    (tmp_path / ".last.pth.tar.abcd1234.deit-distill.tmp").write_bytes(b"maybe someone's")
    monkeypatch.setattr(fcntl, "flock", no_locks)  # what flock answers on NFS without a lock daemon
    assert run_folder.held_lock(tmp_path) is None
    lock = run_folder.RunLock.acquire(tmp_path)
    assert not lock.held and lock.remove_partial_files() == (0, 0)
    assert "Cannot lock" in caplog.text and (tmp_path / ".last.pth.tar.abcd1234.deit-distill.tmp").exists()


@pytest.mark.slow
def test_resume_removes_the_partial_files_a_killed_save_left(finished_run, data, tmp_path, caplog):
    run = copy_run(finished_run, tmp_path / "run")
    (run / ".last.pth.tar.k1ll3d00.deit-distill.tmp").write_bytes(b"\0" * 1500)  # killed while saving
    (run / ".checkpoint-2.pth.tar.abcd1234.deit-distill.tmp").write_bytes(b"\0" * 500)  # killed while linking
    (run / ".notes.txt.abcd1234.tmp").write_bytes(b"not the trainer's")
    caplog.set_level(logging.INFO)
    assert train.main(base_argv(data, "--epochs", "3", "--resume", str(run / "last.pth.tar"))) == 0
    assert "Removed 2 partial file(s) (2.0 kB) that a killed save left in" in caplog.text
    assert not (run / ".last.pth.tar.k1ll3d00.deit-distill.tmp").exists() and not (run / ".checkpoint-2.pth.tar.abcd1234.deit-distill.tmp").exists()
    assert (run / ".notes.txt.abcd1234.tmp").read_bytes() == b"not the trainer's"
    assert load(run / "last.pth.tar")["epoch"] == 2


@pytest.mark.slow
def test_a_second_trainer_into_a_folder_a_live_trainer_writes_is_refused(data, tmp_path, capsys):
    argv = base_argv(data, "--epochs", "200", "--output", str(tmp_path), "--experiment", "live")
    live = subprocess.Popen([sys.executable, "-m", "timm_deit_distill", "train", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    last = tmp_path / "live" / "last.pth.tar"
    try:
        deadline = time.time() + 300
        while not last.exists():
            assert live.poll() is None and time.time() < deadline, "the live run ended before its first checkpoint"
            time.sleep(0.05)
        err = refused(base_argv(data, "--epochs", "200", "--resume", str(last)), capsys)
        assert f"{tmp_path / 'live'} is in use: another deit-distill train (pid {live.pid})" in err
        err = refused(argv, capsys)  # a fresh run into it: the same answer
        assert "is in use" in err
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    # The kernel dropped the dead trainer's lock: its run resumes.
    epoch = load(last)["epoch"]
    assert train.main(base_argv(data, "--epochs", str(epoch + 2), "--resume", str(last))) == 0
    assert load(last)["epoch"] == epoch + 1


@pytest.mark.slow
def test_every_process_of_a_torchrun_refuses_together(finished_run, data, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
         "timm_deit_distill", "train", *base_argv(data, "--epochs", "2", "-b", "8", "--output", str(tmp_path),
                                               "--experiment", "run")],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("deit-distill train: error:")]
    assert len(lines) == 1 and f"{run} already holds a run" in lines[0], proc.stderr[-3000:]
    assert "exitcode  : 2" in proc.stderr  # every worker exited with the refusal's code, none hung or crashed
    assert not re.search(r'File ".*timm_deit_distill', proc.stderr)  # torchrun's own report aside, no traceback
    assert snapshot(run) == before


# --- the demo's run manager ------------------------------------------------------------------------------------

def _demo_options(data, run_dir, epochs):
    return keywords(base_argv(data, "--epochs", str(epochs), "--output", str(run_dir.parent), "--experiment",
                              run_dir.name))


@pytest.mark.slow
def test_demo_starts_over_a_run_killed_before_its_first_checkpoint(data, tmp_path):
    run_dir = tmp_path / "runs" / "none-seed0"
    run_dir.mkdir(parents=True)
    options = _demo_options(data, run_dir, 1)
    (run_dir / "demo_run.json").write_text(json.dumps({"options": options}))
    (run_dir / "args.yaml").write_text("left: by the killed run\n")
    (run_dir / "summary.csv").write_text("epoch,train_loss\n0,9.9\n")
    (run_dir / ".tmp.pth.tar.abcd1234.deit-distill.tmp").write_bytes(b"half")
    last = demo.run_training(options, run_dir, 1, "student none-seed0")
    assert load(last)["epoch"] == 0
    assert "left" not in (run_dir / "args.yaml").read_text()
    assert [r["train_loss"] for r in read_summary(run_dir / "summary.csv")] != [9.9]
    assert json.loads((run_dir / "demo_run.json").read_text()) == {"options": options}
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_demo_resumes_a_killed_run_in_its_folder(finished_run, data, tmp_path):
    run_dir = copy_run(finished_run, tmp_path / "runs" / "hard-seed0")
    options = _demo_options(data, run_dir, 3)
    (run_dir / "demo_run.json").write_text(json.dumps({"options": options}))
    last = demo.run_training(options, run_dir, 3, "student hard-seed0")
    assert load(last)["epoch"] == 2
    assert [r["epoch"] for r in read_summary(run_dir / "summary.csv")] == [0, 1, 2]
    assert re.fullmatch(r"\d+\n", (run_dir / LOCK_NAME).read_text())  # the trainer locked the folder it trained in


@pytest.mark.parametrize("experiment", ["ABSOLUTE", "../escaped", "a/../../b", "."])
def test_an_experiment_that_is_not_a_name_under_output_is_refused(experiment, data, tmp_path, capsys):
    """An absolute --experiment made os.path.join drop --output without a word; '..' climbed out of it."""
    if experiment == "ABSOLUTE":
        experiment = str(tmp_path / "elsewhere")
    err = refused(base_argv(data, "--output", str(tmp_path / "runs"), "--experiment", experiment), capsys)
    assert f"--experiment {experiment} is not a folder name under --output {tmp_path / 'runs'}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # a name with a sub-folder stays under --output, as in timm
    from timm_deit_distill.run_folder import plan_run_folder

    assert plan_run_folder(output=str(tmp_path / "runs"), experiment="group/a").path == str(tmp_path / "runs" / "group" / "a")


@pytest.mark.slow
def test_the_demo_reuses_a_run_killed_between_its_last_checkpoint_and_its_summary(finished_run, data, tmp_path):
    """The trainer refuses a resume with nothing left to train; the demo must see such a run as finished."""
    run_dir = copy_run(finished_run, tmp_path / "runs" / "none-seed0")
    options = _demo_options(data, run_dir, 2)
    (run_dir / "demo_run.json").write_text(json.dumps({"options": options}))
    summary = run_dir / "summary.csv"
    summary.write_text("".join(summary.read_text().splitlines(keepends=True)[:-1]))  # the last row not yet written
    before = (run_dir / "last.pth.tar").read_bytes()
    assert demo.run_training(options, run_dir, 2, "student none-seed0") == run_dir / "last.pth.tar"
    assert (run_dir / "last.pth.tar").read_bytes() == before


HOLD_AND_FORK = """
import os, sys, time
from timm_deit_distill.run_folder import RunLock
lock = RunLock.acquire(sys.argv[1])  # records this process's pid, as a trainer does
worker = os.fork()  # like a DataLoader worker: forked while the folder is locked
if worker == 0:
    time.sleep(60)
    os._exit(0)
print(os.getpid(), worker, flush=True)
time.sleep(60)
"""


def test_a_killed_trainers_forked_workers_do_not_keep_its_folder_locked(tmp_path):
    """A trainer killed with SIGKILL leaves its data loader workers running for a moment; they must not hold its
    folder's lock (they used to, until they noticed, and a resume right after the kill was refused)."""
    from timm_deit_distill.run_folder import RunFolderError, RunLock, held_lock

    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    pid, worker = map(int, holder.stdout.readline().split())
    try:
        with pytest.raises(RunFolderError, match=rf"another deit-distill train \(pid {pid}\) is training there now"):
            RunLock.acquire(tmp_path)  # alive: refused, naming it
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(worker, 0)  # the worker still runs
        assert held_lock(tmp_path) is None
        lock = RunLock.acquire(tmp_path)  # at once: no retry needed
        assert lock.held and (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        lock.release()
    finally:
        holder.kill()
        holder.wait()
        os.kill(worker, signal.SIGKILL)


HOLD = """
import sys, time
from timm_deit_distill.run_folder import RunLock
lock = RunLock.acquire(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_a_lock_whose_recorded_holder_has_ended_says_to_retry(tmp_path):
    """When the pid the lock file records is gone but some process still holds the lock (one the holder started,
    forked where filelock's at-fork hook cannot see it), the refusal must not call the dead pid a live trainer."""
    from timm_deit_distill.cache.build import _BUILD_BUSY
    from timm_deit_distill.run_folder import FolderPlan, RunFolderError, RunLock, check_run_folder

    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        (tmp_path / LOCK_NAME).write_text(f"{dead}\n")  # the recorded holder, gone
        ended = (rf"the deit-distill train that held it \(pid {dead}\) has ended, but processes it started \(e.g. "
                 r"its data loader workers\) still hold the lock; retry in a few seconds\.$")
        with pytest.raises(RunFolderError, match=ended):
            RunLock.acquire(tmp_path)
        with pytest.raises(RunFolderError, match=ended):
            check_run_folder(str(tmp_path), FolderPlan(root=str(tmp_path.parent), path=str(tmp_path), continuing=False))
        with pytest.raises(RunFolderError, match=rf"the deit-distill cache build that held it \(pid {dead}\) has ended"):
            RunLock.acquire(tmp_path, busy=_BUILD_BUSY, command="deit-distill cache build")
    finally:
        holder.kill()
        holder.wait()
    RunLock.acquire(tmp_path).release()  # the holder's end released it
