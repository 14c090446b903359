"""Every error this package raises on purpose, under one base: :class:`DeitDistillError`.

A command reports any of them in one line (``deit-distill <command>: error: ...``, no traceback) and exits
with the error's :attr:`~DeitDistillError.exit_code`: 2 for a refusal (the input cannot work; the message
names the problem and the fix, and nothing was written before it), 1 for a failure that is no input's fault
(a loss that diverged, a full disk, a Hub whose files do not match its own records, a demo step that failed).

Each class also keeps the builtin base it had before the package had one hierarchy (``ValueError`` for the
refusals, ``OSError``, ``ConnectionError``, ``RuntimeError``), so ``except ValueError:`` and the like, written
against the earlier classes, keep catching them. The modules that raise them re-export them, so
``from timm_deit_distill.teacher import TeacherError`` keeps working.
"""

from __future__ import annotations

import errno
import re
from typing import ClassVar

__all__ = [
    "one_line", "DeitDistillError", "UsageError", "DataError", "CheckpointError", "TeacherError", "CacheError",
    "CacheMismatch", "RunFolderError", "OutputExistsError", "HubExportError", "HubAuthError", "HubIntegrityError",
    "HubConnectionError", "NonFiniteLoss", "DemoError", "DiskFullError",
]


class DeitDistillError(Exception):
    """The base of every error this package raises on purpose; its message names the problem and the fix."""

    #: The process exit code a command gives for it: 2 refused (bad input), 1 failed (no input's fault).
    exit_code: ClassVar[int] = 2
    #: Whether a command prints the message as it is (a list, one item per line) instead of on one line.
    keeps_lines: ClassVar[bool] = False


class UsageError(DeitDistillError, ValueError):
    """A setting that cannot work; the message names the problem and the fix. Exit code 2, no traceback."""


class DataError(DeitDistillError, ValueError):
    """A problem with the data or the data settings, with a message that names the fix."""


class CheckpointError(DeitDistillError, ValueError):
    """A checkpoint that cannot be used as asked; the message names the file, what is wrong and the fix."""


class TeacherError(DeitDistillError, ValueError):
    """A teacher that cannot teach this student: wrong classes, an unknown source, weights that do not fit.

    A checkpoint file that cannot be read, or holds raw and EMA weights with no choice made, raises
    :class:`CheckpointError` instead (the package's one checkpoint reader).
    """


class CacheError(DeitDistillError, ValueError):
    """A teacher target cache that cannot be used (missing, incomplete, corrupt); the message names the fix."""


class CacheMismatch(CacheError):
    """A cache built for other settings than the training run; the message names the differing fields."""


class RunFolderError(DeitDistillError, ValueError):
    """A run folder that cannot be used as asked; the message names the folder and the ways out."""


class OutputExistsError(DeitDistillError, FileExistsError):
    """An output that would replace files already there (results, an exported or pulled folder); the message
    names them and the ways out (another path, or the overwrite option). Nothing was written."""


class HubExportError(DeitDistillError, ValueError):
    """The checkpoint or model cannot be exported as asked; the message names the fix."""


class HubAuthError(DeitDistillError, RuntimeError):
    """No Hugging Face token was found for an operation that needs one."""


class HubIntegrityError(DeitDistillError, OSError):
    """A downloaded file does not match the checksum the Hub lists for it (the file is removed from the cache).

    The Hub's own files disagree with its records: a failure, not a refusal (exit code 1); the message lists
    every such file, one per line.
    """

    exit_code = 1
    keeps_lines = True


class HubConnectionError(DeitDistillError, ConnectionError):
    """The Hub could not be reached (refused, timed out, unknown host, unusable endpoint URL), or a push was
    asked for with ``HF_HUB_OFFLINE`` set. The message names the endpoint and what to check."""


class NonFiniteLoss(DeitDistillError, RuntimeError):
    """The loss became NaN or infinite; training stops without writing anything from that epoch (exit code 1)."""

    exit_code = 1


class DemoError(DeitDistillError, RuntimeError):
    """A step of the demo failed; the message says which, with the step's own output (exit code 1)."""

    exit_code = 1
    keeps_lines = True


class DiskFullError(DeitDistillError, OSError):
    """A write found the disk (or the user's quota) full; the message names the folder, the bytes the file needed
    and the bytes free. The file's temporary was removed and every file written before is intact (exit code 1).

    ``errno`` is ``ENOSPC`` (or ``EDQUOT``), as the OSError it replaces had; ``folder``, ``needed`` (an estimate,
    None when unknown) and ``free`` (None when it could not be read) give the figures of the message.
    """

    exit_code = 1

    def __init__(self, message: str, *, folder: str | None = None, needed: int | None = None,
                 free: int | None = None, code: int = errno.ENOSPC) -> None:
        super().__init__(message)
        self.errno = code
        self.folder, self.needed, self.free = folder, needed, free


def one_line(error: BaseException) -> str:
    """An error's message on one line; for one a DataLoader worker re-raised, the original message.

    torch re-raises a worker's exception as the same type with "Caught X in DataLoader worker process N.
    Original Traceback ..." as its message; the original message is its last line, after "module.X: ".
    """
    text = str(error)
    if "Original Traceback" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        last = lines[-1].strip() if lines else text
        text = re.sub(r"^[A-Za-z_][\w.]*: ", "", last)
    return " ".join(text.split())
