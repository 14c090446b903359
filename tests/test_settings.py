"""Typed settings: one reader of the options, every group typed, args.yaml given back by the settings, and the
option declaration built once per command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml
from train_fixtures import FAST, STUDENT, digits

from timm_deit_distill.commands import args as cli_args
from timm_deit_distill.commands import train
from timm_deit_distill.factory import options
from timm_deit_distill.factory.settings import settings_from_options

ARGVS = [
    ["--data-dir", "d"],
    ["--recipe", "deit_small", "--data-dir", "d", "--kd-model-name", "resnet10t", "--kd-distill-type", "token",
     "--distill-cache", "c", "--teacher-mean", "0.5", "--teacher-input-size", "32", "--model-kwargs", "depth=1",
     "--input-img-mode", "L", "--in-chans", "1", "--no-teacher-check", "--opt-betas", "0.9", "0.99",
     "--opt-kwargs", "foreach=False", "--sched", "multistep", "--decay-milestones", "3", "6", "--lr-noise", "0.5",
     "--model-ema", "--amp", "--amp-dtype", "bfloat16", "--clip-grad", "1", "--clip-mode", "agc",
     "--grad-accum-steps", "2", "--device-modules", "math", "--torchcompile", "--sync-bn", "--dist-bn", "",
     "--resume", "r.pth.tar", "--no-resume-opt", "--start-epoch", "3", "--output", "o", "--experiment", "e",
     "--teacher-ema", "--teacher-precision", "bf16", "--teacher-compile", "no"],
    ["--teacher-model", "regnety_160", "--teacher-path", "t.pth", "--distillation-type", "soft", "--mixup", "0.8",
     "--cutmix", "1", "--cutmix-minmax", "0.2", "0.8", "--drop-path", "0.1", "--layer-decay", "0.65",
     "--train-interpolation", "bicubic", "--val-interval", "2", "--checkpoint-interval", "2", "data"],
]


@pytest.mark.parametrize("argv", ARGVS)
def test_the_settings_give_back_the_options_args_yaml_records(argv):
    """Nothing reads the namespace after settings_from_options: args.yaml comes from the typed settings, so every
    recorded option must survive the round trip, in the declaration's order."""
    namespace = cli_args.parse_args(argv)
    settings = settings_from_options(namespace)
    record = options.config_dict(cli_args.build_parser(), namespace)
    assert list(settings.options()) == list(record)
    assert settings.options() == record


def test_timms_factories_read_the_settings_as_they_read_the_namespace():
    from timm.optim import optimizer_kwargs
    from timm.scheduler import scheduler_kwargs

    namespace = cli_args.parse_args(ARGVS[1])
    settings = settings_from_options(namespace)
    lr, _ = settings.learning_rate(1)
    namespace.lr = lr
    assert optimizer_kwargs(settings.optimizer.timm_cfg(lr)) == optimizer_kwargs(namespace)
    cfg = settings.schedule.timm_cfg(seed=settings.seed, eval_metric=settings.intervals.eval_metric)
    assert scheduler_kwargs(cfg, decreasing_metric=False) == scheduler_kwargs(namespace, decreasing_metric=False)


def _counting_builds(monkeypatch) -> list[bool]:
    """One entry per full `deit-distill train` option parser built from now on (each declares --model-ema once)."""
    built: list[bool] = []
    original = argparse._ActionsContainer.add_argument

    def add_argument(self, *args, **kwargs):
        if "--model-ema" in args:
            built.append(True)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(argparse._ActionsContainer, "add_argument", add_argument)
    if hasattr(options, "train_parser"):
        options.train_parser.cache_clear()
    return built


def test_a_training_run_builds_the_option_parser_once(tmp_path, monkeypatch, capsys):
    """Five builds of the 163-flag parser in one `train` run before (pre-pass, explicit-flag pass, validation, two
    records of the settings); one now."""
    data = digits(tmp_path / "digits", train_per_class=2)
    built = _counting_builds(monkeypatch)
    assert train.main(["--data-dir", str(data), *STUDENT, *FAST, "--epochs", "1", "--output", str(tmp_path),
                       "--experiment", "run"]) == 0
    assert len(built) == 1
    assert yaml.safe_load((Path(tmp_path) / "run" / "args.yaml").read_text())["epochs"] == 1
    built.clear()
    assert train.main(["--data-dir", str(data), "--print-config"]) == 0
    capsys.readouterr()
    assert not built  # the same command in the same process: the parser it built


def test_cache_build_parses_its_training_flags_with_one_parser(tmp_path, monkeypatch, capsys):
    from timm_deit_distill.commands import cache

    built = _counting_builds(monkeypatch)
    assert cache.main(["build", "--data-dir", str(tmp_path), "--epochs", "0", "--out", str(tmp_path / "c")]) == 2
    assert "--epochs 0 must be >= 1" in capsys.readouterr().err
    assert len(built) == 1
