"""`deit-distill train`'s parser: timm train.py's flags and defaults, recipes, config files, aliases, refusals.

The reference below is timm train.py's own parser (timm commit aa4b5850, read from its argparse calls):
every flag, its default and its kind. The tests hold the trainer to it flag by flag.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

import pytest
import yaml

from timm_deit_distill.commands import train
from timm_deit_distill.commands.args import UsageError, build_parser, format_config, parse_args
from timm_deit_distill.factory import options
from timm_deit_distill.factory.options import UNSUPPORTED_TIMM_FLAGS, list_recipes
from timm_deit_distill.factory.settings import settings_from_options


def config_dict(args):
    return options.config_dict(build_parser(), args)

# (flag, timm's default, kind) for all 171 options of timm train.py besides -c.
TIMM_TRAIN_FLAGS = [
    ('--data-dir', None, ''),
    ('--dataset', '', ''),
    ('--train-split', 'train', ''),
    ('--val-split', 'validation', ''),
    ('--train-num-samples', None, 'type=int'),
    ('--val-num-samples', None, 'type=int'),
    ('--dataset-download', False, 'flag'),
    ('--class-map', '', 'type=str'),
    ('--input-img-mode', None, 'type=str'),
    ('--input-key', None, 'type=str'),
    ('--target-key', None, 'type=str'),
    ('--dataset-trust-remote-code', False, 'flag'),
    ('--model', 'resnet50', 'type=str'),
    ('--pretrained', False, 'flag'),
    ('--pretrained-path', None, 'type=str'),
    ('--initial-checkpoint', '', 'type=str'),
    ('--resume', '', 'type=str'),
    ('--no-resume-opt', False, 'flag'),
    ('--num-classes', None, 'type=int'),
    ('--gp', None, 'type=str'),
    ('--img-size', None, 'type=int'),
    ('--in-chans', None, 'type=int'),
    ('--input-size', None, 'nargs=3; type=int'),
    ('--crop-pct', None, 'type=float'),
    ('--mean', None, 'nargs=+; type=float'),
    ('--std', None, 'nargs=+; type=float'),
    ('--interpolation', '', 'type=str'),
    ('--batch-size', 128, 'type=int'),
    ('--validation-batch-size', None, 'type=int'),
    ('--channels-last', False, 'flag'),
    ('--fuser', '', 'type=str'),
    ('--grad-accum-steps', 1, 'type=int'),
    ('--grad-checkpointing', False, 'flag'),
    ('--fast-norm', False, 'flag'),
    ('--model-kwargs', {}, 'nargs=*'),
    ('--head-init-scale', None, 'type=float'),
    ('--head-init-bias', None, 'type=float'),
    ('--torchcompile-mode', None, 'type=str'),
    ('--torchscript', False, 'flag'),
    ('--torchcompile', None, "nargs=?; type=str; const='inductor'"),
    ('--device', 'cuda', 'type=str'),
    ('--amp', False, 'flag'),
    ('--amp-dtype', 'float16', 'type=str'),
    ('--model-dtype', None, 'type=str'),
    ('--no-ddp-bb', False, 'flag'),
    ('--synchronize-step', False, 'flag'),
    ('--local_rank', 0, 'type=int'),
    ('--device-modules', None, 'nargs=+; type=str'),
    ('--opt', 'sgd', 'type=str'),
    ('--opt-eps', None, 'type=float'),
    ('--opt-betas', None, 'nargs=+; type=float'),
    ('--momentum', 0.9, 'type=float'),
    ('--weight-decay', 2e-05, 'type=float'),
    ('--clip-grad', None, 'type=float'),
    ('--clip-mode', 'norm', 'type=str'),
    ('--layer-decay', None, 'type=float'),
    ('--layer-decay-min-scale', 0, 'type=float'),
    ('--layer-decay-no-opt-scale', None, 'type=float'),
    ('--opt-kwargs', {}, 'nargs=*'),
    ('--sched', 'cosine', 'type=str'),
    ('--sched-on-updates', False, 'flag'),
    ('--lr', None, 'type=float'),
    ('--lr-base', 0.1, 'type=float'),
    ('--lr-base-size', 256, 'type=int'),
    ('--lr-base-scale', '', 'type=str'),
    ('--lr-noise', None, 'nargs=+; type=float'),
    ('--lr-noise-pct', 0.67, 'type=float'),
    ('--lr-noise-std', 1.0, 'type=float'),
    ('--lr-cycle-mul', 1.0, 'type=float'),
    ('--lr-cycle-decay', 0.5, 'type=float'),
    ('--lr-cycle-limit', 1, 'type=int'),
    ('--lr-k-decay', 1.0, 'type=float'),
    ('--warmup-lr', 1e-05, 'type=float'),
    ('--min-lr', 0, 'type=float'),
    ('--epochs', 300, 'type=int'),
    ('--epoch-repeats', 0.0, 'type=float'),
    ('--start-epoch', None, 'type=int'),
    ('--decay-milestones', [90, 180, 270], 'nargs=+; type=int'),
    ('--decay-epochs', 90, 'type=float'),
    ('--warmup-epochs', 5, 'type=int'),
    ('--warmup-prefix', False, 'flag'),
    ('--cooldown-epochs', 0, 'type=int'),
    ('--patience-epochs', 10, 'type=int'),
    ('--decay-rate', 0.1, 'type=float'),
    ('--no-aug', False, 'flag'),
    ('--train-crop-mode', None, 'type=str'),
    ('--scale', [0.08, 1.0], 'nargs=+; type=float'),
    ('--ratio', [0.75, 1.3333333333333333], 'nargs=+; type=float'),
    ('--hflip', 0.5, 'type=float'),
    ('--vflip', 0.0, 'type=float'),
    ('--color-jitter', 0.4, 'type=float'),
    ('--color-jitter-prob', None, 'type=float'),
    ('--grayscale-prob', None, 'type=float'),
    ('--gaussian-blur-prob', None, 'type=float'),
    ('--aa', None, 'type=str'),
    ('--aug-repeats', 0, 'type=float'),
    ('--aug-splits', 0, 'type=int'),
    ('--jsd-loss', False, 'flag'),
    ('--bce-loss', False, 'flag'),
    ('--bce-sum', False, 'flag'),
    ('--bce-target-thresh', None, 'type=float'),
    ('--bce-pos-weight', None, 'type=float'),
    ('--reprob', 0.0, 'type=float'),
    ('--remode', 'pixel', 'type=str'),
    ('--recount', 1, 'type=int'),
    ('--resplit', False, 'flag'),
    ('--mixup', 0.0, 'type=float'),
    ('--cutmix', 0.0, 'type=float'),
    ('--cutmix-minmax', None, 'nargs=+; type=float'),
    ('--mixup-prob', 1.0, 'type=float'),
    ('--mixup-switch-prob', 0.5, 'type=float'),
    ('--mixup-mode', 'batch', 'type=str'),
    ('--mixup-off-epoch', 0, 'type=int'),
    ('--smoothing', 0.1, 'type=float'),
    ('--train-interpolation', 'random', 'type=str'),
    ('--drop', 0.0, 'type=float'),
    ('--drop-connect', None, 'type=float'),
    ('--drop-path', None, 'type=float'),
    ('--drop-block', None, 'type=float'),
    ('--bn-momentum', None, 'type=float'),
    ('--bn-eps', None, 'type=float'),
    ('--sync-bn', False, 'flag'),
    ('--dist-bn', 'reduce', 'type=str'),
    ('--split-bn', False, 'flag'),
    ('--model-ema', False, 'flag'),
    ('--model-ema-force-cpu', False, 'flag'),
    ('--model-ema-decay', 0.9998, 'type=float'),
    ('--model-ema-warmup', False, 'flag'),
    ('--seed', 42, 'type=int'),
    ('--worker-seeding', 'all', 'type=str'),
    ('--log-interval', 50, 'type=int'),
    ('--val-interval', 1, 'type=int'),
    ('--recovery-interval', 0, 'type=int'),
    ('--checkpoint-hist', 10, 'type=int'),
    ('--workers', 4, 'type=int'),
    ('--save-images', False, 'flag'),
    ('--pin-mem', False, 'flag'),
    ('--no-prefetcher', False, 'flag'),
    ('--output', '', 'type=str'),
    ('--experiment', '', 'type=str'),
    ('--eval-metric', 'top1', 'type=str'),
    ('--tta', 0, 'type=int'),
    ('--use-multi-epochs-loader', False, 'flag'),
    ('--log-wandb', False, 'flag'),
    ('--wandb-project', None, 'type=str'),
    ('--wandb-tags', [], 'nargs=+; type=str'),
    ('--wandb-resume-id', '', 'type=str'),
    ('--train-img-sizes', None, 'nargs=+; type=int'),
    ('--train-batch-sizes', None, 'nargs=+; type=int'),
    ('--train-size-probs', None, 'nargs=+; type=float'),
    ('--train-size-schedule', 'constant', 'choices=constant,progressive; type=str'),
    ('--train-size-schedule-spread', 0.65, 'type=float'),
    ('--train-size-random-mix', 0.1, 'type=float'),
    ('--train-batches-per-epoch', None, 'type=int'),
    ('--variable-batch-loss-scale', 'none', 'choices=none,sqrt,linear; type=str'),
    ('--naflex-loader', False, 'flag'),
    ('--naflex-train-seq-lens', [128, 256, 576, 784, 1024], 'nargs=+; type=int'),
    ('--naflex-max-seq-len', 576, 'type=int'),
    ('--naflex-patch-sizes', None, 'nargs=+; type=int'),
    ('--naflex-patch-size-probs', None, 'nargs=+; type=float'),
    ('--naflex-loss-scale', 'linear', 'choices=none,sqrt,linear; type=str'),
    ('--naflex-patchify-channels-first', False, 'flag'),
    ('--kd-model-name', None, 'type=str'),
    ('--kd-distill-type', 'logit', 'choices=logit,feature,token; type=str'),
    ('--kd-loss-type', 'kl', 'type=str'),
    ('--distill-loss-weight', None, 'type=float'),
    ('--task-loss-weight', None, 'type=float'),
    ('--kd-temperature', 4.0, 'type=float'),
    ('--kd-student-feature-dim', None, 'type=int'),
    ('--kd-teacher-feature-dim', None, 'type=int'),
    ('--kd-token-distill-type', 'soft', 'choices=soft,hard; type=str'),
]

# Defaults that differ from timm's on purpose (each resolved and tested below).
DOCUMENTED_DEVIATIONS = {
    "--device": None,  # cuda when available, else cpu (timm's 'cuda' fails on CPU-only machines)
    "--kd-temperature": None,  # timm's 4.0 applies once the teacher is named with --kd-model-name
    "--kd-token-distill-type": None,  # timm's 'soft' applies once the teacher is named with --kd-model-name
}
UNSUPPORTED = {flags[0] for flags, _, _ in UNSUPPORTED_TIMM_FLAGS} | {
    alias for flags, _, _ in UNSUPPORTED_TIMM_FLAGS for alias in flags}
ALIASES = {"--kd-model-name", "--kd-distill-type", "--kd-token-distill-type", "--kd-temperature",
           "--task-loss-weight", "--distill-loss-weight"}


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _sample_value(flag: str, default: object, kind: str) -> list[str]:
    """A non-default value of the right type for ``flag``."""
    if "flag" in kind.split("; "):
        return []
    if "choices=" in kind:
        choices = kind.split("choices=")[1].split(";")[0].split(",")
        return [next(c for c in choices if c != default)]
    if "nargs=3" in kind:
        return ["3", "40", "40"]
    if flag in ("--model-kwargs", "--opt-kwargs"):
        return ["depth=2"]
    if "type=int" in kind:
        return ["3"]
    if "type=float" in kind or isinstance(default, float):
        return ["0.25"]
    return ["somevalue"]


def test_every_timm_default_is_timms():
    defaults = {a.dest: a.default for a in build_parser()._actions}
    for flag, default, _ in TIMM_TRAIN_FLAGS:
        expected = DOCUMENTED_DEVIATIONS.get(flag, default) if flag in DOCUMENTED_DEVIATIONS else default
        got = defaults[_dest(flag)]
        assert got == expected, f"{flag}: default {got!r}, timm's is {default!r}"


@pytest.mark.parametrize("flag,default,kind", TIMM_TRAIN_FLAGS, ids=[f[0] for f in TIMM_TRAIN_FLAGS])
def test_every_timm_flag_is_used_or_refused_by_name(flag, default, kind):
    value = _sample_value(flag, default, kind)
    try:
        args = parse_args([flag, *value])
    except UsageError as e:
        assert flag in str(e), f"refusal of {flag} does not name it: {e}"
        return
    assert flag not in UNSUPPORTED, f"{flag} {value} was accepted although unsupported"
    if flag in ALIASES:
        return  # folded into the distill_* settings; see the alias tests
    if flag == "--local_rank":
        return  # written by old launchers; timm too takes the rank from the environment
    parsed = getattr(args, _dest(flag))
    assert parsed != default or flag in DOCUMENTED_DEVIATIONS, f"{flag} {value} did not change the setting"
    # Every accepted flag reaches the settings the run uses (and args.yaml): none is silently dropped.
    assert config_dict(args)[_dest(flag)] == (list(parsed) if isinstance(parsed, tuple) else parsed)


def test_unsupported_flag_at_timms_default_is_accepted_and_other_values_refused(capsys):
    assert parse_args(["--aug-splits", "0", "--no-prefetcher"]).aug_splits == 0
    assert train.main(["--aug-splits", "3", "--data-dir", "x"]) == 2
    err = capsys.readouterr().err
    assert "--aug-splits" in err and "does not support" in err and "Traceback" not in err


def test_positional_data_and_timm_short_flags():
    args = parse_args(["/data/imagenet", "-b", "32", "-vb", "64", "-j", "2", "--dr", "0.5"])
    assert (args.data_dir, args.batch_size, args.validation_batch_size, args.workers, args.decay_rate) == (
        "/data/imagenet", 32, 64, 2, 0.5)


# --- recipes ------------------------------------------------------------------------------------------------

PAPER = dict(opt="adamw", opt_eps=1e-8, sched="cosine", warmup_epochs=5, warmup_lr=1e-6,
             drop_path=0.1, aa="rand-m9-mstd0.5-inc1", mixup=0.8, cutmix=1.0, reprob=0.25, smoothing=0.1,
             aug_repeats=3, model_ema=True, model_ema_decay=0.99996, distill_teacher="regnety_160.deit_in1k",
             distill_type="hard", distill_alpha=0.5, distill_tau=1.0, distill_soft_reduction="deit",
             cooldown_epochs=0)


@pytest.mark.parametrize("recipe,model,epochs,wd,lr_base,min_lr", [
    ("deit_tiny", "deit_tiny_distilled_patch16_224", 300, 0.05, 5e-4, 1e-5),
    ("deit_small", "deit_small_distilled_patch16_224", 300, 0.05, 5e-4, 1e-5),
    ("deit_base", "deit_base_distilled_patch16_224", 300, 0.05, 5e-4, 1e-5),
    ("deit_base_384", "deit_base_distilled_patch16_384", 30, 1e-8, 5e-6, 5e-6),
])
def test_recipe_has_the_papers_settings(recipe, model, epochs, wd, lr_base, min_lr):
    args = parse_args(["--recipe", recipe])
    got = {k: getattr(args, k) for k in PAPER}
    assert got == PAPER
    assert (args.model, args.epochs, args.weight_decay, args.min_lr) == (model, epochs, wd, min_lr)
    # lr = base x global batch / 512, linear: DeiT's linear_scaled_lr for any batch and world size.
    for batch, world in ((64, 16), (128, 1), (32, 2)):
        args.batch_size = batch
        assert settings_from_options(args).learning_rate(world)[0] == pytest.approx(lr_base * batch * world / 512)
    if recipe == "deit_base_384":
        assert args.img_size == 384 and args.pretrained  # fine-tuning, with distillation allowed


def test_recipes_listed():
    assert list_recipes() == ["deit_base", "deit_base_384", "deit_small", "deit_tiny"]


def test_explicit_flags_and_config_override_the_recipe(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("epochs: 100\nmixup: 0.0\nbatch-size: 48\n")
    args = parse_args(["--recipe", "deit_tiny", "-c", str(cfg), "--epochs", "5", "--distill-type", "soft",
                       "--model", "deit_tiny_distilled_patch4_32"])
    assert (args.epochs, args.mixup, args.batch_size, args.distill_type, args.model) == (
        5, 0.0, 48, "soft", "deit_tiny_distilled_patch4_32")
    assert args.cutmix == 1.0  # untouched recipe values stay


def test_config_may_name_the_recipe(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("recipe: deit_small\nepochs: 7\n")
    args = parse_args(["-c", str(cfg)])
    assert (args.recipe, args.model, args.epochs) == ("deit_small", "deit_small_distilled_patch16_224", 7)


def test_unknown_recipe_and_config_key_are_refused_with_suggestions(tmp_path):
    with pytest.raises(UsageError, match="deit_tiny"):
        parse_args(["--recipe", "deit_tiyn"])
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("warmup_epoch: 3\n")
    with pytest.raises(UsageError, match="warmup_epochs"):
        parse_args(["-c", str(cfg)])


def test_timms_own_args_yaml_loads_as_config(tmp_path):
    # timm's train.py dumps every parser dest (defaults included) plus 'config' into args.yaml.
    timm_args = {_dest(flag): default for flag, default, _ in TIMM_TRAIN_FLAGS}
    timm_args.update(config="", data=None, device="cpu", model="resnet18", epochs=12, kd_temperature=4.0)
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump(timm_args))
    args = parse_args(["-c", str(path), "--distill-teacher", "resnet10t"])
    assert (args.model, args.epochs) == ("resnet18", 12)
    # kd_temperature in a timm args.yaml without a KD teacher is inert there, so it is inert here.
    assert args.distill_tau == 1.0


def test_print_config_is_yaml_that_reloads(tmp_path, capsys):
    assert train.main(["--recipe", "deit_tiny", "-b", "32", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "batch_size: 32  # on the command line" in out and "mixup: 0.8  # in the recipe" in out
    assert "0.0005 = --lr-base 0.0005 x (32 global batch / 512)" not in out  # 32/512 scales it
    assert "lr-base 0.0005 x (32 global batch / 512)" in out
    resolved = yaml.safe_load(out)
    path = tmp_path / "resolved.yaml"
    path.write_text(out)
    assert config_dict(parse_args(["-c", str(path)])) == resolved


def test_args_yaml_round_trip(tmp_path):
    args = parse_args(["--recipe", "deit_small", "--teacher-model", "resnet10t", "--distillation-type", "soft",
                       "--model-kwargs", "depth=2", "--input-size", "3", "40", "40"])
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump(config_dict(args)))
    again = parse_args(["-c", str(path)])
    assert config_dict(again) == config_dict(args)


# --- distillation settings and their aliases -------------------------------------------------------------------

def _distill(argv):
    a = parse_args(argv)
    return (a.distill_teacher, a.distill_teacher_path, a.distill_type, a.distill_alpha, a.distill_tau,
            a.distill_soft_reduction)


def test_defaults_without_and_with_a_teacher():
    assert _distill([]) == (None, None, "none", 0.5, 1.0, "deit")
    assert _distill(["--distill-teacher", "resnet10t"]) == ("resnet10t", None, "hard", 0.5, 1.0, "deit")


def test_deit_spellings_equal_ours():
    ours = _distill(["--distill-teacher", "resnet10t", "--distill-teacher-path", "t.pth", "--distill-type", "soft",
                     "--distill-alpha", "0.3", "--distill-tau", "2.0"])
    deit = _distill(["--teacher-model", "resnet10t", "--teacher-path", "t.pth", "--distillation-type", "soft",
                     "--distillation-alpha", "0.3", "--distillation-tau", "2.0"])
    assert ours == deit == ("resnet10t", "t.pth", "soft", 0.3, 2.0, "deit")


def _timm_distill(argv):
    s = settings_from_options(parse_args(argv)).distill
    return (s.family, s.kd_distill_type, s.type, s.tau, s.soft_reduction, s.weight_mode, s.weights)


def test_timm_spellings_keep_timms_meaning_and_defaults():
    """timm's spellings are timm's tasks: logit by default, soft token term, temperature 4.0, KL divided by the
    batch, and the weights in timm's three modes (1.0 and 1.0 unless given), never DeiT's alpha 0.5."""
    assert _timm_distill(["--kd-model-name", "resnet10t"]) == (
        "timm", "logit", "soft", 4.0, "batchmean", "equal", (1.0, 1.0))
    assert _timm_distill(["--kd-model-name", "resnet10t", "--kd-distill-type", "token"]) == (
        "timm", "token", "soft", 4.0, "batchmean", "equal", (1.0, 1.0))
    got = _timm_distill(["--kd-model-name", "resnet10t", "--kd-distill-type", "token", "--kd-token-distill-type",
                         "hard", "--kd-temperature", "2", "--task-loss-weight", "0.7"])
    assert got[:5] == ("timm", "token", "hard", 2.0, "batchmean") and got[5] == "complementary"
    assert got[6] == pytest.approx((0.7, 0.3))
    assert _timm_distill(["--kd-model-name", "t", "--distill-loss-weight", "3"])[5:] == ("independent", (1.0, 3.0))
    assert _timm_distill(["--kd-model-name", "t", "--distill-loss-weight", "3", "--task-loss-weight", "0.2"])[5:] == (
        "independent", (0.2, 3.0))
    assert _timm_distill(["--kd-model-name", "t", "--kd-distill-type", "feature"])[:3] == ("timm", "feature", "feature")
    deit = settings_from_options(parse_args(["--distill-teacher", "t", "--distill-alpha", "0.3"])).distill
    assert (deit.family, deit.kd_distill_type, deit.weight_mode, deit.weights) == ("deit", None, "deit", (0.7, 0.3))


@pytest.mark.parametrize("argv,needle", [
    (["--distill-teacher", "t", "--task-loss-weight", "0.5"],
     "--distill-teacher (on the command line) is DeiT's distillation spelling and --task-loss-weight"),
    (["--kd-model-name", "t", "--distill-type", "hard"], "--kd-token-distill-type instead of --distill-type"),
    (["--teacher-model", "t", "--kd-temperature", "2"], "--distill-tau instead of --kd-temperature"),
    (["--kd-model-name", "t", "--distill-alpha", "0.2"], "--distill-loss-weight instead of --distill-alpha"),
])
def test_mixing_deit_and_timm_spellings_is_refused_saying_which_to_use(argv, needle, capsys):
    assert train.main([*argv, "--data-dir", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "one run uses one family" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_mixing_across_the_config_file_and_the_command_line_is_refused(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("kd_model_name: resnet10t\nkd_distill_type: token\n")
    with pytest.raises(UsageError, match=r"--distill-alpha \(on the command line\).*--kd-model-name \(in the --config"):
        parse_args(["-c", str(config), "--distill-alpha", "0.3"])
    # timm's own args.yaml of a run without a teacher holds inert kd_* keys: they mix with nothing
    config.write_text("kd_model_name: null\nkd_distill_type: logit\nkd_temperature: 4.0\n")
    assert parse_args(["-c", str(config), "--distill-alpha", "0.3"]).distill_alpha == 0.3


def test_a_recipes_distillation_gives_way_to_timms_spelling_whole():
    s = settings_from_options(parse_args(["--recipe", "deit_tiny", "--kd-model-name", "resnet10t"])).distill
    assert (s.family, s.type, s.weights, s.tau) == ("timm", "soft", (1.0, 1.0), 4.0)


def test_alias_conflict_is_refused_but_alias_beats_recipe():
    with pytest.raises(UsageError, match="set twice"):
        parse_args(["--distill-alpha", "0.2", "--distillation-alpha", "0.4"])
    assert parse_args(["--recipe", "deit_tiny", "--distillation-type", "soft"]).distill_type == "soft"
    assert parse_args(["--recipe", "deit_tiny", "--teacher-model", "resnet10t"]).distill_teacher == "resnet10t"


@pytest.mark.parametrize("argv,needle", [
    (["--distill-tau", "0"], "--distill-tau 0.0 must be > 0"),
    (["--distillation-tau", "-1"], "--distillation-tau -1.0 must be > 0"),
    (["--kd-model-name", "t", "--task-loss-weight", "1.5"], "--task-loss-weight 1.5 alone weighs the distillation"),
    (["--kd-model-name", "t", "--distill-loss-weight", "-1"], "--distill-loss-weight -1.0 must be >= 0"),
    (["--task-loss-weight", "0.5"], "--task-loss-weight is timm's distillation, which needs its teacher"),
    (["--kd-model-name", "t", "--kd-loss-type", "mse"], "--kd-loss-type 'mse': timm's LogitDistillationTask"),
    (["--kd-model-name", "t", "--kd-distill-type", "feature", "--distill-cache", "c"], "drop --distill-cache"),
    (["--kd-model-name", "t", "--kd-token-distill-type", "hard"], "applies to --kd-distill-type token, not logit"),
    (["--distill-alpha", "1.5"], "--distill-alpha 1.5 is outside [0, 1]"),
    (["--distill-alpha", "-0.1"], "--distill-alpha -0.1 is outside [0, 1]"),
    (["--distill-type", "hard"], "needs a teacher"),
    (["-b", "0"], "--batch-size 0 must be >= 1"),
    (["--smoothing", "1.0"], "--smoothing"),
    (["--amp-dtype", "int8"], "--amp-dtype"),
])
def test_invalid_values_are_refused_before_anything_runs(argv, needle, capsys):
    assert train.main([*argv, "--data-dir", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_refusal_from_the_real_command_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "timm_deit_distill", "train", "--distill-tau", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--distill-tau 0.0 must be > 0" in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_the_flag_groups():
    text = build_parser().format_help()
    for needle in ("--distill-teacher", "--teacher-model", "--kd-model-name", "--recipe", "--print-config",
                   "--img-size", "--aug-repeats", "--distill-cache", "--deterministic-aug"):
        assert needle in text
    assert "--aug-splits" in text  # listed among the refused timm flags in the epilog


def test_format_config_reports_the_resolved_lr():
    args = parse_args(["--recipe", "deit_tiny"])
    assert "1024 global batch / 512" in format_config(args, world_size=16)
    assert isinstance(args, argparse.Namespace)


def test_a_timm_command_line_runs_unchanged_plus_a_teacher():
    # timm's documented ViT/DeiT-style ImageNet command (train.py flags) for a distilled DeiT, plus a teacher.
    timm_line = shlex.split("/imagenet --model deit_base_distilled_patch16_224 --sched cosine --epochs 300 --opt adamw -j 8 "
                 "--warmup-lr 1e-6 --mixup .8 --cutmix 1.0 --model-ema --model-ema-decay 0.99996 "
                 "--aa rand-m9-mstd0.5-inc1 --remode pixel --reprob 0.25 --amp --lr 5e-4 --weight-decay .05 "
                 "--drop 0.1 --drop-path .1 -b 288")
    args = parse_args([*timm_line, "--distill-teacher", "regnety_160.deit_in1k"])
    assert (args.data_dir, args.model, args.opt, args.lr, args.batch_size, args.model_ema_decay, args.amp) == (
        "/imagenet", "deit_base_distilled_patch16_224", "adamw", 5e-4, 288, 0.99996, True)
    assert (args.distill_teacher, args.distill_type, args.distill_alpha) == ("regnety_160.deit_in1k", "hard", 0.5)


def test_train_is_reached_through_the_deit_distill_command(capsys):
    from timm_deit_distill.commands.cli import main as cli_main

    assert cli_main(["train", "--recipe", "deit_small", "--print-config"]) == 0
    assert "model: deit_small_distilled_patch16_224  # in the recipe" in capsys.readouterr().out
    assert cli_main(["train", "--distill-alpha", "3"]) == 2
