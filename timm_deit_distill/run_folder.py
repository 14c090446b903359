"""The trainer's run folder: one run per folder, claimed only once every check has passed, never overwritten.

A run folder holds the files ``deit-distill train`` writes (:data:`RUN_FILES` and ``checkpoint-N.pth.tar``)
and a lock file, ``.deit-distill.lock``, that the writing process holds locked for as long as it trains
(``filelock.FileLock``: ``flock`` on POSIX, ``LockFileEx`` on Windows), its pid written inside. The lock is
what proves, to a later process, that nobody is writing here any more:

* a second trainer into a folder that a live process trains in is refused;
* partial files a killed save left behind (the hidden temporaries of :func:`atomic.atomic_path` for
  the trainer's own file names) are removed, and only while the lock is held, so no live writer can
  own them.

The operating system releases the lock when the process ends, however it ends (``SIGKILL`` included), so a
lock file never has to be cleaned up; filelock closes the lock's descriptor in forked children (data loader
workers), so a killed trainer's workers do not keep its folder locked. Where the filesystem has no locks,
nothing is locked and no partial file is removed, with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from .atomic import format_size, temp_pattern
from .errors import RunFolderError

__all__ = [
    "RunFolderError", "RUN_FILES", "LOCK_NAME", "RunLock", "run_files", "checkpoint_epochs", "partial_files",
    "held_lock", "create_unique", "clear_run_files", "format_size", "FolderPlan", "plan_run_folder",
    "check_run_folder", "claim_run_folder", "DEFAULT_OUTPUT", "partial_pattern", "is_inside", "output_inside_data",
    "resume_command",
]

DEFAULT_OUTPUT = "./output/train"  # timm train.py's default --output

_logger = logging.getLogger(__name__)

LOCK_NAME = ".deit-distill.lock"
# Every name the trainer writes (timm's CheckpointSaver saves to tmp.pth.tar, then renames it to last).
RUN_FILES = ("args.yaml", "summary.csv", "curves.png", "last.pth.tar", "model_best.pth.tar", "tmp.pth.tar")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)\.pth\.tar$")
_TRAINER_NAME = "|".join([*(re.escape(n) for n in RUN_FILES), r"checkpoint-\d+\.pth\.tar"])


_TRAINER_BUSY = ("{folder} is in use: another deit-distill train{holder} is training there now. Wait for it to "
                 "end (or stop it), then --resume its last.pth.tar; or pick another --experiment.")
# When the process whose pid the lock file records is gone but the lock is still held: a process it started
# shares the locked file (a fork that filelock's at-fork hook did not see, e.g. one made from C).
_ENDED_BUSY = ("{folder} is in use: the {command} that held it{holder} has ended, but processes it started (e.g. its "
               "data loader workers) still hold the lock; retry in a few seconds.")


def partial_pattern(names: str) -> re.Pattern[str]:
    """The names :func:`atomic.atomic_path` gives the temporaries of files whose names match regex ``names``
    (``.{name}.{8 random characters}.deit-distill.tmp``: nothing a user names a file by accident)."""
    return temp_pattern(names)


_PARTIAL = partial_pattern(_TRAINER_NAME)


def run_files(folder: str | os.PathLike[str]) -> list[str]:
    """Names of the trainer's (complete) files in ``folder``, sorted; empty when it holds no run."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if n in RUN_FILES or _CHECKPOINT.match(n))


def checkpoint_epochs(folder: str | os.PathLike[str]) -> list[int]:
    """Epochs of the numbered checkpoints (``checkpoint-N.pth.tar``) in ``folder``, ascending."""
    return sorted(int(m.group(1)) for n in run_files(folder) if (m := _CHECKPOINT.match(n)))


def partial_files(folder: str | os.PathLike[str], pattern: re.Pattern[str] | None = None) -> list[Path]:
    """Temporaries of the trainer's file names (or those ``pattern`` matches) an interrupted write left."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    pattern = pattern or _PARTIAL
    return [Path(folder) / n for n in sorted(names) if pattern.match(n)]


def _holder_pid(path: Path) -> int | None:
    """The pid the lock's holder wrote into the lock file (None when it cannot be read)."""
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip())
    return None


def _holder(path: Path) -> str:
    pid = _holder_pid(path)
    return f" (pid {pid})" if pid is not None else ""


def _holder_ended(path: Path) -> bool:
    """Whether the process whose pid the lock file records no longer exists (so others hold its lock)."""
    pid = _holder_pid(path)
    if pid is None or pid <= 0 or os.name == "nt":  # on Windows os.kill(pid, 0) would end the process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's process
        pass
    return False


def _busy(path: Path, folder: str | os.PathLike[str], busy: str, command: str, **fields: str) -> str:
    """The refusal for a held lock: ``busy`` when its recorded holder lives, else that the holder has ended."""
    template = _ENDED_BUSY if _holder_ended(path) else busy
    return template.format(folder=folder, holder=_holder(path), command=command, **fields)


# What flock answers on a filesystem that has no locks (NFS without a lock daemon, some FUSE mounts).
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})


def _file_lock(path: Path, *, record_pid: bool = False) -> FileLock:
    """A non-blocking lock on ``path`` that stays on disk after release; ``record_pid`` writes this process's pid
    into it on each acquire (what a refused process reads). Never falls back to a lock-less soft lock."""

    def write_pid(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())

    return FileLock(path, blocking=False, thread_local=False, preserve_lock_file=True,
                    on_acquired=write_pid if record_pid else None)


def held_lock(folder: str | os.PathLike[str]) -> Path | None:
    """``folder``'s lock file when some process holds it locked, else None.

    A folder without a lock file is not locked, and none is created to find out.
    """
    path = Path(folder) / LOCK_NAME
    if not path.is_file():
        return None
    probe = _file_lock(path)
    try:
        probe.acquire()
    except Timeout:
        return path
    except OSError:  # a filesystem without locks, a lock file this user cannot open: nothing can be told
        return None
    probe.release()
    return None


class RunLock:
    """This process's exclusive lock on a run folder, held until :meth:`release` or the process ends."""

    def __init__(self, folder: Path, lock: FileLock | None) -> None:
        self.folder = folder
        self._lock = lock

    @classmethod
    def acquire(cls, folder: str | os.PathLike[str], *, busy: str = _TRAINER_BUSY,
                command: str = "deit-distill train") -> RunLock:
        """Lock ``folder`` (which must exist) without waiting; :class:`RunFolderError` when a live process has it.

        ``busy`` is the refusal's text, with ``{folder}`` and ``{holder}`` (the holder's pid) filled in; when the
        recorded holder has ended (a process it started still holds the lock) the refusal says so, naming
        ``command``.
        """
        folder = Path(folder)
        path = folder / LOCK_NAME
        lock = _file_lock(path, record_pid=True)
        try:
            lock.acquire()
        except Timeout:
            raise RunFolderError(_busy(path, folder, busy, command)) from None
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                raise  # the lock file cannot be made or opened here: the caller says what to do
            # a filesystem without locks: train unlocked, and remove no partial file
            _logger.warning("Cannot lock %s (%s): a second trainer into it will not be refused, and partial "
                            "files of a killed save are left in place.", folder, e.strerror or e)
            return cls(folder, None)
        return cls(folder, lock)

    @property
    def held(self) -> bool:
        return self._lock is not None and self._lock.is_locked

    def remove_partial_files(self, pattern: re.Pattern[str] | None = None) -> tuple[int, int]:
        """Delete the partial files a killed save left here; returns (count, bytes).

        ``pattern`` matches the temporaries' names (default: the trainer's files'). Safe only because the
        lock is held: a live writer holds it for as long as it writes, so whatever temporaries of its file
        names are here belong to a process that is gone.
        """
        if not self.held:
            return 0, 0
        count = size = 0
        for path in partial_files(self.folder, pattern):
            with contextlib.suppress(FileNotFoundError):
                size += path.stat().st_size
                path.unlink()
                count += 1
        return count, size

    def release(self) -> None:
        """Let go of the lock (the lock file stays: it is never a sign of a run by itself)."""
        lock, self._lock = self._lock, None
        if lock is not None and lock.is_locked:
            lock.release(force=True)

    def __del__(self) -> None:  # a Run dropped without close() must not keep its folder locked
        with contextlib.suppress(Exception):  # at interpreter exit the OS releases it anyway
            self.release()


def create_unique(root: str | os.PathLike[str], name: str) -> Path:
    """Create and return a new, empty ``root/name``, or ``root/name-1``, ``-2``... when taken.

    ``os.mkdir`` either creates the folder or fails, so two runs started in the same second never
    share one (timm's ``get_outdir(inc=True)`` checks, then creates: two processes can both pass).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(10_000):
        path = root / (name if i == 0 else f"{name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunFolderError(f"{root} has no free name for {name}-N; fix: pass another --output or --experiment.")


def clear_run_files(folder: str | os.PathLike[str]) -> list[str]:
    """Delete the trainer's files (and partial files) from ``folder``, under its lock; returns the names removed.

    For a caller that owns the folder and knows its run never saved a checkpoint (the demo's run
    manager). Refused with :class:`RunFolderError` while a live trainer holds the folder.
    """
    folder = Path(folder)
    lock = RunLock.acquire(folder)
    try:
        removed = [p.name for p in partial_files(folder)]
        lock.remove_partial_files()
        for name in run_files(folder):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
                removed.append(name)
        return removed
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------------
# The trainer's rules: which folder a run writes to, and when that folder is refused


@dataclass(frozen=True)
class FolderPlan:
    """Where a run will write, decided before any work (the folder is created or taken only at the end)."""

    root: str  # --output, or timm's default
    path: str | None  # the run folder; None: a fresh dated folder, named once the input size is known
    continuing: bool  # --resume continues the run in its own folder
    resume: str | None = None
    resume_epoch: int | None = None  # the epoch the checkpoint completed
    start_epoch: int | None = None  # --start-epoch


def is_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (which need not exist) is ``folder`` or lies under it, links resolved."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, root]) == root


def output_inside_data(flag: str, path: str | os.PathLike[str], data_dir: str | None) -> str | None:
    """Why writing ``path`` would change the dataset under ``data_dir`` (one line with the fix), or None.

    A run folder inside an ImageFolder tree is read back as a class folder (its curves.png as a training
    image of that class, a new folder as a new class), and any file there is the dataset's from then on.
    """
    if not data_dir or not os.path.isdir(data_dir) or not is_inside(path, data_dir):
        return None
    return (f"{flag} {path} is inside the dataset (--data-dir {data_dir}): what is written there becomes part of "
            "the data (a run folder under a split is read as a class, its curves.png as a training image). "
            f"fix: give {flag} a folder outside {data_dir}.")


def _same_path(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _latest_saved_epoch(folder: str, resume: str, resume_epoch: int) -> int | None:
    """The latest epoch the run in ``folder`` has saved: its last.pth.tar's and its numbered checkpoints'."""
    from .checkpoint import CheckpointError, checkpoint_epoch, load_training_checkpoint

    epochs = checkpoint_epochs(folder)
    last = os.path.join(folder, "last.pth.tar")
    if os.path.isfile(last):
        if _same_path(last, resume):
            epochs.append(resume_epoch)
        else:
            with contextlib.suppress(CheckpointError):
                epochs.append(checkpoint_epoch(load_training_checkpoint(last)))
    return max(epochs, default=None)


def check_run_folder(folder: str, plan: FolderPlan, *, locked_here: bool = False) -> None:
    """Refuse ``folder`` when a live trainer holds it (unless ``locked_here``: this process does), when it
    holds another run, or, continuing a run, when resuming there would overwrite epochs it has saved."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise RunFolderError(f"the run folder {folder} is a file; fix: pick another --experiment or --output.")
    lock = None if locked_here else held_lock(folder)
    if lock is not None:
        raise RunFolderError(_busy(lock, folder, "{folder} is in use: another deit-distill train{holder} is training "
                                   "there now. Wait for it to end (or stop it), then --resume {last}; or pick another "
                                   "--experiment.", "deit-distill train", last=os.path.join(folder, "last.pth.tar")))
    if plan.continuing:
        assert plan.resume is not None and plan.resume_epoch is not None
        start = plan.start_epoch if plan.start_epoch is not None else plan.resume_epoch + 1
        latest = _latest_saved_epoch(folder, plan.resume, plan.resume_epoch)
        if latest is not None and start <= latest:
            what = (f"--start-epoch {start}" if plan.start_epoch is not None
                    else f"--resume {plan.resume} (epoch {plan.resume_epoch})")
            epochs = f"epoch {latest}" if start == latest else f"epochs {start}-{latest}"
            parent = os.path.dirname(os.path.abspath(folder))
            raise RunFolderError(
                f"{what} would continue the run in {folder} at epoch {start}, but that run has saved up to epoch "
                f"{latest}: its {epochs} (summary rows and checkpoints) would be overwritten. fix: continue in a "
                f"NEW folder with --output {parent} --experiment NEW (the run in {folder} stays intact), or "
                f"--resume {os.path.join(folder, 'last.pth.tar')} to continue it from its end.")
        return
    files = run_files(folder)
    if not files:
        return
    shown = ", ".join(files[:5]) + (", ..." if len(files) > 5 else "")
    checkpoints = [f for f in files if f.endswith(".pth.tar") and f != "tmp.pth.tar"]
    if checkpoints:
        latest_file = "last.pth.tar" if "last.pth.tar" in checkpoints else checkpoints[-1]
        raise RunFolderError(
            f"{folder} already holds a run ({shown}) and a run folder is never overwritten. To continue that run: "
            f"--resume {os.path.join(folder, latest_file)}; for a new run: another --experiment (or none, for a "
            "fresh dated folder).")
    raise RunFolderError(
        f"{folder} holds the files of a run that saved no checkpoint ({shown}), so there is nothing to resume. "
        "fix: delete that folder to reuse its name, or pick another --experiment.")


def _check_writable(path: str) -> None:
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise RunFolderError(f"cannot create the run folder {path}: {probe} is not a folder this user can write "
                             "to; fix: pass another --output.")


def _check_experiment_name(experiment: str, root: str) -> None:
    """Refuse an ``--experiment`` that is not a folder name under ``--output``: an absolute path (os.path.join
    drops ``--output`` for it, silently) or one that climbs out of it with ``..``."""
    parts = experiment.replace("\\", "/").split("/")
    if os.path.isabs(experiment) or ".." in parts or os.path.normpath(experiment) == ".":
        raise RunFolderError(
            f"--experiment {experiment} is not a folder name under --output {root}: it names the run folder inside "
            f"--output (here {os.path.join(root, '<experiment>')}). fix: give a plain name (e.g. "
            f"--experiment {_plain_name(experiment)}), and put the parent folder in --output.")


def _plain_name(experiment: str) -> str:
    name = os.path.basename(os.path.normpath(experiment))
    return name if name not in ("", ".", "..") else "run1"


def plan_run_folder(*, output: str | None, experiment: str | None, resume: str | None = None,
                    resume_epoch: int | None = None, start_epoch: int | None = None,
                    data_dir: str | None = None) -> FolderPlan:
    """Decide and check where a run writes, before any work; :class:`RunFolderError` when it cannot.

    ``resume`` without ``output``/``experiment`` continues the run in its own folder, as does an
    ``experiment`` naming that folder; ``experiment`` is ``output/experiment`` and must hold no other
    run; without it, a fresh dated folder is created by :func:`claim_run_folder`. A run folder inside
    ``data_dir`` (the dataset it reads) is refused. Reads only.
    """
    root = output or DEFAULT_OUTPUT
    if experiment:
        _check_experiment_name(experiment, root)
    resume_dir = os.path.dirname(os.path.abspath(resume)) if resume else None
    if resume_dir is not None and not output and not experiment:
        path, continuing = resume_dir, True
    elif experiment:
        path = os.path.join(root, experiment)
        continuing = resume_dir is not None and _same_path(path, resume_dir)
    else:
        path, continuing = None, False
    plan = FolderPlan(root=root, path=path, continuing=continuing, resume=resume, resume_epoch=resume_epoch,
                      start_epoch=start_epoch)
    inside = output_inside_data("--output", path or root, data_dir)
    if inside is not None:
        raise RunFolderError(inside)
    _check_writable(path or root)
    if path is not None:
        check_run_folder(path, plan)
    return plan


def resume_command(folder: str, *, world_size: int = 1, local_world_size: int | None = None) -> str:
    """The command that continues the run in ``folder`` from its ``last.pth.tar``, in that folder: its own
    ``args.yaml`` repeated with ``-c`` (resuming is checked against it) and the folder named by ``--output`` and
    ``--experiment`` (a dated run's args.yaml names no experiment, which would start a new folder). Under
    torchrun, ``local_world_size`` (processes per node) below ``world_size`` means several nodes."""
    import shlex

    q = shlex.quote
    folder = os.path.normpath(os.path.abspath(folder))
    local = world_size if local_world_size is None else local_world_size
    if world_size <= 1:
        prog = "deit-distill train"
    elif local == world_size:
        prog = f"torchrun --nproc-per-node {world_size} -m timm_deit_distill train"
    else:
        prog = f"torchrun (on its {world_size // max(local, 1)} nodes, as before) -m timm_deit_distill train"
    record = os.path.join(folder, "args.yaml")
    config = f" -c {q(record)}" if os.path.isfile(record) else ""
    return (f"{prog}{config} --resume {q(os.path.join(folder, 'last.pth.tar'))} --output "
            f"{q(os.path.dirname(folder) or '.')} --experiment {q(os.path.basename(folder))}")


def claim_run_folder(plan: FolderPlan, name: str) -> RunLock:
    """Create (or take) the planned folder and lock it for this process: the run's first write.

    ``name`` names a fresh folder (``plan.path`` None) under ``plan.root``. The folder is checked
    again under the lock, which no other trainer can hold at the same time, so one taken since
    :func:`plan_run_folder` looked is refused all the same.
    """
    try:
        if plan.path is None:
            folder = str(create_unique(plan.root, name))
        else:
            folder = plan.path
            os.makedirs(folder, exist_ok=True)
        lock = RunLock.acquire(folder)
    except OSError as e:
        raise RunFolderError(f"cannot create the run folder under {plan.root}: {e}; fix: pass another "
                             "--output.") from None
    try:
        check_run_folder(folder, plan, locked_here=True)
    except BaseException:
        lock.release()
        raise
    return lock
