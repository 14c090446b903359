"""The distillation teacher: loaded explicitly, adapted to the student's data, run cheaply, never trained.

:meth:`DistillationTeacher.create` builds a teacher from a timm name (with or without a pretrained tag),
``hf-hub:ORG/NAME``, ``local-dir:PATH``, an ``nn.Module`` or a checkpoint file, and refuses, before any
training step, what would silently go wrong in timm's own ``TokenDistillationTask``:

* its class count comes from its weights, and a mismatch with the dataset's is a :class:`TeacherError`
  (timm re-initialises the head and distils noise);
* raw or EMA weights is an explicit choice when a checkpoint holds both (timm silently picks EMA);
* recorded class names in another order than the dataset's are refused (``label_names=``);
* the input is converted from the data pipeline's normalisation to the teacher's own, and resized to the
  teacher's own input size whenever one is known for its weights (timm runs it at the student's: a
  teacher trained at 32px fed 16px batches falls from 94 % to 23 % top-1, silently).

:meth:`DistillationTeacher.check` then measures its top-1 on real validation images through exactly
the path the loss uses, and refuses (one line, naming causes and fixes) a teacher near chance.

At run time the teacher is always in eval mode (also after a parent's ``.train()``), frozen, invisible to
``state_dict()``, ``parameters()`` and DDP of any module that contains it (so it never lands in a student
checkpoint or an optimizer), and runs under ``torch.inference_mode`` at the resolved precision, in
channels_last for convnets, optionally compiled.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .atomic import sha256_file
from .errors import TeacherError

__all__ = [
    "DistillationTeacher",
    "TeacherError",
    "TeacherCheck",
    "TeacherSettings",
    "auto_min_top1",
    "PRECISIONS",
    "cpu_has_fast_bf16",
    "resolve_precision",
    "load_teacher_checkpoint",
]

_logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# What a checkpoint or config says about the weights themselves (see _recorded_input_hw).
_WEIGHT_FACTS = ("input_hw", "input_hw_source", "label_names")
_HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                     "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class TeacherSettings:
    """Which teacher to build, how it runs, and how it is checked before it teaches.

    The command line's teacher flags, typed (the parsers hold the defaults): ``source`` is what
    :meth:`DistillationTeacher.create` takes (a timm name, ``hf-hub:``, ``local-dir:``; None: the checkpoint's
    recorded architecture), ``checkpoint_path`` its weights, ``use_ema`` the raw/EMA choice, ``input_size`` the
    size it runs at (N, H W or C H W; None: its own), ``precision`` and ``channels_last`` (None: channels_last
    for convnets). ``check`` runs :meth:`DistillationTeacher.check` on ``check_images`` validation images
    against ``min_top1`` (None: automatic).
    """

    source: str | None
    checkpoint_path: str | None
    use_ema: bool | None
    input_size: tuple[int, ...] | None
    precision: str
    channels_last: bool | None
    check: bool
    check_images: int
    min_top1: float | None

    @property
    def given(self) -> bool:
        """Whether a teacher is given at all (a name or a checkpoint)."""
        return bool(self.source or self.checkpoint_path)


@dataclass(frozen=True)
class TeacherCheck:
    """What :meth:`DistillationTeacher.check` measured (percentages, as timm reports top-1)."""

    top1: float  # teacher top-1 on the sample, in percent
    images: int  # images measured
    num_classes: int
    chance: float  # percent: the top-1 of always predicting the sample's most common class
    min_top1: float | None  # the threshold applied (None: measured only)
    seconds: float  # wall time of the measurement
    passed: bool | None  # None when no threshold was applied
    diagnosis: str | None = None  # a class order that differs from the dataset's, when the predictions show one

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (for eval.json and checkpoint metadata)."""
        return dataclasses.asdict(self)


def auto_min_top1(chance: float) -> float:
    """The default threshold: a quarter of the way from chance to 100 % (32.5 % for 10 balanced classes).

    Far below any teacher worth distilling from, far above what a broken one scores: random weights, a
    wrong resolution, normalisation or class order all land near ``chance``.
    """
    return chance + 0.25 * (100.0 - chance)


# ----------------------------------------------------------------------------------------------------------
# Precision


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices faster than fp32: true with AMX (Sapphire Rapids+).

    AVX512-BF16 alone is not enough: on a Sapphire Rapids VM without AMX, bf16 convolutions and
    matmuls measured 1.3-1.8x *slower* than fp32 (its dot-product instruction issues on one port, the
    fp32 FMA on two), so 'auto' keeps fp32 there.
    """
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:  # pragma: no cover - CPU detection unavailable
            pass
    try:  # pragma: no cover - older torch without the probe
        with open("/proc/cpuinfo") as f:
            return "amx_bf16" in f.read()
    except OSError:  # pragma: no cover
        return False


def resolve_precision(precision: str, device: torch.device | str) -> tuple[torch.dtype, str]:
    """The compute dtype for ``precision`` on ``device`` and a short reason for the log."""
    if precision not in PRECISIONS:
        raise TeacherError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    device = torch.device(device)
    if precision != "auto":
        return _DTYPES[precision], "requested"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16, "auto: CUDA with native bf16"
        return torch.float16, "auto: CUDA without native bf16"
    if device.type == "cpu":
        if cpu_has_fast_bf16():
            return torch.bfloat16, "auto: CPU with AMX bf16"
        return torch.float32, "auto: CPU without AMX, where bf16 is not faster than fp32"
    return torch.float32, f"auto: {device.type} device"


def _has_autocast(device_type: str) -> bool:
    return device_type in ("cpu", "cuda", "xpu", "mps", "hpu")


def _precision_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]


# ----------------------------------------------------------------------------------------------------------
# Checkpoint files


def load_teacher_checkpoint(
    path: str | os.PathLike[str], *, use_ema: bool | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read weights from a timm training checkpoint, a facebookresearch/deit checkpoint (``{'model': ...}``),
    a plain state dict or a safetensors file, through the package's one reader and weights policy
    (:func:`timm_deit_distill.checkpoint.read_checkpoint` / ``select_weights``).

    Returns ``(state_dict, info)``; ``info`` has ``weights`` ('raw', 'ema' or 'plain') and, when the
    checkpoint records them, ``arch``, ``model_kwargs`` and ``pretrained_cfg``. When the checkpoint holds
    both raw and EMA weights, ``use_ema`` must say which. A file that cannot be used raises
    :class:`~timm_deit_distill.checkpoint.CheckpointError` saying what is wrong with it.
    """
    from .checkpoint import read_checkpoint, select_weights

    checkpoint = read_checkpoint(path, what="teacher checkpoint")
    state, weights = select_weights(checkpoint, use_ema=use_ema, name=f"teacher checkpoint {Path(path)}",
                                    flags=("--teacher-ema", "--no-teacher-ema"))
    info: dict[str, Any] = {"weights": weights}
    meta = checkpoint.get("deit_distill") if weights != "plain" else None
    if isinstance(meta, Mapping):
        info["arch"] = meta.get("model")
        info["model_kwargs"] = dict(meta.get("model_kwargs") or {})
        info["pretrained_cfg"] = dict(meta.get("pretrained_cfg") or {})
        if meta.get("label_names"):
            info["label_names"] = [str(n) for n in meta["label_names"]]
    elif isinstance(checkpoint.get("arch"), str):
        info["arch"] = checkpoint["arch"]
    args = checkpoint.get("args")
    if isinstance(args, argparse.Namespace) and "pretrained_cfg" not in info:
        # timm's train.py records --mean/--std when they override the model's own.
        cfg = {k: getattr(args, k) for k in ("mean", "std") if getattr(args, k, None) is not None}
        if cfg:
            info["pretrained_cfg"] = cfg
    if weights != "plain":
        hw, where = _recorded_input_hw(checkpoint)
        if hw is not None:
            info["input_hw"], info["input_hw_source"] = list(hw), f"recorded in its checkpoint ({where})"
    return state, info


def _hw(size: Any) -> tuple[int, int] | None:
    """(H, W) from an int, (H, W) or (C, H, W); None for anything else."""
    if isinstance(size, bool):
        return None
    if isinstance(size, int):
        return (size, size) if size > 0 else None
    if isinstance(size, (list, tuple)) and len(size) in (2, 3) and all(isinstance(v, int) and v > 0 for v in size):
        return int(size[-2]), int(size[-1])
    return None


def _recorded_input_hw(checkpoint: Mapping[str, Any]) -> tuple[tuple[int, int] | None, str | None]:
    """The input size a training checkpoint's weights were trained at, and where it was read.

    This package's trainer: ``deit_distill.pretrained_cfg.input_size``. timm's train.py (``args`` is a
    Namespace): ``args.input_size`` (C, H, W), else ``args.img_size``, else the default pretrained config
    of ``args.model``, which is what timm's ``resolve_data_config`` trained at. facebookresearch/deit:
    ``args.input_size``, an int.
    """
    meta = checkpoint.get("deit_distill")
    if isinstance(meta, Mapping):
        hw = _hw((meta.get("pretrained_cfg") or {}).get("input_size"))
        if hw is not None:
            return hw, "deit_distill.pretrained_cfg.input_size"
    args = checkpoint.get("args")
    if not isinstance(args, argparse.Namespace):
        return None, None
    size = getattr(args, "input_size", None)
    if isinstance(size, int) and not isinstance(size, bool):
        return _hw(size), "args.input_size"  # facebookresearch/deit's --input-size N
    if isinstance(size, (list, tuple)) and len(size) == 3 and _hw(size):
        return _hw(size), "args.input_size"  # timm's --input-size C H W
    if _hw(getattr(args, "img_size", None)):
        return _hw(args.img_size), "args.img_size"
    arch = getattr(args, "model", None) or checkpoint.get("arch")
    if isinstance(arch, str) and arch:
        from timm.models import get_pretrained_cfg

        try:
            cfg = get_pretrained_cfg(arch)
        except RuntimeError:  # an unknown pretrained tag
            cfg = None
        hw = _hw(tuple(cfg.input_size)) if cfg is not None and cfg.input_size else None
        if hw is not None:
            return hw, f"args.model {arch!r}'s default input size, which timm's train.py trains at"
    return None, None


def _classes_in_state_dict(state_dict: Mapping[str, torch.Tensor], classifier: str | Sequence[str] | None) -> int | None:
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    for name in names:
        for suffix in (".weight", ".bias"):
            tensor = state_dict.get(name + suffix)
            if tensor is not None and tensor.dim() >= 1:
                return int(tensor.shape[0])
    return None


def _load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], origin: str) -> None:
    """Strict load; on failure retry through the model module's own ``checkpoint_filter_fn`` (timm's
    converter for foreign layouts, e.g. original DeiT/JAX checkpoints)."""
    try:
        model.load_state_dict(state_dict, strict=True)
        return
    except RuntimeError as first_error:
        filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                model.load_state_dict(filter_fn(state_dict, model), strict=True)
                return
            except Exception:  # noqa: BLE001 - report the first, unfiltered error below
                pass
        message = str(first_error).split("\n")
        raise TeacherError(
            f"The weights in {origin} do not fit {type(model).__name__}: {' '.join(message[:3])[:600]} "
            "Check that the teacher's architecture name matches the checkpoint (a timm training checkpoint "
            "records it under 'arch').") from first_error


def _state_dict_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Model facts


def _fixed_input_hw(model: nn.Module) -> tuple[int, int] | None:
    """The (H, W) a model requires, or None if it accepts any size. Read from the model itself:
    ``pretrained_cfg['input_size']`` goes stale when a model is built with ``img_size=``."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "img_size", None) is not None:
        dynamic = (getattr(model, "dynamic_img_size", False) or getattr(patch_embed, "dynamic_img_pad", False)
                   or not getattr(patch_embed, "strict_img_size", True))
        return None if dynamic else tuple(int(s) for s in patch_embed.img_size)  # type: ignore[return-value]
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("fixed_input_size") and cfg.get("input_size"):
        return tuple(int(s) for s in cfg["input_size"][-2:])  # type: ignore[return-value]
    return None


def _is_convnet(model: nn.Module) -> bool:
    # A convolution that overlaps its windows (kernel != stride) marks a convnet; a ViT's patchify conv
    # does not, and channels_last only pays off for the former.
    return any(isinstance(m, nn.Conv2d) and tuple(m.kernel_size) != tuple(m.stride) for m in model.modules())


def _as_channel_tensor(values: Sequence[float], name: str) -> torch.Tensor:
    tensor = torch.as_tensor(list(values), dtype=torch.float32)
    if tensor.dim() != 1 or not torch.isfinite(tensor).all() or (name.endswith("std") and (tensor <= 0).any()):
        raise TeacherError(f"{name} must be a sequence of finite per-channel values (std > 0), got {values!r}.")
    return tensor.view(1, -1, 1, 1)


# ----------------------------------------------------------------------------------------------------------
# The teacher


class DistillationTeacher(nn.Module):
    """A frozen teacher that returns float32 logits ``(B, C)`` for the student's input batch.

    Build it with :meth:`create`. The wrapped model is kept outside the module tree (``self.model``
    is a plain attribute), so ``state_dict()``, ``parameters()``, ``.train()`` and DDP of any parent
    never see it, while ``.to()`` / ``.cuda()`` still move it.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int,
        teacher_mean: Sequence[float],
        teacher_std: Sequence[float],
        data_mean: Sequence[float] | None = None,
        data_std: Sequence[float] | None = None,
        fixed_input_hw: tuple[int, int] | None = None,
        input_hw: tuple[int, int] | None = None,
        interpolation: str = "bicubic",
        precision: str = "auto",
        channels_last: bool | None = None,
        compile: bool = False,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        model.eval()
        model.requires_grad_(False)
        if channels_last is None:
            channels_last = _is_convnet(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        # Plain attributes, deliberately not registered submodules: see the class docstring.
        self.__dict__["model"] = model
        self.__dict__["_run"] = model
        self.num_classes = int(num_classes)
        self.channels_last = bool(channels_last)
        self.precision = precision
        self.fixed_input_hw = fixed_input_hw
        # The (H, W) every batch is resized to before the teacher sees it; None: run at the size given.
        self.input_hw = tuple(input_hw) if input_hw is not None else fixed_input_hw
        self.interpolation = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
        self._info = dict(info or {})
        self._sha256: str | None = self._info.pop("sha256", None)
        self._dataset_label_names: list[str] | None = None  # set by create(label_names=...), for diagnoses

        t_mean, t_std = _as_channel_tensor(teacher_mean, "teacher mean"), _as_channel_tensor(teacher_std, "teacher std")
        d_mean = t_mean if data_mean is None else _as_channel_tensor(data_mean, "data_mean")
        d_std = t_std if data_std is None else _as_channel_tensor(data_std, "data_std")
        self.teacher_mean, self.teacher_std = [float(v) for v in teacher_mean], [float(v) for v in teacher_std]
        self.data_mean = [float(v) for v in (data_mean if data_mean is not None else teacher_mean)]
        self.data_std = [float(v) for v in (data_std if data_std is not None else teacher_std)]
        self.adapts_normalisation = not (torch.equal(d_mean, t_mean) and torch.equal(d_std, t_std))
        # x_teacher = ((x * data_std + data_mean) - teacher_mean) / teacher_std = x * scale + shift
        self.register_buffer("input_scale", d_std / t_std, persistent=False)
        self.register_buffer("input_shift", (d_mean - t_mean) / t_std, persistent=False)
        device = next(iter(model.parameters()), torch.empty(0)).device
        self.input_scale, self.input_shift = self.input_scale.to(device), self.input_shift.to(device)
        self.compute_dtype, self._precision_reason = resolve_precision(precision, device)
        if compile:
            self.compile()

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        source: str | nn.Module | None,
        *,
        checkpoint_path: str | os.PathLike[str] | None = None,
        use_ema: bool | None = None,
        num_classes: int | None = None,
        label_names: Sequence[str] | None = None,
        data_mean: Sequence[float] | None = None,
        data_std: Sequence[float] | None = None,
        input_size: Sequence[int] | None = None,
        teacher_input_size: int | Sequence[int] | None = None,
        precision: str = "auto",
        channels_last: bool | None = None,
        compile: bool = False,
        device: torch.device | str | None = None,
        pretrained: bool = True,
        model_kwargs: Mapping[str, Any] | None = None,
        teacher_mean: Sequence[float] | None = None,
        teacher_std: Sequence[float] | None = None,
    ) -> DistillationTeacher:
        """Build a teacher and check it against the student's data before any training step.

        Args:
            source: a timm name (``'regnety_160.deit_in1k'``; the tag picks the weights),
                ``'hf-hub:ORG/NAME'``, ``'local-dir:PATH'`` (a folder written by timm's ``save_for_hf``),
                an ``nn.Module``, a checkpoint file path, or ``None`` with ``checkpoint_path`` naming a
                checkpoint that records its architecture.
            checkpoint_path: teacher weights: a timm training checkpoint, a facebookresearch/deit
                ``{'model': ...}`` checkpoint, a plain state dict or ``.safetensors``.
            use_ema: raw (False) or EMA (True) weights; required when the checkpoint holds both.
            num_classes: the dataset's class count; a teacher predicting another count is refused
                (default: ``len(label_names)`` when those are given).
            label_names: the dataset's class names in index order. When the teacher's weights record
                theirs (this package's checkpoints, a config.json's ``label_names``), the same names in
                another order are refused (the head would teach the wrong classes); other names warn.
            data_mean, data_std: the normalisation the data pipeline applies (default: the teacher's own).
            input_size: the student's ``(C, H, W)``: the size batches arrive at.
            teacher_input_size: the size the teacher runs at (N, (H, W) or (C, H, W)), overriding the one
                its weights record; refused when it contradicts a fixed-size architecture.
            precision: ``'auto'`` (bf16 on CUDA and on CPUs with AMX, fp32 otherwise), ``'fp32'``,
                ``'bf16'`` or ``'fp16'``; computed under autocast, logits returned in float32.
            channels_last: default ``True`` for convnets.
            compile: ``torch.compile`` the teacher's forward.
            device: where the teacher lives (default: CPU for models built here, unchanged for modules).
            pretrained: for a timm name without ``checkpoint_path``: load its pretrained weights
                (``False`` builds random weights, for tests and timing only).
            model_kwargs: extra ``timm.create_model`` arguments (e.g. ``img_size``); ``num_classes``
                is only accepted for random weights, since it would discard a trained head.
            teacher_mean, teacher_std: the teacher's own normalisation, when its config lacks it.

        The teacher runs at its own input size whenever one is known for its weights, the student's
        batches being resized to it (bicubic/bilinear as its config says, antialiased). In order:
        a fixed-size architecture's size (ViTs); ``teacher_input_size``; the size its checkpoint records
        (this package's ``deit_distill.pretrained_cfg.input_size``; timm train.py's ``args.input_size``,
        ``args.img_size`` or ``args.model``'s default config; facebookresearch/deit's ``args.input_size``);
        the ``input_size`` of the pretrained config of its weights (a tagged timm name, ``hf-hub:``,
        ``local-dir:``). Otherwise (a plain state dict, an ``nn.Module``) the size is unknown: it runs
        at the student's, and the log says so. The log line and :attr:`description` say which and why.

        An ``nn.Module`` source is used in place, not copied: it is put in eval mode, frozen and, for
        convnets, converted to channels_last. A ``DistillationTeacher`` source is returned as it is,
        after the class, label and input size checks.
        """
        resolve_precision(precision, "cpu")  # reject a bad value before loading anything
        override = _parse_teacher_input_size(teacher_input_size)
        if label_names is not None:
            label_names = [str(n) for n in label_names]
            if num_classes is None:
                num_classes = len(label_names)
            elif num_classes != len(label_names):
                raise TeacherError(f"num_classes={num_classes} but {len(label_names)} label_names were given; "
                                   "pass the dataset's class names, one per class.")
        if isinstance(source, DistillationTeacher):
            teacher = source
            if num_classes is not None:
                _check_classes(teacher.num_classes, num_classes, teacher.name)
            if override is not None and tuple(override[-2:]) != tuple(teacher.input_hw or ()):
                raise TeacherError(
                    f"teacher_input_size {_fmt_hw(override[-2:])} for a teacher already built to run at "
                    f"{_fmt_hw(teacher.input_hw) if teacher.input_hw else 'the size it is given'}: pass "
                    "teacher_input_size when building it with DistillationTeacher.create.")
            if label_names is not None:
                _check_label_names(teacher._info.get("label_names"), label_names, teacher.name)
                teacher._dataset_label_names = label_names
            return teacher
        model, meta = _build_model(source, checkpoint_path=checkpoint_path, use_ema=use_ema,
                                   pretrained=pretrained, model_kwargs=dict(model_kwargs or {}))
        if device is not None:
            model = model.to(device)
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        cfg.update(meta.pop("pretrained_cfg", None) or {})
        in_chans = int((cfg.get("input_size") or (3,))[0])
        if override is not None and len(override) == 3 and override[0] != in_chans:
            raise TeacherError(f"teacher_input_size {tuple(override)} has {override[0]} channels but the teacher "
                               f"takes {in_chans}; give H W (or {in_chans} H W).")
        fixed_hw = _fixed_input_hw(model)
        student_hw = tuple(int(v) for v in input_size[-2:]) if input_size else None
        run_hw, source_key, reason = _resolve_input_hw(meta, fixed_hw, override, student_hw)
        teacher_input = (in_chans, *run_hw) if run_hw else None
        classes = _count_classes(model, teacher_input or cfg.get("input_size"))
        if num_classes is not None:
            _check_classes(classes, num_classes, meta.get("name") or type(model).__name__)
        if label_names is not None:
            _check_label_names(meta.get("label_names"), label_names, meta.get("name") or type(model).__name__)

        if teacher_mean is None or teacher_std is None:
            if "mean" not in cfg or "std" not in cfg:
                if data_mean is not None:
                    _logger.warning(
                        "Teacher %s records no normalisation; assuming it expects the data pipeline's "
                        "(pass teacher_mean/teacher_std if it was trained with another).", meta.get("name"))
                meta["normalisation_source"] = "assumed: its weights record none"
                teacher_mean = teacher_mean or data_mean or (0.485, 0.456, 0.406)
                teacher_std = teacher_std or data_std or (0.229, 0.224, 0.225)
            else:
                meta["normalisation_source"] = "its config"
                teacher_mean = teacher_mean or cfg["mean"]
                teacher_std = teacher_std or cfg["std"]
        else:
            meta["normalisation_source"] = "given"
        meta["input_size"] = list(teacher_input) if teacher_input else None
        meta["input_size_source"], meta["input_size_reason"] = source_key, reason
        teacher = cls(
            model, num_classes=classes, teacher_mean=teacher_mean, teacher_std=teacher_std,
            data_mean=data_mean, data_std=data_std, fixed_input_hw=fixed_hw,
            input_hw=run_hw if source_key != "student" else None,
            interpolation=str(cfg.get("interpolation", "bicubic")), precision=precision,
            channels_last=channels_last, compile=compile, info=meta)
        teacher._dataset_label_names = label_names
        teacher._log_resolution(student_hw)
        return teacher

    def _log_resolution(self, student_hw: tuple[int, int] | None) -> None:
        info = self._info
        source = info.get("hub_id") or info.get("file") or "memory"
        run_hw = tuple(info["input_size"][-2:]) if info.get("input_size") else None
        if run_hw is None:
            size = ("input size unknown and no student size given: it runs at whatever size it is given "
                    "(pass teacher_input_size / --teacher-input-size to fix one)")
        elif info.get("input_size_source") == "student":
            size = (f"input {_fmt_hw(run_hw)}: {info['input_size_reason']} (its weights record no training "
                    "size; if it was trained at another, pass teacher_input_size / --teacher-input-size H W)")
        else:
            size = f"input {_fmt_hw(run_hw)} ({info['input_size_reason']})"
            if student_hw is not None and tuple(student_hw) != run_hw:
                size += (f", the student's {_fmt_hw(student_hw)} batches resized to {_fmt_hw(run_hw)} "
                         f"({self.interpolation}, antialiased)")
            elif student_hw is not None:
                size += ", the student's batches are that size: not resized"
        _logger.info(
            "Teacher %s (tag %s) from %s, %s weights: %d classes, precision %s (%s), channels_last=%s, %s, "
            "normalisation %s.",
            info.get("name"), info.get("tag"), source, info.get("weights", "given"), self.num_classes,
            _precision_name(self.compute_dtype), self._precision_reason, self.channels_last, size,
            "adapted from the data pipeline's to the teacher's" if self.adapts_normalisation else "unchanged")

    # -- nn.Module behaviour ------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> DistillationTeacher:
        """A teacher never trains: stays in eval mode whatever a parent asks."""
        return super().train(False)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> DistillationTeacher:
        # .to()/.cuda() of this module or a parent also moves the hidden model.
        super()._apply(fn, *args, **kwargs)
        self.model._apply(fn, *args, **kwargs)
        device = next(iter(self.model.parameters()), self.input_scale).device
        self.compute_dtype, self._precision_reason = resolve_precision(self.precision, device)
        return self

    def compile(self, *args: Any, **kwargs: Any) -> DistillationTeacher:  # type: ignore[override]
        """``torch.compile`` the wrapped model's forward (arguments as ``torch.compile``'s)."""
        self.__dict__["_run"] = torch.compile(self.model, *args, **kwargs)
        self._info["compiled"] = True
        return self

    def extra_repr(self) -> str:
        return (f"name={self._info.get('name')!r}, num_classes={self.num_classes}, "
                f"precision={_precision_name(self.compute_dtype)}, channels_last={self.channels_last}")

    # -- running ------------------------------------------------------------------------------------------

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the teacher's own pipeline would feed it: renormalised and, if needed, resized."""
        if self.adapts_normalisation:
            x = torch.addcmul(self.input_shift.to(x.dtype), x, self.input_scale.to(x.dtype))
        if self.input_hw is not None and tuple(x.shape[-2:]) != tuple(self.input_hw):
            x = F.interpolate(x, size=self.input_hw, mode=self.interpolation, align_corners=False,
                              antialias=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self, device_type: str) -> AbstractContextManager[Any]:
        # The teacher's precision is its own: an fp32 teacher also stays fp32 inside a training loop's
        # autocast region, so its targets do not depend on the student's AMP setting.
        if self.compute_dtype == torch.float32:
            return torch.autocast(device_type=device_type, enabled=False) if _has_autocast(device_type) \
                else nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits ``(B, num_classes)`` for a batch normalised by the data pipeline."""
        with torch.inference_mode():
            x = self.prepare_input(x.float())
            with self._autocast(x.device.type):
                logits = self._run(x)
            logits = logits.float()
        # A normal tensor (not an inference tensor), so losses built on it can be differentiated.
        return logits.clone()

    # -- measuring ----------------------------------------------------------------------------------------

    def check(
        self,
        loader: Iterable[Any],
        *,
        max_images: int = 512,
        min_top1: float | str | None = "auto",
    ) -> TeacherCheck:
        """Measure the teacher's top-1 on real labelled images before it teaches; refuse a teacher near chance.

        ``loader`` yields ``(inputs, targets, ...)`` normalised by the data pipeline (e.g.
        :func:`timm_deit_distill.data.build_check_loader`); at most ``max_images`` are used. The images go
        through exactly the path the loss uses, ``self(inputs)``: normalisation conversion, resize and
        precision. The figure and its cost are logged.

        ``min_top1``: ``'auto'`` (default) is :func:`auto_min_top1` of the chance level, where chance is
        the top-1 of always predicting the sample's most common class (100 / classes on a balanced
        sample; on an imbalanced one a constant teacher would otherwise pass); a number is a threshold in
        percent; ``None`` measures without refusing. Below the threshold a one-line :class:`TeacherError`
        names the figure, the threshold and the likely causes with their fixes. A consistent relabelling
        (see :meth:`_relabelling`) is named as a class order that differs from the dataset's, and refused
        even when plain top-1 clears the threshold: a head with some classes reordered still scores well
        above chance while teaching those classes wrong. The error carries the result as ``error.check``.
        """
        if max_images < 1:
            raise TeacherError(f"max_images must be >= 1, got {max_images}.")
        if isinstance(min_top1, str) and min_top1 != "auto":
            raise TeacherError(f"min_top1 must be 'auto', a percentage or None, got {min_top1!r}.")
        device = self.input_scale.device
        # (true, predicted) pair counts: at most max_images entries, whatever the class count
        pairs: Counter[tuple[int, int]] = Counter()
        seen = 0
        start = time.perf_counter()
        for batch in loader:
            inputs, targets = batch[0], batch[1]
            inputs, targets = inputs[: max_images - seen], targets[: max_images - seen]
            if targets.dim() == 2:  # soft (mixed) targets: the dominant class
                targets = targets.argmax(1)
            targets = targets.to("cpu", torch.int64)
            if len(targets) and (targets.min() < 0 or targets.max() >= self.num_classes):
                raise TeacherError(f"the check images have labels up to {int(targets.max())} but the teacher "
                                   f"predicts {self.num_classes} classes; check the dataset's classes.")
            predicted = self(inputs.to(device)).argmax(1).cpu()
            pairs.update(zip(targets.tolist(), predicted.tolist(), strict=True))
            seen += len(targets)
            if seen >= max_images:
                break
        seconds = time.perf_counter() - start
        if seen == 0:
            raise TeacherError("the teacher check got no images: the validation split is empty; add images "
                               "(or skip the check with --no-teacher-check).")
        per_class: Counter[int] = Counter()
        for (t, _), n in pairs.items():
            per_class[t] += n
        top1 = 100.0 * sum(n for (t, p), n in pairs.items() if t == p) / seen
        chance = 100.0 * max(max(per_class.values()) / seen, 1.0 / self.num_classes)
        threshold = auto_min_top1(chance) if min_top1 == "auto" else (None if min_top1 is None else float(min_top1))
        relabelled = self._relabelling(pairs, per_class, auto_min_top1(chance) if threshold is None else threshold)
        passed = None if threshold is None else (top1 >= threshold and relabelled is None)
        result = TeacherCheck(top1=top1, images=seen, num_classes=self.num_classes, chance=chance,
                              min_top1=threshold, seconds=seconds, passed=passed, diagnosis=relabelled)
        _logger.info("Teacher check: %s top-1 %.2f%% on %d images (chance %.2f%%, threshold %s): %s, in %.2f s.",
                     self.name, top1, seen, chance, "none" if threshold is None else f"{threshold:.2f}%",
                     {True: "passed", False: "FAILED", None: "measured only"}[passed], seconds)
        if passed is False:
            error = TeacherError(self._refusal(result, relabelled))
            error.check = result  # type: ignore[attr-defined]  # for callers that record the figure
            raise error
        if relabelled is not None:
            _logger.warning("Teacher check: %s.", relabelled)
        return result

    def _relabelling(self, pairs: Counter[tuple[int, int]], per_class: Counter[int], threshold: float) -> str | None:
        """'class order differs ...' when the sample's (true, predicted) pairs show a consistent relabelling.

        Consistent: mapping each true class to the teacher class it is most often predicted as is one-to-one
        and not the identity; every moved class has at least 2 images, most of them predicted as its image;
        and the relabelled top-1 clears ``threshold``. An honest teacher that confuses class A with B still
        predicts B for B's images, which breaks the one-to-one mapping.
        """
        best: dict[int, tuple[int, int]] = {}  # true class -> (count, predicted class); ties: lowest class
        for (t, p), n in sorted(pairs.items()):
            if t not in best or n > best[t][0]:
                best[t] = (n, p)
        mapping = {t: p for t, (_, p) in best.items()}
        moved = [(t, p) for t, p in sorted(mapping.items()) if t != p]
        if len(set(mapping.values())) != len(mapping) or not moved:
            return None
        if any(per_class[t] < 2 or 2 * pairs[(t, p)] <= per_class[t] for t, p in moved):
            return None
        relabelled_top1 = 100.0 * sum(pairs[(t, p)] for t, p in mapping.items()) / sum(per_class.values())
        if relabelled_top1 < threshold:
            return None
        data_names = self._dataset_label_names or []
        teacher_names = self._info.get("label_names") or []

        def named(i: int, names: Sequence[str]) -> str:
            return f"{i} ({names[i]!r})" if i < len(names) else str(i)

        shown = ", ".join(f"dataset class {named(t, data_names)} -> teacher class {named(p, teacher_names)}"
                          for t, p in moved[:4])
        return (f"class order differs: the teacher consistently predicts another class index for {len(moved)} of "
                f"{len(mapping)} classes ({shown}{', ...' if len(moved) > 4 else ''}); relabelled this way it "
                f"would score {relabelled_top1:.1f}%. Fix: give the dataset the teacher's class order with "
                "--class-map FILE, or use a teacher trained with this dataset's class order")

    def _refusal(self, result: TeacherCheck, relabelled: str | None) -> str:
        info = self._info
        size = info.get("input_size")
        where = f" (sha256 {self.description['sha256'][:12]})" if info.get("file") else ""
        same_norm = "identical" if not self.adapts_normalisation else "converted"
        causes = [
            "class order / label mapping differs from the dataset's (same class count, different order): "
            "--class-map FILE with the teacher's order, or a teacher trained on this dataset",
            f"normalisation: the teacher expects mean {_fmt_floats(self.teacher_mean)} std "
            f"{_fmt_floats(self.teacher_std)} ({info.get('normalisation_source', 'given')}), the data pipeline "
            f"gives mean {_fmt_floats(self.data_mean)} std {_fmt_floats(self.data_std)} ({same_norm}); if the "
            "teacher was trained with another, set --mean/--std (teacher_mean/teacher_std)",
            self._resolution_cause(),
            f"wrong checkpoint: check that {info.get('file') or info.get('hub_id') or info.get('name')}{where} "
            f"holds the trained teacher ({info.get('weights')} weights; --teacher-ema/--no-teacher-ema choose "
            "between raw and EMA)",
        ]
        assert result.min_top1 is not None
        if result.top1 >= result.min_top1:  # refused for its relabelling alone
            head = (f"Teacher {self.name} scores top-1 {result.top1:.2f}% on {result.images} validation images "
                    f"(threshold {result.min_top1:.2f}%, chance {result.chance:.2f}%), but mostly by teaching "
                    "other classes than the dataset's.")
        else:
            head = (f"Teacher {self.name} scores top-1 {result.top1:.2f}% on {result.images} validation images, "
                    f"below the {result.min_top1:.2f}% a teacher needs (chance {result.chance:.2f}%): it would "
                    "distil noise.")
        recorded = info.get("input_hw")
        if relabelled is not None:
            head += f" Diagnosis: {relabelled}."
            causes = causes[1:]
        elif recorded and size and tuple(recorded) != tuple(size[-2:]):
            head += f" Diagnosis: {causes.pop(2)}."
        lead = "Other possible causes" if "Diagnosis:" in head else "Likely causes"
        accept = ("--no-teacher-check to skip the check (min_top1=None)" if result.top1 >= result.min_top1 else
                  "--teacher-min-top1 PCT (min_top1=) below the measured figure, or --no-teacher-check to skip "
                  "the check")
        return (f"{head} {lead}: " + "; ".join(f"({i + 1}) {c}" for i, c in enumerate(causes))
                + f". To accept it anyway: {accept}.")

    def _resolution_cause(self) -> str:
        info = self._info
        size, recorded = info.get("input_size"), info.get("input_hw")
        runs = _fmt_hw(size[-2:]) if size else "the size it is given"
        if recorded and size and tuple(recorded) != tuple(size[-2:]):
            return (f"resolution: it runs at {runs} ({info.get('input_size_reason')}) but its weights were trained "
                    f"at {_fmt_hw(recorded)} ({info.get('input_hw_source')}); drop --teacher-input-size "
                    "(teacher_input_size) so it runs at its own size")
        if info.get("input_size_source") in ("student", "unknown"):
            return (f"resolution: its weights record no training size, so it runs at {runs} (the student's); "
                    "if it was trained at another, pass --teacher-input-size H W (teacher_input_size)")
        return (f"resolution: it runs at {runs} ({info.get('input_size_reason')}); if it was trained at another, "
                "pass --teacher-input-size H W (teacher_input_size)")

    # -- description --------------------------------------------------------------------------------------

    @property
    def name(self) -> str | None:
        return self._info.get("name")

    @property
    def description(self) -> dict[str, Any]:
        """JSON-serialisable identity of this teacher, for cache fingerprints and model cards."""
        if self._sha256 is None:
            file = self._info.get("file")
            self._sha256 = sha256_file(Path(file)) if file and Path(file).is_file() else _state_dict_sha256(self.model)
        info = self._info
        description = {
            "name": info.get("name"),
            "tag": info.get("tag"),
            "hub_id": info.get("hub_id"),
            "file": info.get("file"),
            "sha256": self._sha256,
            "weights": info.get("weights"),
            "num_classes": self.num_classes,
            "precision": _precision_name(self.compute_dtype),
            "input_size": info.get("input_size"),  # the size it really runs at (None: whatever it is given)
            "input_size_source": info.get("input_size_source"),
            "mean": [float(v) for v in self.teacher_mean],
            "std": [float(v) for v in self.teacher_std],
        }
        json.dumps(description)  # fail here, not in a cache writer, if something is not JSON-able
        return description


# ----------------------------------------------------------------------------------------------------------
# Building the model


def _fmt_floats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _fmt_hw(hw: Sequence[int] | None) -> str:
    return "x".join(str(int(v)) for v in hw) if hw else "?"


def _parse_teacher_input_size(size: int | Sequence[int] | None) -> tuple[int, ...] | None:
    """``teacher_input_size`` as (H, W) or (C, H, W); N means (N, N)."""
    if size is None:
        return None
    values = (size,) if isinstance(size, int) else tuple(size)
    if not (1 <= len(values) <= 3) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                             for v in values):
        raise TeacherError(f"teacher_input_size must be N, (H, W) or (C, H, W) of positive ints, got {size!r}.")
    return (values[0], values[0]) if len(values) == 1 else values


_SIZE_REASONS = {
    "fixed_size": "fixed-size architecture",
    "override": "--teacher-input-size / teacher_input_size",
    "student": "unknown: running at the student's size",
}


def _resolve_input_hw(
    meta: Mapping[str, Any], fixed_hw: tuple[int, int] | None, override: tuple[int, ...] | None,
    student_hw: tuple[int, int] | None,
) -> tuple[tuple[int, int] | None, str, str]:
    """The (H, W) the teacher runs at, a short source key and the reason for the log.

    Keys: ``fixed_size``, ``override``, ``checkpoint``, ``pretrained_cfg``, ``student`` (unknown, the
    student's size), ``unknown`` (neither known: it runs at whatever it is given).
    """
    recorded = tuple(meta["input_hw"]) if meta.get("input_hw") else None
    recorded_why = str(meta.get("input_hw_source") or "")
    recorded_key = "checkpoint" if recorded_why.startswith("recorded") else "pretrained_cfg"
    wanted = tuple(override[-2:]) if override is not None else None
    if fixed_hw is not None:
        if wanted is not None and wanted != tuple(fixed_hw):
            raise TeacherError(
                f"--teacher-input-size {_fmt_hw(wanted)} contradicts the teacher {meta.get('name')}, a fixed-size "
                f"architecture that only takes {_fmt_hw(fixed_hw)} inputs; drop --teacher-input-size "
                "(teacher_input_size) or set it to that size.")
        if recorded is not None and recorded != tuple(fixed_hw):
            _logger.warning("Teacher %s is %s (%s), but its architecture only takes %s: running at %s.",
                            meta.get("name"), _fmt_hw(recorded), recorded_why, _fmt_hw(fixed_hw), _fmt_hw(fixed_hw))
        return tuple(fixed_hw), "fixed_size", _SIZE_REASONS["fixed_size"]
    if wanted is not None:
        if recorded is not None and recorded != wanted:
            _logger.warning("Teacher %s: --teacher-input-size %s overrides %s %s; a size it was not trained at "
                            "usually costs accuracy (the teacher check measures it).", meta.get("name"),
                            _fmt_hw(wanted), _fmt_hw(recorded), recorded_why)
        return wanted, "override", _SIZE_REASONS["override"]  # type: ignore[return-value]
    if recorded is not None:
        return recorded, recorded_key, recorded_why  # type: ignore[return-value]
    if student_hw is not None:
        return student_hw, "student", _SIZE_REASONS["student"]
    return None, "unknown", "unknown"


def _check_label_names(teacher_names: Sequence[str] | None, dataset_names: Sequence[str], name: str | None) -> None:
    """Refuse a teacher whose recorded classes are the dataset's in another order; warn on other names."""
    if not teacher_names or len(teacher_names) != len(dataset_names):
        return  # unknown, or a class-count mismatch (refused by _check_classes)
    teacher_names, dataset_names = [str(n) for n in teacher_names], [str(n) for n in dataset_names]
    if teacher_names == dataset_names:
        return
    if sorted(teacher_names) == sorted(dataset_names):
        diffs = [i for i, (t, d) in enumerate(zip(teacher_names, dataset_names, strict=True)) if t != d]
        shown = "; ".join(f"index {i}: teacher {teacher_names[i]!r}, dataset {dataset_names[i]!r}" for i in diffs[:4])
        raise TeacherError(
            f"Teacher {name or ''} was trained on the dataset's classes in another order ({len(diffs)} of "
            f"{len(dataset_names)} indices differ; {shown}{'; ...' if len(diffs) > 4 else ''}): its head would "
            "teach the wrong class at those indices. Fix: give the dataset the teacher's class order with "
            "--class-map FILE (the teacher's names, one per line, in its order), or use a teacher trained "
            "with this dataset's class order.")
    _logger.warning("Teacher %s records other class names than the dataset's (teacher %s..., dataset %s...); "
                    "make sure index i means the same class for both.", name, teacher_names[:5], dataset_names[:5])


def _check_classes(teacher_classes: int, dataset_classes: int, name: str | None) -> None:
    if teacher_classes != dataset_classes:
        raise TeacherError(
            f"Teacher {name or ''} predicts {teacher_classes} classes but the dataset has {dataset_classes}. "
            "Its head cannot teach these classes (timm would silently re-initialise it and distil noise). "
            f"Use a teacher trained on your {dataset_classes} classes: fine-tune one on this dataset "
            "(e.g. `deit-distill train --model <teacher-arch> --pretrained ...`) and pass its checkpoint "
            "as the teacher's checkpoint_path (--teacher-path).")


def _count_classes(model: nn.Module, input_size: Sequence[int] | None) -> int:
    classes = getattr(model, "num_classes", None)
    if isinstance(classes, int) and classes > 0:
        return classes
    if not input_size:
        raise TeacherError(
            f"Cannot tell how many classes the teacher {type(model).__name__} predicts: it has no "
            "`num_classes` attribute; pass input_size=(C, H, W) so a probe forward can measure it.")
    param = next(iter(model.parameters()), None)
    probe = torch.zeros(1, *input_size, device=param.device if param is not None else "cpu")
    with torch.inference_mode():
        out = model.eval()(probe)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise TeacherError(f"The teacher must return logits (B, C); {type(model).__name__} returned "
                           f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}.")
    return int(out.shape[1])


def _build_model(
    source: str | nn.Module | None,
    *,
    checkpoint_path: str | os.PathLike[str] | None,
    use_ema: bool | None,
    pretrained: bool,
    model_kwargs: dict[str, Any],
) -> tuple[nn.Module, dict[str, Any]]:
    import timm
    from timm.models import parse_model_name, split_model_name_tag

    if use_ema is not None and checkpoint_path is None and not (isinstance(source, str) and os.path.isfile(source)):
        raise TeacherError("use_ema chooses between a checkpoint's raw and EMA weights; pass checkpoint_path too.")
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        if checkpoint_path is not None:
            raise TeacherError(f"Both source={source!r} and checkpoint_path are files; pass one.")
        source, checkpoint_path = None, source

    if isinstance(source, nn.Module):
        meta: dict[str, Any] = {"name": type(source).__name__}
        cfg = getattr(source, "pretrained_cfg", None) or {}
        meta["name"] = cfg.get("architecture") or meta["name"]
        if checkpoint_path is not None:
            state, info = load_teacher_checkpoint(checkpoint_path, use_ema=use_ema)
            _load_weights(source, state, str(checkpoint_path))
            meta.update(file=str(Path(checkpoint_path).resolve()), weights=info["weights"])
            meta.update({k: info[k] for k in _WEIGHT_FACTS if k in info})
        # Without a checkpoint the module's pretrained_cfg describes its architecture's default weights,
        # not necessarily these: its input size is not taken as the one these weights were trained at.
        return source, meta

    if source is None:
        if checkpoint_path is None:
            raise TeacherError("No teacher given: pass a model name, hf-hub:/local-dir: id, module or checkpoint.")
        state, info = load_teacher_checkpoint(checkpoint_path, use_ema=use_ema)
        arch = info.get("arch")
        if not arch:
            raise TeacherError(
                f"{checkpoint_path} does not record its architecture: pass the teacher's timm model name "
                "as well (e.g. --teacher-model regnety_160 --teacher-path FILE).")
        return _model_from_state(arch, state, info, checkpoint_path, model_kwargs)

    if not isinstance(source, str):
        raise TeacherError(f"Unsupported teacher source {type(source).__name__}: pass a name, path or nn.Module.")

    hub_source, model_id = parse_model_name(source)
    if hub_source in ("hf-hub", "local-dir"):
        if checkpoint_path is not None:
            raise TeacherError(f"{source} brings its own weights; checkpoint_path goes with a timm model name.")
        if hub_source == "local-dir" and not (Path(model_id) / "config.json").is_file():
            raise TeacherError(f"{model_id} has no config.json: a local-dir: teacher is a folder written by "
                               "timm.models.save_for_hf (or `deit-distill pull`).")
        if "num_classes" in model_kwargs:
            raise TeacherError("num_classes cannot be overridden for a hub teacher: it would discard its head.")
        try:
            model = timm.create_model(source, pretrained=True, **model_kwargs)
        except Exception as e:
            raise TeacherError(f"Could not load teacher {source}: {e}") from e
        cfg = model.pretrained_cfg
        meta = {"name": cfg.get("architecture"), "tag": None, "weights": "pretrained"}
        if hub_source == "hf-hub":
            meta["hub_id"] = model_id
            meta["file"] = _hub_cached_file(model_id)
        else:
            meta["file"] = _local_weights_file(Path(model_id))
        meta.update(_config_json_facts(hub_source, model_id))
        return model, meta

    arch, tag = split_model_name_tag(source)
    if not timm.is_model(arch):
        raise TeacherError(
            f"Unknown teacher {source!r}: not a timm model name (see timm.list_models()), an existing file, "
            "'hf-hub:ORG/NAME' or 'local-dir:PATH'. Plugin architectures need their module imported first.")
    if checkpoint_path is not None:
        state, info = load_teacher_checkpoint(checkpoint_path, use_ema=use_ema)
        return _model_from_state(source, state, info, checkpoint_path, model_kwargs)
    if pretrained and "num_classes" in model_kwargs:
        raise TeacherError(
            "num_classes cannot be set for pretrained teacher weights: timm would discard the trained head. "
            "Pass a checkpoint trained on your classes, or pretrained=False for random weights.")
    try:
        model = timm.create_model(source, pretrained=pretrained, **model_kwargs)
    except Exception as e:
        raise TeacherError(
            f"Could not create teacher {source!r} with pretrained={pretrained}: {e}. Without network access, "
            "pass local weights: checkpoint_path=FILE (command line: --distill-teacher-path FILE), or "
            "'local-dir:PATH', or a Hub cache filled beforehand.") from e
    meta = {"name": arch, "tag": (model.pretrained_cfg.get("tag") if pretrained else None),
            "weights": "pretrained" if pretrained else "random"}
    if pretrained and model.pretrained_cfg.get("hf_hub_id"):
        meta["hub_id"] = model.pretrained_cfg["hf_hub_id"]
        meta["file"] = _hub_cached_file(model.pretrained_cfg["hf_hub_id"])
    if pretrained:  # the tag's config describes exactly these weights
        meta.update(_pretrained_cfg_facts(model.pretrained_cfg, f"its pretrained config ({source})"))
    if not pretrained:
        _logger.warning("Teacher %s has random weights (pretrained=False): fine for timing, useless for training.",
                        source)
    return model, meta


def _model_from_state(
    arch: str, state: dict[str, torch.Tensor], info: dict[str, Any], path: str | os.PathLike[str],
    model_kwargs: dict[str, Any],
) -> tuple[nn.Module, dict[str, Any]]:
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    name, tag = split_model_name_tag(arch)
    if not timm.is_model(name):
        raise TeacherError(f"{path} was trained with architecture {arch!r}, which timm does not know here: "
                           "import the module that registers it, or pass a known model name.")
    cfg = get_pretrained_cfg(arch) if tag else get_pretrained_cfg(name)
    kwargs = {**info.get("model_kwargs", {}), **model_kwargs}
    classes = _classes_in_state_dict(state, getattr(cfg, "classifier", None))
    if classes is None:
        # Unknown head name in the registry: build once to ask the model where its classifier is.
        probe = timm.create_model(name, pretrained=False, **kwargs)
        classes = _classes_in_state_dict(state, (probe.pretrained_cfg or {}).get("classifier"))
    if classes is None:
        raise TeacherError(f"{path} holds no classifier weights for {name}: a teacher needs its trained head.")
    kwargs["num_classes"] = classes
    model = timm.create_model(name, pretrained=False, **kwargs)
    _load_weights(model, state, str(path))
    meta = {"name": name, "tag": tag or None, "file": str(Path(path).resolve()), "weights": info["weights"]}
    if info.get("pretrained_cfg"):
        meta["pretrained_cfg"] = info["pretrained_cfg"]
    meta.update({k: info[k] for k in _WEIGHT_FACTS if k in info})
    return model, meta


def _pretrained_cfg_facts(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Input size and label names from a pretrained config that describes the weights themselves.

    ``input_size`` is preferred to ``test_input_size``: the teacher labels training views, and
    ``input_size`` is the size it saw in training (``test_input_size`` is a larger evaluation size that
    pays off on centre crops only, at a higher cost); ``test_input_size`` is used when it is all there is.
    """
    facts: dict[str, Any] = {}
    for key in ("input_size", "test_input_size"):
        hw = _hw(tuple(cfg[key]) if isinstance(cfg.get(key), (list, tuple)) else cfg.get(key))
        if hw is not None:
            facts["input_hw"], facts["input_hw_source"] = list(hw), f"{where}: {key}"
            break
    names = _label_list(cfg.get("label_names"))
    if names:
        facts["label_names"] = names
    return facts


def _label_list(names: Any) -> list[str] | None:
    """timm's ``label_names``: a list, or a dict ``{index: name}`` (string keys after JSON); None with gaps."""
    if isinstance(names, Mapping):
        try:
            by_index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            return None
        return [by_index[i] for i in range(len(by_index))] if set(by_index) == set(range(len(by_index))) else None
    if isinstance(names, (list, tuple)):
        return [str(n) for n in names]
    return None


def _config_json_facts(hub_source: str, model_id: str) -> dict[str, Any]:
    """:func:`_pretrained_cfg_facts` of the ``config.json`` as written, read directly: timm's own parser and
    its dataclass fill a missing ``input_size`` with 224, which must not read as the size of these weights."""
    from timm.models._hub import download_from_hf, load_cfg_from_json

    try:
        path = Path(model_id) / "config.json" if hub_source == "local-dir" else download_from_hf(model_id, "config.json")
        raw = load_cfg_from_json(path)
    except Exception as e:  # noqa: BLE001 - the model loaded; its size just stays unknown
        _logger.debug("Could not re-read the config.json of %s: %s", model_id, e)
        return {}
    cfg = dict(raw.get("pretrained_cfg") or {}) if "pretrained_cfg" in raw else dict(raw)  # timm's legacy layout
    labels = raw.get("label_names") or cfg.get("label_names") or cfg.get("labels")
    cfg["label_names"] = labels
    return _pretrained_cfg_facts(cfg, f"its pretrained config ({hub_source}:{model_id} config.json)")


def _hub_cached_file(repo_id: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    repo_id = repo_id.split("@")[0]
    for filename in _HUB_WEIGHT_FILES:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return found
    return None


def _local_weights_file(folder: Path) -> str | None:
    for filename in _HUB_WEIGHT_FILES:
        if (folder / filename).is_file():
            return str((folder / filename).resolve())
    for ext in (".safetensors", ".pth", ".pth.tar", ".bin"):  # timm's own fallback order
        files = sorted(folder.glob(f"*{ext}"))
        if files:
            return str(files[0].resolve())
    return None
