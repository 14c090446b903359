"""`deit-distill train`'s command line: timm train.py's flags, DeiT's recipes, one set of distillation settings.

Layers, lowest first: timm train.py's defaults < ``--recipe`` YAML < ``-c/--config`` YAML < the command line.
A timm flag this trainer does not implement is still parsed (so timm command lines and timm's own
``args.yaml`` files read), but any value other than timm's default is refused by name.

Distillation has three spellings that resolve to one setting each (``distill_*``):

=====================  ==========================  ==============================================
this package           facebookresearch/deit       timm train.py
=====================  ==========================  ==============================================
--distill-teacher      --teacher-model             --kd-model-name (with --kd-distill-type token)
--distill-teacher-path --teacher-path              (none)
--distill-type         --distillation-type         --kd-token-distill-type
--distill-alpha        --distillation-alpha        1 - --task-loss-weight
--distill-tau          --distillation-tau          --kd-temperature
=====================  ==========================  ==============================================

When the teacher is named with timm's ``--kd-model-name``, the unset settings take timm's defaults
(soft, temperature 4.0, ``batchmean`` soft reduction) so a timm command line computes timm's loss terms;
with the other spellings they take DeiT's (hard when a teacher is given, tau 1.0, DeiT's reduction).
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml
from timm.utils import ParseKwargs

from ..data import (
    CHECK_IMAGES,
    AugmentSettings,
    DataSettings,
    LoaderSettings,
    check_views_supported,
    dataset_help,
    resolve_input_img_mode,
)
from ..errors import UsageError
from ..factory import StudentSettings
from ..losses import DistillSettings
from ..teacher import COMPILE_CHOICES, MIN_AGREEMENT, PRECISIONS, TeacherSettings
from .common import TEACHER_EMA, ArgumentParser, add_either_flag

__all__ = [
    "HelpFormatter", "UsageError", "build_parser", "parse_args", "list_recipes", "load_recipe", "config_dict",
    "format_config", "resolve_lr", "UNSUPPORTED_TIMM_FLAGS", "DISTILL_KEYS", "TEACHER_CHECK_IMAGES",
    "add_teacher_check_flags", "add_teacher_path_flags", "validate_teacher_check_flags", "TrainSettings",
    "settings_from_args", "teacher_settings", "TIMM_SCHEDULERS", "add_dataset_flags", "DATASET_HELP",
]

DISTILL_KEYS = ("distill_teacher", "distill_teacher_path", "distill_type", "distill_alpha", "distill_tau",
                "distill_soft_reduction")


# --------------------------------------------------------------------------------------------------
# timm train.py flags this trainer parses but does not implement. (flags, argparse kwargs, why/what instead)
# --------------------------------------------------------------------------------------------------
_F, _I, _S = float, int, str
UNSUPPORTED_TIMM_FLAGS: list[tuple[tuple[str, ...], dict[str, Any], str]] = [
    (("--dataset-trust-remote-code",), dict(action="store_true", default=False), "no remote dataset code is ever run"),
    (("--fuser",), dict(type=_S, default=""), "TorchScript fusers are not used; try --torchcompile"),
    (("--torchscript",), dict(action="store_true", default=False), "TorchScript is not used; try --torchcompile"),
    (("--model-dtype",), dict(type=_S, default=None), "use --amp --amp-dtype bfloat16 for low-precision training"),
    (("--epoch-repeats",), dict(type=_F, default=0.0), "an epoch is one pass over the data (timm's wds/ reader ignores it too)"),
    (("--aug-splits",), dict(type=_I, default=0), "AugMix splits / JSD loss are not part of DeiT's recipe"),
    (("--jsd-loss",), dict(action="store_true", default=False), "AugMix splits / JSD loss are not part of DeiT's recipe"),
    (("--resplit",), dict(action="store_true", default=False), "it only applies with --aug-splits"),
    (("--bce-loss",), dict(action="store_true", default=False), "the base loss is cross-entropy as in DeiT"),
    (("--bce-sum",), dict(action="store_true", default=False), "the base loss is cross-entropy as in DeiT"),
    (("--bce-target-thresh",), dict(type=_F, default=None), "the base loss is cross-entropy as in DeiT"),
    (("--bce-pos-weight",), dict(type=_F, default=None), "the base loss is cross-entropy as in DeiT"),
    (("--split-bn",), dict(action="store_true", default=False), "it only applies with --aug-splits"),
    (("--worker-seeding",), dict(type=_S, default="all"), "worker seeding is fixed so views are reproducible"),
    (("--recovery-interval",), dict(type=_I, default=0), "checkpoints are written at epoch ends, where --resume is exact"),
    (("--save-images",), dict(action="store_true", default=False), "training batches are not saved"),
    (("--tta",), dict(type=_I, default=0), "test-time augmentation is not implemented"),
    (("--use-multi-epochs-loader",), dict(action="store_true", default=False), "the loader comes from timm_deit_distill.data"),
    (("--log-wandb",), dict(action="store_true", default=False), "metrics go to summary.csv and curves.png"),
    (("--wandb-project",), dict(type=_S, default=None), "metrics go to summary.csv and curves.png"),
    (("--wandb-tags",), dict(type=_S, nargs="+", default=[]), "metrics go to summary.csv and curves.png"),
    (("--wandb-resume-id",), dict(type=_S, default=""), "metrics go to summary.csv and curves.png"),
    (("--train-img-sizes",), dict(type=_I, nargs="+", default=None), "variable-resolution batches are not implemented"),
    (("--train-batch-sizes",), dict(type=_I, nargs="+", default=None), "variable-resolution batches are not implemented"),
    (("--train-size-probs",), dict(type=_F, nargs="+", default=None), "variable-resolution batches are not implemented"),
    (("--train-size-schedule",), dict(type=_S, default="constant"), "variable-resolution batches are not implemented"),
    (("--train-size-schedule-spread",), dict(type=_F, default=0.65), "variable-resolution batches are not implemented"),
    (("--train-size-random-mix",), dict(type=_F, default=0.1), "variable-resolution batches are not implemented"),
    (("--train-batches-per-epoch", "--train-steps-per-epoch"), dict(type=_I, default=None), "an epoch is one pass over the (repeated) dataset"),
    (("--variable-batch-loss-scale",), dict(type=_S, default="none"), "variable-resolution batches are not implemented"),
    (("--naflex-loader",), dict(action="store_true", default=False), "NaFlex models are not DeiT students"),
    (("--naflex-train-seq-lens",), dict(type=_I, nargs="+", default=[128, 256, 576, 784, 1024]), "NaFlex models are not DeiT students"),
    (("--naflex-max-seq-len",), dict(type=_I, default=576), "NaFlex models are not DeiT students"),
    (("--naflex-patch-sizes",), dict(type=_I, nargs="+", default=None), "NaFlex models are not DeiT students"),
    (("--naflex-patch-size-probs",), dict(type=_F, nargs="+", default=None), "NaFlex models are not DeiT students"),
    (("--naflex-loss-scale",), dict(type=_S, default="linear"), "NaFlex models are not DeiT students"),
    (("--naflex-patchify-channels-first",), dict(action="store_true", default=False), "NaFlex models are not DeiT students"),
    (("--kd-loss-type",), dict(type=_S, default="kl"), "it configures timm's logit distillation; DeiT's token distillation uses --distill-type soft|hard"),
    (("--kd-student-feature-dim",), dict(type=_I, default=None), "feature distillation is not DeiT's; use --distill-type soft|hard"),
    (("--kd-teacher-feature-dim",), dict(type=_I, default=None), "feature distillation is not DeiT's; use --distill-type soft|hard"),
]

# Keys a YAML config may hold without being flags: timm's args.yaml records its own -c path; the trainer's
# records the settings each --resume changed and the teacher check it measured (records of a run, not settings).
_CONFIG_BOOKKEEPING = {"config", "resumed", "teacher_check"}
# Aliases, their canonical setting, and the spelling family they belong to.
_DEIT_ALIASES = {"teacher_model": "distill_teacher", "teacher_path": "distill_teacher_path",
                 "distillation_type": "distill_type", "distillation_alpha": "distill_alpha",
                 "distillation_tau": "distill_tau"}
_TIMM_KD = ("kd_model_name", "kd_distill_type", "kd_token_distill_type", "kd_temperature",
            "task_loss_weight", "distill_loss_weight")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it says something (not None/False/'') and the help has not already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, "", argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _recipe_dir() -> Any:
    return resources.files(__package__) / "recipes"


def list_recipes() -> list[str]:
    """Names accepted by ``--recipe`` (the YAML files shipped in ``timm_deit_distill/recipes``)."""
    return sorted(p.name[:-5] for p in _recipe_dir().iterdir() if p.name.endswith(".yaml"))


def load_recipe(name: str) -> dict[str, Any]:
    """The settings of a shipped recipe (parser dest -> value)."""
    names = list_recipes()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"--recipe {name!r} is not a shipped recipe.{hint} Choose one of: {', '.join(names)}.")
    data = yaml.safe_load((_recipe_dir() / f"{name}.yaml").read_text())
    return dict(data or {})


def _config_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="deit-distill train", add_help=False)
    parser.add_argument("-c", "--config", default="", type=str)
    parser.add_argument("--recipe", default=None, type=str)
    return parser


DATASET_HELP = dataset_help()  # from the registry of data sources: each source's words


def add_dataset_flags(p: argparse.ArgumentParser, d: Any, *, training: bool) -> None:
    """timm train.py's dataset flags, with its names and defaults (``deit-distill train``, ``cache build``, ``eval``).

    ``d`` wraps each default (see :func:`build_parser`); ``training`` adds the training-only ones (the data
    positional, both splits, --train-num-samples).
    """
    g = p.add_argument_group("Dataset parameters")
    if training:
        g.add_argument("data", nargs="?", metavar="DIR", default=d(None), help="dataset root (same as --data-dir)")
    g.add_argument("--data-dir", metavar="DIR", default=d(None),
                   help="where the data is: the folder holding the split folders or tars; the shard folder or URL "
                        "prefix (wds/); torchvision's root (torch/); the datasets cache dir (hfds/, hfids/; default "
                        "HF_DATASETS_CACHE, and offline (HF_HUB_OFFLINE=1) the dir the dataset was first loaded into)")
    g.add_argument("--dataset", "-d", metavar="NAME", default=d(""), help=DATASET_HELP)
    if training:
        g.add_argument("--train-split", metavar="NAME", default=d("train"),
                       help="training split: a folder or tar name, a dataset split, or a wds shard pattern "
                            "'name-{0000..0099}.tar|N'")
        g.add_argument("--val-split", metavar="NAME", default=d("validation"), help="validation split (as --train-split)")
        g.add_argument("--train-num-samples", default=d(None), type=int, metavar="N",
                       help="samples per training epoch of a stream (wds/, hfids/; default: its _info.json / card)")
    # eval also takes validate.py's spelling, --num-samples
    g.add_argument("--val-num-samples", *(() if training else ("--num-samples",)), default=d(None), type=int,
                   metavar="N", help="samples of a streamed validation split (wds/, hfids/; default: its _info.json / card)")
    g.add_argument("--dataset-download", action="store_true", default=d(False),
                   help="let torchvision download torch/ data; for hfids/, prepare a local copy first (timm's)")
    g.add_argument("--class-map", default=d(""), type=str, metavar="FILENAME", help="class to index mapping file")
    g.add_argument("--input-img-mode", default=d(None), type=str, metavar="MODE",
                   help="Pillow mode images are read in (default: RGB for 3 input channels, L for 1)")
    g.add_argument("--input-key", default=d(None), type=str, metavar="KEY",
                   help="the image: its column (hfds/, hfids/; default image), its extensions ';'-separated "
                        "(wds/: jpg;png;webp; folders: .png;.jpg with the dot)")
    g.add_argument("--target-key", default=d(None), type=str, metavar="KEY",
                   help="the class: its column (hfds/, hfids/; default label) or json field (wds/; default: the .cls file)")
    g.add_argument("--skip-bad-images", action="store_true", default=d(False),
                   help="skip unreadable images (counted in the log) instead of stopping; not on hfids/")


def build_parser(argument_default: Any = None) -> argparse.ArgumentParser:
    """The full `deit-distill train` parser.

    ``argument_default=argparse.SUPPRESS`` builds a twin whose namespace holds only the flags actually
    given, which is how the command-line layer is told apart from defaults, recipes and configs.
    """
    sup = argument_default is argparse.SUPPRESS

    def d(value: Any) -> Any:  # a default, unless building the "explicit flags only" twin
        return argparse.SUPPRESS if sup else value

    p = ArgumentParser(
        prog="deit-distill train",
        description=(
            "Train a timm student with DeiT distillation. Accepts timm train.py's flags (names and defaults); "
            "an existing timm command line runs by replacing `train.py` with `deit-distill train`."),
        epilog=(
            "Recipes: " + ", ".join(list_recipes()) + ". Precedence: timm defaults < --recipe < -c/--config < "
            "command line. timm train.py flags parsed but refused unless left at timm's default: "
            + " ".join(f[0][0] for f in UNSUPPORTED_TIMM_FLAGS) + "."),
        argument_default=argument_default,
        formatter_class=HelpFormatter if not sup else argparse.HelpFormatter,
    )
    p.add_argument("-c", "--config", default=d(""), metavar="FILE",
                   help="YAML file whose keys (flag names with underscores) override defaults and --recipe")
    p.add_argument("--recipe", default=d(None), metavar="NAME",
                   help=f"DeiT hyper-parameters from the paper: {', '.join(list_recipes())}")
    p.add_argument("--print-config", action="store_true", default=d(False),
                   help="print the resolved settings as YAML and exit")

    add_dataset_flags(p, d, training=True)

    g = p.add_argument_group("Model parameters")
    g.add_argument("--model", default=d("resnet50"), type=str, metavar="MODEL", help="student model (timm name)")
    g.add_argument("--pretrained", action="store_true", default=d(False), help="start from pretrained weights")
    g.add_argument("--pretrained-path", default=d(None), type=str, metavar="PATH",
                   help="load pretrained weights from this file (head adapted, position embedding resampled)")
    g.add_argument("--initial-checkpoint", default=d(""), type=str, metavar="PATH",
                   help="initialize the student from this checkpoint (strict)")
    add_either_flag(g, "initial_ema", default=d(None),
                    yes=("--initial-ema", "use the EMA weights of an --initial-checkpoint / --pretrained-path file "
                                          "that holds both"),
                    no=("--no-initial-ema", "use the raw weights of an --initial-checkpoint / --pretrained-path file "
                                            "that holds both"))
    g.add_argument("--resume", default=d(""), type=str, metavar="PATH",
                   help="resume model, optimizer, scheduler, scaler, EMA, epoch and RNG state from a checkpoint")
    g.add_argument("--no-resume-opt", action="store_true", default=d(False),
                   help="do not restore optimizer/scaler state when resuming")
    g.add_argument("--num-classes", type=int, default=d(None), metavar="N",
                   help="number of classes (default: the dataset's)")
    g.add_argument("--gp", default=d(None), type=str, metavar="POOL", help="global pool type")
    g.add_argument("--img-size", type=int, default=d(None), metavar="N",
                   help="image size: sets the data pipeline AND the model's input size")
    g.add_argument("--in-chans", type=int, default=d(None), metavar="N", help="image input channels")
    g.add_argument("--input-size", default=d(None), nargs=3, type=int, metavar="N",
                   help="input dimensions C H W (sets the model's input size too)")
    g.add_argument("--crop-pct", default=d(None), type=float, metavar="N", help="validation center crop fraction")
    g.add_argument("--mean", type=float, nargs="+", default=d(None), metavar="MEAN", help="dataset mean override")
    g.add_argument("--std", type=float, nargs="+", default=d(None), metavar="STD", help="dataset std override")
    g.add_argument("--interpolation", default=d(""), type=str, metavar="NAME", help="resize interpolation")
    g.add_argument("-b", "--batch-size", type=int, default=d(128), metavar="N", help="per-process training batch")
    g.add_argument("-vb", "--validation-batch-size", type=int, default=d(None), metavar="N",
                   help="validation batch size (default: --batch-size)")
    g.add_argument("--channels-last", action="store_true", default=d(False), help="channels_last memory layout")
    g.add_argument("--grad-accum-steps", type=int, default=d(1), metavar="N", help="batches per optimizer update")
    g.add_argument("--grad-checkpointing", action="store_true", default=d(False), help="gradient checkpointing")
    g.add_argument("--fast-norm", action="store_true", default=d(False), help="timm's fast (low precision) norm")
    g.add_argument("--model-kwargs", nargs="*", default=d({}), action=ParseKwargs, metavar="KEY=VALUE",
                   help="extra create_model keyword arguments, e.g. depth=2 embed_dim=64")
    g.add_argument("--head-init-scale", type=float, default=d(None), help="scale the head(s) at init")
    g.add_argument("--head-init-bias", type=float, default=d(None), help="set the head bias(es) at init")
    g.add_argument("--torchcompile-mode", type=str, default=d(None), help="torch.compile mode")
    g.add_argument("--torchcompile", nargs="?", type=str, default=d(None), const="inductor",
                   help="torch.compile the student with this backend")

    g = p.add_argument_group("Device parameters")
    g.add_argument("--device", default=d(None), type=str,
                   help="device (timm's default 'cuda'; here: cuda when available, else cpu)")
    g.add_argument("--amp", action="store_true", default=d(False), help="mixed precision (torch.autocast)")
    g.add_argument("--amp-dtype", default=d("float16"), type=str, help="AMP dtype: float16 or bfloat16")
    g.add_argument("--no-ddp-bb", action="store_true", default=d(False), help="no DDP buffer broadcast")
    g.add_argument("--synchronize-step", action="store_true", default=d(False),
                   help="synchronize the device after each step")
    g.add_argument("--local_rank", "--local-rank", default=d(0), type=int,
                   help="written by old launchers; as in timm the rank is read from the environment")
    g.add_argument("--device-modules", default=d(None), type=str, nargs="+",
                   help="python modules to import before creating models")

    g = p.add_argument_group("Optimizer parameters")
    g.add_argument("--opt", default=d("sgd"), type=str, metavar="OPTIMIZER", help="optimizer (timm name)")
    g.add_argument("--opt-eps", default=d(None), type=float, metavar="EPSILON", help="optimizer epsilon")
    g.add_argument("--opt-betas", default=d(None), type=float, nargs="+", metavar="BETA", help="optimizer betas")
    g.add_argument("--momentum", type=float, default=d(0.9), metavar="M", help="optimizer momentum")
    g.add_argument("--weight-decay", type=float, default=d(2e-5), help="weight decay")
    g.add_argument("--clip-grad", type=float, default=d(None), metavar="NORM", help="clip gradients")
    g.add_argument("--clip-mode", type=str, default=d("norm"), help="clipping mode: norm, value or agc")
    g.add_argument("--layer-decay", type=float, default=d(None), help="layer-wise learning rate decay")
    g.add_argument("--layer-decay-min-scale", type=float, default=d(0), help="layer decay minimum scale")
    g.add_argument("--layer-decay-no-opt-scale", type=float, default=d(None),
                   help="layer decay scale below which parameters are frozen")
    g.add_argument("--opt-kwargs", nargs="*", default=d({}), action=ParseKwargs, metavar="KEY=VALUE",
                   help="extra optimizer keyword arguments")

    g = p.add_argument_group("Learning rate schedule parameters")
    g.add_argument("--sched", type=str, default=d("cosine"), metavar="SCHEDULER", help="LR scheduler")
    g.add_argument("--sched-on-updates", action="store_true", default=d(False),
                   help="step the schedule per optimizer update instead of per epoch")
    g.add_argument("--lr", type=float, default=d(None), metavar="LR",
                   help="learning rate (default: --lr-base scaled by global batch / --lr-base-size)")
    g.add_argument("--lr-base", type=float, default=d(0.1), metavar="LR", help="base learning rate")
    g.add_argument("--lr-base-size", type=int, default=d(256), metavar="DIV", help="batch size of --lr-base")
    g.add_argument("--lr-base-scale", type=str, default=d(""), metavar="SCALE",
                   help="'linear' or 'sqrt' (default: sqrt for adam/lamb-family optimizers, else linear)")
    g.add_argument("--lr-noise", type=float, nargs="+", default=d(None), metavar="pct, pct", help="LR noise epochs")
    g.add_argument("--lr-noise-pct", type=float, default=d(0.67), metavar="PERCENT", help="LR noise limit")
    g.add_argument("--lr-noise-std", type=float, default=d(1.0), metavar="STDDEV", help="LR noise std")
    g.add_argument("--lr-cycle-mul", type=float, default=d(1.0), metavar="MULT", help="LR cycle length multiplier")
    g.add_argument("--lr-cycle-decay", type=float, default=d(0.5), metavar="MULT", help="LR decay per cycle")
    g.add_argument("--lr-cycle-limit", type=int, default=d(1), metavar="N", help="LR cycle limit")
    g.add_argument("--lr-k-decay", type=float, default=d(1.0), help="LR k-decay for cosine/poly")
    g.add_argument("--warmup-lr", type=float, default=d(1e-5), metavar="LR", help="warm-up start learning rate")
    g.add_argument("--min-lr", type=float, default=d(0), metavar="LR", help="lower LR bound")
    g.add_argument("--epochs", type=int, default=d(300), metavar="N", help="epochs to train")
    g.add_argument("--start-epoch", default=d(None), type=int, metavar="N", help="override the starting epoch")
    g.add_argument("--decay-milestones", default=d([90, 180, 270]), type=int, nargs="+", metavar="MILESTONES",
                   help="multistep decay epochs")
    g.add_argument("--decay-epochs", type=float, default=d(90), metavar="N", help="step decay interval")
    g.add_argument("--warmup-epochs", type=int, default=d(5), metavar="N", help="warm-up epochs")
    g.add_argument("--warmup-prefix", action="store_true", default=d(False),
                   help="warm-up epochs are added before the schedule instead of within it")
    g.add_argument("--cooldown-epochs", type=int, default=d(0), metavar="N", help="epochs at min LR at the end")
    g.add_argument("--patience-epochs", type=int, default=d(10), metavar="N", help="plateau patience")
    g.add_argument("--decay-rate", "--dr", type=float, default=d(0.1), metavar="RATE", help="LR decay rate")

    g = p.add_argument_group("Augmentation and regularization parameters")
    g.add_argument("--no-aug", action="store_true", default=d(False), help="disable training augmentation")
    g.add_argument("--train-crop-mode", type=str, default=d(None), help="training crop mode (timm's)")
    g.add_argument("--scale", type=float, nargs="+", default=d([0.08, 1.0]), metavar="PCT",
                   help="random resized crop scale range")
    g.add_argument("--ratio", type=float, nargs="+", default=d([3.0 / 4.0, 4.0 / 3.0]), metavar="RATIO",
                   help="random resized crop aspect ratio range")
    g.add_argument("--hflip", type=float, default=d(0.5), help="horizontal flip probability")
    g.add_argument("--vflip", type=float, default=d(0.0), help="vertical flip probability")
    g.add_argument("--color-jitter", type=float, default=d(0.4), metavar="PCT",
                   help="color jitter strength (unused when --aa is set, as in timm)")
    g.add_argument("--color-jitter-prob", type=float, default=d(None), help="color jitter probability")
    g.add_argument("--grayscale-prob", type=float, default=d(None), help="random grayscale probability")
    g.add_argument("--gaussian-blur-prob", type=float, default=d(None), help="gaussian blur probability")
    g.add_argument("--aa", type=str, default=d(None), metavar="NAME",
                   help="AutoAugment/RandAugment policy, e.g. rand-m9-mstd0.5-inc1 (DeiT)")
    g.add_argument("--aug-repeats", type=float, default=d(0),
                   help="repeated augmentation count (works on one process and small datasets)")
    g.add_argument("--deterministic-aug", action="store_true", default=d(False),
                   help="seed every view from (seed, epoch, position): views independent of workers/batching "
                        "(implied by --distill-cache)")
    g.add_argument("--mix-group-size", type=int, default=d(2), metavar="G",
                   help="with --deterministic-aug: Mixup/CutMix pairs views inside fixed groups of G positions")
    g.add_argument("--reprob", type=float, default=d(0.0), metavar="PCT", help="random erase probability")
    g.add_argument("--remode", type=str, default=d("pixel"), help="random erase mode")
    g.add_argument("--recount", type=int, default=d(1), help="random erase count")
    g.add_argument("--mixup", type=float, default=d(0.0), help="mixup alpha (on if > 0)")
    g.add_argument("--cutmix", type=float, default=d(0.0), help="cutmix alpha (on if > 0)")
    g.add_argument("--cutmix-minmax", type=float, nargs="+", default=d(None), help="cutmix min/max ratio")
    g.add_argument("--mixup-prob", type=float, default=d(1.0), help="probability of mixup or cutmix per batch")
    g.add_argument("--mixup-switch-prob", type=float, default=d(0.5), help="probability of cutmix when both on")
    g.add_argument("--mixup-mode", type=str, default=d("batch"), help="mixup per 'batch', 'pair' or 'elem'")
    g.add_argument("--mixup-off-epoch", default=d(0), type=int, metavar="N",
                   help="turn Mixup/CutMix off from this epoch (0: never)")
    g.add_argument("--smoothing", type=float, default=d(0.1), help="label smoothing")
    g.add_argument("--train-interpolation", type=str, default=d("random"), help="training interpolation")
    g.add_argument("--drop", type=float, default=d(0.0), metavar="PCT", help="dropout rate")
    g.add_argument("--drop-connect", type=float, default=d(None), metavar="PCT", help="deprecated: use --drop-path")
    g.add_argument("--drop-path", type=float, default=d(None), metavar="PCT", help="stochastic depth rate")
    g.add_argument("--drop-block", type=float, default=d(None), metavar="PCT", help="drop block rate")

    g = p.add_argument_group("Batch norm parameters")
    g.add_argument("--bn-momentum", type=float, default=d(None), help="BatchNorm momentum override")
    g.add_argument("--bn-eps", type=float, default=d(None), help="BatchNorm epsilon override")
    g.add_argument("--sync-bn", action="store_true", default=d(False), help="synchronized BatchNorm under DDP")
    g.add_argument("--dist-bn", type=str, default=d("reduce"),
                   help="distribute BatchNorm stats after each epoch: broadcast, reduce or ''")

    g = p.add_argument_group("Model exponential moving average parameters")
    g.add_argument("--model-ema", action="store_true", default=d(False), help="keep an EMA of the student")
    g.add_argument("--model-ema-force-cpu", action="store_true", default=d(False),
                   help="keep the EMA on the CPU (not evaluated)")
    g.add_argument("--model-ema-decay", type=float, default=d(0.9998), help="EMA decay per update")
    g.add_argument("--model-ema-warmup", action="store_true", default=d(False), help="EMA decay warm-up")

    g = p.add_argument_group("Miscellaneous parameters")
    g.add_argument("--seed", type=int, default=d(42), metavar="S", help="random seed")
    g.add_argument("--log-interval", type=int, default=d(50), metavar="N", help="updates between log lines")
    g.add_argument("--val-interval", type=int, default=d(1), metavar="N", help="epochs between evaluations")
    g.add_argument("--checkpoint-hist", type=int, default=d(10), metavar="N", help="numbered checkpoints kept")
    g.add_argument("--checkpoint-interval", type=int, default=d(1), metavar="N",
                   help="epochs between checkpoints (default 1, timm's); evaluated epochs and the last are always "
                        "saved, so model_best and --checkpoint-hist rank every evaluation, and a kill loses at most "
                        "N-1 epochs")
    g.add_argument("-j", "--workers", type=int, default=d(4), metavar="N", help="data loading processes")
    g.add_argument("--pin-mem", action="store_true", default=d(False), help="pin loader memory")
    g.add_argument("--no-prefetcher", action="store_true", default=d(False),
                   help="accepted for timm compatibility: the loaders never use timm's GPU prefetcher")
    g.add_argument("--output", default=d(""), type=str, metavar="PATH", help="output root (default ./output/train)")
    g.add_argument("--experiment", default=d(""), type=str, metavar="NAME",
                   help="run folder name under --output (default: date-model-size)")
    g.add_argument("--eval-metric", default=d("top1"), type=str, metavar="EVAL_METRIC",
                   help="checkpoint ranking metric: top1, top5 or loss")

    g = p.add_argument_group("Distillation (DeiT)")
    g.add_argument("--distill-teacher", default=d(None), metavar="SOURCE",
                   help="teacher: timm name[.tag], hf-hub:ORG/NAME or local-dir:PATH")
    g.add_argument("--distill-teacher-path", default=d(None), metavar="FILE",
                   help="teacher checkpoint (timm, DeiT, plain state dict or .safetensors)")
    g.add_argument("--distill-type", default=d(None), choices=("none", "soft", "hard"),
                   help="distillation kind (default: hard with a teacher, none without)")
    g.add_argument("--distill-alpha", type=float, default=d(None), metavar="ALPHA",
                   help="weight of the distillation term in [0, 1] (default 0.5)")
    g.add_argument("--distill-tau", type=float, default=d(None), metavar="TAU", help="soft temperature > 0 (default 1.0)")
    g.add_argument("--distill-soft-reduction", default=d(None), choices=("deit", "batchmean"),
                   help="soft KL divided by batch*classes (deit, default) or batch (batchmean, timm)")
    add_teacher_path_flags(g, d)
    add_either_flag(g, "distill_teacher_ema", yes=TEACHER_EMA[0], no=TEACHER_EMA[1], default=d(None))
    g.add_argument("--distill-cache", default=d(None), metavar="DIR",
                   help="replay teacher targets from a cache built by `deit-distill cache` (no teacher in memory)")
    add_teacher_check_flags(g, d)

    g = p.add_argument_group("Distillation, facebookresearch/deit spellings (same settings)")
    g.add_argument("--teacher-model", default=d(None), metavar="SOURCE", help="= --distill-teacher")
    g.add_argument("--teacher-path", default=d(None), metavar="FILE", help="= --distill-teacher-path")
    g.add_argument("--distillation-type", default=d(None), choices=("none", "soft", "hard"), help="= --distill-type")
    g.add_argument("--distillation-alpha", type=float, default=d(None), metavar="ALPHA", help="= --distill-alpha")
    g.add_argument("--distillation-tau", type=float, default=d(None), metavar="TAU", help="= --distill-tau")

    g = p.add_argument_group("Distillation, timm train.py spellings (same settings, timm's defaults)")
    g.add_argument("--kd-model-name", default=d(None), type=str, metavar="NAME", help="= --distill-teacher (needs --kd-distill-type token)")
    g.add_argument("--kd-distill-type", default=d("logit"), choices=("logit", "feature", "token"),
                   help="only 'token' (DeiT) is supported")
    g.add_argument("--kd-token-distill-type", default=d(None), choices=("soft", "hard"),
                   help="= --distill-type (timm's default soft)")
    g.add_argument("--kd-temperature", type=float, default=d(None), metavar="T",
                   help="= --distill-tau (timm's default 4.0 applies with --kd-model-name)")
    g.add_argument("--task-loss-weight", type=float, default=d(None), metavar="W", help="= 1 - --distill-alpha")
    g.add_argument("--distill-loss-weight", type=float, default=d(None), metavar="W",
                   help="= --distill-alpha, only with --task-loss-weight summing to 1")

    g = p.add_argument_group("timm train.py flags refused unless at timm's default")
    for flags, kwargs, _ in UNSUPPORTED_TIMM_FLAGS:
        kwargs = dict(kwargs)
        kwargs["default"] = d(kwargs["default"])
        g.add_argument(*flags, help=argparse.SUPPRESS, **kwargs)
    return p


TEACHER_CHECK_IMAGES = CHECK_IMAGES  # the teacher check's own default


def add_teacher_path_flags(group: Any, d: Any = lambda value: value) -> None:
    """How the teacher runs: its precision and compilation (auto: measured on the machine), shared by `deit-distill
    train`, `cache build` and `eval`. ``d`` wraps each default, as in :func:`add_teacher_check_flags`."""
    group.add_argument("--teacher-precision", default=d("auto"), choices=PRECISIONS,
                       help="teacher precision (auto: the fastest measured on this machine whose argmax agrees with "
                            "fp32, see --teacher-min-agreement; remembered per machine)")
    group.add_argument("--teacher-compile", default=d("auto"), choices=COMPILE_CHOICES,
                       help="torch.compile the teacher (inductor, freezing): auto compiles when measured faster "
                            "over the run, compile warm-up included")
    group.add_argument("--teacher-min-agreement", type=float, default=d(MIN_AGREEMENT), metavar="FRACTION",
                       help="argmax agreement with eager fp32, on the run's validation images, that a faster "
                            "teacher path (reduced precision, compiled) needs to be chosen")


def add_teacher_check_flags(group: Any, d: Any = lambda value: value) -> None:
    """The teacher's input size and check flags, shared by `deit-distill train`, `cache build` and `eval`.

    ``d`` wraps each default (the train parser's "explicit flags only" twin suppresses them).
    """
    group.add_argument("--teacher-input-size", type=int, nargs="+", default=d(None), metavar="N",
                       help="size the teacher runs at: N (square), H W, or C H W as timm's --input-size; the "
                            "student's batches are resized to it (default: the size the teacher's weights record "
                            "- its checkpoint or pretrained config - else the student's)")
    group.add_argument("--teacher-min-top1", type=float, default=d(None), metavar="PCT",
                       help="refuse a teacher whose top-1 on validation images is below PCT percent (default: "
                            "auto, chance + a quarter of the way to 100, e.g. 32.5 for 10 classes)")
    group.add_argument("--teacher-check-images", type=int, default=d(TEACHER_CHECK_IMAGES), metavar="N",
                       help="validation images (a seeded random subset) the teacher check measures")
    group.add_argument("--no-teacher-check", action="store_true", default=d(False),
                       help="do not measure the teacher before it teaches (it may then distil noise silently)")
    group.add_argument("--teacher-mean", type=float, nargs="+", default=d(None), metavar="MEAN",
                       help="the normalisation mean the TEACHER was trained with (1 or 3 numbers; default: the one "
                            "its weights record, else the data pipeline's). --mean/--std set the student's data")
    group.add_argument("--teacher-std", type=float, nargs="+", default=d(None), metavar="STD",
                       help="the teacher's normalisation std (1 or 3 positive numbers), as --teacher-mean")


def validate_teacher_check_flags(args: argparse.Namespace, *, has_teacher: bool) -> None:
    """Refuse teacher check / input size settings that cannot work.

    Shared by `deit-distill train` (and so `cache build`) and `deit-distill eval`.
    """
    size = args.teacher_input_size
    if size is not None:
        size = [size] if isinstance(size, int) else list(size)
        if not (1 <= len(size) <= 3) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                 for v in size):
            raise UsageError(f"--teacher-input-size {' '.join(map(str, size))}: give N (square), H W, or C H W "
                             "(timm's --input-size form), positive integers.")
    if args.teacher_min_top1 is not None and not (0.0 <= args.teacher_min_top1 <= 100.0):
        raise UsageError(f"--teacher-min-top1 {args.teacher_min_top1:g} is a top-1 in percent; use a value in "
                         "[0, 100] (or leave it unset for the automatic threshold).")
    if args.teacher_check_images < 1:
        raise UsageError(f"--teacher-check-images {args.teacher_check_images} must be >= 1.")
    for name in ("teacher_mean", "teacher_std"):
        if isinstance(getattr(args, name), (int, float)):  # a YAML's single number, in the command line's spelling
            setattr(args, name, [getattr(args, name)])
    for flag, values in (("--teacher-mean", args.teacher_mean), ("--teacher-std", args.teacher_std)):
        # as --mean/--std: 1 or 3 numbers, a std > 0 (a nan or zero std would turn every input into nan)
        if values is not None and not (len(values) in (1, 3) and all(math.isfinite(v) for v in values)
                                       and (flag == "--teacher-mean" or all(v > 0 for v in values))):
            kind = "finite numbers" if flag == "--teacher-mean" else "positive numbers"
            raise UsageError(f"{flag} {' '.join(f'{v:g}' for v in values)}: give 1 or 3 {kind} (per channel, "
                             "as the teacher was trained, e.g. 0.485 0.456 0.406 / 0.229 0.224 0.225).")
    if args.no_teacher_check and args.teacher_min_top1 is not None:
        raise UsageError(f"--no-teacher-check with --teacher-min-top1 {args.teacher_min_top1:g} contradict each "
                         "other: keep --teacher-min-top1 to check against that threshold, or --no-teacher-check "
                         "to skip the check.")
    agreement = getattr(args, "teacher_min_agreement", MIN_AGREEMENT)
    if not 0.0 < agreement <= 1.0:
        raise UsageError(f"--teacher-min-agreement {agreement:g} is a fraction of images; use a value in (0, 1] "
                         f"(default {MIN_AGREEMENT}).")
    if args.no_teacher_check and args.teacher_check_images != TEACHER_CHECK_IMAGES:
        raise UsageError(f"--no-teacher-check with --teacher-check-images {args.teacher_check_images} contradict "
                         "each other: drop one.")
    if not has_teacher:
        given = [flag for flag, value, default in (
            ("--teacher-input-size", args.teacher_input_size, None),
            ("--teacher-min-top1", args.teacher_min_top1, None),
            ("--teacher-check-images", args.teacher_check_images, TEACHER_CHECK_IMAGES),
            ("--no-teacher-check", args.no_teacher_check, False),
            ("--teacher-mean", args.teacher_mean, None), ("--teacher-std", args.teacher_std, None),
            ("--teacher-compile", getattr(args, "teacher_compile", "auto"), "auto"),
            ("--teacher-min-agreement", agreement, MIN_AGREEMENT)) if value != default]
        if given:
            verb = "configures" if len(given) == 1 else "configure"
            raise UsageError(f"{', '.join(given)} {verb} the teacher, but no teacher is given: add "
                             "--distill-teacher NAME and/or --distill-teacher-path FILE, or drop "
                             f"{'it' if len(given) == 1 else 'them'}.")


def _dests(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def _flag_name(parser: argparse.ArgumentParser, dest: str) -> str:
    action = _dests(parser).get(dest)
    if action is None or not action.option_strings:
        return dest
    return max(action.option_strings, key=len)


def _read_yaml(path: str, what: str) -> dict[str, Any]:
    if os.path.isdir(path):
        raise UsageError(f"{what} {path!r} is a folder; pass the path of a YAML file (e.g. a run's args.yaml).")
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path!r} does not exist; pass the path of a YAML file.")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except UnicodeDecodeError as e:
        # a checkpoint, an image, a file saved as UTF-16: YAML configs are UTF-8 text
        raise UsageError(f"{what} {path!r} is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}): "
                         "is it a checkpoint or another binary file? Pass a YAML file, saved as UTF-8.") from None
    except OSError as e:
        raise UsageError(f"{what} {path!r} cannot be read ({e.strerror}); pass a readable YAML file.") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{what} {path!r} is not valid YAML ({e}); fix the file.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path!r} must hold a mapping of flag names to values, got {type(data).__name__}.")
    return data


_KINDS = {int: ("a whole number", "whole numbers"), float: ("a number", "numbers")}


def _shown(value: Any) -> str:
    """A YAML value as the file spells it (flow style, one line)."""
    return " ".join(yaml.safe_dump(value, default_flow_style=True, width=1000).replace("\n...", "").split())


def _check_value(parser: argparse.ArgumentParser, action: argparse.Action, key: str, value: Any, what: str) -> Any:
    """A YAML value checked against its flag's argparse action, as the command line's would be; returns it
    as the command line would give it (items converted by the action's type, one item of a list flag as a list).

    argparse checks and converts only command-line strings: a -c/recipe value went into the namespace as
    written, and a list for a scalar flag, a number for a path or a mapping for a number failed with a
    traceback (or silently) deep inside training.
    """
    # the either-flags (--initial-ema / --no-initial-ema) share one setting: name both
    flag = " / ".join(max(a.option_strings, key=len) for a in parser._actions
                      if a.dest == action.dest and a.option_strings) or action.dest
    if value is None:  # null for a setting whose default is None (refused for the others in _check_keys)
        return value
    ptype = action.type
    if ptype in _KINDS:
        one, many = _KINDS[ptype]
    elif action.choices:
        one = many = "one of " + ", ".join(map(str, action.choices))
    else:
        one, many = "a string", "strings"

    def refuse(expected: str) -> UsageError:
        quote = (" (quote a string that YAML reads as something else)"
                 if "string" in expected and isinstance(value, (bool, int, float)) else "")
        return UsageError(f"{what}: {key}: {_shown(value)} is not {expected}, which {flag} takes; fix the value in "
                          f"the file{quote}.")

    def item(v: Any, expected: str) -> Any:
        if isinstance(v, (bool, list, tuple, dict)) or (ptype not in (int, float) and not isinstance(v, str)):
            raise refuse(expected)
        if isinstance(v, str) and ptype not in (None, str):
            # YAML reads 1e-3 (no dot) as a string; the command line's conversion applies, as argparse does
            try:
                v = ptype(v)
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                raise refuse(expected) from None
        if ptype is int and not isinstance(v, int):
            raise refuse(expected)  # 2.5 for a whole number
        if ptype is float and not isinstance(v, (int, float)):
            raise refuse(expected)
        if action.choices and v not in action.choices:
            raise refuse(expected)
        return v

    if isinstance(action, ParseKwargs):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise refuse("a mapping of names to values (e.g. {depth: 1})")
        return value
    if action.nargs == 0:  # store_true / store_false / the either-flags' store_const True|False
        consts = {action.const, action.default}
        if all(isinstance(c, bool) or c is None for c in consts):
            if not isinstance(value, bool):
                raise refuse("true or false")
        elif value not in consts:
            raise refuse(" or ".join(map(_shown, consts)))
        return value
    if action.nargs in (None, "?"):
        return item(value, one)
    if action.nargs in ("+", "*"):
        expected = f"a list of {many} (or {one})"
        values = value if isinstance(value, list) else [value]  # one item, as `--flag X` on the command line
        if action.nargs == "+" and not values and action.default != []:  # timm args.yaml: wandb_tags: []
            raise refuse(f"a list of one or more {many}")
        return [item(v, expected) for v in values]
    if isinstance(action.nargs, int):
        expected = f"a list of {action.nargs} {many}"
        if not isinstance(value, list) or len(value) != action.nargs:
            raise refuse(expected)
        return [item(v, expected) for v in value]
    return value


def _check_keys(parser: argparse.ArgumentParser, data: dict[str, Any], what: str) -> dict[str, Any]:
    """Refuse keys that are no flag of ours or timm's, naming close matches, and values that are not of the kind
    their flag takes; normalise dashes."""
    dests = _dests(parser)
    out = {}
    for key, value in data.items():
        norm = str(key).replace("-", "_")
        if norm in _CONFIG_BOOKKEEPING:
            continue
        if norm not in dests:
            close = difflib.get_close_matches(norm, list(dests), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"{what}: unknown setting {key!r}.{hint} Keys are flag names with underscores "
                             "(e.g. batch_size for --batch-size).")
        default = dests[norm].default
        if value is None and default is not None:
            # null would stand in for a value the setting always has (its default is the parser's, not None)
            raise UsageError(f"{what}: {key}: null, but {_flag_name(parser, norm)} needs a value (its default is "
                             f"{default!r}); give one, or remove the key to use the default.")
        out[norm] = _check_value(parser, dests[norm], str(key), value, what)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, layer (defaults < recipe < config < command line), refuse unsupported flags, resolve aliases.

    Raises :class:`UsageError` for settings that cannot work; argparse itself exits with code 2 on
    malformed flags. The returned namespace carries ``recipe_values``/``config_values``/``explicit``
    bookkeeping under ``_layers`` (removed by :func:`config_dict`).
    """
    argv = list(argv) if argv is not None else None
    pre, _ = _config_parser().parse_known_args(argv)
    parser = build_parser()
    config_values = _check_keys(parser, _read_yaml(pre.config, "--config"), f"--config {pre.config}") \
        if pre.config else {}
    if not config_values.get("kd_model_name"):
        # timm's args.yaml records kd_temperature: 4.0 etc. even when no KD teacher was used; inert there, so here too.
        for key in _TIMM_KD:
            config_values.pop(key, None)
    recipe = pre.recipe if pre.recipe is not None else config_values.get("recipe")
    recipe_values = _check_keys(parser, load_recipe(recipe), f"recipe {recipe}") if recipe else {}
    parser.set_defaults(**recipe_values)
    parser.set_defaults(**config_values)
    args = parser.parse_args(argv)
    explicit = vars(build_parser(argparse.SUPPRESS).parse_args(argv))
    explicit.pop("config", None)
    args.recipe = recipe
    layers = {"recipe": recipe_values, "config": config_values, "cli": explicit}

    _refuse_unsupported(parser, args, layers)
    _refuse_initial_with_resume(args, layers)
    if args.data and not args.data_dir:
        args.data_dir = args.data
    args.data = None
    _resolve_distillation(parser, args, layers)
    _resolve_implied(args, layers)
    if isinstance(args.teacher_input_size, int) and not isinstance(args.teacher_input_size, bool):
        args.teacher_input_size = [args.teacher_input_size]  # a YAML's N, in the command line's spelling
    _validate(args)
    args._layers = layers
    return args


def _source(layers: dict[str, dict[str, Any]], dest: str) -> str:
    if dest in layers.get("implied", {}):
        return f"implied by {layers['implied'][dest]}"
    if dest in layers["cli"]:
        return "on the command line"
    if dest in layers["config"]:
        return "in the --config file"
    if dest in layers["recipe"]:
        return "in the recipe"
    return ""


def _refuse_unsupported(parser: argparse.ArgumentParser, args: argparse.Namespace,
                        layers: dict[str, dict[str, Any]]) -> None:
    for flags, kwargs, why in UNSUPPORTED_TIMM_FLAGS:
        dest = flags[0].lstrip("-").replace("-", "_")
        value = getattr(args, dest)
        if value != kwargs["default"]:
            where = _source(layers, dest)
            raise UsageError(
                f"{flags[0]} ({value!r} {where}) is a timm train.py flag deit-distill train does not support: "
                f"{why}. Remove it (or set it back to timm's default {kwargs['default']!r}).")
    if args.kd_distill_type != "token" and args.kd_model_name:
        raise UsageError(
            f"--kd-model-name with --kd-distill-type {args.kd_distill_type} is timm's {args.kd_distill_type} "
            "distillation, not DeiT's distillation token. Add --kd-distill-type token (or use --distill-teacher).")
    # A --kd-distill-type without a teacher does nothing in timm either; only 'token' means anything here.
    if args.kd_distill_type == "feature":
        raise UsageError("--kd-distill-type feature is timm's feature distillation, not supported; DeiT's is 'token'.")


def _refuse_initial_with_resume(args: argparse.Namespace, layers: dict[str, dict[str, Any]]) -> None:
    """--initial-checkpoint starts a NEW run from weights; --resume continues a run, restoring its weights over
    them: asked for together, one is silently ignored. A run's own args.yaml replayed with ``-c`` and --resume
    on the command line (the resume the trainer itself suggests) is not a contradiction: its
    initial_checkpoint records how the run began, and resuming the run continues it."""
    if not (args.resume and args.initial_checkpoint):
        return
    if "resume" in layers["cli"] and "initial_checkpoint" not in layers["cli"]:
        return
    raise UsageError(
        f"--initial-checkpoint {args.initial_checkpoint} ({_source(layers, 'initial_checkpoint')}) with --resume "
        f"{args.resume} ({_source(layers, 'resume')}): --resume restores the run's weights, optimizer and epoch and "
        "would ignore --initial-checkpoint. fix: drop --initial-checkpoint to continue the run, or drop --resume to "
        "start a new run from those weights.")


def _pick(layers: dict[str, dict[str, Any]], spellings: dict[str, Any], setting: str) -> tuple[Any, str | None]:
    """The value of one setting from its spellings, highest layer first; disagreement within a layer is refused.

    ``spellings`` maps dest -> function(value) -> canonical value. Returns (value, dest it came from).
    """
    for layer in ("cli", "config", "recipe"):
        found = {dest: conv(layers[layer][dest]) for dest, conv in spellings.items()
                 if layers[layer].get(dest) is not None}
        if not found:
            continue
        if len(set(map(repr, found.values()))) > 1:
            described = ", ".join(f"--{dest.replace('_', '-')} gives {v!r}" for dest, v in found.items())
            raise UsageError(f"The {setting} is set twice with different values ({described}); keep one.")
        dest, value = next(iter(found.items()))
        return value, dest
    return None, None


def _resolve_distillation(parser: argparse.ArgumentParser, args: argparse.Namespace,
                          layers: dict[str, dict[str, Any]]) -> None:
    ident = lambda v: v  # noqa: E731
    tw, dw = args.task_loss_weight, args.distill_loss_weight
    if dw is not None and (tw is None or not math.isclose(tw + dw, 1.0, abs_tol=1e-9)):
        raise UsageError(
            f"--distill-loss-weight {dw} with --task-loss-weight {tw}: deit-distill weighs the terms "
            "(1 - alpha) and alpha, so the two weights must sum to 1. Pass --task-loss-weight "
            f"{1 - dw:g} with it, or use --distill-alpha {dw:g}.")

    def from_task_weight(w: float) -> float:
        return 1.0 - w

    # The teacher first: its spelling picks the defaults of the other settings.
    teacher, teacher_dest = _pick(layers, {"distill_teacher": ident, "teacher_model": ident,
                                           "kd_model_name": ident}, "teacher")
    teacher_path, _ = _pick(layers, {"distill_teacher_path": ident, "teacher_path": ident}, "teacher checkpoint")
    kind, kind_dest = _pick(layers, {"distill_type": ident, "distillation_type": ident, "kd_token_distill_type": ident},
                    "distillation type")
    # --distill-loss-weight was checked above to equal 1 - --task-loss-weight, which carries the value.
    alpha, alpha_dest = _pick(layers, {"distill_alpha": float, "distillation_alpha": float,
                              "task_loss_weight": from_task_weight}, "distillation alpha")
    tau, tau_dest = _pick(layers, {"distill_tau": float, "distillation_tau": float, "kd_temperature": float},
                   "distillation temperature")
    reduction, _ = _pick(layers, {"distill_soft_reduction": ident}, "soft reduction")

    # Messages name the spelling the user wrote.
    args.distill_flags = {
        setting: "--" + (dest or setting).replace("_", "-")
        for setting, dest in (("distill_type", kind_dest), ("distill_alpha", alpha_dest), ("distill_tau", tau_dest))}
    timm_spelling = teacher_dest == "kd_model_name"
    args.distill_teacher = teacher
    args.distill_teacher_path = teacher_path
    if kind is None:
        kind = ("soft" if timm_spelling else "hard") if (teacher or teacher_path or args.distill_cache) else "none"
    args.distill_type = kind
    args.distill_alpha = 0.5 if alpha is None else alpha
    args.distill_tau = (4.0 if timm_spelling else 1.0) if tau is None else tau
    args.distill_soft_reduction = reduction or ("batchmean" if timm_spelling else "deit")
    args.distill_spelling = "timm" if timm_spelling else ("deit" if teacher_dest == "teacher_model" else "deit-distill")
    for dest in (*_DEIT_ALIASES, *_TIMM_KD):  # aliases are folded into the canonical settings
        setattr(args, dest, None)
    args.kd_distill_type = "logit"


def _resolve_implied(args: argparse.Namespace, layers: dict[str, dict[str, Any]]) -> None:
    """Settings that follow from others: a cache replays deterministic views only, so it turns them on."""
    implied: dict[str, str] = {}
    if args.distill_cache and not args.deterministic_aug:
        args.deterministic_aug = True
        implied["deterministic_aug"] = "--distill-cache"
    layers["implied"] = implied


def _validate(args: argparse.Namespace) -> None:
    def need(cond: bool, message: str) -> None:
        if not cond:
            raise UsageError(message)

    flags = getattr(args, "distill_flags", {})
    alpha_flag, tau_flag = flags.get("distill_alpha", "--distill-alpha"), flags.get("distill_tau", "--distill-tau")
    # argparse's float() accepts "nan" and "inf", which slip through every range check written as a
    # comparison (nan compares False both ways) and fail, if at all, deep inside training.
    if alpha_flag == "--task-loss-weight":
        need(math.isfinite(args.distill_alpha), f"--task-loss-weight {1 - args.distill_alpha:g} must be a finite "
             "number in [0, 1]: it is 1 - the distillation weight (DeiT's alpha 0.5 is a weight of 0.5).")
        need(0.0 <= args.distill_alpha <= 1.0, f"--task-loss-weight {1 - args.distill_alpha:g} is outside [0, 1]: "
             "it is 1 - the distillation weight (DeiT's alpha 0.5 is a weight of 0.5).")
    need(math.isfinite(args.distill_alpha),
         f"{alpha_flag} {args.distill_alpha} must be a finite number in [0, 1]: it is the weight of the "
         "distillation term (DeiT uses 0.5).")
    need(0.0 <= args.distill_alpha <= 1.0,
         f"{alpha_flag} {args.distill_alpha} is outside [0, 1]: it is the weight of the distillation term "
         "(DeiT uses 0.5).")
    need(math.isfinite(args.distill_tau),
         f"{tau_flag} {args.distill_tau} must be a finite number > 0: it divides the logits (DeiT uses 1.0).")
    need(args.distill_tau > 0, f"{tau_flag} {args.distill_tau} must be > 0: it divides the logits (DeiT uses 1.0).")
    parser = build_parser()
    for dest, action in _dests(parser).items():
        value = getattr(args, dest, None)
        # the kinds of values were checked as they were read (argparse: the command line; _check_value: YAML)
        if action.type is float and value is not None and dest not in ("distill_alpha", "distill_tau"):
            values = value if isinstance(value, (list, tuple)) else [value]
            need(all(math.isfinite(v) for v in values),
                 f"{_flag_name(parser, dest)} {' '.join(map(str, values))} must be a finite number (not nan or inf).")
    if args.distill_type in ("soft", "hard"):
        need(bool(args.distill_teacher or args.distill_teacher_path or args.distill_cache),
             f"{flags.get('distill_type', '--distill-type')} {args.distill_type} needs a teacher: add --distill-teacher NAME (DeiT's is "
             "regnety_160.deit_in1k), a teacher checkpoint with --distill-teacher-path, or --distill-cache DIR.")
    if args.distill_cache and args.distill_type == "none":
        raise UsageError("--distill-cache replays teacher targets but --distill-type is none; "
                         "pass --distill-type soft|hard or drop --distill-cache.")
    need(args.epochs >= 1, f"--epochs {args.epochs} must be >= 1.")
    need(args.grad_accum_steps >= 1, f"--grad-accum-steps {args.grad_accum_steps} must be >= 1.")
    need(args.checkpoint_hist >= 1, f"--checkpoint-hist {args.checkpoint_hist} must be >= 1.")
    need(args.checkpoint_interval >= 1, f"--checkpoint-interval {args.checkpoint_interval} must be >= 1.")
    need(args.log_interval >= 1, f"--log-interval {args.log_interval} must be >= 1.")
    need(args.val_interval >= 1, f"--val-interval {args.val_interval} must be >= 1.")
    need(args.lr is None or args.lr > 0, f"--lr {args.lr} must be > 0 (or leave it unset to scale --lr-base).")
    need(args.lr_base_scale in ("", "linear", "sqrt"), f"--lr-base-scale {args.lr_base_scale!r}: use linear or sqrt.")
    need(args.amp_dtype in ("float16", "bfloat16"), f"--amp-dtype {args.amp_dtype!r}: use float16 or bfloat16.")
    need(args.clip_mode in ("norm", "value", "agc"), f"--clip-mode {args.clip_mode!r}: use norm, value or agc.")
    need(args.eval_metric in ("top1", "top5", "loss"), f"--eval-metric {args.eval_metric!r}: use top1, top5 or loss.")
    need(0.0 <= args.smoothing < 1.0, f"--smoothing {args.smoothing} must be in [0, 1).")
    need(args.mixup >= 0 and args.cutmix >= 0, "--mixup and --cutmix are Beta alphas and must be >= 0.")
    for name in ("hflip", "vflip", "reprob", "mixup_prob", "mixup_switch_prob"):
        value = getattr(args, name)
        need(0.0 <= value <= 1.0, f"--{name.replace('_', '-')} {value} is a probability; use a value in [0, 1].")
    need(0.0 < args.model_ema_decay < 1.0, f"--model-ema-decay {args.model_ema_decay} must be in (0, 1).")
    for name in ("drop", "drop_path", "drop_connect", "drop_block"):
        value = getattr(args, name)
        need(value is None or 0.0 <= value < 1.0, f"--{name.replace('_', '-')} {value} must be in [0, 1).")
    need(len(args.scale) == 2 and len(args.ratio) == 2, "--scale and --ratio take two numbers each (min max).")
    need(args.dist_bn in ("", "broadcast", "reduce"), f"--dist-bn {args.dist_bn!r}: use broadcast, reduce or ''.")
    validate_teacher_check_flags(
        args, has_teacher=bool(args.distill_teacher or args.distill_teacher_path or args.distill_cache))
    need(args.mean is None or len(args.mean) in (1, 3), "--mean takes 1 or 3 numbers.")
    need(args.std is None or (len(args.std) in (1, 3) and all(s > 0 for s in args.std)),
         "--std takes 1 or 3 positive numbers.")

    # Sizes: zero or negative ones pass model creation for some architectures and fail in the first epoch.
    need(args.img_size is None or args.img_size >= 1,
         f"--img-size {args.img_size} must be >= 1 (pixels, e.g. 224; leave it unset for the model's own size).")
    need(args.input_size is None or all(v >= 1 for v in args.input_size),
         f"--input-size {' '.join(map(str, args.input_size or []))}: C H W must each be >= 1 (e.g. 3 224 224).")
    need(args.in_chans is None or args.in_chans >= 1, f"--in-chans {args.in_chans} must be >= 1 (3 for RGB).")
    need(args.num_classes is None or args.num_classes >= 1,
         f"--num-classes {args.num_classes} must be >= 1 (or leave it unset to use the dataset's).")
    need(args.crop_pct is None or 0.0 < args.crop_pct <= 1.0,
         f"--crop-pct {args.crop_pct} must be in (0, 1]: the fraction of the resized image the validation crop "
         "keeps (DeiT uses 0.875).")
    interpolations = ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos")  # timm's str_to_interp_mode
    for name in ("interpolation", "train_interpolation"):
        value = getattr(args, name)
        allowed = ("", "random") if name == "train_interpolation" else ("",)
        need(value in allowed or value in interpolations,
             f"--{name.replace('_', '-')} {value!r}: use one of {', '.join((*allowed[1:], *interpolations))}.")

    # Augmentation: each of these raised (math domain error, assertion, torchvision ValueError) or silently did
    # nothing once training had started.
    scale, ratio = args.scale, args.ratio
    need(0.0 < scale[0] <= scale[1], f"--scale {scale[0]:g} {scale[1]:g}: give min max with 0 < min <= max "
         "(fractions of the image area; DeiT uses 0.08 1).")
    need(0.0 < ratio[0] <= ratio[1], f"--ratio {ratio[0]:g} {ratio[1]:g}: give min max with 0 < min <= max "
         "(aspect ratios; timm uses 0.75 1.3333).")
    need(args.color_jitter >= 0, f"--color-jitter {args.color_jitter} must be >= 0 (0 turns it off).")
    for name in ("color_jitter_prob", "grayscale_prob", "gaussian_blur_prob"):
        value = getattr(args, name)
        need(value is None or 0.0 <= value <= 1.0,
             f"--{name.replace('_', '-')} {value} is a probability; use a value in [0, 1].")
    need(args.recount >= 1, f"--recount {args.recount} must be >= 1: random erasing erases 1 to N regions.")
    mm = args.cutmix_minmax
    need(mm is None or (len(mm) == 2 and 0.0 < mm[0] < mm[1] <= 1.0),
         f"--cutmix-minmax {' '.join(f'{v:g}' for v in mm or [])}: give min max with 0 < min < max <= 1 "
         "(box size as a fraction of the image), or leave it unset.")
    need(args.mixup_off_epoch >= 0, f"--mixup-off-epoch {args.mixup_off_epoch} must be >= 0 (0: never).")

    # Optimizer and schedule: names timm does not know raised a ValueError traceback while setting up.
    _check_optimizer_name(args.opt)
    _check_scheduler_name(args.sched)
    need(args.lr_base > 0, f"--lr-base {args.lr_base} must be > 0.")
    need(args.lr_base_size >= 1, f"--lr-base-size {args.lr_base_size} must be >= 1 (the batch size --lr-base is for).")
    need(args.weight_decay >= 0, f"--weight-decay {args.weight_decay} must be >= 0.")
    need(args.clip_grad is None or args.clip_grad > 0,
         f"--clip-grad {args.clip_grad} must be > 0 (or leave it unset for no clipping).")
    need(args.layer_decay is None or args.layer_decay > 0,
         f"--layer-decay {args.layer_decay} must be > 0 (0 would freeze every layer but the head).")
    need(args.warmup_lr >= 0, f"--warmup-lr {args.warmup_lr} must be >= 0.")
    need(args.min_lr >= 0, f"--min-lr {args.min_lr} must be >= 0.")
    need(args.warmup_epochs >= 0, f"--warmup-epochs {args.warmup_epochs} must be >= 0.")
    need(args.cooldown_epochs >= 0, f"--cooldown-epochs {args.cooldown_epochs} must be >= 0.")
    need(args.decay_epochs > 0, f"--decay-epochs {args.decay_epochs} must be > 0.")
    # timm's step, multistep and plateau schedules multiply the rate by --decay-rate at each cut (0 stops
    # training, a negative rate reverses it); poly raises to it as a power (0 is a constant rate, a negative
    # power grows without bound). Nonsense for every schedule that reads it; the others ignore it.
    need(args.decay_rate > 0,
         f"--decay-rate {args.decay_rate:g} must be > 0: step, multistep and plateau multiply the "
         "learning rate by it at each cut (timm's default 0.1 cuts it tenfold; 1 never cuts), poly takes it as "
         "its power.")
    # torch's ReduceLROnPlateau refuses a factor >= 1 (a ValueError: "Factor should be < 1.0.")
    need(args.sched != "plateau" or args.decay_rate < 1,
         f"--decay-rate {args.decay_rate:g} must be < 1 with --sched plateau: it multiplies the learning rate at "
         "each plateau (1 would never cut it; for a fixed rate use --sched constant).")
    # torch's ReduceLROnPlateau cuts once more epochs than this fail to improve: a negative patience cuts every epoch.
    need(args.patience_epochs >= 0, f"--patience-epochs {args.patience_epochs} must be >= 0: the plateau schedule "
         "cuts the learning rate after this many epochs without improvement (0: at the first one; timm's default 10).")
    need(args.lr_cycle_mul > 0, f"--lr-cycle-mul {args.lr_cycle_mul} must be > 0.")
    need(args.lr_cycle_limit >= 1, f"--lr-cycle-limit {args.lr_cycle_limit} must be >= 1.")
    need(args.start_epoch is None or args.start_epoch >= 0, f"--start-epoch {args.start_epoch} must be >= 0.")
    need(0 <= args.seed < 2**31, f"--seed {args.seed} must be in [0, 2**31): it seeds numpy (32-bit seeds) "
         "after the process rank is added.")


# The names timm's create_scheduler_v2 builds a schedule for (timm/scheduler/scheduler_factory.py; timm has no
# list of them: tests/test_args_values.py checks this one against its code). 'none' is refused below.
TIMM_SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "wsd", "rsqrt", "constant")


def _check_optimizer_name(opt: str) -> None:
    """Refuse an --opt timm's optimizer factory does not know, parsed as it parses it ([lookahead_]NAME)."""
    from timm.optim import list_optimizers

    known = list_optimizers()
    name = str(opt).lower().split("_")[-1]
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UsageError(f"--opt {opt!r} is not an optimizer timm knows.{hint} timm's names: "
                     "`python -c \"import timm.optim; print(timm.optim.list_optimizers())\"` (DeiT uses adamw; "
                     "a lookahead_ prefix wraps any of them).")


def _check_scheduler_name(sched: str) -> None:
    """Refuse a --sched timm's scheduler factory does not build (and 'none', which builds no schedule)."""
    if sched in TIMM_SCHEDULERS:
        return
    if sched == "none":
        raise UsageError("--sched none builds no schedule, which this trainer steps every epoch; for a fixed "
                         "learning rate use --sched constant (with --warmup-epochs 0 for no warm-up).")
    close = difflib.get_close_matches(str(sched), TIMM_SCHEDULERS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UsageError(f"--sched {sched!r} is not a timm scheduler.{hint} Use one of: {', '.join(TIMM_SCHEDULERS)} "
                     "(DeiT uses cosine).")


def resolve_lr(args: argparse.Namespace, world_size: int) -> tuple[float, str]:
    """timm train.py's learning rate rule: ``--lr``, else ``--lr-base`` x (global batch / ``--lr-base-size``).

    Returns the rate and a sentence saying how it was obtained. DeiT's ``5e-4 x batch / 512`` is
    ``--lr-base 5e-4 --lr-base-size 512 --lr-base-scale linear`` (its recipes set exactly that).
    """
    if args.lr:
        return args.lr, f"--lr {args.lr}"
    global_batch = args.batch_size * world_size * args.grad_accum_steps
    scale = args.lr_base_scale or ("sqrt" if any(o in args.opt.lower() for o in ("ada", "lamb")) else "linear")
    ratio = global_batch / args.lr_base_size
    if scale == "sqrt":
        ratio = ratio ** 0.5
    lr = args.lr_base * ratio
    return lr, (f"{lr:g} = --lr-base {args.lr_base:g} x ({global_batch} global batch / {args.lr_base_size})"
                f"{'^0.5' if scale == 'sqrt' else ''} ({scale} scaling)")


_RUNTIME_KEYS = ("_layers", "distill_spelling", "distill_flags", "local_rank", "print_config", "config", "data")
# Folded into canonical settings (aliases) or inert at timm's default (refused otherwise): not worth printing.
_OMITTED_KEYS = frozenset((*_DEIT_ALIASES, *_TIMM_KD, "kd_distill_type",
                           *(f[0][0].lstrip("-").replace("-", "_") for f in UNSUPPORTED_TIMM_FLAGS)))


def config_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved settings as plain YAML-able values, in parser order; reloadable with ``-c``.

    Alias spellings (folded into ``distill_*``) and refused timm flags (always at timm's default) are left out.
    """
    parser = build_parser()
    out: dict[str, Any] = {}
    for dest in _dests(parser):
        if dest in _RUNTIME_KEYS or dest in _OMITTED_KEYS or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        out[dest] = list(value) if isinstance(value, tuple) else value
    return out


def format_config(args: argparse.Namespace, world_size: int = 1) -> str:
    """``--print-config`` output: YAML of every setting, non-default ones marked with where they came from."""
    parser = build_parser()
    defaults = {dest: a.default for dest, a in _dests(parser).items()}
    layers = getattr(args, "_layers", {"cli": {}, "config": {}, "recipe": {}})
    lines = [f"# deit-distill train resolved settings (recipe: {args.recipe or 'none'})"]
    lr, how = resolve_lr(args, world_size)
    lines.append(f"# learning rate at world size {world_size}: {how}")
    if args.distill_type != "none" or args.distill_teacher:
        lines.append(f"# distillation: {args.distill_type}, teacher {args.distill_teacher}, alpha {args.distill_alpha}, "
                     f"tau {args.distill_tau}, soft reduction {args.distill_soft_reduction} "
                     f"(defaults of the {getattr(args, 'distill_spelling', 'deit-distill')} spelling)")
    for key, value in config_dict(args).items():
        text = yaml.safe_dump({key: value}, default_flow_style=True, width=1000).strip()
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1]
        src = _source(layers, key)
        if not src and key in DISTILL_KEYS and value != defaults.get(key):
            src = "resolved"
        lines.append(f"{text}{'  # ' + src if src else ''}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# The namespace, typed: what the factory and the library take


@dataclass(frozen=True)
class TrainSettings:
    """A `deit-distill train` (or `cache build`) command line as the factory and the library take it."""

    data: DataSettings
    student: StudentSettings
    teacher: TeacherSettings
    distill: DistillSettings
    augment: AugmentSettings
    loader: LoaderSettings
    device: str | None
    seed: int


def teacher_settings(args: argparse.Namespace, *, source: str | None, checkpoint_path: str | None,
                     use_ema: bool | None, channels_last: bool | None) -> TeacherSettings:
    """The teacher settings of a command line with :func:`add_teacher_check_flags` and :func:`add_teacher_path_flags`."""
    size = args.teacher_input_size
    return TeacherSettings(
        source=source, checkpoint_path=checkpoint_path, use_ema=use_ema,
        input_size=tuple(size) if size is not None else None, precision=args.teacher_precision,
        channels_last=channels_last, check=not args.no_teacher_check, check_images=args.teacher_check_images,
        min_top1=args.teacher_min_top1, mean=_floats(args.teacher_mean), std=_floats(args.teacher_std),
        compile=args.teacher_compile, min_agreement=args.teacher_min_agreement)


def _floats(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return tuple(float(v) for v in values) if values is not None else None


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The parsed `deit-distill train` namespace as typed settings; the namespace itself is left as it is.

    Raises :class:`~timm_deit_distill.errors.DataError` for data pipeline settings that cannot work (a batch
    size below 1, repeats that are not whole, an odd mix group, a dataset flag its source ignores, views a stream
    cannot give), so call it right after :func:`parse_args`.
    """
    in_chans = args.in_chans if args.in_chans is not None else (args.input_size[0] if args.input_size else 3)
    data = DataSettings(data_dir=args.data_dir, train_split=args.train_split, val_split=args.val_split,
                        class_map=args.class_map, skip_bad_images=args.skip_bad_images, dataset=args.dataset,
                        train_num_samples=args.train_num_samples, val_num_samples=args.val_num_samples,
                        input_key=args.input_key, target_key=args.target_key,
                        input_img_mode=resolve_input_img_mode(args.input_img_mode, in_chans),
                        download=args.dataset_download)
    check_views_supported(args.dataset, deterministic_aug=args.deterministic_aug, distill_cache=bool(args.distill_cache),
                          aug_repeats=max(1, int(args.aug_repeats)))
    return TrainSettings(
        data=data,
        student=StudentSettings(
            model=args.model, pretrained=args.pretrained, pretrained_path=args.pretrained_path,
            initial_checkpoint=args.initial_checkpoint, initial_ema=args.initial_ema, num_classes=args.num_classes,
            gp=args.gp, img_size=args.img_size, input_size=args.input_size, in_chans=args.in_chans,
            model_kwargs=dict(args.model_kwargs or {}), drop=args.drop, drop_path=args.drop_path,
            drop_connect=args.drop_connect, drop_block=args.drop_block, bn_momentum=args.bn_momentum,
            bn_eps=args.bn_eps, head_init_scale=args.head_init_scale, head_init_bias=args.head_init_bias,
            grad_checkpointing=args.grad_checkpointing, mean=args.mean, std=args.std, crop_pct=args.crop_pct,
            interpolation=args.interpolation),
        # --channels-last is about the student; unset, the teacher picks channels_last for convnets itself
        teacher=teacher_settings(args, source=args.distill_teacher, checkpoint_path=args.distill_teacher_path,
                                 use_ema=args.distill_teacher_ema, channels_last=args.channels_last or None),
        distill=DistillSettings(type=args.distill_type, alpha=args.distill_alpha, tau=args.distill_tau,
                                soft_reduction=args.distill_soft_reduction),
        augment=AugmentSettings(
            seed=args.seed, deterministic_aug=args.deterministic_aug, aug_repeats=args.aug_repeats,
            mix_group_size=args.mix_group_size, no_aug=args.no_aug, train_crop_mode=args.train_crop_mode,
            scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
            color_jitter_prob=args.color_jitter_prob, grayscale_prob=args.grayscale_prob,
            gaussian_blur_prob=args.gaussian_blur_prob, aa=args.aa, train_interpolation=args.train_interpolation,
            reprob=args.reprob, remode=args.remode, recount=args.recount, mixup=args.mixup, cutmix=args.cutmix,
            cutmix_minmax=args.cutmix_minmax, mixup_prob=args.mixup_prob, mixup_switch_prob=args.mixup_switch_prob,
            mixup_mode=args.mixup_mode, mixup_off_epoch=args.mixup_off_epoch, smoothing=args.smoothing),
        loader=LoaderSettings(batch_size=args.batch_size, validation_batch_size=args.validation_batch_size,
                              workers=args.workers, pin_mem=args.pin_mem),
        device=args.device,
        seed=args.seed,
    )
