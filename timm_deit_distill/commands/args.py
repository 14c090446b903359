"""`deit-distill train`'s command line: argv into options (:mod:`timm_deit_distill.factory.options` declares them
all and resolves them), ``--help``'s formatting and ``--print-config``.

Layers, lowest first: timm train.py's defaults < ``--recipe`` YAML < ``-c/--config`` YAML < the command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import yaml

from ..errors import UsageError
from ..factory.options import (
    DISTILL_KEYS,
    ON_THE_COMMAND_LINE,
    TRAIN_PROG,
    config_dict,
    dests,
    given_options,
    option_source,
    resolve_options,
    train_parser,
)
from .common import ArgumentParser

__all__ = ["HelpFormatter", "UsageError", "build_parser", "parse_args", "given_flags", "resolve_given",
           "format_config"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it says something (not None/False/'') and the help has not already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, "", argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser(prog: str = TRAIN_PROG) -> argparse.ArgumentParser:
    """The `deit-distill train` parser of the command line (one-line usage errors, defaults in --help); built once
    per process and ``prog`` (`cache build` parses the same flags under its own name)."""
    return train_parser(prog, ArgumentParser, HelpFormatter)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options of a `deit-distill train` command line: parsed (a malformed one: argparse's usage error, exit
    2), layered (defaults < recipe < config < command line) and resolved
    (:func:`~timm_deit_distill.factory.options.resolve_options`: unsupported flags refused, aliases folded,
    everything validated; a :class:`UsageError` otherwise)."""
    return resolve_given(given_flags(argv))


def given_flags(argv: Sequence[str] | None, *, prog: str = TRAIN_PROG) -> dict[str, Any]:
    """The training flags a command line gives (argparse's usage error, exit 2, for a malformed one), named as
    ``prog`` in that error (`cache build` takes the same flags)."""
    return given_options(build_parser(prog), argv)


def resolve_given(given: dict[str, Any], *, prog: str = TRAIN_PROG) -> argparse.Namespace:
    """:func:`given_flags` resolved into the options (a :class:`UsageError` for settings that cannot work)."""
    return resolve_options(build_parser(prog), given, given_as=ON_THE_COMMAND_LINE)


def format_config(args: argparse.Namespace, world_size: int = 1) -> str:
    """``--print-config`` output: YAML of every setting, non-default ones marked with where they came from."""
    parser = build_parser()
    defaults = {dest: a.default for dest, a in dests(parser).items()}
    layers = getattr(args, "_layers", {"cli": {}, "config": {}, "recipe": {}})
    lines = [f"# deit-distill train resolved settings (recipe: {args.recipe or 'none'})"]
    from ..factory.settings import settings_from_options

    settings = settings_from_options(args)
    _, how = settings.learning_rate(world_size)
    lines.append(f"# learning rate at world size {world_size}: {how}")
    if args.distill_type != "none" or args.distill_teacher:
        d = settings.distill
        task, weight = d.weights
        kind = f"timm's {d.kd_distill_type} task, {d.type}" if d.family == "timm" else f"DeiT's, {d.type}"
        lines.append(f"# distillation: {kind}, teacher {args.distill_teacher}, loss {task:g} x task + {weight:g} x "
                     f"distill ({d.weight_mode} weights), tau {d.tau:g}, soft reduction {d.soft_reduction} "
                     f"(defaults of the {getattr(args, 'distill_spelling', 'deit-distill')} spelling)")
    for key, value in config_dict(parser, args).items():
        text = yaml.safe_dump({key: value}, default_flow_style=True, width=1000).strip()
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1]
        src = option_source(layers, key)
        if not src and key in DISTILL_KEYS and value != defaults.get(key):
            src = "resolved"
        lines.append(f"{text}{'  # ' + src if src else ''}")
    return "\n".join(lines) + "\n"
