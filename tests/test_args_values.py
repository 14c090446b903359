"""Flag values that parse but cannot work are refused by `deit-distill train` in one line, before any work.

Each of these used to pass parsing and end in a traceback inside the first epoch (or a run that silently
did something else): sizes of 0, nan/inf through argparse's float(), crop/scale/ratio ranges, timm
assertions in the scheduler and Mixup.
"""

from __future__ import annotations

import pytest
from train_fixtures import FAST, STUDENT, digits

from timm_deit_distill.commands import train


@pytest.mark.parametrize("argv,needle", [
    # sizes
    (["--img-size", "0"], "--img-size 0 must be >= 1"),
    (["--img-size", "-4"], "--img-size -4 must be >= 1"),
    (["--input-size", "3", "0", "32"], "--input-size 3 0 32: C H W must each be >= 1"),
    (["--input-size", "0", "32", "32"], "--input-size 0 32 32: C H W must each be >= 1"),
    (["--in-chans", "0"], "--in-chans 0 must be >= 1"),
    (["--num-classes", "0"], "--num-classes 0 must be >= 1"),
    (["--crop-pct", "0"], "--crop-pct 0.0 must be in (0, 1]"),
    (["--crop-pct", "1.5"], "--crop-pct 1.5 must be in (0, 1]"),
    (["--crop-pct", "-1"], "--crop-pct -1.0 must be in (0, 1]"),
    (["--interpolation", "bogus"], "--interpolation 'bogus': use one of bilinear, bicubic"),
    (["--train-interpolation", "bogus"], "--train-interpolation 'bogus': use one of random, bilinear"),
    # nan and inf (argparse's float accepts both)
    (["--distill-tau", "inf"], "--distill-tau inf must be a finite number > 0"),
    (["--distill-tau", "nan"], "--distill-tau nan must be a finite number > 0"),
    (["--distillation-tau", "inf"], "--distillation-tau inf must be a finite number > 0"),
    (["--distill-alpha", "nan"], "--distill-alpha nan must be a finite number in [0, 1]"),
    (["--kd-model-name", "t", "--task-loss-weight", "nan"], "--task-loss-weight nan must be a finite number"),
    (["--lr", "inf"], "--lr inf must be a finite number"),
    (["--weight-decay", "nan"], "--weight-decay nan must be a finite number"),
    (["--warmup-lr", "nan"], "--warmup-lr nan must be a finite number"),
    (["--mean", "0.5", "nan", "0.5"], "--mean 0.5 nan 0.5 must be a finite number"),
    (["--clip-grad", "inf"], "--clip-grad inf must be a finite number"),
    # augmentation
    (["--scale", "0", "0"], "--scale 0 0: give min max with 0 < min <= max"),
    (["--scale", "1", "0.08"], "--scale 1 0.08: give min max"),
    (["--ratio", "0", "1"], "--ratio 0 1: give min max with 0 < min <= max"),
    (["--color-jitter", "-1"], "--color-jitter -1.0 must be >= 0"),
    (["--color-jitter-prob", "2"], "--color-jitter-prob 2.0 is a probability"),
    (["--grayscale-prob", "-0.5"], "--grayscale-prob -0.5 is a probability"),
    (["--reprob", "0.5", "--recount", "0"], "--recount 0 must be >= 1"),
    (["--cutmix", "1", "--cutmix-minmax", "0.5"], "--cutmix-minmax 0.5: give min max"),
    (["--mixup-off-epoch", "-1"], "--mixup-off-epoch -1 must be >= 0"),
    # optimizer and schedule
    (["--lr-base", "0"], "--lr-base 0.0 must be > 0"),
    (["--lr-base-size", "0"], "--lr-base-size 0 must be >= 1"),
    (["--weight-decay", "-1"], "--weight-decay -1.0 must be >= 0"),
    (["--clip-grad", "-1"], "--clip-grad -1.0 must be > 0"),
    (["--layer-decay", "0"], "--layer-decay 0.0 must be > 0"),
    (["--min-lr", "-1"], "--min-lr -1.0 must be >= 0"),
    (["--warmup-epochs", "-1"], "--warmup-epochs -1 must be >= 0"),
    (["--cooldown-epochs", "-1"], "--cooldown-epochs -1 must be >= 0"),
    (["--sched", "step", "--decay-epochs", "0"], "--decay-epochs 0.0 must be > 0"),
    # a decay rate is a multiplier (step, multistep, plateau) or a power (poly): 0 or less made the rate 0 or
    # negative after the first cut; a plateau's patience below 0 cut the rate every epoch
    (["--sched", "plateau", "--decay-rate", "0"], "--decay-rate 0 must be > 0: step, multistep and plateau multiply"),
    (["--sched", "plateau", "--decay-rate", "-0.5"], "--decay-rate -0.5 must be > 0"),
    (["--sched", "step", "--dr", "0"], "--decay-rate 0 must be > 0"),
    (["--sched", "poly", "--decay-rate", "-1"], "--decay-rate -1 must be > 0"),
    (["--sched", "plateau", "--decay-rate", "1"], "--decay-rate 1 must be < 1 with --sched plateau"),
    (["--sched", "plateau", "--patience-epochs", "-1"], "--patience-epochs -1 must be >= 0"),
    (["--lr-cycle-mul", "0"], "--lr-cycle-mul 0.0 must be > 0"),
    (["--lr-cycle-limit", "0"], "--lr-cycle-limit 0 must be >= 1"),
    (["--start-epoch", "-1"], "--start-epoch -1 must be >= 0"),
    (["--seed", "-1"], "--seed -1 must be in [0, 2**31)"),
    # names timm does not know: a ValueError traceback from timm's factories before
    (["--sched", "nosuch"], "--sched 'nosuch' is not a timm scheduler."),
    (["--sched", "cosin"], "Did you mean cosine?"),
    (["--sched", "none"], "--sched none builds no schedule"),
    (["--opt", "nosuch"], "--opt 'nosuch' is not an optimizer timm knows."),
    (["--opt", "adamww"], "Did you mean adamw"),
    (["--opt", "lookahead_nosuch"], "--opt 'lookahead_nosuch' is not an optimizer timm knows."),
    # the data pipeline's own rules (written once, in its settings), before the data folder is looked at
    (["--aug-repeats", "2.5"], "--aug-repeats 2.5 is not supported; fix: use a whole number"),
    (["--aug-repeats", "-1"], "--aug-repeats -1 is not supported; fix: use a whole number >= 0"),
    (["--mix-group-size", "3"], "--mix-group-size 3 must be an even number >= 2"),
    (["--validation-batch-size", "0"], "--validation-batch-size 0 must be >= 1"),
    (["--workers", "-1"], "--workers -1 must be >= 0"),
])
def test_value_refused_before_anything_runs(argv, needle, capsys):
    assert train.main([*argv, "--data-dir", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text,needle", [
    ("mean: [0.5, oops, 0.5]\n", "mean: [0.5, oops, 0.5] is not a list of numbers (or a number), which --mean takes"),
    # null for a setting that always has a value: it ended in a TypeError traceback (or, where no check read it,
    # in a default copied elsewhere)
    *[(f"{key}: null\n", f"{key}: null, but --{key.replace('_', '-')} needs a value")
      for key in ("seed", "hflip", "mixup_mode", "mix_group_size", "remode")],
])
def test_a_config_value_of_the_wrong_kind_is_refused(text, needle, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    assert train.main(["-c", str(cfg), "--data-dir", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_valid_edges_are_accepted():
    from timm_deit_distill.commands.args import parse_args

    args = parse_args(["--crop-pct", "1", "--img-size", "1", "--scale", "1", "1", "--seed", "0",
                       "--interpolation", "bilinear", "--train-interpolation", "random", "--distill-tau", "1e-6"])
    assert (args.crop_pct, args.img_size, args.scale, args.seed) == (1.0, 1, [1.0, 1.0], 0)


@pytest.mark.parametrize("argv", [
    # timm's defaults, and the edges each schedule that reads the flag takes
    ["--sched", "plateau"], ["--sched", "step"], ["--sched", "multistep"], ["--sched", "poly"],
    ["--sched", "plateau", "--patience-epochs", "0", "--decay-rate", "0.999"],
    ["--sched", "step", "--decay-rate", "1"], ["--sched", "multistep", "--decay-rate", "1"],
    ["--sched", "poly", "--decay-rate", "2"],
])
def test_schedule_values_every_schedule_can_use_are_accepted(argv):
    from timm_deit_distill.commands.args import parse_args

    args = parse_args(argv)
    assert args.sched == argv[1]


@pytest.mark.parametrize("argv", [["--img-size", "0"], ["--input-size", "0", "32", "32"], ["--crop-pct", "-1"],
                                  ["--ratio", "0", "1"]])
def test_on_real_data_nothing_is_written(argv, tmp_path, capsys):
    """These used to start the run (args.yaml written) and die with a traceback in the first epoch."""
    data = digits(tmp_path / "digits", train_per_class=2)
    out = tmp_path / "runs"
    assert train.main(["--data-dir", str(data), *STUDENT, *FAST, "--epochs", "1", "--output", str(out),
                       "--experiment", "r", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deit-distill train: error: ") and "Traceback" not in err
    assert not out.exists()


def test_a_config_number_that_is_not_whole_for_a_whole_number_flag_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 2.5\n")  # argparse converts only what the command line gives
    assert train.main(["-c", str(cfg), "--data-dir", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "epochs: 2.5 is not a whole number, which --epochs takes" in err and len(err.strip().splitlines()) == 1



def test_the_scheduler_names_are_timms():
    """TIMM_SCHEDULERS lists what timm's create_scheduler_v2 builds: each builds one, and its code knows no other."""
    import inspect
    import re

    import torch
    from timm.scheduler import create_scheduler_v2, scheduler_factory

    from timm_deit_distill.factory.options import TIMM_SCHEDULERS

    in_timm = set(re.findall(r"sched == '(\w+)'", inspect.getsource(scheduler_factory.create_scheduler_v2)))
    for group in re.findall(r"sched in \(([^)]*)\)", inspect.getsource(scheduler_factory.create_scheduler_v2)):
        in_timm |= set(re.findall(r"'(\w+)'", group))
    assert set(TIMM_SCHEDULERS) == in_timm - {"none"}
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for name in TIMM_SCHEDULERS:
        scheduler, _ = create_scheduler_v2(optimizer, sched=name, num_epochs=10, decay_epochs=2, warmup_epochs=1)
        assert scheduler is not None


def test_timms_own_refusal_of_optimizer_and_schedule_settings_is_one_line(tmp_path, capsys):
    data = digits(tmp_path / "digits", train_per_class=1)
    out = tmp_path / "runs"
    for argv, needle in ((["--opt-kwargs", "foo=1"], "timm could not build the optimizer (TypeError: "),
                         (["--sched", "wsd", "--decay-epochs", "5"], "--sched wsd: timm refused the schedule (wsd")):
        assert train.main(["--data-dir", str(data), *STUDENT, *FAST, "--epochs", "2", "--output", str(out),
                           "--experiment", "r", *argv]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
