"""Atomic file writes and file hashing: a crash or kill leaves either the old file or the new one, never half of one.

Write into a temporary sibling, flush it to disk, then ``os.replace`` it over the target (atomic on
POSIX and Windows within one filesystem).

The temporaries are named ``.{name}.{8 random characters}.deit-distill.tmp`` (:func:`temp_pattern`), a name
no user file has by accident: a later process may remove the ones a killed write left (see
:mod:`~timm_deit_distill.run_folder`), and must never take a user's ``.notes.txt.backup.tmp`` for one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import DiskFullError

__all__ = ["atomic_path", "atomic_write_text", "atomic_link_or_copy", "sha256_file", "TEMP_SUFFIX", "temp_pattern",
           "temp_sibling", "unwritable_reason", "next_free_name", "format_size", "disk_full_errno", "disk_full",
           "DiskFullError"]

#: The suffix of every temporary file this package writes; with the random part, what marks it as ours.
TEMP_SUFFIX = ".deit-distill.tmp"
_RANDOM = r"[a-z0-9_]{8}"  # tempfile's random part: 8 characters of its alphabet


def temp_pattern(names: str) -> re.Pattern[str]:
    """The names of this package's temporaries of files whose names match regex ``names``."""
    return re.compile(rf"^\.(?:{names})\.{_RANDOM}{re.escape(TEMP_SUFFIX)}$")


def temp_sibling(path: str | os.PathLike[str]) -> str:
    """Create an empty temporary file next to ``path``, named as :func:`temp_pattern` recognises; its path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    return tmp


def unwritable_reason(folder: str | os.PathLike[str]) -> str | None:
    """Why no file can be written in the existing ``folder`` (the OS's words), or None when one can.

    Asked of the filesystem itself, by creating and removing one of this package's temporaries:
    ``os.access`` answers yes to root for a read-only mount or /proc, where every write then fails.
    """
    try:
        os.unlink(temp_sibling(Path(folder) / "write-probe"))
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def format_size(n: float) -> str:
    """Bytes as a short human-readable size (1000-based, as ``ls -h --si``)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


# ENOSPC: the filesystem is full; EDQUOT: the user's quota is (Linux, macOS; absent on Windows).
_FULL = tuple(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)


def disk_full_errno(error: BaseException) -> int | None:
    """``ENOSPC`` or ``EDQUOT`` when ``error``, or an error it was raised from or while handling, says the disk
    or the quota is full; None otherwise.

    Each writer says it its own way: Python's file objects raise ``OSError(ENOSPC)``; torch's zip writer, given
    such a file, raises ``RuntimeError('[enforce fail at inline_container.cc:...] unexpected pos ...')`` while
    handling it; safetensors' Rust writer raises ``SafetensorError('... (os error 28)')``.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL:
            return current.errno
        text = str(current)
        for code in _FULL:
            if f"(os error {code})" in text:
                return code
        current = current.__cause__ or current.__context__
    return None


def disk_full(folder: str | os.PathLike[str], writing: str, needed: int | None,
              code: int = errno.ENOSPC) -> DiskFullError:
    """The one-line error for a write of ``writing`` into ``folder`` that found no space: the bytes it needed
    (``needed``, an estimate; None: unknown) and the bytes free there now (read after its temporary was removed)."""
    import shutil

    try:
        free: int | None = shutil.disk_usage(folder).free
    except OSError:
        free = None
    what = "the disk quota is exceeded" if code != errno.ENOSPC else "the disk is full"
    need = f"needs about {needed:,} bytes ({format_size(needed)})" if needed else "needs more space"
    left = f"{free:,} bytes ({format_size(free)}) are free there" if free is not None else "the free space is unknown"
    return DiskFullError(f"{what}: writing {writing} in {folder} {need}, and {left}.", folder=str(folder),
                         needed=needed, free=free, code=code)


def next_free_name(path: str | os.PathLike[str]) -> Path:
    """``path`` if nothing is there, else ``stem-1.suffix``, ``stem-2.suffix``, ...: the first free name."""
    path = Path(path)
    stem, suffix = (path.name[: -len(path.suffix)], path.suffix) if path.suffix else (path.name, "")
    candidate, i = path, 0
    while os.path.lexists(candidate):
        i += 1
        candidate = path.with_name(f"{stem}-{i}{suffix}")
    return candidate


def _place(tmp: str, path: Path) -> None:
    """Give ``tmp`` the name ``path`` without replacing a file there: FileExistsError when one exists.

    A hard link fails atomically on an existing name; where links are not supported the existence check and
    the rename are two steps (a file created between them would be replaced).
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _umask() -> int:
    """The process's current umask, read without changing it where the OS allows.

    Read at every call, not cached: a process (or a test) may change its umask after the first write.
    ``os.umask`` can only read the mask by setting it, which for a moment would give files another thread
    creates mode 0o666; Linux reports the mask in /proc/self/status, so that window is avoided there.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, replace: bool = True, size: int | None = None) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    ``replace=False``: a file already at ``path`` is never replaced; ``FileExistsError`` instead (the
    temporary is removed). A full disk or quota, however the writer reports it, becomes
    :class:`~timm_deit_distill.errors.DiskFullError` naming the folder, the bytes needed (``size``, the
    writer's estimate; else the size of the file being replaced) and the bytes free.
    """
    path = Path(path)
    try:
        tmp = temp_sibling(path)
    except OSError as e:
        _raise_if_disk_full(e, path, size)
        raise
    try:
        yield tmp
        # The mode a plain open() would give, set AFTER the writer: mkstemp creates 0o600 (which would hide
        # checkpoints and shared caches from other users and jobs), and a writer may re-create the file
        # (safetensors' save_file does, with 0o600), so a chmod before it would not last.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:  # durable before it becomes visible under the real name
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _place(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _raise_if_disk_full(e, path, size)
        raise


def _raise_if_disk_full(error: BaseException, path: Path, size: int | None, *, like: Path | None = None) -> None:
    """Raise the :class:`DiskFullError` that ``error`` amounts to (from it), if it says the disk is full and is
    not one already. ``size``: the bytes the write needed, else the size of ``like`` (default: ``path``)."""
    code = disk_full_errno(error)
    if code is None or isinstance(error, DiskFullError):
        return
    if size is None:
        with contextlib.suppress(OSError):
            size = (like or path).stat().st_size or None
    raise disk_full(path.parent, path.name, size, code) from error


def atomic_write_text(path: str | os.PathLike[str], text: str, *, replace: bool = True) -> None:
    """Write ``text`` to ``path`` atomically (``replace=False``: FileExistsError rather than replace a file)."""
    size = len(text.encode("utf-8"))
    with atomic_path(path, replace=replace, size=size) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Make ``dst`` a hard link to (or, where links fail, a copy of) ``src``, replacing ``dst`` atomically."""
    import shutil

    dst = Path(dst)
    tmp = temp_sibling(dst)
    os.unlink(tmp)  # os.link needs a free name
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _raise_if_disk_full(e, dst, None, like=Path(src))
        raise


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes (the Hub's LFS object id for weight files)."""
    from huggingface_hub.utils.sha import sha_fileobj

    with open(path, "rb") as f:
        return sha_fileobj(f).hex()
