"""One checkpoint reader and one raw/EMA policy behind every file the package reads.

Damaged files are made from a checkpoint the real trainer wrote (the session's ``trained_teacher``): cut
in half, replaced by text, emptied, re-saved in torch's legacy format and cut, converted to safetensors and
cut... Each must be refused with what is wrong with it, in one line naming the file and the fix, by the
library (reader, teacher, export, model rebuild) and by every command that takes a file (exit 2, no
traceback, nothing written). Then the EMA policy, consumer by consumer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from hub_checkpoints import LABELS, reference_model, write_run
from train_fixtures import STUDENT, digits, load

from timm_deit_distill import factory
from timm_deit_distill.checkpoint import (
    CheckpointError,
    create_model_from_checkpoint,
    load_training_checkpoint,
    read_checkpoint,
    select_weights,
)
from timm_deit_distill.commands import evaluate, train
from timm_deit_distill.commands import hub as hub_cli
from timm_deit_distill.commands.args import parse_args
from timm_deit_distill.factory.settings import settings_from_options
from timm_deit_distill.hub import save_pretrained
from timm_deit_distill.teacher import DistillationTeacher


class Payload:
    """An object no weights-only load may build (a pickled instance of a user class)."""


FIX = re.compile(r"[;:] (copy or download it again|pass |load it in code you trust|unzip it|fix: use an earlier "
                 r"checkpoint of the run \(checkpoint-N\.pth\.tar or model_best\.pth\.tar\) or copy the file again)")


@pytest.fixture(scope="module")
def damaged(trained_teacher, tmp_path_factory):
    """kind -> (path, the diagnosis the message must contain, as a regex)."""
    root = tmp_path_factory.mktemp("damaged")
    real = trained_teacher["checkpoint"]
    data = real.read_bytes()
    files: dict[str, tuple[Path, str]] = {}

    def add(kind: str, content: bytes | None, diagnosis: str, name: str = "t.pth.tar") -> None:
        path = root / kind.replace(" ", "-") / name
        path.parent.mkdir()
        if content is not None:
            path.write_bytes(content)
        files[kind] = (path, diagnosis)

    half = len(data) // 2
    add("truncated", data[:half], re.escape(f"is truncated: it starts as a torch checkpoint (a zip archive) but its "
                                            f"end, the zip directory, is missing after {half:,} bytes"))
    add("text", b"text\n", re.escape("is not a checkpoint: it is a text file starting with 'text'"))
    add("not a checkpoint", b"not a checkpoint\n",
        re.escape("is not a checkpoint: it is a text file starting with 'not a checkpoint'"))
    add("empty", b"", re.escape("is empty (0 bytes)"))
    add("missing", None, "does not exist")
    folder = root / "folder"
    folder.mkdir()
    (folder / "last.pth.tar").write_bytes(data[:100])
    files["folder"] = (folder, re.escape("is a folder, not a checkpoint file (it holds last.pth.tar)"))

    legacy = root / "legacy.pth.tar"
    torch.save(load(real), legacy, _use_new_zipfile_serialization=False)
    legacy_bytes = legacy.read_bytes()
    add("legacy truncated", legacy_bytes[: len(legacy_bytes) // 2],
        rf"is truncated: a legacy-format \(non-zip\) torch file of {len(legacy_bytes) // 2:,} bytes .*whose tensor "
        rf"data needs {len(legacy_bytes):,} bytes")

    weights = root / "weights.safetensors"
    safetensors.torch.save_file(load(real)["state_dict"], weights)
    st = weights.read_bytes()
    add("truncated safetensors", st[: len(st) // 2],
        re.escape(f"is truncated: a safetensors file of {len(st) // 2:,} bytes"), name="t.safetensors")

    # One bit of one weight changed in the trainer's own file: a complete zip that torch.load reads without a word.
    weight = load(real)["state_dict"]["fc.weight"]
    at = data.find(weight.numpy().tobytes())
    assert at > 0 and data.find(weight.numpy().tobytes(), at + 1) == -1  # the weight's bytes, found once
    flipped = bytearray(data)
    flipped[at + 1] ^= 0x10  # a mantissa bit of fc.weight[0, 0]: about 1 part in 2,000
    add("bit flipped", bytes(flipped), re.escape("is damaged: the tensors of its 'state_dict' (the raw weights) do "
                                                 "not match the sha256 recorded when deit-distill wrote it"))

    unsafe = root / "unsafe" / "t.pth.tar"
    unsafe.parent.mkdir()
    torch.save({"state_dict": load(real)["state_dict"], "payload": Payload()}, unsafe)
    files["unsafe"] = (unsafe, re.escape("holds Python objects that are unsafe to unpickle "
                                         "(GLOBAL test_checkpoint_reader.Payload)"))
    return files


KINDS = ["truncated", "text", "not a checkpoint", "empty", "missing", "folder", "legacy truncated",
         "truncated safetensors", "unsafe", "bit flipped"]


def _one_line_diagnosis(message: str, path: Path, diagnosis: str) -> None:
    assert "\n" not in message.strip(), message
    assert re.search(diagnosis, message), message
    assert str(path) in message and FIX.search(message), message
    assert "Traceback" not in message and "KeyError" not in message and "pop from empty list" not in message


# --- the reader -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_the_reader_says_what_is_wrong_with_the_file(damaged, kind):
    path, diagnosis = damaged[kind]
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path, what="teacher checkpoint")
    _one_line_diagnosis(str(error.value), path, diagnosis)
    assert str(error.value).startswith(f"teacher checkpoint {path} ")
    assert isinstance(error.value, ValueError)
    if kind != "unsafe":  # only a file that really names a forbidden global is called unsafe
        assert "unsafe" not in str(error.value)


def test_torch_loads_the_flipped_weight_silently_which_is_why_the_reader_checks_it(damaged, trained_teacher):
    """torch.load checks no CRC32 of a tensor's record: the flipped file loads, one weight changed."""
    path, _ = damaged["bit flipped"]
    intact, flipped = load(trained_teacher["checkpoint"]), load(path)
    changed = {k for k, v in intact["state_dict"].items() if not torch.equal(v, flipped["state_dict"][k])}
    assert changed == {"fc.weight"}
    a, b = intact["state_dict"]["fc.weight"].flatten()[0].item(), flipped["state_dict"]["fc.weight"].flatten()[0].item()
    assert a != b and abs(a - b) < 1e-3 * abs(a)


def test_intact_files_of_every_format_read_back_the_same_tensors(trained_teacher, tmp_path):
    real = load(trained_teacher["checkpoint"])
    legacy = tmp_path / "legacy.pth"
    torch.save(real, legacy, _use_new_zipfile_serialization=False)
    st = tmp_path / "weights.pth.tar"  # a safetensors file under a torch suffix: read by its content
    safetensors.torch.save_file(real["state_dict"], tmp_path / "w.safetensors")
    os.replace(tmp_path / "w.safetensors", st)
    for path, expected in ((trained_teacher["checkpoint"], real["state_dict"]),
                           (legacy, real["state_dict"]), (st, real["state_dict"])):
        got = read_checkpoint(path)
        state = got.get("state_dict", got)
        assert state.keys() == expected.keys() and all(torch.equal(state[k], v) for k, v in expected.items())
    assert read_checkpoint(legacy)["args"] == real["args"]  # the Namespace timm saves is allowed


def test_other_files_that_are_no_checkpoint_are_named(tmp_path):
    import gzip
    import zipfile

    (tmp_path / "page.pth").write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    (tmp_path / "lfs.pth").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n")
    (tmp_path / "gz.pth").write_bytes(gzip.compress(b"weights"))
    with zipfile.ZipFile(tmp_path / "notes.pth", "w") as z:
        z.writestr("notes/readme.txt", "hello")
    with zipfile.ZipFile(tmp_path / "bundle.zip", "w") as z:
        z.writestr("last.pth.tar", "x")
    import pickle

    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    expected = {"page.pth": "it is an HTML page", "lfs.pth": "it is a Git LFS pointer",
                "gz.pth": "it is gzip-compressed", "notes.pth": "is a zip archive but not a torch checkpoint",
                "bundle.zip": "is a zip archive holding last.pth.tar; unzip it",
                "plain.pkl": "is a Python pickle, not a file written by torch.save",
                "list.pth": "holds a list, not a checkpoint or a state dict"}
    for name, needle in expected.items():
        with pytest.raises(CheckpointError, match=re.escape(needle)):
            read_checkpoint(tmp_path / name)


# --- every library consumer raises the reader's error ---------------------------------------------------------

CONSUMERS = {
    "DistillationTeacher.create": lambda path, out: DistillationTeacher.create("resnet10t", checkpoint_path=path),
    "DistillationTeacher.create(file)": lambda path, out: DistillationTeacher.create(None, checkpoint_path=path),
    "save_pretrained": lambda path, out: save_pretrained(path, out, model_name="resnet10t"),
    "create_model_from_checkpoint": lambda path, out: create_model_from_checkpoint(path, use_ema=False),
    "load_training_checkpoint": lambda path, out: load_training_checkpoint(path),
}


@pytest.mark.parametrize("consumer", list(CONSUMERS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_library_reader_raises_the_one_diagnosis(damaged, kind, consumer, tmp_path):
    path, diagnosis = damaged[kind]
    with pytest.raises(CheckpointError) as error:
        CONSUMERS[consumer](path, tmp_path / "out")
    _one_line_diagnosis(str(error.value), path, diagnosis)
    assert not (tmp_path / "out").exists()


# --- every command that takes a file: exit 2, one line, nothing written -------------------------------------------

def _commands(kind_path: Path, trained_teacher, tmp_path: Path) -> dict[str, tuple[object, list[str], Path]]:
    data, good = str(trained_teacher["data"]), str(trained_teacher["checkpoint"])
    bad = str(kind_path)
    out = tmp_path / "out"
    results = tmp_path / "eval.json"  # in a folder that exists: only the damaged input can be refused
    common = ["--data-dir", data, *STUDENT, "--output", str(out), "--experiment", "run", "--workers", "0"]
    return {
        "train --distill-teacher-path": (train.main, [*common, "--distill-teacher", "resnet10t",
                                                      "--distill-teacher-path", bad], out),
        "train --resume": (train.main, [*common, "--resume", bad], out),
        "train --initial-checkpoint": (train.main, [*common, "--initial-checkpoint", bad], out),
        "train --pretrained-path": (train.main, [*common, "--pretrained", "--pretrained-path", bad], out),
        "eval --checkpoint": (evaluate.main, ["--checkpoint", bad, "--data-dir", data, "--workers", "0",
                                              "--json", str(results)], results),
        "eval --distill-teacher-path": (evaluate.main, ["--checkpoint", good, "--data-dir", data, "--workers", "0",
                                                        "--distill-teacher", "resnet10t", "--distill-teacher-path",
                                                        bad, "--json", str(results)], results),
        "push": (hub_cli.main, ["push", bad, "--to-dir", str(out), "--model", "resnet10t"], out),
    }


COMMANDS = ["train --distill-teacher-path", "train --resume", "train --initial-checkpoint", "train --pretrained-path",
            "eval --checkpoint", "eval --distill-teacher-path", "push"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_command_refuses_a_damaged_file_in_one_line(damaged, trained_teacher, kind, command, tmp_path,
                                                          capsys):
    path, diagnosis = damaged[kind]
    main, argv, out = _commands(path, trained_teacher, tmp_path)[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    prog = "deit-distill " + command.split()[0]
    assert err.startswith(f"{prog}: error: "), err
    _one_line_diagnosis(err, path, diagnosis)
    flag = command.split()[-1] if "--" in command else ""
    if kind == "bit flipped" and flag == "--distill-teacher-path":
        flag = "teacher checkpoint"  # found by the full read, which names the file as the teacher library does
    assert f"{flag} {path}" in err  # the message names the flag the file came from
    assert not out.exists()  # nothing written


@pytest.mark.slow  # three fresh interpreters: the user's reported command lines, as a process
def test_the_reported_cases_exit_2_without_a_traceback_in_a_real_process(damaged, trained_teacher, tmp_path):
    data, good = str(trained_teacher["data"]), str(trained_teacher["checkpoint"])
    runs = [
        (["train", "--data-dir", data, *STUDENT, "--distill-teacher", "resnet10t", "--distill-teacher-path",
          str(damaged["truncated"][0]), "--output", str(tmp_path / "out")], damaged["truncated"]),
        (["eval", "--checkpoint", good, "--data-dir", data, "--distill-teacher", "resnet10t",
          "--distill-teacher-path", str(damaged["text"][0])], damaged["text"]),
        (["eval", "--checkpoint", str(damaged["not a checkpoint"][0]), "--data-dir", data],
         damaged["not a checkpoint"]),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv, (path, diagnosis) in runs:
        proc = subprocess.run([sys.executable, "-m", "timm_deit_distill", *argv], capture_output=True, text=True,
                              timeout=300, env=env)
        assert proc.returncode == 2, proc.stderr
        _one_line_diagnosis(proc.stderr, path, diagnosis)
    assert not (tmp_path / "out").exists()


# --- one raw/EMA policy ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """A trainer-format checkpoint holding raw and EMA weights (different), and one holding raw weights only."""
    root = tmp_path_factory.mktemp("ema")
    data = digits(root / "digits", train_per_class=1)
    for split in ("train", "validation"):  # the class names the hand-written runs record
        for i, label in enumerate(LABELS):
            (data / split / str(i)).rename(data / split / label)
    (root / "classes.txt").write_text("\n".join(LABELS) + "\n")
    return {"both": write_run(root / "both", ema=True), "raw": write_run(root / "raw", ema=False, seed=1),
            "eval": ["--data-dir", str(data), "--class-map", str(root / "classes.txt"), "--workers", "0"]}


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_select_weights_is_one_explicit_policy_for_every_layout(both, caplog):
    run = both["both"]
    ckpt = load(run.checkpoint)
    with pytest.raises(CheckpointError) as error:
        select_weights(ckpt, use_ema=None, name="run.pth.tar", flags=("--use-ema", "--no-ema"))
    message = str(error.value)
    assert "'state_dict'" in message and "'state_dict_ema'" in message and "--use-ema or --no-ema" in message
    with caplog.at_level(logging.INFO, logger="timm_deit_distill.checkpoint"):
        ema, which = select_weights(ckpt, use_ema=True, name="run.pth.tar")
    assert which == "ema" and all(torch.equal(ema[k], v) for k, v in run.ema.items())
    assert "run.pth.tar: using its EMA weights ('state_dict_ema')" in caplog.text
    raw, which = select_weights(ckpt, use_ema=False)
    assert which == "raw" and all(torch.equal(raw[k], v) for k, v in run.raw.items())

    deit = {"model": {f"module.{k}": v for k, v in run.raw.items()}, "model_ema": run.ema, "epoch": 299}
    with pytest.raises(CheckpointError, match="both raw weights \\('model'\\) and EMA weights \\('model_ema'\\)"):
        select_weights(deit, use_ema=None)
    raw, which = select_weights(deit, use_ema=False)  # DDP prefixes removed, as timm's loaders do
    assert which == "raw" and raw.keys() == run.raw.keys()
    only_ema = {"state_dict_ema": run.ema}
    assert select_weights(only_ema, use_ema=None)[1] == "ema"  # one set: used, and said
    with pytest.raises(CheckpointError, match="holds only EMA weights"):
        select_weights(only_ema, use_ema=False)
    assert select_weights(dict(run.raw), use_ema=None)[1] == "plain"
    with pytest.raises(CheckpointError, match="plain state dict.*drop --teacher-ema"):
        select_weights(dict(run.raw), use_ema=True, flags=("--teacher-ema", "--no-teacher-ema"))
    with pytest.raises(CheckpointError, match="holds no weights"):
        select_weights({"epoch": 3, "optimizer": {}}, use_ema=None)


def test_create_model_from_checkpoint_asks_instead_of_preferring_ema(both):
    run = both["both"]
    with pytest.raises(CheckpointError, match="both raw weights"):
        create_model_from_checkpoint(run.checkpoint)
    with torch.inference_mode():
        for use_ema in (True, False):
            model, _ = create_model_from_checkpoint(run.checkpoint, use_ema=use_ema)
            assert torch.equal(model(X), reference_model(run, ema=use_ema)(X))
        model, _ = create_model_from_checkpoint(both["raw"].checkpoint)  # one set: no choice to make
        assert torch.equal(model(X), reference_model(both["raw"], ema=False)(X))
    with pytest.raises(CheckpointError, match="holds no EMA weights"):
        create_model_from_checkpoint(both["raw"].checkpoint, use_ema=True)


def test_teacher_uses_the_same_policy_and_flags(both):
    path = both["both"].checkpoint
    with pytest.raises(CheckpointError, match="--teacher-ema or --no-teacher-ema"):
        DistillationTeacher.create(None, checkpoint_path=path)
    teacher = DistillationTeacher.create(None, checkpoint_path=path, use_ema=True, precision="fp32")
    assert teacher.description["weights"] == "ema"
    torch.testing.assert_close(teacher(X), reference_model(both["both"], ema=True)(X))


def test_push_refuses_an_unmade_choice_with_exit_2(both, tmp_path, capsys):
    assert hub_cli.main(["push", str(both["both"].checkpoint), "--to-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "'state_dict_ema'" in err and "--use-ema or --no-ema" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    assert hub_cli.main(["push", str(both["both"].checkpoint), "--to-dir", str(tmp_path / "out"), "--use-ema"]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["deit_distill"]["weights"] == "ema"


def test_eval_needs_a_choice_for_both_and_records_the_weights_it_used(both, tmp_path, capsys):
    base = both["eval"]
    assert evaluate.main(["--checkpoint", str(both["both"].checkpoint), *base]) == 2
    err = capsys.readouterr().err
    assert "'state_dict'" in err and "'state_dict_ema'" in err and "--use-ema or --no-ema" in err
    assert err.count("\n") == 1 and not list(both["both"].checkpoint.parent.glob("eval-*.json"))

    assert evaluate.main(["--checkpoint", str(both["both"].checkpoint), *base, "--use-ema",
                          "--json", str(tmp_path / "ema.json")]) == 0
    assert "(EMA weights)" in capsys.readouterr().out
    result = json.loads((tmp_path / "ema.json").read_text())
    assert result["weights"] == "ema" and result["ema"] is True

    # One set of weights: used without a flag, and said; asking for the other set is refused.
    assert evaluate.main(["--checkpoint", str(both["raw"].checkpoint), *base, "--json", str(tmp_path / "r.json")]) == 0
    assert "(raw weights)" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["weights"] == "raw"
    assert evaluate.main(["--checkpoint", str(both["raw"].checkpoint), *base, "--use-ema"]) == 2
    assert "holds no EMA weights" in capsys.readouterr().err


def _student_from(argv: list[str]) -> torch.nn.Module:
    student = settings_from_options(parse_args(["--data-dir", "unused", *argv])).student
    return factory.create_student(student, factory.architecture_kwargs(student, 10))


def test_initial_checkpoint_applies_the_policy_and_loads_the_chosen_weights(both, trained_teacher, tmp_path,
                                                                           capsys):
    run = both["both"]
    model = ["--model", run.variant]
    with pytest.raises(CheckpointError, match="--initial-ema or --no-initial-ema"):
        _student_from([*model, "--initial-checkpoint", str(run.checkpoint)])
    for flag, expected in (("--initial-ema", run.ema), ("--no-initial-ema", run.raw)):
        student = _student_from([*model, "--initial-checkpoint", str(run.checkpoint), flag])
        assert all(torch.equal(v, expected[k]) for k, v in student.state_dict().items())
    student = _student_from([*model, "--initial-checkpoint", str(both["raw"].checkpoint)])  # one set
    assert all(torch.equal(v, both["raw"].raw[k]) for k, v in student.state_dict().items())
    with pytest.raises(train.UsageError, match="--initial-ema / --no-initial-ema choose"):
        _student_from([*model, "--initial-ema"])

    # Through the command: the refusal and a checkpoint of another model are one line, exit 2.
    common = ["--data-dir", str(trained_teacher["data"]), "--output", str(tmp_path), "--experiment", "x"]
    assert train.main([*common, *model, "--initial-checkpoint", str(run.checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "'state_dict_ema'" in err and "--initial-ema or --no-initial-ema" in err and err.count("\n") == 1
    assert train.main([*common, "--model", "resnet10t", "--initial-checkpoint", str(run.checkpoint),
                       "--no-initial-ema"]) == 2
    err = capsys.readouterr().err
    assert "does not fit --model resnet10t" in err and "--pretrained-path" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_pretrained_path_applies_the_policy_and_keeps_no_copy_of_the_weights(both):
    run = both["both"]
    model = ["--model", run.variant, "--num-classes", "10"]
    with pytest.raises(CheckpointError, match="--initial-ema or --no-initial-ema"):
        _student_from([*model, "--pretrained", "--pretrained-path", str(run.checkpoint)])
    student = _student_from([*model, "--pretrained", "--pretrained-path", str(run.checkpoint), "--initial-ema"])
    state = student.state_dict()
    body = [k for k in state if not k.startswith(("head.", "head_dist."))]
    assert body and all(torch.equal(state[k], run.ema[k]) for k in body)  # EMA weights, head replaced (timm)
    assert "state_dict" not in student.pretrained_cfg and "state_dict" not in student.default_cfg
    assert student.pretrained_cfg["file"] == os.path.abspath(run.checkpoint)
    with pytest.raises(train.UsageError, match="only read with --pretrained"):
        _student_from([*model, "--pretrained-path", str(run.checkpoint), "--initial-ema"])


def test_the_trainers_own_checkpoint_rebuilds_exactly(trained_teacher):
    # The trainer's own checkpoint: one set of weights, model rebuilt from its metadata, exactly.
    model, ckpt = create_model_from_checkpoint(trained_teacher["checkpoint"])
    reference = timm.create_model("resnet10t", num_classes=10)
    reference.load_state_dict(ckpt["state_dict"])
    with torch.inference_mode():
        assert torch.equal(model(X), reference.eval()(X))
