"""The run's metadata: one typed record, written by the trainer and read back from any training checkpoint.

:class:`RunMetadata` is what ``deit-distill train`` stores under the checkpoint's ``deit_distill`` key
(:meth:`RunMetadata.as_dict` gives that dict, key for key and in order) and what every reader of a checkpoint
uses to learn what it holds: the model and its architecture kwargs, the data config it was trained with, its
classes, how it was distilled, what a resume is checked against. :meth:`RunMetadata.from_checkpoint` is the one
reader; it understands three layouts:

* this package's (``layout='deit-distill'``): the ``deit_distill`` dict;
* timm's train.py (``'timm'``): its ``args`` (an ``argparse.Namespace``, or a dict) with ``model``,
  ``model_kwargs``, ``num_classes``, ``in_chans``/``input_size``/``img_size``, ``gp``, ``mean``/``std``/
  ``crop_pct``/``interpolation``, ``kd_model_name``/``kd_distill_type``/``kd_token_distill_type``/
  ``kd_temperature``/``task_loss_weight``/``distill_loss_weight``, ``model_ema`` and ``seed``; ``arch`` when it
  has no args;
* facebookresearch/deit's main.py (``'deit'``): weights under ``model`` and ``args`` with ``model``,
  ``input_size``, ``nb_classes``, ``teacher_model``, ``distillation_type``/``_alpha``/``_tau``.

A plain state dict has ``layout='weights'`` and records nothing. Whatever a layout does not record is None.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["RunMetadata", "Distillation", "NOT_RECORDED", "read_run_metadata", "LAYOUTS"]

#: The layouts :meth:`RunMetadata.from_checkpoint` tells apart, by the program that wrote the checkpoint.
LAYOUTS = ("deit-distill", "timm", "deit", "weights")
_OWN, _TIMM, _DEIT, _WEIGHTS = LAYOUTS


class _NotRecorded:
    """The value of a field whose key the record does not hold (unlike None, which it may hold)."""

    def __repr__(self) -> str:
        return "NOT_RECORDED"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "NOT_RECORDED"  # a copy or a pickle is the one instance


#: ``Distillation.teacher_check`` of a run that recorded none (no teacher, or a checkpoint from before the check).
NOT_RECORDED: Any = _NotRecorded()


@dataclass(frozen=True)
class Distillation:
    """How the student was distilled: the ``distill`` entry of the run's metadata.

    ``type`` is ``'none'``, ``'hard'`` or ``'soft'`` (DeiT's distillation token; timm's token task as well), or
    timm's other tasks, ``'logit'`` and ``'feature'``. ``teacher_path`` is the measured path the teacher ran on
    (written only when there was one); ``teacher_check`` the check before training (``None``: skipped with
    --no-teacher-check; :data:`NOT_RECORDED`: no key). ``task_loss_weight``/``distill_loss_weight`` are the
    weights timm's train.py applied (its layout only: ``loss = task_w * task + distill_w * distill``); ``alpha``
    is DeiT's ``(1 - alpha) * task + alpha * distill`` and None where timm's weights do not sum to 1.
    """

    teacher: str | None = None
    teacher_description: Mapping[str, Any] | None = None
    type: str | None = None
    alpha: float | None = None
    tau: float | None = None
    soft_reduction: str | None = None
    teacher_path: Mapping[str, Any] | None = None
    teacher_check: Any = NOT_RECORDED
    task_loss_weight: float | None = None
    distill_loss_weight: float | None = None
    family: str | None = None  # 'deit' or 'timm': whose meaning the weights have (this package's runs)
    kd_distill_type: str | None = None  # timm's task (logit, token, feature) for a timm-family run
    heads: str | None = None  # which head learned from which source (this package's runs)
    # unlabelled images the teacher taught on: source, location, num_images, fraction, pseudo_labels, fingerprint
    unlabeled: Mapping[str, Any] | None = None

    @property
    def distils(self) -> bool:
        """Whether a teacher taught the student (a type other than ``'none'``)."""
        return self.type not in (None, "none")

    def as_dict(self) -> dict[str, Any]:
        """The ``distill`` dict, as the trainer writes it (the optional keys only when set)."""
        out: dict[str, Any] = {"teacher": self.teacher, "teacher_description": self.teacher_description,
                               "type": self.type, "alpha": self.alpha, "tau": self.tau,
                               "soft_reduction": self.soft_reduction}
        if self.teacher_path is not None:
            out["teacher_path"] = self.teacher_path
        if self.teacher_check is not NOT_RECORDED:
            out["teacher_check"] = self.teacher_check
        if self.task_loss_weight is not None or self.distill_loss_weight is not None:
            out["task_loss_weight"], out["distill_loss_weight"] = self.task_loss_weight, self.distill_loss_weight
        for key in ("family", "kd_distill_type", "heads", "unlabeled"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, recorded: Mapping[str, Any]) -> Distillation:
        """Read a ``distill`` dict (keys it lacks are None; ``teacher_check`` then :data:`NOT_RECORDED`)."""
        return cls(teacher=recorded.get("teacher"), teacher_description=recorded.get("teacher_description"),
                   type=recorded.get("type"), alpha=recorded.get("alpha"), tau=recorded.get("tau"),
                   soft_reduction=recorded.get("soft_reduction"), teacher_path=recorded.get("teacher_path"),
                   teacher_check=recorded.get("teacher_check", NOT_RECORDED),
                   task_loss_weight=recorded.get("task_loss_weight"),
                   distill_loss_weight=recorded.get("distill_loss_weight"), family=recorded.get("family"),
                   kd_distill_type=recorded.get("kd_distill_type"), heads=recorded.get("heads"),
                   unlabeled=recorded.get("unlabeled"))


@dataclass(frozen=True)
class RunMetadata:
    """The typed record of a run: what its checkpoints say about the student, its data, its teacher and its run.

    The fields up to ``stream`` are the ``deit_distill`` dict (:meth:`as_dict`); ``layout``, ``args``,
    ``input_hw`` and ``input_hw_source`` describe where they were read (:meth:`from_checkpoint`) and are not
    written. ``model_kwargs`` are the ``timm.create_model`` kwargs that define the architecture (classes
    included); ``pretrained_cfg`` the data config the student was trained with (``input_size``, ``mean``,
    ``std``, ``crop_pct``, ``interpolation``: only those recorded).
    """

    model: str | None = None
    model_kwargs: Mapping[str, Any] | None = None
    pretrained_cfg: Mapping[str, Any] | None = None
    label_names: Sequence[str] | None = None
    initial_weights: Mapping[str, Any] | None = None
    distill: Distillation | None = None
    recipe: str | None = None
    ema: bool | None = None
    seed: int | None = None  # what a later --resume is checked against: seed, data, world_size
    data: Mapping[str, Any] | None = None
    world_size: int | None = None
    resumed: Sequence[Mapping[str, Any]] | None = None
    stream: Mapping[str, Any] | None = None  # written only for a streamed source
    layout: str = _OWN
    args: Mapping[str, Any] | None = field(default=None, repr=False)  # the program's own settings, as a dict
    input_hw: tuple[int, int] | None = None  # the (H, W) the weights were trained at, when recorded
    input_hw_source: str | None = None  # where the checkpoint records it, e.g. 'args.img_size'

    def __post_init__(self) -> None:
        if self.input_hw is None and self.pretrained_cfg:
            hw = _hw(self.pretrained_cfg.get("input_size"))
            if hw is not None:
                object.__setattr__(self, "input_hw", hw)
                object.__setattr__(self, "input_hw_source", "deit_distill.pretrained_cfg.input_size")

    @property
    def num_classes(self) -> int | None:
        """The classes the student predicts, as its architecture kwargs record them."""
        return (self.model_kwargs or {}).get("num_classes")

    @property
    def model_kwargs_flag(self) -> str | None:
        """The ``--model-kwargs`` its run was given (timm train.py's args and this package's record them) as the
        flag that builds the same architecture again, e.g. ``--model-kwargs depth=1 embed_dim=32``; None when
        none was given or the layout does not record it."""
        kwargs = (self.args or {}).get("model_kwargs")
        if not isinstance(kwargs, Mapping) or not kwargs:
            return None
        # timm's ParseKwargs reads each value with ast.literal_eval (a plain word stays a string)
        return "--model-kwargs " + " ".join(f"{k}={str(v).replace(' ', '') if not isinstance(v, str) else v}"
                                            for k, v in kwargs.items())

    @property
    def distils(self) -> bool:
        """Whether a teacher taught the student."""
        return self.distill is not None and self.distill.distils

    def with_distill(self, **changes: Any) -> RunMetadata:
        """A copy with ``changes`` made to :attr:`distill` (an empty one when it has none)."""
        return replace(self, distill=replace(self.distill or Distillation(), **changes))

    def as_dict(self) -> dict[str, Any]:
        """The ``deit_distill`` dict the trainer writes into every checkpoint, in its key order.

        The values are the record's own objects (not copies): a checkpoint pickles them as it always did."""
        out: dict[str, Any] = {
            "model": self.model, "model_kwargs": self.model_kwargs, "pretrained_cfg": self.pretrained_cfg,
            "label_names": self.label_names, "initial_weights": self.initial_weights,
            "distill": self.distill.as_dict() if self.distill is not None else None,
            "recipe": self.recipe, "ema": self.ema, "seed": self.seed, "data": self.data,
            "world_size": self.world_size, "resumed": self.resumed,
        }
        if self.stream is not None:
            out["stream"] = self.stream
        return out

    @classmethod
    def from_dict(cls, recorded: Mapping[str, Any], *, args: Mapping[str, Any] | None = None) -> RunMetadata:
        """Read this package's ``deit_distill`` dict; ``args`` are the checkpoint's settings, if any (the seed of
        a checkpoint written before the metadata recorded it, the input size when its data config lacks it)."""
        args = dict(args or {})
        distill = recorded.get("distill")
        hw, where = (None, None) if _hw((recorded.get("pretrained_cfg") or {}).get("input_size")) else \
            _args_input_hw(args)
        return cls(model=recorded.get("model") or _str(args.get("model")), model_kwargs=recorded.get("model_kwargs"),
                   pretrained_cfg=recorded.get("pretrained_cfg"), label_names=recorded.get("label_names"),
                   initial_weights=recorded.get("initial_weights"),
                   distill=Distillation.from_dict(distill) if isinstance(distill, Mapping) else None,
                   recipe=recorded.get("recipe"), ema=recorded.get("ema"),
                   seed=recorded.get("seed", args.get("seed")), data=recorded.get("data"),
                   world_size=recorded.get("world_size"), resumed=recorded.get("resumed"),
                   stream=recorded.get("stream"), layout=_OWN, args=args or None, input_hw=hw, input_hw_source=where)

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> RunMetadata:
        """The metadata of a loaded checkpoint, in whichever of the three layouts it is (see the module)."""
        recorded = checkpoint.get("deit_distill")
        args = _args(checkpoint.get("args"))
        if isinstance(recorded, Mapping) and recorded:
            return cls.from_dict(recorded, args=args)
        if _is_deit(checkpoint, args):
            return _from_deit(args or {})
        if args is not None:
            return cls.from_timm_args(args)
        if "state_dict" in checkpoint or isinstance(checkpoint.get("arch"), str):
            return cls(model=_str(checkpoint.get("arch")), layout=_TIMM)  # timm's saver without args
        return cls(layout=_WEIGHTS)

    @classmethod
    def from_timm_args(cls, args: Mapping[str, Any]) -> RunMetadata:
        """What timm's train.py settings (its checkpoint's ``args``, or its args.yaml) say about the run."""
        return _from_timm(dict(args))


def read_run_metadata(checkpoint: Mapping[str, Any]) -> RunMetadata:
    """:meth:`RunMetadata.from_checkpoint`."""
    return RunMetadata.from_checkpoint(checkpoint)


# --- the layouts of other programs ---------------------------------------------------------------------------

def _args(value: Any) -> dict[str, Any] | None:
    """A checkpoint's ``args`` (timm's and DeiT's scripts save their argparse Namespace) as a dict."""
    if isinstance(value, argparse.Namespace):
        return dict(vars(value))
    return dict(value) if isinstance(value, Mapping) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _is_deit(checkpoint: Mapping[str, Any], args: Mapping[str, Any] | None) -> bool:
    """facebookresearch/deit's main.py: its settings name DeiT's flags, its weights are under ``model``."""
    if args is not None and ({"nb_classes", "distillation_type", "teacher_model"} & args.keys()):
        return True
    return "state_dict" not in checkpoint and isinstance(checkpoint.get("model"), Mapping)


def _hw(size: Any) -> tuple[int, int] | None:
    """(H, W) from an int, (H, W) or (C, H, W); None for anything else."""
    if isinstance(size, bool):
        return None
    if isinstance(size, int):
        return (size, size) if size > 0 else None
    if isinstance(size, (list, tuple)) and len(size) in (2, 3) and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        return int(size[-2]), int(size[-1])
    return None


def _args_input_hw(args: Mapping[str, Any]) -> tuple[tuple[int, int] | None, str | None]:
    """The training size in a script's settings: DeiT's ``input_size`` N, timm's ``input_size`` C H W, else
    timm's ``img_size`` (both set only the data pipeline's size: the size the weights were trained at)."""
    size = args.get("input_size")
    if isinstance(size, int) and not isinstance(size, bool):
        return _hw(size), "args.input_size"
    if isinstance(size, (list, tuple)) and len(size) == 3 and _hw(size):
        return _hw(size), "args.input_size"
    if _hw(args.get("img_size")):
        return _hw(args["img_size"]), "args.img_size"
    return None, None


def _timm_kwargs(args: Mapping[str, Any]) -> dict[str, Any]:
    """The kwargs timm's train.py gave ``create_model`` that define the architecture: ``--model-kwargs`` and
    ``num_classes``, ``in_chans`` (``--in-chans``, else ``--input-size``'s first), ``global_pool`` (``--gp``)."""
    kwargs = dict(args.get("model_kwargs") or {})
    size = args.get("input_size")
    in_chans = args.get("in_chans")
    if in_chans is None and isinstance(size, (list, tuple)) and len(size) == 3:
        in_chans = size[0]
    for key, value in (("num_classes", args.get("num_classes")), ("in_chans", in_chans), ("global_pool", args.get("gp"))):
        if value is not None:
            kwargs[key] = value
    return kwargs


def _timm_data_config(args: Mapping[str, Any]) -> dict[str, Any] | None:
    """The data config timm's ``resolve_data_config`` took from the settings (the model's own cfg gave the rest):
    ``input_size`` from ``--input-size`` or ``--img-size``, ``mean``/``std`` (one value repeated per channel),
    ``crop_pct``, ``interpolation``."""
    cfg: dict[str, Any] = {}
    size = args.get("input_size")
    chans = args.get("in_chans") if args.get("in_chans") is not None else 3
    if isinstance(size, (list, tuple)) and len(size) == 3:
        cfg["input_size"] = [int(v) for v in size]
        chans = size[0]
    elif isinstance(args.get("img_size"), int):
        cfg["input_size"] = [chans, args["img_size"], args["img_size"]]
    for key in ("mean", "std"):
        if args.get(key) is not None:
            values = [float(v) for v in args[key]]
            cfg[key] = values * chans if len(values) == 1 else values
    for key in ("crop_pct", "interpolation"):
        if args.get(key):
            cfg[key] = args[key]
    return cfg or None


def _timm_weights(args: Mapping[str, Any]) -> tuple[float, float]:
    """timm's task and distillation loss weights: both given or only the distillation's -> independent (task 1.0
    by default); only the task's -> distillation = 1 - task; neither -> 1.0 and 1.0."""
    task, distill = args.get("task_loss_weight"), args.get("distill_loss_weight")
    if distill is not None:
        return (1.0 if task is None else float(task)), float(distill)
    if task is not None:
        return float(task), 1.0 - float(task)
    return 1.0, 1.0


def _timm_distillation(args: Mapping[str, Any]) -> Distillation:
    """timm's ``--kd-model-name`` task: ``token`` (DeiT's distillation token, ``--kd-token-distill-type`` soft or
    hard), ``logit`` (the default) or ``feature``; its weights, and the temperature where a soft loss used it."""
    teacher = _str(args.get("kd_model_name"))
    if teacher is None:
        return Distillation(type="none")
    task = args.get("kd_distill_type") or "logit"
    kind = (args.get("kd_token_distill_type") or "soft") if task == "token" else task
    task_w, distill_w = _timm_weights(args)
    soft = kind in ("soft", "logit")  # kl_div(..., 'batchmean') * T^2
    return Distillation(teacher=teacher, type=kind,
                        alpha=distill_w if math.isclose(task_w + distill_w, 1.0) else None,
                        tau=args.get("kd_temperature") if soft else None,
                        soft_reduction="batchmean" if soft else None,
                        task_loss_weight=task_w, distill_loss_weight=distill_w)


def _from_timm(args: dict[str, Any]) -> RunMetadata:
    hw, where = _args_input_hw(args)
    return RunMetadata(model=_str(args.get("model")), model_kwargs=_timm_kwargs(args),
                       pretrained_cfg=_timm_data_config(args), distill=_timm_distillation(args),
                       ema=args.get("model_ema"), seed=args.get("seed"), layout=_TIMM, args=args,
                       input_hw=hw, input_hw_source=where)


def _from_deit(args: dict[str, Any]) -> RunMetadata:
    """facebookresearch/deit's main.py: ``create_model(args.model, num_classes=args.nb_classes)``, its data at
    ``args.input_size``, its ``DistillationLoss(teacher, type, alpha, tau)`` (tau and the reduction for soft only:
    summed, divided by the logits' count, this package's ``'deit'`` reduction)."""
    classes = args.get("nb_classes")
    size = args.get("input_size")
    kind = args.get("distillation_type")
    distill = None
    if kind is not None:
        distils, soft = kind != "none", kind == "soft"
        distill = Distillation(teacher=_str(args.get("teacher_model")) if distils else None, type=kind,
                               alpha=args.get("distillation_alpha") if distils else None,
                               tau=args.get("distillation_tau") if soft else None,
                               soft_reduction="deit" if soft else None)
    hw, where = _args_input_hw(args)
    return RunMetadata(model=_str(args.get("model")),
                       model_kwargs={"num_classes": classes} if classes is not None else None,
                       pretrained_cfg={"input_size": [3, size, size]} if isinstance(size, int) and size > 0 else None,
                       distill=distill, ema=args.get("model_ema"), seed=args.get("seed"), layout=_DEIT,
                       args=args or None, input_hw=hw, input_hw_source=where)
