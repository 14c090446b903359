"""`deit-distill`: one entry point, one subcommand per workflow.

Each subcommand lives in its own module and is imported only when called, so `deit-distill models`
does not pay for the trainer's imports.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ..version import __version__
from .common import ArgumentParser

# name -> (module, help). Each module exposes ``main(argv: list[str] | None) -> int``.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("timm_deit_distill.commands.train", "train a student (timm train.py flags + distillation flags)"),
    "eval": ("timm_deit_distill.commands.evaluate", "per-head accuracy and teacher agreement of a checkpoint"),
    "cache": ("timm_deit_distill.commands.cache", "build or inspect a teacher target cache"),
    "push": ("timm_deit_distill.commands.hub", "push a distilled student to the Hugging Face Hub"),
    "pull": ("timm_deit_distill.commands.hub", "pull a student from the Hub, verified"),
    "demo": ("timm_deit_distill.commands.demo", "distil DeiT students on the bundled digits and report"),
}
MODELS_HELP = "list the distilled DeiT variants with parameters and input size"


def _models_table() -> str:
    import timm
    import torch
    from timm.models import model_entrypoint

    from ..models import DISTILLED_VARIANTS

    rows = [("model", "params", "input", "classes", "pretrained weights (hub id)", "registered by")]
    for name in DISTILLED_VARIANTS:
        with torch.device("meta"):  # architecture only: no allocation, no init cost
            model = timm.create_model(name)
        cfg = model.pretrained_cfg
        params = sum(p.numel() for p in model.parameters()) / 1e6
        weights = cfg.get("hf_hub_id") or "none"
        origin = "timm" if model_entrypoint(name).__module__.startswith("timm.") else "plugin"
        size = "x".join(str(s) for s in cfg["input_size"][1:])
        rows.append((name, f"{params:.1f}M", size, str(cfg["num_classes"]), weights, origin))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: ``--help``, ``--version`` and the subcommand names (each subcommand parses its own flags)."""
    parser = ArgumentParser(
        prog="deit-distill",
        description="DeiT-style distillation through attention for timm.",
        epilog="Run `deit-distill SUBCOMMAND --help` for a subcommand's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # required: `deit-distill` alone is a usage error (exit 2), as argparse treats any missing argument
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    sub.add_parser("models", help=MODELS_HELP, add_help=False)
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _models_parser() -> argparse.ArgumentParser:
    return ArgumentParser(prog="deit-distill models", description=f"{MODELS_HELP[0].upper()}{MODELS_HELP[1:]}.")


# The exit code of a process whose reader went away: what a shell reports for a tool SIGPIPE stopped (128 + 13).
BROKEN_PIPE_EXIT = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `deit-distill` command line; returns the process exit code.

    When whoever reads the output stops reading (``deit-distill cache info DIR | head -1``), the command stops
    quietly with :data:`BROKEN_PIPE_EXIT`, as command-line tools do, instead of a BrokenPipeError traceback.
    A Ctrl-C that reaches no command's own stop handling (:mod:`.stops`: still starting, or push, pull,
    models) ends it in one line too, exit 130.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: buffered output meets the closed pipe here, not at exit
        return code
    except KeyboardInterrupt as stop:
        name = f"deit-distill {argv[0]}" if argv and argv[0] in (*SUBCOMMANDS, "models") else "deit-distill"
        print(f"{name}: stopped by {getattr(stop, 'name', 'SIGINT')} before it finished; rerun the same command to "
              "start it again.", file=sys.stderr)
        return int(getattr(stop, "exit_code", 130))
    except BrokenPipeError:
        # Python would flush stdout again at exit and report the same error: point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE_EXIT


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
        # commands.hub serves both push and pull, so it receives the subcommand name too
        return int(module.main(argv if argv[0] in ("push", "pull") else argv[1:]) or 0)
    if argv and argv[0] == "models":
        _models_parser().parse_args(argv[1:])  # its own usage line on a bad flag
        import timm_deit_distill  # noqa: F401  (registers the variants)

        print(_models_table())
        return 0
    parser = build_parser()
    parser.parse_args(argv)  # --help, --version, a missing or unknown subcommand: argparse prints and exits
    parser.print_usage(sys.stderr)  # not reached with argparse's own rules; kept as a usage error
    return 2

