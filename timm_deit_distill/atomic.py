"""Atomic file writes and file hashing: a crash or kill leaves either the old file or the new one, never half of one.

Write into a temporary sibling, flush it to disk, then ``os.replace`` it over the target (atomic on
POSIX and Windows within one filesystem).

The temporaries are named ``.{name}.{8 random characters}.deit-distill.tmp`` (:func:`temp_pattern`), a name
no user file has by accident: a later process may remove the ones a killed write left (see
:mod:`~timm_deit_distill.run_folder`), and must never take a user's ``.notes.txt.backup.tmp`` for one.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "atomic_link_or_copy", "sha256_file", "TEMP_SUFFIX", "temp_pattern",
           "temp_sibling", "unwritable_reason", "next_free_name"]

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
def atomic_path(path: str | os.PathLike[str], *, replace: bool = True) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    ``replace=False``: a file already at ``path`` is never replaced; ``FileExistsError`` instead (the
    temporary is removed).
    """
    path = Path(path)
    tmp = temp_sibling(path)
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str, *, replace: bool = True) -> None:
    """Write ``text`` to ``path`` atomically (``replace=False``: FileExistsError rather than replace a file)."""
    with atomic_path(path, replace=replace) as tmp, open(tmp, "w", encoding="utf-8") as f:
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes (the Hub's LFS object id for weight files)."""
    from huggingface_hub.utils.sha import sha_fileobj

    with open(path, "rb") as f:
        return sha_fileobj(f).hex()
