"""What every command does alike: say an error in one line (and give its exit code), set up logging.

Every error the package raises on purpose derives from :class:`~timm_deit_distill.errors.DeitDistillError`,
whose class says its exit code (2: refused, 1: failed); :func:`refuse` prints it as
``deit-distill COMMAND: error: ...``, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import NoReturn

from ..errors import one_line
from ..factory.flags import TEACHER_EMA, add_either_flag

__all__ = ["ArgumentParser", "one_line", "refuse", "setup_logging", "add_either_flag", "TEACHER_EMA"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with its errors on one line: ``PROG: error: MESSAGE (see PROG --help)``, exit code 2.

    argparse prints the whole usage block (89 lines for `train`) before the error, which buries it; the
    message itself (unknown flag, invalid value, close matches, mutually exclusive flags) is kept as argparse
    words it. Subparsers made with ``add_subparsers().add_parser`` inherit this class.
    """

    def error(self, message: str) -> NoReturn:
        """Print the one-line error on stderr and exit with code 2 (argparse's code for a usage error)."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def refuse(command: str, error: BaseException, *, hint: str = "", exit_code: int | None = None,
           redact: Callable[[str], str] | None = None) -> int:
    """Print ``deit-distill COMMAND: error: MESSAGE`` on stderr and return the exit code to give.

    The message is on one line unless the error's class keeps its lines (a list of files, one per line);
    ``hint`` is appended, ``redact`` applied to the whole line. The exit code is ``exit_code`` if given, else
    the error's (a :class:`~timm_deit_distill.errors.DeitDistillError` says; anything else is a refusal, 2).
    """
    text = str(error) if getattr(error, "keeps_lines", False) else one_line(error)
    line = f"deit-distill {command}: error: {text}{hint}"
    print(redact(line) if redact is not None else line, file=sys.stderr)
    return exit_code if exit_code is not None else int(getattr(error, "exit_code", 2))


def setup_logging() -> None:
    """Plain INFO lines on stdout unless the application already configured logging (train and the demo)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    # timm's saver lists every retained checkpoint after each save; one line per epoch is enough here.
    logging.getLogger("timm.utils.checkpoint_saver").setLevel(logging.WARNING)
