"""A stop by signal: Ctrl-C (SIGINT) or a scheduler's SIGTERM ends `train`, `cache build`, `eval` and `demo` in one
line saying where it stopped and the command that goes on from there, with exit code 130 / 143, no traceback
(the loader workers' included), no temporary file left and the lock released; the printed command works.

The commands run in subprocesses of their own session, as a terminal's foreground job; a hook
(tests/stop_hooks/sitecustomize.py) pauses each at a known point until the signal has reached it, so where the
stop lands never depends on the machine's speed.
"""

from __future__ import annotations

import os
import pickle
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from train_fixtures import FAST, STUDENT, digits, load, teacher_checkpoint

import timm_deit_distill
from timm_deit_distill.run_folder import held_lock

HOOKS = Path(__file__).parent / "stop_hooks"
CLI = [sys.executable, "-m", "timm_deit_distill"]


def _env(pause: str | None = None) -> dict[str, str]:
    root = str(Path(timm_deit_distill.__file__).resolve().parents[1])  # this checkout's package, as in-process
    paths = [str(HOOKS), root, os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    env.pop("DEIT_DISTILL_TEST_PAUSE", None)
    if pause:
        env["DEIT_DISTILL_TEST_PAUSE"] = pause
    return env


def _stop(argv: list[str], pause: str, signum: int, *, group: bool = True, paused: int = 1,
          timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``argv`` in a session of its own; once ``paused`` processes have paused, send ``signum`` to the whole
    group (a terminal's Ctrl-C, a scheduler's SIGTERM to a job) or to the command's process alone (a scheduler
    that signals its main process)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(pause),
                            start_new_session=True)
    out: list[str] = []
    err: list[str] = []
    ready = threading.Event()

    def read(stream, lines):
        for line in stream:
            lines.append(line)
            if sum(x.startswith("PAUSED ") for x in out) >= paused:
                ready.set()
        ready.set()  # the command ended without pausing: the assertions below say how

    readers = [threading.Thread(target=read, args=(proc.stdout, out)),
               threading.Thread(target=read, args=(proc.stderr, err))]
    for reader in readers:
        reader.start()
    try:
        assert ready.wait(timeout), "the command never paused"
        if proc.poll() is None:
            os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for reader in readers:
            reader.join(10)
    assert any(x.startswith("PAUSED ") for x in out), "".join(out + err)[-3000:]
    return subprocess.CompletedProcess(argv, proc.returncode, "".join(out), "".join(err))


def _one_line(result: subprocess.CompletedProcess, code: int, start: str, *, logs_on_stderr: bool = False) -> str:
    """The command's one line, checked: the exit code, no traceback, how it starts, and nothing else on stderr
    (but for the log lines of a command that logs there, all before it)."""
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    lines = result.stderr.splitlines()
    ours = [line for line in lines if line.startswith("deit-distill")]
    assert len(ours) == 1 and lines[-1] == ours[0], result.stderr
    assert logs_on_stderr or len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, result.stderr
    assert ours[0].startswith(start), ours[0]
    return ours[0]


def _no_debris(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or ".staging-" in p.name]
    assert not left, left
    assert held_lock(folder) is None  # released: the next command may take the folder


def _rerun(command: str, **kwargs) -> subprocess.CompletedProcess:
    """The printed command, run as printed (``deit-distill`` and ``torchrun`` as this interpreter's modules)."""
    words = shlex.split(command)
    if words[0] == "deit-distill":
        words = [*CLI, *words[1:]]
    elif words[0] == "torchrun":
        words = [sys.executable, "-m", "torch.distributed.run", "--standalone", *words[1:]]
    result = subprocess.run(words, capture_output=True, text=True, env=_env(), timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stops")
    return {"digits": digits(root / "digits", train_per_class=4),  # 40 images: 5 steps of 8 an epoch
            "teacher": teacher_checkpoint(root / "teacher.pth")}


def _train_argv(data, out: Path, *extra: str) -> list[str]:
    return [*CLI, "train", "--data-dir", str(data["digits"]), *STUDENT, *FAST, "-b", "8", "--workers", "2",
            "--epochs", "2", "--log-interval", "1", "--output", str(out), *extra]


# ---- train ---------------------------------------------------------------------------------------------------

@pytest.mark.slow  # a command stopped, then the printed command run: tens of seconds
def test_ctrl_c_mid_epoch_says_where_it_stopped_and_the_printed_command_resumes_the_run(data, tmp_path):
    """Ctrl-C reaches every process of the terminal's group, loader workers included: it was a 28-line
    KeyboardInterrupt traceback; now one line naming the epoch, the step and the checkpoint kept, and a resume
    command that works."""
    folder = tmp_path / "run"
    stopped = _stop(_train_argv(data, tmp_path, "--experiment", "run"), "train:1:2", signal.SIGINT)
    line = _one_line(stopped, 130, f"deit-distill train: stopped by SIGINT in epoch 1 at step 2/5; the last "
                                   f"checkpoint is kept: {folder / 'last.pth.tar'} (epoch 0). Resume with: ")
    _no_debris(folder)
    assert load(folder / "last.pth.tar")["epoch"] == 0
    resumed = _rerun(line.split("Resume with: ")[1])
    assert f"Resumed from {folder / 'last.pth.tar'} at epoch 1" in resumed.stdout
    assert load(folder / "last.pth.tar")["epoch"] == 1


def test_sigterm_while_the_epochs_files_are_written_finishes_them_then_stops(data, tmp_path):
    """SIGTERM used to end the process where it stood, leaving `.curves.png.*.tmp`: the epoch's checkpoint,
    summary and curves are now finished first, and the run stops with them kept."""
    from PIL import Image

    folder = tmp_path / "run"
    stopped = _stop(_train_argv(data, tmp_path, "--experiment", "run"), "plot", signal.SIGTERM)
    _one_line(stopped, 143, f"deit-distill train: stopped by SIGTERM in epoch 0 after its 5 steps; the last "
                            f"checkpoint is kept: {folder / 'last.pth.tar'} (epoch 0). Resume with: ")
    _no_debris(folder)
    Image.open(folder / "curves.png").verify()  # whole
    assert load(folder / "last.pth.tar")["epoch"] == 0
    assert len((folder / "summary.csv").read_text().splitlines()) == 2  # header and epoch 0


@pytest.mark.slow  # a command stopped, then the printed command run: tens of seconds
def test_a_stop_before_the_first_checkpoint_removes_the_runs_folder_so_the_same_command_starts_again(data, tmp_path):
    """Nothing to resume before the first checkpoint: the run's own folder is removed (it held only its first files,
    and a rerun into it would be refused), so rerunning the same command starts the run. The signal goes to the
    trainer alone, as some schedulers send it: the loader workers are stopped by the trainer."""
    folder = tmp_path / "run"
    argv = _train_argv(data, tmp_path, "--experiment", "run", "--epochs", "1")
    stopped = _stop(argv, "train:0:2", signal.SIGTERM, group=False)
    _one_line(stopped, 143, f"deit-distill train: stopped by SIGTERM in epoch 0 at step 2/5, before its first "
                            f"checkpoint: nothing to resume, and its folder {folder} is removed. Rerun the same "
                            "command to start again.")
    assert not folder.exists()
    _rerun(shlex.join(["deit-distill", *argv[len(CLI):]]))
    assert load(folder / "last.pth.tar")["epoch"] == 0


@pytest.mark.slow
def test_under_torchrun_every_process_stops_and_only_rank_0_speaks(data, tmp_path):
    """torchrun gives the terminal's Ctrl-C to each process (and passes it on once more): one line from rank 0,
    none from the others, no traceback of the trainer's (torchrun logs its own signal handling); the printed
    torchrun command resumes the run."""
    folder = tmp_path / "run"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "timm_deit_distill", "train", *_train_argv(data, tmp_path, "--experiment", "run", "-b", "4")[len(CLI) + 1:]]
    stopped = _stop(argv, "train:1:2", signal.SIGINT, paused=2)
    ours = [line for line in stopped.stderr.splitlines() if line.startswith("deit-distill")]
    assert len(ours) == 1, stopped.stderr
    assert ours[0].startswith(f"deit-distill train: stopped by SIGINT in epoch 1 at step 2/5; the last checkpoint is "
                              f"kept: {folder / 'last.pth.tar'} (epoch 0). Resume with: torchrun --nproc-per-node 2 "
                              "-m timm_deit_distill train -c "), ours[0]
    assert "timm_deit_distill" not in "".join(line for line in stopped.stderr.splitlines() if 'File "' in line)
    assert "KeyboardInterrupt" not in stopped.stderr and "DataLoader worker" not in stopped.stderr
    _no_debris(folder)
    _rerun(ours[0].split("Resume with: ")[1])
    assert load(folder / "last.pth.tar")["epoch"] == 1


# ---- cache build, eval ----------------------------------------------------------------------------------------

@pytest.mark.slow  # a command stopped, then the printed command run: tens of seconds
def test_a_stopped_cache_build_keeps_its_whole_epochs_and_the_printed_command_finishes_it(data, tmp_path):
    out = tmp_path / "cache"
    argv = [*CLI, "cache", "build", "--data-dir", str(data["digits"]), *STUDENT, "--distill-teacher", "resnet10t",
            "--distill-teacher-path", str(data["teacher"]), "--distill-type", "hard", "--no-teacher-check",
            "--teacher-precision", "fp32", "--deterministic-aug", "--epochs", "2", "-b", "8", "--workers", "2",
            "--store", "hard", "--out", str(out)]
    stopped = _stop(argv, "cache:1:2", signal.SIGINT)
    line = _one_line(stopped, 130, f"deit-distill cache build: stopped by SIGINT; 1 finished epoch(s) are kept in "
                                   f"{out}. Resume with (only missing epochs are computed): deit-distill cache build ",
                     logs_on_stderr=True)
    _no_debris(out)
    assert sorted(p.name for p in out.glob("epoch-*")) == ["epoch-0000.json", "epoch-0000.safetensors"]
    _rerun(line.split("are computed): ")[1])
    info = subprocess.run([*CLI, "cache", "info", str(out)], capture_output=True, text=True, env=_env())
    assert "2/2 epochs (complete)" in info.stdout, info.stdout + info.stderr


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    from timm_deit_distill.commands import train

    out = tmp_path_factory.mktemp("trained")
    assert train.main(["--data-dir", str(data["digits"]), *STUDENT, *FAST, "--epochs", "1", "--output", str(out),
                       "--experiment", "run"]) == 0
    return out / "run" / "last.pth.tar"


@pytest.mark.slow  # a command stopped, then the printed command run: tens of seconds
def test_a_stopped_eval_writes_nothing_and_the_printed_command_measures(data, trained, tmp_path):
    results = tmp_path / "eval.json"
    argv = [*CLI, "eval", "--checkpoint", str(trained), "--data-dir", str(data["digits"]), "--workers", "2",
            "--json", str(results)]
    stopped = _stop(argv, "eval", signal.SIGTERM)
    line = _one_line(stopped, 143, "deit-distill eval: stopped by SIGTERM; eval writes its files whole once it has "
                                   "measured, so nothing partial was written. Rerun the same command: deit-distill eval ")
    assert not results.exists() and not list(tmp_path.glob("*.tmp"))
    _rerun(line.split("Rerun the same command: ")[1])
    assert results.exists()


# ---- demo -----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_stopped_demo_says_so_once_and_goes_on_when_rerun(tmp_path):
    """The demo's runs train in a pool of worker processes; Ctrl-C reaches them all: one line from the demo, the
    runs stopped whole, and the same command finishes the demo from there."""
    out = tmp_path / "demo"
    argv = [*CLI, "demo", "--quick", "--jobs", "2", "--out", str(out)]
    stopped = _stop(argv, "train:1:0", signal.SIGINT)
    line = _one_line(stopped, 130, f"deit-distill demo: stopped by SIGINT; the finished runs are kept in "
                                   f"{out / 'runs'} and a stopped one resumes from its last checkpoint. Rerun the "
                                   "same command to go on: deit-distill demo --quick --jobs 2 --out ")
    for run in (out / "runs" / "quick").iterdir():
        _no_debris(run)
    finished = _rerun(line.split("to go on: ")[1])
    assert "resuming from" in finished.stdout and (out / "results.json").exists()


# ---- the mechanism, in this process ----------------------------------------------------------------------------

def test_stopped_keeps_its_signal_across_processes_and_gives_the_shells_exit_code():
    from timm_deit_distill.stops import Stopped

    for signum, code, name in ((signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")):
        stop = pickle.loads(pickle.dumps(Stopped(signum)))  # as a process pool sends it back
        assert (stop.signum, stop.exit_code, stop.name) == (signum, code, name)
        assert isinstance(stop, KeyboardInterrupt) and str(stop) == f"stopped by {name}"


def test_sigterm_inside_an_atomic_write_removes_its_temporary(tmp_path):
    """SIGTERM's default ends the process mid-write; as a Stopped it unwinds, and the write removes its temporary."""
    from timm_deit_distill.atomic import atomic_path
    from timm_deit_distill.stops import Stopped, stop_signals

    with stop_signals() as owner, pytest.raises(Stopped) as stopped:
        assert owner
        with atomic_path(tmp_path / "curves.png") as tmp:
            Path(tmp).write_bytes(b"half a plot")
            os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.signum == signal.SIGTERM and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # given back as it was


def test_later_signals_wait_for_the_first_and_a_deferred_block_finishes_before_the_stop():
    from timm_deit_distill.stops import Stopped, deferred, requested, stop_signals

    finished = []
    with stop_signals(), pytest.raises(Stopped) as stopped:
        with deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)  # a second one (torchrun passes the stop on again)
            assert requested() is not None
            finished.append("checkpoint")
        finished.append("not reached")
    assert finished == ["checkpoint"] and stopped.value.signum == signal.SIGTERM


def test_a_signal_while_an_exception_is_handled_is_raised_at_the_next_check():
    """The handler runs wherever the main thread is; inside an except block it would replace the exception being
    handled (a peer's failed collective, a skipped image), so the stop waits for the next safe point."""
    from timm_deit_distill.stops import Stopped, check, requested, stop_signals

    with stop_signals(), pytest.raises(Stopped):
        try:
            raise ValueError("an image that does not decode")
        except ValueError:
            os.kill(os.getpid(), signal.SIGINT)
            handled = True
        assert handled and requested() is not None
        check()


def test_a_command_inside_another_leaves_the_stop_to_it():
    """The demo runs train and eval in its own process: they tidy and pass the stop on; the demo speaks."""
    from timm_deit_distill.stops import Stopped, run_stoppable, stop_signals

    def inner():
        os.kill(os.getpid(), signal.SIGINT)
        return 0

    said = []
    with stop_signals() as owner:
        assert owner
        with pytest.raises(Stopped):
            run_stoppable("train", inner, lambda stop: said.append(stop) or "")
    assert said == []
    assert run_stoppable("eval", inner, lambda stop: f"stopped by {stop.name}") == 130


def test_a_ctrl_c_no_command_handles_itself_is_one_line_too(monkeypatch, capsys):
    """While a command is still starting (importing torch) or in one with nothing to tidy (models, push, pull),
    Ctrl-C was Python's KeyboardInterrupt traceback."""
    from timm_deit_distill.commands import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_models_table", interrupted)
    assert cli.main(["models"]) == 130
    err = capsys.readouterr().err
    assert err == "deit-distill models: stopped by SIGINT before it finished; rerun the same command to start it again.\n"
