"""Every `deit-distill` subcommand: --help prints its own help (exit 0); a bad flag is refused in ONE line (exit 2).

The reference is argparse's convention: ``usage: PROG ...`` naming the command the user typed, help on
stdout with exit 0, usage errors on stderr with exit 2 (also for a missing subcommand) as argparse words them
(``PROG: error: MESSAGE``), but on one line pointing at ``PROG --help`` instead of after the whole usage block
(89 lines for `train`), the package's promise for every bad input.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from timm_deit_distill.commands.cli import main


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    out, err = capsys.readouterr()
    return code, out, err


HELP = [
    (["models", "--help"], "deit-distill models"),
    (["train", "--help"], "deit-distill train"),
    (["eval", "--help"], "deit-distill eval"),
    (["cache", "--help"], "deit-distill cache build"),
    (["cache", "build", "--help"], "deit-distill cache build"),
    (["cache", "info", "--help"], "deit-distill cache info"),
    (["cache", "info", "-h"], "deit-distill cache info"),
    (["push", "--help"], "deit-distill push"),
    (["pull", "--help"], "deit-distill pull"),
    (["demo", "--help"], "deit-distill demo"),
    (["--help"], "deit-distill"),
]


@pytest.mark.parametrize("argv,prog", HELP, ids=[" ".join(a) for a, _ in HELP])
def test_help_is_the_subcommands_own_and_exits_0(argv, prog, capsys):
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert out.startswith(f"usage: {prog} ") and err == ""


BAD_FLAG = [
    (["models", "--bogus"], "deit-distill models"),
    (["train", "--bogus"], "deit-distill train"),
    (["eval", "--checkpoint", "c", "--data-dir", "d", "--bogus"], "deit-distill eval"),
    (["cache", "build", "--out", "x", "--bogus"], "deit-distill cache build"),
    (["cache", "info", "x", "--bogus"], "deit-distill cache info"),
    (["push", "ckpt.pth.tar", "--bogus"], "deit-distill push"),
    (["pull", "acme/x", "--bogus"], "deit-distill pull"),
    (["demo", "--bogus"], "deit-distill demo"),
]


@pytest.mark.parametrize("argv,prog", BAD_FLAG, ids=[a[0] + (" " + a[1] if a[0] == "cache" else "") for a, _ in BAD_FLAG])
def test_a_bad_flag_is_one_line_naming_the_subcommand_and_exits_2(argv, prog, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, wherever it would go
    code, out, err = run(argv, capsys)
    assert code == 2
    assert err == f"{prog}: error: unrecognized arguments: --bogus (see {prog} --help)\n"
    assert out == "" and list(tmp_path.iterdir()) == []


ONE_LINE = [
    (["train", "--bogus", "1"], "deit-distill train", "unrecognized arguments: --bogus"),
    (["train", "--img-size", "abc"], "deit-distill train", "argument --img-size: invalid int value: 'abc'"),
    (["train", "--lr"], "deit-distill train", "argument --lr: expected one argument"),
    (["train", "-c"], "deit-distill train", "argument -c/--config: expected one argument"),
    (["train", "--distill-type", "sof"], "deit-distill train", "argument --distill-type: invalid choice: 'sof'"),
    (["eval", "--checkpoint", "c", "--data-dir", "d", "--use-ema", "--no-ema"], "deit-distill eval",
     "argument --no-ema: not allowed with argument --use-ema"),
    (["push", "c.pth", "--use-ema", "--no-ema"], "deit-distill push", "argument --no-ema: not allowed with argument --use-ema"),
    (["pull"], "deit-distill pull", "the following arguments are required: ORG/NAME[@REV]"),
    (["cache", "build", "--store"], "deit-distill cache build", "argument --store: expected one argument"),
    (["cache", "build", "--out", "x", "--bogus", "1"], "deit-distill cache build", "unrecognized arguments: --bogus"),
    (["cache", "info"], "deit-distill cache info", "the following arguments are required: DIR"),
    (["cache"], "deit-distill cache", "a command is required: build or info"),
    (["cache", "bild"], "deit-distill cache", "unknown command 'bild': use build or info"),
    (["demo", "--jobs", "0"], "deit-distill demo", "--jobs 0 must be at least 1."),
    (["trian"], "deit-distill", "argument SUBCOMMAND: invalid choice: 'trian'"),
]


@pytest.mark.parametrize("argv,prog,message", ONE_LINE, ids=[" ".join(a) for a, _, _ in ONE_LINE])
def test_every_parser_error_is_one_line_with_exit_2(argv, prog, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys)
    assert code == 2 and out == "" and list(tmp_path.iterdir()) == []
    assert err.count("\n") == 1 and "usage:" not in err, err
    assert err.startswith(f"{prog}: error: {message}") and err.endswith(f" (see {prog} --help)\n"), err


def test_cache_info_needs_exactly_one_directory(capsys):
    for argv in (["cache", "info"], ["cache", "info", "a", "b"]):
        code, out, err = run(argv, capsys)
        assert code == 2 and err.startswith("deit-distill cache info: error: ") and out == ""
        assert err.count("\n") == 1 and "(see deit-distill cache info --help)" in err


def test_no_subcommand_is_a_usage_error(capsys):
    code, out, err = run([], capsys)
    assert code == 2 and out == ""
    assert err == ("deit-distill: error: the following arguments are required: SUBCOMMAND "
                   "(see deit-distill --help)\n")


def test_cache_without_a_command_is_a_usage_error(capsys):
    code, out, err = run(["cache"], capsys)
    assert code == 2 and out == ""
    assert err == "deit-distill cache: error: a command is required: build or info (see deit-distill cache --help)\n"


def test_bad_values_of_push_flags_are_refused_by_the_parser(capsys):
    code, _, err = run(["push", "sd.pth", "--model", "deit_tiny_distilled_patch4_32", "--num-classes", "0"], capsys)
    assert code == 2 and "deit-distill push: error: argument --num-classes: 0 must be >= 1" in err
    code, _, err = run(["push", "sd.pth", "--img-size", "-32"], capsys)
    assert code == 2 and "argument --img-size: -32 must be >= 1" in err


def test_the_installed_command_without_arguments_exits_2():
    proc = subprocess.run([sys.executable, "-m", "timm_deit_distill"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("deit-distill: error: ") and proc.stderr.count("\n") == 1
