"""Small argparse helpers the options share with the commands (imported by `deit-distill push`, which parses
before it loads anything heavy): an either/or flag pair, and the teacher checkpoint's raw/EMA choice."""

from __future__ import annotations

from typing import Any

__all__ = ["TEACHER_EMA", "add_either_flag"]

# (flag, help) of the raw/EMA choice for a teacher checkpoint, in every command that takes one
TEACHER_EMA = (("--teacher-ema", "use the EMA weights of a teacher checkpoint that holds both"),
               ("--no-teacher-ema", "use the raw weights of a teacher checkpoint that holds both"))


def add_either_flag(group: Any, dest: str, *, yes: tuple[str, str], no: tuple[str, str], default: Any = None) -> None:
    """Two mutually exclusive flags, ``yes`` and ``no`` (each ``(flag, help)``), setting ``dest`` to True or
    False; neither given leaves ``default`` (None: no choice made, e.g. between a checkpoint's raw and EMA
    weights, which is refused where it matters)."""
    pair = group.add_mutually_exclusive_group()
    pair.add_argument(yes[0], dest=dest, action="store_const", const=True, default=default, help=yes[1])
    pair.add_argument(no[0], dest=dest, action="store_const", const=False, default=default, help=no[1])
