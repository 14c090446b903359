"""The Python API: `timm_deit_distill.train(**options)` is `deit-distill train` with the flags as keywords (the
same checks, the same run), and the README's example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from train_fixtures import FAST, STUDENT, digits, keywords, load

import timm_deit_distill
from timm_deit_distill.commands import train
from timm_deit_distill.errors import DeitDistillError, UsageError
from timm_deit_distill.records import read_summary_text

README = Path(__file__).resolve().parents[1] / "README.md"


def _tensors(value, prefix=""):
    """Every tensor of a checkpoint's value, by path."""
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _tensors(item, f"{prefix}/{key}").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value) for k, v in _tensors(item, f"{prefix}[{i}]").items()}
    return {}


def test_the_function_trains_the_run_the_same_flags_train_on_the_command_line(tmp_path, capsys):
    data = digits(tmp_path / "digits", train_per_class=3)
    argv = ["--data-dir", str(data), *STUDENT, *FAST, "--epochs", "1", "--model-ema", "--model-ema-decay", "0.9",
            "--output", str(tmp_path / "runs")]
    assert train.main([*argv, "--experiment", "cli"]) == 0
    result = timm_deit_distill.train(**keywords(argv), experiment="api")
    capsys.readouterr()
    cli, api = tmp_path / "runs" / "cli", tmp_path / "runs" / "api"
    assert result.run_dir == str(api) and result.checkpoint == str(api / "last.pth.tar")
    assert read_summary_text(api / "summary.csv") == read_summary_text(cli / "summary.csv")
    assert [row["epoch"] for row in result.summary] == [0]
    assert result.best_epoch == 0 and result.best_metric == pytest.approx(float(result.summary[0]["eval_top1"]))
    records = [yaml.safe_load((folder / "args.yaml").read_text()) for folder in (cli, api)]
    assert records[0].pop("experiment") == "cli" and records[1].pop("experiment") == "api"
    assert records[0] == records[1]
    assert (cli / "args.yaml").read_text().replace("experiment: cli", "") == \
        (api / "args.yaml").read_text().replace("experiment: api", "")  # the same file, key order included
    ours, theirs = (_tensors(load(folder / "last.pth.tar")) for folder in (api, cli))
    assert set(ours) == set(theirs) and any(k.startswith("/state_dict_ema") for k in ours)
    assert any(k.startswith("/optimizer") for k in ours)
    for key, tensor in ours.items():
        assert torch.equal(tensor, theirs[key]), key


def _config_refusal(tmp_path, capsys, key, value) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({key: value}))
    assert train.main(["-c", str(path)]) == 2
    return capsys.readouterr().err.strip().removeprefix("deit-distill train: error: ")


@pytest.mark.parametrize("key,value", [("batch_size", "big"), ("batch_sise", 64), ("scale", [0.5, "x"]),
                                       ("model_kwargs", 3), ("distill_type", "medium"), ("epochs", 2.5)])
def test_a_keyword_is_refused_in_the_line_a_config_file_gets(key, value, tmp_path, capsys):
    """The same check as a -c file's value: the same line, where it came from and the fix worded for each."""
    with pytest.raises(UsageError) as refused:
        timm_deit_distill.train(data_dir=str(tmp_path), **{key: value})
    ours = str(refused.value)
    theirs = _config_refusal(tmp_path, capsys, key, value)
    assert "\n" not in ours and ours.startswith("timm_deit_distill.train(): ")
    assert ours.removeprefix("timm_deit_distill.train(): ") == \
        re.sub(r"^--config \S+: ", "", theirs).replace("; fix the value in the file", "; fix the value")
    assert list(tmp_path.iterdir()) == [tmp_path / "c.yaml"]  # nothing written


def test_the_api_raises_the_packages_errors_never_system_exit(tmp_path):
    for call in (lambda: timm_deit_distill.train(data_dir=str(tmp_path), epochs=0),
                 lambda: timm_deit_distill.train(data_dir=str(tmp_path / "missing"), model="resnet10t"),
                 lambda: timm_deit_distill.train(print_config=True),
                 lambda: timm_deit_distill.build_cache(data_dir=str(tmp_path), distill_teacher="resnet10t"),
                 lambda: timm_deit_distill.evaluate(data_dir=str(tmp_path)),
                 lambda: timm_deit_distill.evaluate(checkpoint=str(tmp_path / "none.pth.tar"), batch_size="many")):
        with pytest.raises(DeitDistillError) as refused:
            call()
        assert "\n" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []


def test_settings_are_the_typed_alternative_and_not_mixed_with_keywords(tmp_path):
    from timm_deit_distill.factory.api import train_settings

    settings = train_settings(data_dir=str(tmp_path), batch_size=8, lr=1)
    assert settings.loader.batch_size == 8 and settings.schedule.lr == 1.0
    assert isinstance(settings.options()["lr"], float)  # as the command line gives --lr 1
    with pytest.raises(UsageError, match="settings= with keywords"):
        timm_deit_distill.train(settings=settings, epochs=3)


@pytest.mark.slow  # a teacher and a student trained, about a minute on 2 loaded cores
def test_the_readmes_from_python_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("## From Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert Path(printed[0]).resolve() == tmp_path / "runs" / "student" and 0 <= float(printed[1]) <= 100
    assert load(tmp_path / "runs" / "student" / "last.pth.tar")["deit_distill"]["distill"]["type"] == "hard"
