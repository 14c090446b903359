"""THE declaration of every option of `deit-distill train` (and `cache build`, and `eval`): timm train.py's flags,
DeiT's recipes, one set of distillation settings; and the one road from given options to resolved ones.

Options come from the command line (argv, :func:`options_from_argv`) or from Python keywords
(:func:`options_from_keywords`: ``timm_deit_distill.train(**options)``), named by the flags' dest names
(``batch_size`` for ``--batch-size``). Both go through the same layering, lowest first: timm train.py's defaults <
``--recipe`` YAML < ``-c/--config`` YAML < what was given. Keywords and YAML values are checked against their
flag's kind exactly as argparse checks the command line's (:func:`check_keys`). A timm flag this trainer does not
implement is still declared (so timm command lines and timm's own ``args.yaml`` files read), but any value other
than timm's default is refused by name.

Distillation is spelled in one of two families, each with its own meaning (a command that mixes them is
refused, naming which to use):

* DeiT's: this package's ``--distill-*`` and facebookresearch/deit's ``--teacher-model``/``--distillation-*``
  (the same settings): ``(1 - alpha) * task + alpha * distill``, hard by default with a teacher, tau 1.0, DeiT's
  soft reduction; on a single-head student both terms use the one head.
* timm train.py's: ``--kd-model-name`` (the teacher), ``--kd-distill-type logit|token|feature`` (default logit),
  ``--kd-token-distill-type``, ``--kd-temperature`` (4.0), ``--task-loss-weight``/``--distill-loss-weight`` in
  timm's three weighting modes (1.0 and 1.0 by default), ``--kd-loss-type``, ``--kd-*-feature-dim``: timm's
  LogitDistillationTask, TokenDistillationTask and FeatureDistillationTask compute the same loss.

``--distill-teacher-path``, ``--distill-cache`` and the teacher's flags belong to both. The resolved namespace
holds the canonical settings (``distill_*``, with ``distill_family``) and timm's task and weights as given.

Each parser is built once per process and command (:func:`train_parser`, :func:`eval_parser`, cached): the
command line passes its own parser and help classes, the Python API the plain ones.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import math
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import yaml
from timm.utils import ParseKwargs

from ..data import CHECK_IMAGES, dataset_help
from ..errors import UsageError
from ..losses import DISTILLATION_TYPES, KD_LOSS_TYPES, KD_TASKS, SOFT_REDUCTIONS, TEACHER_TYPES
from ..teacher import COMPILE_CHOICES, MIN_AGREEMENT, PRECISIONS
from .flags import TEACHER_EMA, add_either_flag
from .timm_args import check_own_record

__all__ = [
    "TRAIN_PROG", "EVAL_PROG", "train_parser", "eval_parser", "given_options", "options_from_argv",
    "options_from_keywords", "eval_options_from_keywords", "resolve_options", "ON_THE_COMMAND_LINE",
    "check_keys", "list_recipes", "load_recipe", "config_dict", "dests", "option_source", "UNSUPPORTED_TIMM_FLAGS",
    "DISTILL_KEYS", "TEACHER_CHECK_IMAGES", "TIMM_SCHEDULERS", "DATASET_HELP", "TEACHER_EMA", "add_either_flag",
    "add_dataset_flags", "add_teacher_path_flags", "timm_spelled", "add_teacher_check_flags", "validate_teacher_check_flags",
]

TRAIN_PROG = "deit-distill train"
EVAL_PROG = "deit-distill eval"
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
]

# Keys a YAML config may hold without being flags: timm's args.yaml records its own -c path; the trainer's
# records the settings each --resume changed and the teacher check it measured (records of a run, not settings).
_CONFIG_BOOKKEEPING = {"config", "resumed", "teacher_check"}
# Aliases, their canonical setting, and the spelling family they belong to.
_DEIT_ALIASES = {"teacher_model": "distill_teacher", "teacher_path": "distill_teacher_path",
                 "distillation_type": "distill_type", "distillation_alpha": "distill_alpha",
                 "distillation_tau": "distill_tau"}
_TIMM_KD = ("kd_model_name", "kd_distill_type", "kd_token_distill_type", "kd_temperature",
            "task_loss_weight", "distill_loss_weight", "kd_loss_type", "kd_student_feature_dim",
            "kd_teacher_feature_dim")
# The two families' distillation options, each with the other family's nearest spelling (for the refusal of a
# command that mixes them). The teacher's checkpoint, the cache and the teacher's own flags belong to both.
# DeiT's soft/hard on one head is timm's logit task (soft); on two heads timm's token task, soft or hard
_TIMM_TYPE = "--kd-distill-type logit, or token with --kd-token-distill-type soft|hard,"
_DEIT_FAMILY = {"distill_teacher": "--kd-model-name", "teacher_model": "--kd-model-name",
                "distill_type": _TIMM_TYPE, "distillation_type": _TIMM_TYPE,
                "distill_alpha": "--distill-loss-weight", "distillation_alpha": "--distill-loss-weight",
                "distill_tau": "--kd-temperature", "distillation_tau": "--kd-temperature",
                "distill_soft_reduction": "nothing (timm divides by the batch)"}
_TIMM_FAMILY = {"kd_model_name": "--distill-teacher", "kd_distill_type": "--distill-type",
                "kd_token_distill_type": "--distill-type", "kd_temperature": "--distill-tau",
                "task_loss_weight": "--distill-alpha", "distill_loss_weight": "--distill-alpha",
                "kd_loss_type": "nothing (DeiT's soft term is a KL)",
                "kd_student_feature_dim": "nothing (feature distillation is timm's)",
                "kd_teacher_feature_dim": "nothing (feature distillation is timm's)"}

def _recipe_dir() -> Any:
    return resources.files(__package__) / "recipes"


def list_recipes() -> list[str]:
    """Names accepted by ``--recipe`` (the YAML files shipped in ``timm_deit_distill/factory/recipes``)."""
    return sorted(p.name[:-5] for p in _recipe_dir().iterdir() if p.name.endswith(".yaml"))


def load_recipe(name: str) -> dict[str, Any]:
    """The settings of a shipped recipe (dest -> value)."""
    names = list_recipes()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"--recipe {name!r} is not a shipped recipe.{hint} Choose one of: {', '.join(names)}.")
    data = yaml.safe_load((_recipe_dir() / f"{name}.yaml").read_text())
    return dict(data or {})


DATASET_HELP = dataset_help()  # from the registry of data sources: each source's words


def add_dataset_flags(p: argparse.ArgumentParser, *, training: bool) -> None:
    """timm train.py's dataset flags, with its names and defaults (``deit-distill train``, ``cache build``, ``eval``).

    ``training`` adds the training-only ones (the data positional, both splits, --train-num-samples).
    """
    g = p.add_argument_group("Dataset parameters")
    if training:
        g.add_argument("data", nargs="?", metavar="DIR", default=None, help="dataset root (same as --data-dir)")
    g.add_argument("--data-dir", metavar="DIR", default=None,
                   help="where the data is: the folder holding the split folders or tars; the shard folder or URL "
                        "prefix (wds/); torchvision's root (torch/); the datasets cache dir (hfds/, hfids/; default "
                        "HF_DATASETS_CACHE, and offline (HF_HUB_OFFLINE=1) the dir the dataset was first loaded into)")
    g.add_argument("--dataset", "-d", metavar="NAME", default="", help=DATASET_HELP)
    if training:
        g.add_argument("--train-split", metavar="NAME", default="train",
                       help="training split: a folder or tar name, a dataset split, or a wds shard pattern "
                            "'name-{0000..0099}.tar|N'")
        g.add_argument("--val-split", metavar="NAME", default="validation", help="validation split (as --train-split)")
        g.add_argument("--train-num-samples", default=None, type=int, metavar="N",
                       help="samples per training epoch of a stream (wds/, hfids/; default: its _info.json / card)")
    # eval also takes validate.py's spelling, --num-samples
    g.add_argument("--val-num-samples", *(() if training else ("--num-samples",)), default=None, type=int,
                   metavar="N", help="samples of a streamed validation split (wds/, hfids/; default: its _info.json / card)")
    g.add_argument("--dataset-download", action="store_true", default=False,
                   help="let torchvision download torch/ data; for hfids/, prepare a local copy first (timm's)")
    g.add_argument("--class-map", default="", type=str, metavar="FILENAME", help="class to index mapping file")
    g.add_argument("--input-img-mode", default=None, type=str, metavar="MODE",
                   help="Pillow mode images are read in (default: RGB for 3 input channels, L for 1)")
    g.add_argument("--input-key", default=None, type=str, metavar="KEY",
                   help="the image: its column (hfds/, hfids/; default image), its extensions ';'-separated "
                        "(wds/: jpg;png;webp; folders: .png;.jpg with the dot)")
    g.add_argument("--target-key", default=None, type=str, metavar="KEY",
                   help="the class: its column (hfds/, hfids/; default label) or json field (wds/; default: the .cls file)")
    g.add_argument("--skip-bad-images", action="store_true", default=False,
                   help="skip unreadable images (counted in the log) instead of stopping; not on hfids/")



@functools.cache
def train_parser(prog: str = TRAIN_PROG, parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
                 formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter) -> argparse.ArgumentParser:
    """The full `deit-distill train` parser, built once per process for each ``prog`` and classes (the command line
    passes its one-line-error parser and its help formatter; `cache build` its own ``prog``). Never modified:
    layering happens on the values (:func:`options_from_argv`)."""
    p = parser_class(
        prog=prog,
        description=(
            "Train a timm student with DeiT distillation. Accepts timm train.py's flags (names and defaults); "
            "an existing timm command line runs by replacing `train.py` with `deit-distill train`."),
        epilog=(
            "Recipes: " + ", ".join(list_recipes()) + ". Precedence: timm defaults < --recipe < -c/--config < "
            "command line. timm train.py flags parsed but refused unless left at timm's default: "
            + " ".join(f[0][0] for f in UNSUPPORTED_TIMM_FLAGS) + "."),
        formatter_class=formatter_class,
    )
    p.add_argument("-c", "--config", default="", metavar="FILE",
                   help="YAML file whose keys (flag names with underscores) override defaults and --recipe")
    p.add_argument("--recipe", default=None, metavar="NAME",
                   help=f"DeiT hyper-parameters from the paper: {', '.join(list_recipes())}")
    p.add_argument("--print-config", action="store_true", default=False,
                   help="print the resolved settings as YAML and exit")
    add_dataset_flags(p, training=True)
    _unlabeled_flags(p)
    for add in (_model_flags, _device_flags, _optimizer_flags, _schedule_flags, _augment_flags, _batch_norm_flags,
                _ema_flags, _misc_flags, _distill_flags, _deit_spelling_flags, _timm_spelling_flags, _refused_flags):
        add(p)
    return p


def _unlabeled_flags(p: argparse.ArgumentParser) -> None:
    """Unlabelled images the teacher teaches on (docs/training.md, "Unlabelled images")."""
    g = p.add_argument_group("Unlabelled images (the teacher's answer is their only supervision)")
    g.add_argument("--unlabeled-data-dir", metavar="DIR", default=None,
                   help="a folder of unlabelled images, flat or nested (class folders allowed, their names ignored); "
                        "with --unlabeled-dataset: that source's root (as --data-dir)")
    g.add_argument("--unlabeled-dataset", metavar="NAME", default=None,
                   help="unlabelled images from any map-style source --dataset takes (its labels ignored)")
    g.add_argument("--unlabeled-split", metavar="NAME", default="train",
                   help="the split of --unlabeled-dataset to read (default train)")
    g.add_argument("--unlabeled-fraction", type=float, default=0.5, metavar="F",
                   help="of each training batch of --batch-size images, round(F x batch) are unlabelled (0 < F < 1; "
                        "default 0.5); an epoch is one pass over the labelled images")
    g.add_argument("--pseudo-labels", action="store_true", default=False,
                   help="the class head (a single-head student's one head) also learns the teacher's argmax on "
                        "unlabelled images")


def _model_flags(p: argparse.ArgumentParser) -> None:
    """The student (timm's create_model arguments), its data config, resume and batch sizes."""
    g = p.add_argument_group("Model parameters")
    g.add_argument("--model", default="resnet50", type=str, metavar="MODEL", help="student model (timm name)")
    g.add_argument("--pretrained", action="store_true", default=False, help="start from pretrained weights")
    g.add_argument("--pretrained-path", default=None, type=str, metavar="PATH",
                   help="load pretrained weights from this file (head adapted, position embedding resampled)")
    g.add_argument("--initial-checkpoint", default="", type=str, metavar="PATH",
                   help="initialize the student from this checkpoint (strict)")
    add_either_flag(g, "initial_ema", default=None,
                    yes=("--initial-ema", "use the EMA weights of an --initial-checkpoint / --pretrained-path file "
                                          "that holds both"),
                    no=("--no-initial-ema", "use the raw weights of an --initial-checkpoint / --pretrained-path file "
                                            "that holds both"))
    g.add_argument("--resume", default="", type=str, metavar="PATH",
                   help="resume model, optimizer, scheduler, scaler, EMA, epoch and RNG state from a checkpoint")
    g.add_argument("--no-resume-opt", action="store_true", default=False,
                   help="do not restore optimizer/scaler state when resuming")
    g.add_argument("--num-classes", type=int, default=None, metavar="N",
                   help="number of classes (default: the dataset's)")
    g.add_argument("--gp", default=None, type=str, metavar="POOL", help="global pool type")
    g.add_argument("--img-size", type=int, default=None, metavar="N",
                   help="image size: sets the data pipeline AND the model's input size")
    g.add_argument("--in-chans", type=int, default=None, metavar="N", help="image input channels")
    g.add_argument("--input-size", default=None, nargs=3, type=int, metavar="N",
                   help="input dimensions C H W (sets the model's input size too)")
    g.add_argument("--crop-pct", default=None, type=float, metavar="N", help="validation center crop fraction")
    g.add_argument("--mean", type=float, nargs="+", default=None, metavar="MEAN", help="dataset mean override")
    g.add_argument("--std", type=float, nargs="+", default=None, metavar="STD", help="dataset std override")
    g.add_argument("--interpolation", default="", type=str, metavar="NAME", help="resize interpolation")
    g.add_argument("-b", "--batch-size", type=int, default=128, metavar="N", help="per-process training batch")
    g.add_argument("-vb", "--validation-batch-size", type=int, default=None, metavar="N",
                   help="validation batch size (default: --batch-size)")
    g.add_argument("--channels-last", action="store_true", default=False, help="channels_last memory layout")
    g.add_argument("--grad-accum-steps", type=int, default=1, metavar="N", help="batches per optimizer update")
    g.add_argument("--grad-checkpointing", action="store_true", default=False, help="gradient checkpointing")
    g.add_argument("--fast-norm", action="store_true", default=False, help="timm's fast (low precision) norm")
    g.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs, metavar="KEY=VALUE",
                   help="extra create_model keyword arguments, e.g. depth=2 embed_dim=64")
    g.add_argument("--head-init-scale", type=float, default=None, help="scale the head(s) at init")
    g.add_argument("--head-init-bias", type=float, default=None, help="set the head bias(es) at init")
    g.add_argument("--torchcompile-mode", type=str, default=None, help="torch.compile mode")
    g.add_argument("--torchcompile", nargs="?", type=str, default=None, const="inductor",
                   help="torch.compile the student with this backend")


def _device_flags(p: argparse.ArgumentParser) -> None:
    """Where it runs: the device, AMP, DDP switches."""
    g = p.add_argument_group("Device parameters")
    g.add_argument("--device", default=None, type=str,
                   help="device (timm's default 'cuda'; here: cuda when available, else cpu)")
    g.add_argument("--amp", action="store_true", default=False, help="mixed precision (torch.autocast)")
    g.add_argument("--amp-dtype", default="float16", type=str, help="AMP dtype: float16 or bfloat16")
    g.add_argument("--no-ddp-bb", action="store_true", default=False, help="no DDP buffer broadcast")
    g.add_argument("--synchronize-step", action="store_true", default=False,
                   help="synchronize the device after each step")
    g.add_argument("--local_rank", "--local-rank", default=0, type=int,
                   help="written by old launchers; as in timm the rank is read from the environment")
    g.add_argument("--device-modules", default=None, type=str, nargs="+",
                   help="python modules to import before creating models")


def _optimizer_flags(p: argparse.ArgumentParser) -> None:
    """timm's optimizer factory's flags."""
    g = p.add_argument_group("Optimizer parameters")
    g.add_argument("--opt", default="sgd", type=str, metavar="OPTIMIZER", help="optimizer (timm name)")
    g.add_argument("--opt-eps", default=None, type=float, metavar="EPSILON", help="optimizer epsilon")
    g.add_argument("--opt-betas", default=None, type=float, nargs="+", metavar="BETA", help="optimizer betas")
    g.add_argument("--momentum", type=float, default=0.9, metavar="M", help="optimizer momentum")
    g.add_argument("--weight-decay", type=float, default=2e-5, help="weight decay")
    g.add_argument("--clip-grad", type=float, default=None, metavar="NORM", help="clip gradients")
    g.add_argument("--clip-mode", type=str, default="norm", help="clipping mode: norm, value or agc")
    g.add_argument("--layer-decay", type=float, default=None, help="layer-wise learning rate decay")
    g.add_argument("--layer-decay-min-scale", type=float, default=0, help="layer decay minimum scale")
    g.add_argument("--layer-decay-no-opt-scale", type=float, default=None,
                   help="layer decay scale below which parameters are frozen")
    g.add_argument("--opt-kwargs", nargs="*", default={}, action=ParseKwargs, metavar="KEY=VALUE",
                   help="extra optimizer keyword arguments")


def _schedule_flags(p: argparse.ArgumentParser) -> None:
    """timm's scheduler factory's flags, the learning rate and the epochs."""
    g = p.add_argument_group("Learning rate schedule parameters")
    g.add_argument("--sched", type=str, default="cosine", metavar="SCHEDULER", help="LR scheduler")
    g.add_argument("--sched-on-updates", action="store_true", default=False,
                   help="step the schedule per optimizer update instead of per epoch")
    g.add_argument("--lr", type=float, default=None, metavar="LR",
                   help="learning rate (default: --lr-base scaled by global batch / --lr-base-size)")
    g.add_argument("--lr-base", type=float, default=0.1, metavar="LR", help="base learning rate")
    g.add_argument("--lr-base-size", type=int, default=256, metavar="DIV", help="batch size of --lr-base")
    g.add_argument("--lr-base-scale", type=str, default="", metavar="SCALE",
                   help="'linear' or 'sqrt' (default: sqrt for adam/lamb-family optimizers, else linear)")
    g.add_argument("--lr-noise", type=float, nargs="+", default=None, metavar="pct, pct", help="LR noise epochs")
    g.add_argument("--lr-noise-pct", type=float, default=0.67, metavar="PERCENT", help="LR noise limit")
    g.add_argument("--lr-noise-std", type=float, default=1.0, metavar="STDDEV", help="LR noise std")
    g.add_argument("--lr-cycle-mul", type=float, default=1.0, metavar="MULT", help="LR cycle length multiplier")
    g.add_argument("--lr-cycle-decay", type=float, default=0.5, metavar="MULT", help="LR decay per cycle")
    g.add_argument("--lr-cycle-limit", type=int, default=1, metavar="N", help="LR cycle limit")
    g.add_argument("--lr-k-decay", type=float, default=1.0, help="LR k-decay for cosine/poly")
    g.add_argument("--warmup-lr", type=float, default=1e-5, metavar="LR", help="warm-up start learning rate")
    g.add_argument("--min-lr", type=float, default=0, metavar="LR", help="lower LR bound")
    g.add_argument("--epochs", type=int, default=300, metavar="N", help="epochs to train")
    g.add_argument("--start-epoch", default=None, type=int, metavar="N", help="override the starting epoch")
    g.add_argument("--decay-milestones", default=[90, 180, 270], type=int, nargs="+", metavar="MILESTONES",
                   help="multistep decay epochs")
    g.add_argument("--decay-epochs", type=float, default=90, metavar="N", help="step decay interval")
    g.add_argument("--warmup-epochs", type=int, default=5, metavar="N", help="warm-up epochs")
    g.add_argument("--warmup-prefix", action="store_true", default=False,
                   help="warm-up epochs are added before the schedule instead of within it")
    g.add_argument("--cooldown-epochs", type=int, default=0, metavar="N", help="epochs at min LR at the end")
    g.add_argument("--patience-epochs", type=int, default=10, metavar="N", help="plateau patience")
    g.add_argument("--decay-rate", "--dr", type=float, default=0.1, metavar="RATE", help="LR decay rate")


def _augment_flags(p: argparse.ArgumentParser) -> None:
    """The training views (timm's transforms, Mixup/CutMix, repeated augmentation) and regularization."""
    g = p.add_argument_group("Augmentation and regularization parameters")
    g.add_argument("--no-aug", action="store_true", default=False, help="disable training augmentation")
    g.add_argument("--train-crop-mode", type=str, default=None, help="training crop mode (timm's)")
    g.add_argument("--scale", type=float, nargs="+", default=[0.08, 1.0], metavar="PCT",
                   help="random resized crop scale range")
    g.add_argument("--ratio", type=float, nargs="+", default=[3.0 / 4.0, 4.0 / 3.0], metavar="RATIO",
                   help="random resized crop aspect ratio range")
    g.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    g.add_argument("--vflip", type=float, default=0.0, help="vertical flip probability")
    g.add_argument("--color-jitter", type=float, default=0.4, metavar="PCT",
                   help="color jitter strength (unused when --aa is set, as in timm)")
    g.add_argument("--color-jitter-prob", type=float, default=None, help="color jitter probability")
    g.add_argument("--grayscale-prob", type=float, default=None, help="random grayscale probability")
    g.add_argument("--gaussian-blur-prob", type=float, default=None, help="gaussian blur probability")
    g.add_argument("--aa", type=str, default=None, metavar="NAME",
                   help="AutoAugment/RandAugment policy, e.g. rand-m9-mstd0.5-inc1 (DeiT)")
    g.add_argument("--aug-repeats", type=float, default=0,
                   help="repeated augmentation count (works on one process and small datasets)")
    g.add_argument("--deterministic-aug", action="store_true", default=False,
                   help="seed every view from (seed, epoch, position): views independent of workers/batching "
                        "(implied by --distill-cache)")
    g.add_argument("--mix-group-size", type=int, default=2, metavar="G",
                   help="with --deterministic-aug: Mixup/CutMix pairs views inside fixed groups of G positions")
    g.add_argument("--reprob", type=float, default=0.0, metavar="PCT", help="random erase probability")
    g.add_argument("--remode", type=str, default="pixel", help="random erase mode")
    g.add_argument("--recount", type=int, default=1, help="random erase count")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (on if > 0)")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (on if > 0)")
    g.add_argument("--cutmix-minmax", type=float, nargs="+", default=None, help="cutmix min/max ratio")
    g.add_argument("--mixup-prob", type=float, default=1.0, help="probability of mixup or cutmix per batch")
    g.add_argument("--mixup-switch-prob", type=float, default=0.5, help="probability of cutmix when both on")
    g.add_argument("--mixup-mode", type=str, default="batch", help="mixup per 'batch', 'pair' or 'elem'")
    g.add_argument("--mixup-off-epoch", default=0, type=int, metavar="N",
                   help="turn Mixup/CutMix off from this epoch (0: never)")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--train-interpolation", type=str, default="random", help="training interpolation")
    g.add_argument("--drop", type=float, default=0.0, metavar="PCT", help="dropout rate")
    g.add_argument("--drop-connect", type=float, default=None, metavar="PCT", help="deprecated: use --drop-path")
    g.add_argument("--drop-path", type=float, default=None, metavar="PCT", help="stochastic depth rate")
    g.add_argument("--drop-block", type=float, default=None, metavar="PCT", help="drop block rate")


def _batch_norm_flags(p: argparse.ArgumentParser) -> None:
    """BatchNorm overrides and their synchronisation under DDP."""
    g = p.add_argument_group("Batch norm parameters")
    g.add_argument("--bn-momentum", type=float, default=None, help="BatchNorm momentum override")
    g.add_argument("--bn-eps", type=float, default=None, help="BatchNorm epsilon override")
    g.add_argument("--sync-bn", action="store_true", default=False, help="synchronized BatchNorm under DDP")
    g.add_argument("--dist-bn", type=str, default="reduce",
                   help="distribute BatchNorm stats after each epoch: broadcast, reduce or ''")


def _ema_flags(p: argparse.ArgumentParser) -> None:
    """timm's ModelEmaV3."""
    g = p.add_argument_group("Model exponential moving average parameters")
    g.add_argument("--model-ema", action="store_true", default=False, help="keep an EMA of the student")
    g.add_argument("--model-ema-force-cpu", action="store_true", default=False,
                   help="keep the EMA on the CPU (not evaluated)")
    g.add_argument("--model-ema-decay", type=float, default=0.9998, help="EMA decay per update")
    g.add_argument("--model-ema-warmup", action="store_true", default=False, help="EMA decay warm-up")


def _misc_flags(p: argparse.ArgumentParser) -> None:
    """Seed, intervals, loaders, the run folder, the checkpoint ranking metric."""
    g = p.add_argument_group("Miscellaneous parameters")
    g.add_argument("--seed", type=int, default=42, metavar="S", help="random seed")
    g.add_argument("--log-interval", type=int, default=50, metavar="N", help="updates between log lines")
    g.add_argument("--val-interval", type=int, default=1, metavar="N", help="epochs between evaluations")
    g.add_argument("--checkpoint-hist", type=int, default=10, metavar="N", help="numbered checkpoints kept")
    g.add_argument("--checkpoint-interval", type=int, default=1, metavar="N",
                   help="epochs between checkpoints (default 1, timm's); evaluated epochs and the last are always "
                        "saved, so model_best and --checkpoint-hist rank every evaluation, and a kill loses at most "
                        "N-1 epochs")
    g.add_argument("-j", "--workers", type=int, default=4, metavar="N", help="data loading processes")
    g.add_argument("--pin-mem", action="store_true", default=False, help="pin loader memory")
    g.add_argument("--no-prefetcher", action="store_true", default=False,
                   help="accepted for timm compatibility: the loaders never use timm's GPU prefetcher")
    g.add_argument("--output", default="", type=str, metavar="PATH", help="output root (default ./output/train)")
    g.add_argument("--experiment", default="", type=str, metavar="NAME",
                   help="run folder name under --output (default: date-model-size)")
    g.add_argument("--eval-metric", default="top1", type=str, metavar="EVAL_METRIC",
                   help="checkpoint ranking metric: top1, top5 or loss")


def _distill_flags(p: argparse.ArgumentParser) -> None:
    """This package's distillation flags: the teacher, the loss, the cache, the teacher's path and check."""
    g = p.add_argument_group("Distillation (DeiT)")
    g.add_argument("--distill-teacher", default=None, metavar="SOURCE",
                   help="teacher: timm name[.tag], hf-hub:ORG/NAME or local-dir:PATH")
    g.add_argument("--distill-teacher-path", default=None, metavar="FILE",
                   help="teacher checkpoint (timm, DeiT, plain state dict or .safetensors)")
    g.add_argument("--distill-type", default=None, choices=DISTILLATION_TYPES,
                   help="distillation kind (default: hard with a teacher, none without)")
    g.add_argument("--distill-alpha", type=float, default=None, metavar="ALPHA",
                   help="weight of the distillation term in [0, 1] (default 0.5)")
    g.add_argument("--distill-tau", type=float, default=None, metavar="TAU", help="soft temperature > 0 (default 1.0)")
    g.add_argument("--distill-soft-reduction", default=None, choices=SOFT_REDUCTIONS,
                   help="soft KL divided by batch*classes (deit, default) or batch (batchmean, timm)")
    add_teacher_path_flags(g)
    add_either_flag(g, "distill_teacher_ema", yes=TEACHER_EMA[0], no=TEACHER_EMA[1])
    g.add_argument("--distill-cache", default=None, metavar="DIR",
                   help="replay teacher targets from a cache built by `deit-distill cache` (no teacher in memory)")
    add_teacher_check_flags(g)


def _deit_spelling_flags(p: argparse.ArgumentParser) -> None:
    """facebookresearch/deit's spellings of the distillation flags."""
    g = p.add_argument_group("Distillation, facebookresearch/deit spellings (same settings)")
    g.add_argument("--teacher-model", default=None, metavar="SOURCE", help="= --distill-teacher")
    g.add_argument("--teacher-path", default=None, metavar="FILE", help="= --distill-teacher-path")
    g.add_argument("--distillation-type", default=None, choices=DISTILLATION_TYPES, help="= --distill-type")
    g.add_argument("--distillation-alpha", type=float, default=None, metavar="ALPHA", help="= --distill-alpha")
    g.add_argument("--distillation-tau", type=float, default=None, metavar="TAU", help="= --distill-tau")


def _timm_spelling_flags(p: argparse.ArgumentParser) -> None:
    """timm train.py's spellings of the distillation flags."""
    g = p.add_argument_group("Distillation, timm train.py spellings (timm's meaning and defaults; not mixed with "
                             "DeiT's)")
    g.add_argument("--kd-model-name", default=None, type=str, metavar="NAME",
                   help="the teacher (timm name[.tag], hf-hub:, local-dir:); timm's distillation")
    g.add_argument("--kd-distill-type", default="logit", choices=KD_TASKS,
                   help="timm's task: logit (any student, default), token (a distilled student), feature")
    g.add_argument("--kd-token-distill-type", default=None, choices=TEACHER_TYPES,
                   help="token distillation's term (timm's default soft)")
    g.add_argument("--kd-temperature", type=float, default=None, metavar="T", help="softmax temperature (default 4.0)")
    g.add_argument("--task-loss-weight", type=float, default=None, metavar="W",
                   help="task term's weight (alone: distill = 1 - W; default 1.0)")
    g.add_argument("--distill-loss-weight", type=float, default=None, metavar="W",
                   help="distillation term's weight (task then defaults to 1.0; default 1.0)")
    g.add_argument("--kd-loss-type", type=str, default="kl", metavar="TYPE",
                   help="logit distillation's loss: kl (timm's only one)")
    g.add_argument("--kd-student-feature-dim", type=int, default=None, metavar="N",
                   help="feature distillation: student's pooled feature size (default: detected)")
    g.add_argument("--kd-teacher-feature-dim", type=int, default=None, metavar="N",
                   help="feature distillation: teacher's pooled feature size (default: detected)")


def _refused_flags(p: argparse.ArgumentParser) -> None:
    """timm train.py's flags this trainer parses but refuses away from timm's default."""
    g = p.add_argument_group("timm train.py flags refused unless at timm's default")
    for flags, kwargs, _ in UNSUPPORTED_TIMM_FLAGS:
        g.add_argument(*flags, help=argparse.SUPPRESS, **kwargs)


@functools.cache
def eval_parser(prog: str = EVAL_PROG, parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
                formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter) -> argparse.ArgumentParser:
    """The `deit-distill eval` parser (timm validate.py's flags where it has them), built once per process."""
    p = parser_class(
        prog=prog,
        description="Top-1/top-5 of a checkpoint's class, distillation and fused heads, and with a teacher its "
                    "top-1 and agreement. Printed and written as JSON.",
        formatter_class=formatter_class,
    )
    p.add_argument("data", nargs="?", metavar="DIR", default=None,
                   help="dataset root, as timm validate.py's positional (same as --data-dir)")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="a checkpoint written by deit-distill train (or timm's train.py); the model is the one it records")
    p.add_argument("--model", "-m", default=None, metavar="NAME",
                   help="as timm validate.py's --model. With --checkpoint: the architecture the checkpoint records "
                        "(checked). Without: a model with pretrained weights: local-dir:DIR (push --to-dir, pull "
                        "--out), hf-hub:ORG/NAME[@REV] (pulled, every file checked against the Hub's checksums), or a "
                        "timm name with a pretrained tag (timm downloads it)")
    p.add_argument("--pretrained", action="store_true",
                   help="evaluate --model's pretrained weights (validate.py's flag; implied without --checkpoint, "
                        "and with one the checkpoint's weights are evaluated, as in validate.py)")
    add_dataset_flags(p, training=False)  # --data-dir, --dataset, ... as the trainer's
    p.add_argument("--split", default="validation", metavar="NAME",
                   help="split to evaluate (a folder or tar name, a dataset split, a wds shard pattern)")
    p.add_argument("--head", default="fused", choices=("fused", "cls", "dist"),
                   help="head whose predictions are reported as top1/top5 and written by --predict")
    p.add_argument("--predict", default=None, metavar="CSV",
                   help="also write per-image predictions of --head (path, label, top-5 classes and probabilities)")
    add_either_flag(p, "use_ema",
                    yes=("--use-ema", "evaluate the EMA weights (one of the two is required when the checkpoint holds both)"),
                    no=("--no-ema", "evaluate the raw weights (one of the two is required when the checkpoint holds both)"))
    p.add_argument("--distill-teacher", "--teacher-model", default=None, metavar="SOURCE",
                   help="teacher for teacher_top1 and agreement: timm name, hf-hub:ORG/NAME or local-dir:PATH")
    p.add_argument("--distill-teacher-path", "--teacher-path", default=None, metavar="FILE", help="teacher checkpoint")
    add_teacher_path_flags(p)
    add_either_flag(p, "teacher_ema", yes=TEACHER_EMA[0], no=TEACHER_EMA[1])
    add_teacher_check_flags(p)  # the teacher is checked on --split before the full evaluation
    p.add_argument("-b", "--batch-size", type=int, default=128, metavar="N", help="evaluation batch size")
    p.add_argument("-j", "--workers", type=int, default=2, metavar="N", help="data loading processes")
    p.add_argument("--device", default=None, help="device (default: cuda when available, else cpu)")
    p.add_argument("--amp", action="store_true", help="autocast the student")
    p.add_argument("--amp-dtype", default="bfloat16", choices=("float16", "bfloat16"), help="autocast dtype")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="where to write the results (default: RUN_DIR/eval-<checkpoint>-<split>.json; when that "
                        "exists, the next free name: ...-1.json, -2.json, ...)")
    p.add_argument("--results-file", default=None, metavar="FILENAME",
                   help="also write timm validate.py's summary (model, top1, top1_err, top5, top5_err, param_count, "
                        "img_size, crop_pct, interpolation; top-1/top-5 of --head) to this file, as validate.py does")
    p.add_argument("--results-format", default="csv", choices=("csv", "json"),
                   help="format of --results-file, as validate.py's")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --json / --predict / --results-file (and the default results file); "
                        "without it an existing one is refused")
    return p


TEACHER_CHECK_IMAGES = CHECK_IMAGES  # the teacher check's own default


def add_teacher_path_flags(group: Any) -> None:
    """How the teacher runs: its precision and compilation (auto: measured on the machine), shared by `deit-distill
    train`, `cache build` and `eval`."""
    group.add_argument("--teacher-precision", default="auto", choices=PRECISIONS,
                       help="teacher precision (auto: the fastest measured on this machine whose argmax agrees with "
                            "fp32, see --teacher-min-agreement; remembered per machine)")
    group.add_argument("--teacher-compile", default="auto", choices=COMPILE_CHOICES,
                       help="torch.compile the teacher (inductor, freezing): auto compiles when measured faster "
                            "over the run, compile warm-up included")
    group.add_argument("--teacher-min-agreement", type=float, default=MIN_AGREEMENT, metavar="FRACTION",
                       help="argmax agreement with eager fp32, on the run's validation images, that a faster "
                            "teacher path (reduced precision, compiled) needs to be chosen")


def add_teacher_check_flags(group: Any) -> None:
    """The teacher's input size and check flags, shared by `deit-distill train`, `cache build` and `eval`."""
    group.add_argument("--teacher-input-size", type=int, nargs="+", default=None, metavar="N",
                       help="size the teacher runs at: N (square), H W, or C H W as timm's --input-size; the "
                            "student's batches are resized to it (default: the size the teacher's weights record "
                            "- its checkpoint or pretrained config - else the student's)")
    group.add_argument("--teacher-min-top1", type=float, default=None, metavar="PCT",
                       help="refuse a teacher whose top-1 on validation images is below PCT percent (default: "
                            "auto, chance + a quarter of the way to 100, e.g. 32.5 for 10 classes)")
    group.add_argument("--teacher-check-images", type=int, default=TEACHER_CHECK_IMAGES, metavar="N",
                       help="validation images (a seeded random subset) the teacher check measures")
    group.add_argument("--no-teacher-check", action="store_true", default=False,
                       help="do not measure the teacher before it teaches (it may then distil noise silently)")
    group.add_argument("--teacher-mean", type=float, nargs="+", default=None, metavar="MEAN",
                       help="the normalisation mean the TEACHER was trained with (1 or 3 numbers; default: the one "
                            "its weights record, else the data pipeline's). --mean/--std set the student's data")
    group.add_argument("--teacher-std", type=float, nargs="+", default=None, metavar="STD",
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



def dests(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's settings by dest name, in declaration order (the order args.yaml records them in)."""
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def _flag_name(parser: argparse.ArgumentParser, dest: str) -> str:
    action = dests(parser).get(dest)
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


def _check_value(parser: argparse.ArgumentParser, action: argparse.Action, key: str, value: Any, what: str, *,
                 keywords: bool = False) -> Any:
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
                 if "string" in expected and isinstance(value, (bool, int, float)) and not keywords else "")
        where = "" if keywords else " in the file"
        return UsageError(f"{what}: {key}: {_shown(value)} is not {expected}, which {flag} takes; fix the value"
                          f"{where}{quote}.")

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
        if ptype is float and keywords and isinstance(v, int):
            v = float(v)  # as the command line gives it: `lr=1` is --lr 1, which is 1.0
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


def check_keys(parser: argparse.ArgumentParser, data: Mapping[str, Any], what: str, *,
               keywords: bool = False) -> dict[str, Any]:
    """Refuse keys that are no flag of ours or timm's, naming close matches, and values that are not of the kind
    their flag takes; normalise dashes. ``what`` names where they come from (``--config FILE``, ``recipe NAME``,
    ``timm_deit_distill.train()``); ``keywords``: Python keywords, not a YAML file (the same checks, the fix
    worded for a keyword, and a file's bookkeeping keys are not taken)."""
    known = dests(parser)
    out = {}
    for key, value in data.items():
        norm = str(key).replace("-", "_")
        if norm in _CONFIG_BOOKKEEPING and not keywords:
            continue
        if norm not in known:
            close = difflib.get_close_matches(norm, list(known), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"{what}: unknown setting {key!r}.{hint} Keys are flag names with underscores "
                             "(e.g. batch_size for --batch-size).")
        default = known[norm].default
        if value is None and default is not None:
            # null would stand in for a value the setting always has (its default is the parser's, not None)
            leave = "leave the keyword out" if keywords else "remove the key"
            raise UsageError(f"{what}: {key}: {'None' if keywords else 'null'}, but {_flag_name(parser, norm)} needs "
                             f"a value (its default is {default!r}); give one, or {leave} to use the default.")
        out[norm] = _check_value(parser, known[norm], str(key), value, what, keywords=keywords)
    return out


# A value no option was given: parsing argv into a namespace pre-filled with it leaves exactly the flags given.
_UNSET = object()
# How the top layer was given, as messages say it.
ON_THE_COMMAND_LINE = "on the command line"
_AS_A_KEYWORD = "as a keyword"


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> dict[str, Any]:
    """The flags a command line gives, by dest (argparse prints and exits with code 2 on a malformed one).

    Told apart from defaults by parsing into a namespace where every setting starts unset: one parser, one pass.
    """
    known = dests(parser)
    namespace = argparse.Namespace(**{dest: _UNSET for dest in known})
    parser.parse_args(None if argv is None else list(argv), namespace=namespace)
    return {dest: value for dest, value in vars(namespace).items() if value is not _UNSET
            and not (not known[dest].option_strings and value is known[dest].default)}  # an absent positional


def options_from_argv(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """A command line's options: :func:`given_options`, resolved by :func:`resolve_options`."""
    return resolve_options(parser, given_options(parser, argv), given_as=ON_THE_COMMAND_LINE)


def options_from_keywords(parser: argparse.ArgumentParser, keywords: Mapping[str, Any], *,
                          what: str) -> argparse.Namespace:
    """Python keywords (the flags' dest names, ``batch_size=64``) checked as a ``-c`` file's values are
    (:func:`check_keys`), then resolved as the command line is; ``config=`` and ``recipe=`` work as ``-c`` and
    ``--recipe``. ``what`` names the call in refusals (``timm_deit_distill.train()``)."""
    if "print_config" in keywords:
        raise UsageError(f"{what}: print_config is the command line's --print-config, which prints and exits; from "
                         "Python, timm_deit_distill.factory.train_settings(**options) gives the resolved settings.")
    given = dict(keywords)
    config = given.pop("config", "")
    if config is not None and not isinstance(config, (str, os.PathLike)):
        raise UsageError(f"{what}: config: {config!r} is not a path, which -c/--config takes; give the path of a "
                         "YAML file.")
    given = check_keys(parser, given, what, keywords=True)
    if config:
        given["config"] = os.fspath(config)
    return resolve_options(parser, given, given_as=_AS_A_KEYWORD)


def eval_options_from_keywords(parser: argparse.ArgumentParser, keywords: Mapping[str, Any], *,
                               what: str) -> argparse.Namespace:
    """`deit-distill eval`'s options given as Python keywords (its flags' dest names), checked as
    :func:`check_keys` checks them, over the parser's defaults (eval has no recipes or configs)."""
    values = {dest: action.default for dest, action in dests(parser).items()}
    values.update(check_keys(parser, keywords, what, keywords=True))
    return argparse.Namespace(**values)


def resolve_options(parser: argparse.ArgumentParser, given: Mapping[str, Any], *,
                    given_as: str) -> argparse.Namespace:
    """The options: defaults < recipe < config < ``given`` (checked values by dest), with the unsupported timm flags
    refused, the aliases folded into the ``distill_*`` settings, implied settings set and everything validated.

    Raises :class:`UsageError` for settings that cannot work. The namespace carries the layers under ``_layers``
    (what came from where, for messages and ``--print-config``)."""
    given = dict(given)
    config = given.pop("config", "") or ""
    config_values = check_keys(parser, _read_yaml(config, "--config"), f"--config {config}") if config else {}
    check_own_record(config_values, f"--config {config}")  # our args.yaml's kd_* keys are for timm's train.py
    if not config_values.get("kd_model_name"):
        # timm's args.yaml records kd_temperature: 4.0 etc. even when no KD teacher was used; inert there, so here too.
        for key in _TIMM_KD:
            config_values.pop(key, None)
    recipe = given.get("recipe") if given.get("recipe") is not None else config_values.get("recipe")
    recipe_values = check_keys(parser, load_recipe(recipe), f"recipe {recipe}") if recipe else {}
    values = {dest: action.default for dest, action in dests(parser).items()}
    for layer in (recipe_values, config_values, given):
        values.update(layer)
    args = argparse.Namespace(**values)
    args.config, args.recipe = config, recipe
    layers: dict[str, Any] = {"recipe": recipe_values, "config": config_values, "cli": given, "given_as": given_as}
    _refuse_unsupported(parser, args, layers)
    _refuse_initial_with_resume(args, layers)
    if args.data and not args.data_dir:
        args.data_dir = args.data
    args.data = None
    _resolve_distillation(parser, args, layers)
    _resolve_implied(args, layers)
    if isinstance(args.teacher_input_size, int) and not isinstance(args.teacher_input_size, bool):
        args.teacher_input_size = [args.teacher_input_size]  # a YAML's N, in the command line's spelling
    _validate(parser, args)
    args._layers = layers
    return args


def option_source(layers: Mapping[str, Any], dest: str) -> str:
    """Where a setting's value came from, as messages and ``--print-config`` say it ('' for a default)."""
    if dest in layers.get("implied", {}):
        return f"implied by {layers['implied'][dest]}"
    if dest in layers["cli"]:
        return layers.get("given_as", ON_THE_COMMAND_LINE)
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
            where = option_source(layers, dest)
            raise UsageError(
                f"{flags[0]} ({value!r} {where}) is a timm train.py flag deit-distill train does not support: "
                f"{why}. Remove it (or set it back to timm's default {kwargs['default']!r}).")


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
        f"--initial-checkpoint {args.initial_checkpoint} ({option_source(layers, 'initial_checkpoint')}) with --resume "
        f"{args.resume} ({option_source(layers, 'resume')}): --resume restores the run's weights, optimizer and epoch and "
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
    """Fold the family's spellings into the canonical settings (``distill_*``, ``distill_family``; timm's task,
    weights as given, loss type and feature sizes under their own names); the aliases are emptied."""
    family = _distill_family(layers)
    ident = lambda v: v  # noqa: E731
    teacher_path, _ = _pick(layers, {"distill_teacher_path": ident, "teacher_path": ident}, "teacher checkpoint")
    if family == "timm":
        _resolve_timm_family(args, layers)
    else:
        _resolve_deit_family(args, layers)
    args.distill_family = family
    args.distill_teacher_path = teacher_path
    for dest in (*_DEIT_ALIASES, "kd_model_name", "kd_token_distill_type", "kd_temperature"):
        setattr(args, dest, None)  # aliases are folded into the canonical settings


def _distill_family(layers: dict[str, dict[str, Any]]) -> str:
    """'timm' or 'deit': the family the command (and its -c file) spells distillation in; both is refused.

    A recipe's distillation (DeiT's) is a default the command's timm spelling replaces whole."""
    def given(family: Mapping[str, str], layer: str) -> list[str]:
        return [dest for dest in family if layers[layer].get(dest) is not None]

    deit = [(layer, dest) for layer in ("cli", "config") for dest in given(_DEIT_FAMILY, layer)]
    timm = [(layer, dest) for layer in ("cli", "config") for dest in given(_TIMM_FAMILY, layer)]
    if deit and timm:
        (_, d), (_, t) = deit[0], timm[0]
        flag_d, flag_t = "--" + d.replace("_", "-"), "--" + t.replace("_", "-")
        raise UsageError(
            f"{flag_d} ({option_source(layers, d)}) is DeiT's distillation spelling and {flag_t} "
            f"({option_source(layers, t)}) is timm train.py's; they weigh the loss differently, so one run uses one "
            f"family: spell it timm's way ({_DEIT_FAMILY[d]} instead of {flag_d}) or DeiT's way "
            f"({_TIMM_FAMILY[t]} instead of {flag_t}).")
    if timm:
        for dest in _DEIT_FAMILY:
            layers["recipe"].pop(dest, None)
        return "timm"
    return "deit"


def _resolve_deit_family(args: argparse.Namespace, layers: dict[str, dict[str, Any]]) -> None:
    """DeiT's settings: the teacher, hard by default with one, alpha 0.5, tau 1.0, DeiT's soft reduction."""
    ident = lambda v: v  # noqa: E731
    teacher, _ = _pick(layers, {"distill_teacher": ident, "teacher_model": ident}, "teacher")
    teacher_path, _ = _pick(layers, {"distill_teacher_path": ident, "teacher_path": ident}, "teacher checkpoint")
    kind, kind_dest = _pick(layers, {"distill_type": ident, "distillation_type": ident}, "distillation type")
    alpha, alpha_dest = _pick(layers, {"distill_alpha": float, "distillation_alpha": float}, "distillation alpha")
    tau, tau_dest = _pick(layers, {"distill_tau": float, "distillation_tau": float}, "distillation temperature")
    reduction, _ = _pick(layers, {"distill_soft_reduction": ident}, "soft reduction")
    # Messages name the spelling the user wrote.
    args.distill_flags = {
        setting: "--" + (dest or setting).replace("_", "-")
        for setting, dest in (("distill_type", kind_dest), ("distill_alpha", alpha_dest), ("distill_tau", tau_dest))}
    args.distill_teacher = teacher
    if kind is None:
        kind = "hard" if (teacher or teacher_path or args.distill_cache) else "none"
    args.distill_type = kind
    args.distill_alpha = 0.5 if alpha is None else alpha
    args.distill_tau = 1.0 if tau is None else tau
    args.distill_soft_reduction = reduction or "deit"
    args.distill_spelling = "deit" if _pick(layers, {"teacher_model": ident}, "teacher")[0] else "deit-distill"
    for dest in _TIMM_KD:
        setattr(args, dest, None)
    # at timm's defaults, as timm's own args.yaml records them for a run without a teacher (inert)
    args.kd_distill_type, args.kd_loss_type = "logit", "kl"


def _resolve_timm_family(args: argparse.Namespace, layers: dict[str, dict[str, Any]]) -> None:
    """timm train.py's settings with its defaults: logit, soft token term, temperature 4.0, KL divided by the batch;
    the weights stay as given (their mode is timm's: :attr:`DistillSettings.weight_mode`)."""
    task = args.kd_distill_type or "logit"
    given = [dest for layer in ("cli", "config") for dest in _TIMM_FAMILY if layers[layer].get(dest) is not None]
    args.distill_flags_given = "--" + given[0].replace("_", "-")
    for dest, applies in (("kd_token_distill_type", "token"), ("kd_student_feature_dim", "feature"),
                          ("kd_teacher_feature_dim", "feature")):
        # timm's own args.yaml records every kd_* key at its default: only a given one that does nothing is refused
        if layers["cli"].get(dest) is not None and task != applies:
            raise UsageError(f"--{dest.replace('_', '-')} applies to --kd-distill-type {applies}, not {task}: "
                             f"drop it, or add --kd-distill-type {applies}.")
    args.distill_flags = {"distill_type": "--kd-token-distill-type" if task == "token" else "--kd-distill-type",
                          "distill_alpha": "--distill-loss-weight", "distill_tau": "--kd-temperature"}
    args.distill_teacher = args.kd_model_name
    args.kd_distill_type = task
    args.distill_type = {"logit": "soft", "feature": "feature"}.get(task) or args.kd_token_distill_type or "soft"
    args.distill_alpha = None
    args.distill_tau = 4.0 if args.kd_temperature is None else float(args.kd_temperature)
    args.distill_soft_reduction = "batchmean"
    args.kd_loss_type = args.kd_loss_type or "kl"
    args.distill_spelling = "timm"


def _resolve_implied(args: argparse.Namespace, layers: dict[str, dict[str, Any]]) -> None:
    """Settings that follow from others: a cache replays deterministic views only, so it turns them on."""
    implied: dict[str, str] = {}
    if args.distill_cache and not args.deterministic_aug:
        args.deterministic_aug = True
        implied["deterministic_aug"] = "--distill-cache"
    layers["implied"] = implied


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise UsageError(message)


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse settings that cannot work, each in one line naming the flag (the kinds of the values were checked as
    they were read: argparse on the command line, :func:`check_keys` for YAML and keywords)."""
    _validate_distillation(parser, args)
    _validate_run(args)
    _validate_sizes(args)
    _validate_augmentation(args)
    _validate_optimization(args)
    _validate_unlabeled(args)


def _validate_distillation(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The loss weights and temperature, the finiteness of every number, a teacher for a distillation type."""
    need = _need
    flags = getattr(args, "distill_flags", {})
    tau_flag = flags.get("distill_tau", "--distill-tau")
    # argparse's float() accepts "nan" and "inf", which slip through every range check written as a
    # comparison (nan compares False both ways) and fail, if at all, deep inside training.
    for dest, action in dests(parser).items():
        value = getattr(args, dest, None)
        # the kinds of values were checked as they were read (argparse: the command line; _check_value: YAML)
        if action.type is float and value is not None and dest not in ("distill_alpha", "distill_tau"):
            values = value if isinstance(value, (list, tuple)) else [value]
            need(all(math.isfinite(v) for v in values),
                 f"{_flag_name(parser, dest)} {' '.join(map(str, values))} must be a finite number (not nan or inf).")
    if args.distill_family == "timm":
        _validate_timm_family(args)
    else:
        alpha_flag = flags.get("distill_alpha", "--distill-alpha")
        need(math.isfinite(args.distill_alpha),
             f"{alpha_flag} {args.distill_alpha} must be a finite number in [0, 1]: it is the weight of the "
             "distillation term (DeiT uses 0.5).")
        need(0.0 <= args.distill_alpha <= 1.0,
             f"{alpha_flag} {args.distill_alpha} is outside [0, 1]: it is the weight of the distillation term "
             "(DeiT uses 0.5).")
    need(math.isfinite(args.distill_tau),
         f"{tau_flag} {args.distill_tau} must be a finite number > 0: it divides the logits (DeiT uses 1.0).")
    need(args.distill_tau > 0, f"{tau_flag} {args.distill_tau} must be > 0: it divides the logits (DeiT uses 1.0).")
    if args.distill_type in TEACHER_TYPES and args.distill_family == "deit":
        need(bool(args.distill_teacher or args.distill_teacher_path or args.distill_cache),
             f"{flags.get('distill_type', '--distill-type')} {args.distill_type} needs a teacher: add --distill-teacher NAME (DeiT's is "
             "regnety_160.deit_in1k), a teacher checkpoint with --distill-teacher-path, or --distill-cache DIR.")
    if args.distill_cache and args.distill_type == "none":
        raise UsageError("--distill-cache replays teacher targets but --distill-type is none; "
                         "pass --distill-type soft|hard or drop --distill-cache.")


def _validate_timm_family(args: argparse.Namespace) -> None:
    """timm's flags: a teacher named with --kd-model-name, weights >= 0, no cache for feature distillation."""
    need = _need
    need(bool(args.distill_teacher or args.distill_cache),
         f"{args.distill_flags_given} is timm's distillation, which needs its teacher: add --kd-model-name NAME "
         "(or use DeiT's --distill-* flags alone, for DeiT's meaning).")
    need(args.kd_loss_type in KD_LOSS_TYPES, f"--kd-loss-type {args.kd_loss_type!r}: timm's LogitDistillationTask "
         f"supports {', '.join(KD_LOSS_TYPES)} only; drop it.")
    for dest in ("task_loss_weight", "distill_loss_weight"):
        value = getattr(args, dest)
        need(value is None or value >= 0, f"--{dest.replace('_', '-')} {value} must be >= 0 (a loss term's weight).")
    if args.task_loss_weight is not None and args.distill_loss_weight is None:
        need(args.task_loss_weight <= 1, f"--task-loss-weight {args.task_loss_weight} alone weighs the distillation "
             f"term 1 - {args.task_loss_weight} < 0 (timm's complementary mode): use a weight in [0, 1], or give "
             "--distill-loss-weight too (independent weights).")
    for dest in ("kd_student_feature_dim", "kd_teacher_feature_dim"):
        value = getattr(args, dest)
        need(value is None or value >= 1, f"--{dest.replace('_', '-')} {value} must be >= 1.")
    if args.distill_cache and args.kd_distill_type == "feature":
        raise UsageError("--distill-cache replays the teacher's logits, but --kd-distill-type feature matches its "
                         "pooled features, computed on every batch: drop --distill-cache (or use logit/token).")


def _validate_unlabeled(args: argparse.Namespace) -> None:
    """Unlabelled images: a teacher to learn from, a fraction that leaves both kinds in a batch, no flag that
    contradicts them (what the images hold is checked when they are opened)."""
    need = _need
    given = bool(args.unlabeled_data_dir or args.unlabeled_dataset)
    if not given:
        need(not args.pseudo_labels, "--pseudo-labels gives unlabelled images the teacher's argmax, but no unlabelled "
             "images are given: add --unlabeled-data-dir DIR, or drop --pseudo-labels.")
        need(args.unlabeled_fraction == 0.5, f"--unlabeled-fraction {args.unlabeled_fraction} sets the unlabelled "
             "share of each batch, but no unlabelled images are given: add --unlabeled-data-dir DIR, or drop it.")
    need(args.unlabeled_split == "train" or bool(args.unlabeled_dataset), f"--unlabeled-split {args.unlabeled_split} "
         "names a split of --unlabeled-dataset, which is not given (a folder given by --unlabeled-data-dir has no "
         "splits): add --unlabeled-dataset NAME, or drop --unlabeled-split.")
    if not given:
        return
    flag = "--unlabeled-dataset" if args.unlabeled_dataset else "--unlabeled-data-dir"
    need(math.isfinite(args.unlabeled_fraction) and 0.0 < args.unlabeled_fraction < 1.0,
         f"--unlabeled-fraction {args.unlabeled_fraction} must be in (0, 1): the share of each batch that is "
         "unlabelled (0.5: half).")
    need(args.distill_type != "none", f"{flag} gives images without labels, and with --distill-type none nothing "
         "learns from them (only the teacher's answer supervises them): add a teacher (--distill-teacher NAME, "
         "--distill-type soft|hard), or drop it.")
    need(args.kd_distill_type != "feature", f"{flag} with --kd-distill-type feature is not supported yet; fix: use "
         "logit or token distillation, or drop the unlabelled images.")
    need(not args.mixup_off_epoch, f"{flag} with --mixup-off-epoch: the unlabelled images are drawn in their own "
         "passes, which that epoch would not count; fix: drop --mixup-off-epoch.")
    batch = int(args.batch_size)
    unlabeled = round(args.unlabeled_fraction * batch)
    need(1 <= unlabeled < batch, f"--unlabeled-fraction {args.unlabeled_fraction} of --batch-size {batch} leaves "
         f"{unlabeled} unlabelled and {batch - unlabeled} labelled images a batch; fix: both must be >= 1 (a "
         "larger batch, or another fraction).")


def _validate_run(args: argparse.Namespace) -> None:
    """Epochs, steps and intervals, the learning rate's form, AMP, clipping, ranking, the teacher check flags."""
    need = _need
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


def _validate_sizes(args: argparse.Namespace) -> None:
    """Image and model sizes, the validation crop, interpolations."""
    need = _need
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


def _validate_augmentation(args: argparse.Namespace) -> None:
    """Augmentation settings that raised or silently did nothing once training had started."""
    need = _need
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


def _validate_optimization(args: argparse.Namespace) -> None:
    """The optimizer and schedule: names timm knows and values its factories can use."""
    need = _need
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


_RUNTIME_KEYS = ("_layers", "distill_spelling", "distill_flags", "distill_family", "distill_flags_given", "local_rank", "print_config", "config", "data")
# Folded into canonical settings (aliases) or inert at timm's default (refused otherwise): not worth printing.
_OMITTED_KEYS = frozenset((*_DEIT_ALIASES,
                           *(f[0][0].lstrip("-").replace("-", "_") for f in UNSUPPORTED_TIMM_FLAGS)))


def config_dict(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The resolved settings as plain YAML-able values, in parser order; reloadable with ``-c``.

    Alias spellings (folded into ``distill_*``) and refused timm flags (always at timm's default) are left out.
    """
    out: dict[str, Any] = {}
    for dest in dests(parser):
        if dest in _RUNTIME_KEYS or dest in _OMITTED_KEYS or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        out[dest] = list(value) if isinstance(value, tuple) else value
    if getattr(args, "distill_family", "deit") == "timm":
        out.update(timm_spelled(out))
    return out


def timm_spelled(values: Mapping[str, Any]) -> dict[str, Any]:
    """A timm-family run's distillation in timm's keys (what a ``-c`` file must hold to read back as the same
    family): the teacher as ``kd_model_name``, the token term and the temperature under timm's names, DeiT's
    keys empty."""
    token = values.get("kd_distill_type") == "token"
    return {"distill_teacher": None, "distill_type": None, "distill_alpha": None, "distill_tau": None,
            "distill_soft_reduction": None, "kd_model_name": values.get("distill_teacher"),
            "kd_token_distill_type": values.get("distill_type") if token else None,
            "kd_temperature": values.get("distill_tau")}
