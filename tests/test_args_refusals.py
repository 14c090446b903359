"""Inputs a new user's first runs got wrong, each refused in one line (exit 2) before any work: -c YAML values of
the wrong kind for their flag, a -c file that is not UTF-8 text or is a folder, --initial-checkpoint with --resume,
and a --repo-id that cannot exist given to `push --to-dir`.

The reference for a YAML value's kind is its flag's argparse action (nargs, type, choices), the rules argparse
applies to the same value given on the command line.
"""

from __future__ import annotations

import argparse

import pytest
import torch
import yaml
from hub_checkpoints import write_run
from train_fixtures import STUDENT, digits

from timm_deit_distill.commands import hub, train
from timm_deit_distill.commands.args import build_parser, parse_args

TINY = [*STUDENT, "--img-size", "32", "-b", "64", "--workers", "0", "--epochs", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return digits(tmp_path_factory.mktemp("digits"), train_per_class=2)


def _refused(argv: list[str], capsys) -> str:
    assert train.main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("deit-distill train: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# (YAML, what the refusal says). The first four ended in a traceback (TypeError / AttributeError) once the
# value reached the code that used it; lr's said "must be a finite number".
WRONG_KIND = [
    ("model_kwargs: 5", "model_kwargs: 5 is not a mapping of names to values (e.g. {depth: 1}), which --model-kwargs"),
    ("class_map: 5", "class_map: 5 is not a string, which --class-map takes"),
    ("distill_teacher_path: [a]", "distill_teacher_path: [a] is not a string, which --distill-teacher-path takes"),
    ("distill_alpha: [0.5]", "distill_alpha: [0.5] is not a number, which --distill-alpha takes"),
    ("lr: {a: 1}", "lr: {a: 1} is not a number, which --lr takes"),
    ("img_size: abc", "img_size: abc is not a whole number, which --img-size takes"),
    ("epochs: true", "epochs: true is not a whole number, which --epochs takes"),
    ("amp: 1", "amp: 1 is not true or false, which --amp takes"),
    ("initial_ema: yes please", "is not true or false, which --initial-ema / --no-initial-ema takes"),
    ("distill_type: sof", "distill_type: sof is not one of none, soft, hard, which --distill-type takes"),
    ("input_size: [3, 32]", "input_size: [3, 32] is not a list of 3 whole numbers, which --input-size takes"),
    ("scale: []", "scale: [] is not a list of one or more numbers, which --scale takes"),
    ("mean: [0.5, [1], 0.5]", "is not a list of numbers (or a number), which --mean takes"),
    ("opt_kwargs: [eps=1]", "is not a mapping of names to values (e.g. {depth: 1}), which --opt-kwargs takes"),
    ("recipe: 5", "recipe: 5 is not a string, which --recipe takes; fix the value in the file (quote a string"),
]


@pytest.mark.parametrize("text,needle", WRONG_KIND, ids=[t for t, _ in WRONG_KIND])
def test_a_yaml_value_of_the_wrong_kind_is_refused_naming_key_value_and_kind(text, needle, data, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text + "\n")
    out = tmp_path / "runs"
    err = _refused([str(data), *TINY, "--output", str(out), "-c", str(cfg)], capsys)
    assert f"--config {cfg}: " in err and needle in err
    assert not out.exists()


def test_yaml_values_are_converted_as_the_command_line_converts_them(tmp_path):
    """What a flag's type makes of a string (YAML 1.1 reads 1e-3 as one), and one item for a list flag."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 1e-3\nopt_betas: [0.9, 1e-3]\nmean: 0.5\nstd: [0.25]\nimg_size: '32'\nwandb_tags: []\n"
                   "model_kwargs: {depth: 1}\ninput_size: [3, 32, 32]\namp: true\n")
    args = parse_args(["-c", str(cfg)])
    from_cli = parse_args(["--lr", "1e-3", "--opt-betas", "0.9", "1e-3", "--mean", "0.5", "--std", "0.25",
                           "--img-size", "32", "--model-kwargs", "depth=1", "--input-size", "3", "32", "32", "--amp"])
    for dest in ("lr", "opt_betas", "mean", "std", "img_size", "model_kwargs", "input_size", "amp", "wandb_tags"):
        assert getattr(args, dest) == getattr(from_cli, dest), dest
        assert type(getattr(args, dest)) is type(getattr(from_cli, dest)), dest


def test_every_default_passes_its_own_check(tmp_path):
    """Each setting's default, written to YAML as --print-config writes it, reads back: the check refuses kinds,
    never a value the parser itself gives (timm's args.yaml records these defaults)."""
    defaults = {a.dest: a.default for a in build_parser()._actions
                if a.dest not in ("help", "config") and a.default is not None and a.default is not argparse.SUPPRESS}
    cfg = tmp_path / "defaults.yaml"
    cfg.write_text(yaml.safe_dump(defaults))
    args = parse_args(["-c", str(cfg)])
    assert args.epochs == defaults["epochs"] and args.scale == defaults["scale"]


@pytest.mark.parametrize("kind", ["utf16_bom", "checkpoint", "folder"])
def test_a_config_that_is_no_utf8_text_or_a_folder_is_refused(kind, data, tmp_path, capsys):
    path = tmp_path / "cfg"
    if kind == "utf16_bom":
        path.write_bytes(b"\xff\xfe")
    elif kind == "checkpoint":
        torch.save({"state_dict": {"w": torch.arange(100.0)}, "epoch": 3}, path)
    else:
        path.mkdir()
    out = tmp_path / "runs"
    err = _refused([str(data), *TINY, "--output", str(out), "-c", str(path)], capsys)
    if kind == "folder":
        assert f"--config '{path}' is a folder; pass the path of a YAML file" in err
    else:
        assert f"--config '{path}' is not UTF-8 text" in err and "binary file" in err
    assert not out.exists()


def test_initial_checkpoint_with_resume_is_refused_before_any_work(data, tmp_path, capsys):
    ckpt = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(1)}, ckpt)  # both exist: the refusal is about the combination
    out = tmp_path / "runs"
    err = _refused([str(data), *TINY, "--output", str(out), "--initial-checkpoint", str(ckpt), "--resume", str(ckpt)],
                   capsys)
    assert f"--initial-checkpoint {ckpt} (on the command line) with --resume {ckpt}" in err
    assert "drop --initial-checkpoint to continue the run, or drop --resume" in err
    assert not out.exists()
    # in a -c file too
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"initial_checkpoint: {ckpt}\nresume: {ckpt}\n")
    err = _refused([str(data), *TINY, "--output", str(out), "-c", str(cfg)], capsys)
    assert "(in the --config file) with --resume" in err and not out.exists()


def test_a_runs_args_yaml_with_resume_on_the_command_line_is_no_contradiction(tmp_path):
    """The trainer's own advice resumes with ``-c RUN/args.yaml --resume CKPT``; a run started from
    --initial-checkpoint records it there, which is how the run began, not a second request."""
    cfg = tmp_path / "args.yaml"
    cfg.write_text("initial_checkpoint: start.pth\n")
    args = parse_args(["-c", str(cfg), "--resume", "run/last.pth.tar"])
    assert (args.initial_checkpoint, args.resume) == ("start.pth", "run/last.pth.tar")


@pytest.mark.parametrize("repo_id,needle", [("bad repo id!", "invalid repo id 'bad repo id!'"),
                                            ("name", "repo id 'name' needs its owner: ORG/NAME")])
def test_push_to_dir_refuses_a_repo_id_that_cannot_exist_before_writing(repo_id, needle, tmp_path, capsys):
    run = write_run(tmp_path / "run")
    out = tmp_path / "export"
    assert hub.main(["push", str(run.checkpoint), "--to-dir", str(out), "--no-ema", "--repo-id", repo_id]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deit-distill push: error: ") and needle in err and err.count("\n") == 1
    assert not out.exists()
    # a valid one still only names the model in the card
    assert hub.main(["push", str(run.checkpoint), "--to-dir", str(out), "--no-ema", "--repo-id", "acme/tiny"]) == 0
    assert "acme/tiny" in (out / "README.md").read_text()
