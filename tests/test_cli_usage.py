"""Every `deit-distill` subcommand: --help prints its own help (exit 0); a bad flag prints its own usage (exit 2).

The reference is argparse's convention: ``usage: PROG ...`` naming the command the user typed, help on
stdout with exit 0, usage errors on stderr with exit 2 (also for a missing subcommand).
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
def test_a_bad_flag_prints_the_subcommands_usage_and_exits_2(argv, prog, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, wherever it would go
    code, out, err = run(argv, capsys)
    assert code == 2
    assert err.startswith(f"usage: {prog} [-h]")
    assert err.rstrip().endswith(f"{prog}: error: unrecognized arguments: --bogus")
    assert out == "" and list(tmp_path.iterdir()) == []


def test_cache_info_needs_exactly_one_directory(capsys):
    for argv in (["cache", "info"], ["cache", "info", "a", "b"]):
        code, out, err = run(argv, capsys)
        assert code == 2 and err.startswith("usage: deit-distill cache info [-h] DIR") and out == ""


def test_no_subcommand_is_a_usage_error(capsys):
    code, out, err = run([], capsys)
    assert code == 2 and out == ""
    assert err.startswith("usage: deit-distill [-h] [--version] SUBCOMMAND")
    assert "the following arguments are required: SUBCOMMAND" in err


def test_cache_without_a_command_is_a_usage_error(capsys):
    code, out, err = run(["cache"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("usage: deit-distill cache build") and "a command is required: build or info" in err


def test_bad_values_of_push_flags_are_refused_by_the_parser(capsys):
    code, _, err = run(["push", "sd.pth", "--model", "deit_tiny_distilled_patch4_32", "--num-classes", "0"], capsys)
    assert code == 2 and "deit-distill push: error: argument --num-classes: 0 must be >= 1" in err
    code, _, err = run(["push", "sd.pth", "--img-size", "-32"], capsys)
    assert code == 2 and "argument --img-size: -32 must be >= 1" in err


def test_the_installed_command_without_arguments_exits_2():
    proc = subprocess.run([sys.executable, "-m", "timm_deit_distill"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("usage: deit-distill") and "Traceback" not in proc.stderr
