"""The distillation teacher: loaded explicitly, adapted to the student's data, run cheaply, never trained.

:meth:`DistillationTeacher.create` builds a teacher from a timm name (with or without a pretrained tag),
``hf-hub:ORG/NAME``, ``local-dir:PATH``, an ``nn.Module`` or a checkpoint file, and refuses, before any
training step, what would silently go wrong in timm's own ``TokenDistillationTask``:

* its class count comes from its weights, and a mismatch with the dataset's is a :class:`TeacherError`
  (timm re-initialises the head and distils noise);
* raw or EMA weights is an explicit choice when a checkpoint holds both (timm silently picks EMA);
* the input is converted from the data pipeline's normalisation to the teacher's own, and resized when
  the teacher has a fixed input size different from the student's.

At run time the teacher is always in eval mode (also after a parent's ``.train()``), frozen, invisible to
``state_dict()``, ``parameters()`` and DDP of any module that contains it (so it never lands in a student
checkpoint or an optimizer), and runs under ``torch.inference_mode`` at the resolved precision, in
channels_last for convnets, optionally compiled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .atomic import sha256_file

__all__ = [
    "DistillationTeacher",
    "TeacherError",
    "PRECISIONS",
    "cpu_has_fast_bf16",
    "resolve_precision",
    "load_teacher_checkpoint",
]

_logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                     "open_clip_pytorch_model.bin")


class TeacherError(ValueError):
    """A teacher that cannot teach this student: wrong classes, an unknown source, weights that do not fit.

    A checkpoint file that cannot be read, or holds raw and EMA weights with no choice made, raises the
    package's one :class:`~timm_deit_distill.checkpoint.CheckpointError` instead (also a ``ValueError``).
    """


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
    elif isinstance(checkpoint.get("arch"), str):
        info["arch"] = checkpoint["arch"]
    args = checkpoint.get("args")
    if isinstance(args, argparse.Namespace) and "pretrained_cfg" not in info:
        # timm's train.py records --mean/--std when they override the model's own.
        cfg = {k: getattr(args, k) for k in ("mean", "std") if getattr(args, k, None) is not None}
        if cfg:
            info["pretrained_cfg"] = cfg
    return state, info


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
        self.interpolation = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
        self._info = dict(info or {})
        self._sha256: str | None = self._info.pop("sha256", None)

        t_mean, t_std = _as_channel_tensor(teacher_mean, "teacher mean"), _as_channel_tensor(teacher_std, "teacher std")
        d_mean = t_mean if data_mean is None else _as_channel_tensor(data_mean, "data_mean")
        d_std = t_std if data_std is None else _as_channel_tensor(data_std, "data_std")
        self.teacher_mean, self.teacher_std = [float(v) for v in teacher_mean], [float(v) for v in teacher_std]
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
        data_mean: Sequence[float] | None = None,
        data_std: Sequence[float] | None = None,
        input_size: Sequence[int] | None = None,
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
            num_classes: the dataset's class count; a teacher predicting another count is refused.
            data_mean, data_std: the normalisation the data pipeline applies (default: the teacher's own).
            input_size: the student's ``(C, H, W)``; used to report resizing for fixed-size teachers.
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

        An ``nn.Module`` source is used in place, not copied: it is put in eval mode, frozen and, for
        convnets, converted to channels_last. A ``DistillationTeacher`` source is returned as it is,
        after the class check.
        """
        resolve_precision(precision, "cpu")  # reject a bad value before loading anything
        if isinstance(source, DistillationTeacher):
            teacher = source
            if num_classes is not None:
                _check_classes(teacher.num_classes, num_classes, teacher.name)
            return teacher
        model, meta = _build_model(source, checkpoint_path=checkpoint_path, use_ema=use_ema,
                                   pretrained=pretrained, model_kwargs=dict(model_kwargs or {}))
        if device is not None:
            model = model.to(device)
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        cfg.update(meta.pop("pretrained_cfg", None) or {})
        fixed_hw = _fixed_input_hw(model)
        in_chans = int((cfg.get("input_size") or (3,))[0])
        # A fixed-size teacher runs at its own size; any other runs at the student's.
        teacher_input = (in_chans, *fixed_hw) if fixed_hw else (tuple(input_size) if input_size else None)
        classes = _count_classes(model, teacher_input or cfg.get("input_size"))
        if num_classes is not None:
            _check_classes(classes, num_classes, meta.get("name") or type(model).__name__)

        if teacher_mean is None or teacher_std is None:
            if "mean" not in cfg or "std" not in cfg:
                if data_mean is not None:
                    _logger.warning(
                        "Teacher %s records no normalisation; assuming it expects the data pipeline's "
                        "(pass teacher_mean/teacher_std if it was trained with another).", meta.get("name"))
                teacher_mean = teacher_mean or data_mean or (0.485, 0.456, 0.406)
                teacher_std = teacher_std or data_std or (0.229, 0.224, 0.225)
            else:
                teacher_mean = teacher_mean or cfg["mean"]
                teacher_std = teacher_std or cfg["std"]
        meta["input_size"] = list(teacher_input) if teacher_input else None
        teacher = cls(
            model, num_classes=classes, teacher_mean=teacher_mean, teacher_std=teacher_std,
            data_mean=data_mean, data_std=data_std, fixed_input_hw=fixed_hw,
            interpolation=str(cfg.get("interpolation", "bicubic")), precision=precision,
            channels_last=channels_last, compile=compile, info=meta)
        teacher._log_resolution(input_size)
        return teacher

    def _log_resolution(self, student_input_size: Sequence[int] | None) -> None:
        info = self._info
        source = info.get("hub_id") or info.get("file") or "memory"
        resize = ""
        if self.fixed_input_hw and student_input_size is not None and \
                tuple(student_input_size[-2:]) != tuple(self.fixed_input_hw):
            resize = f" (student input {tuple(student_input_size[-2:])} resized to {self.fixed_input_hw})"
        _logger.info(
            "Teacher %s (tag %s) from %s, %s weights: %d classes, precision %s (%s), channels_last=%s, "
            "input %s%s, normalisation %s.",
            info.get("name"), info.get("tag"), source, info.get("weights", "given"), self.num_classes,
            _precision_name(self.compute_dtype), self._precision_reason, self.channels_last,
            info.get("input_size") or "any size", resize,
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
        if self.fixed_input_hw is not None and tuple(x.shape[-2:]) != tuple(self.fixed_input_hw):
            x = F.interpolate(x, size=self.fixed_input_hw, mode=self.interpolation, align_corners=False,
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
            "input_size": info.get("input_size"),
            "mean": [float(v) for v in self.teacher_mean],
            "std": [float(v) for v in self.teacher_std],
        }
        json.dumps(description)  # fail here, not in a cache writer, if something is not JSON-able
        return description


# ----------------------------------------------------------------------------------------------------------
# Building the model


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
    return model, meta


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
