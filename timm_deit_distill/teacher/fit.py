"""Whether a teacher fits the student's data, and how it is adapted: the input size it runs at (fixed by its
architecture, asked for, recorded with its weights, or the student's), its normalisation, its classes."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from ..errors import TeacherError

__all__ = ["fixed_input_hw", "is_convnet", "as_channel_tensor", "fmt_floats", "fmt_hw", "parse_teacher_input_size",
           "resolve_input_hw", "check_label_names", "check_classes", "count_classes"]

_logger = logging.getLogger(__name__)


def fixed_input_hw(model: nn.Module) -> tuple[int, int] | None:
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


def is_convnet(model: nn.Module) -> bool:
    # A convolution that overlaps its windows (kernel != stride) marks a convnet; a ViT's patchify conv
    # does not, and channels_last only pays off for the former.
    return any(isinstance(m, nn.Conv2d) and tuple(m.kernel_size) != tuple(m.stride) for m in model.modules())


def as_channel_tensor(values: Sequence[float], name: str) -> torch.Tensor:
    tensor = torch.as_tensor(list(values), dtype=torch.float32)
    if tensor.dim() != 1 or not torch.isfinite(tensor).all() or (name.endswith("std") and (tensor <= 0).any()):
        raise TeacherError(f"{name} must be a sequence of finite per-channel values (std > 0), got {values!r}.")
    return tensor.view(1, -1, 1, 1)


def fmt_floats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def fmt_hw(hw: Sequence[int] | None) -> str:
    return "x".join(str(int(v)) for v in hw) if hw else "?"


def parse_teacher_input_size(size: int | Sequence[int] | None) -> tuple[int, ...] | None:
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


def resolve_input_hw(
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
                f"--teacher-input-size {fmt_hw(wanted)} contradicts the teacher {meta.get('name')}, a fixed-size "
                f"architecture that only takes {fmt_hw(fixed_hw)} inputs; drop --teacher-input-size "
                "(teacher_input_size) or set it to that size.")
        if recorded is not None and recorded != tuple(fixed_hw):
            _logger.warning("Teacher %s is %s (%s), but its architecture only takes %s: running at %s.",
                            meta.get("name"), fmt_hw(recorded), recorded_why, fmt_hw(fixed_hw), fmt_hw(fixed_hw))
        return tuple(fixed_hw), "fixed_size", _SIZE_REASONS["fixed_size"]
    if wanted is not None:
        if recorded is not None and recorded != wanted:
            _logger.warning("Teacher %s: --teacher-input-size %s overrides %s %s; a size it was not trained at "
                            "usually costs accuracy (the teacher check measures it).", meta.get("name"),
                            fmt_hw(wanted), fmt_hw(recorded), recorded_why)
        return wanted, "override", _SIZE_REASONS["override"]  # type: ignore[return-value]
    if recorded is not None:
        return recorded, recorded_key, recorded_why  # type: ignore[return-value]
    if student_hw is not None:
        return student_hw, "student", _SIZE_REASONS["student"]
    return None, "unknown", "unknown"


def check_label_names(teacher_names: Sequence[str] | None, dataset_names: Sequence[str], name: str | None) -> None:
    """Refuse a teacher whose recorded classes put a class of the dataset at another index (the dataset's classes
    in another order, or some of them moved); warn on names the dataset does not have at all."""
    if not teacher_names or len(teacher_names) != len(dataset_names):
        return  # unknown, or a class-count mismatch (refused by check_classes)
    teacher_names, dataset_names = [str(n) for n in teacher_names], [str(n) for n in dataset_names]
    if teacher_names == dataset_names:
        return
    known_t, known_d = set(teacher_names), set(dataset_names)
    diffs = [i for i, (t, d) in enumerate(zip(teacher_names, dataset_names, strict=True))
             if t != d and (t in known_d or d in known_t)]
    if diffs:
        how = "in another order" if known_t == known_d else "with some of them at other indices"
        shown = "; ".join(f"index {i}: teacher {teacher_names[i]!r}, dataset {dataset_names[i]!r}" for i in diffs[:4])
        raise TeacherError(
            f"Teacher {name or ''} was trained on the dataset's classes {how} ({len(diffs)} of "
            f"{len(dataset_names)} indices differ; {shown}{'; ...' if len(diffs) > 4 else ''}): its head would "
            "teach the wrong class at those indices. Fix: give the dataset the teacher's class order with "
            "--class-map FILE (the teacher's names, one per line, in its order), or use a teacher trained "
            "with this dataset's class order.")
    _logger.warning("Teacher %s records other class names than the dataset's (teacher %s..., dataset %s...); "
                    "make sure index i means the same class for both.", name, teacher_names[:5], dataset_names[:5])


def check_classes(teacher_classes: int, dataset_classes: int, name: str | None) -> None:
    if teacher_classes != dataset_classes:
        raise TeacherError(
            f"Teacher {name or ''} predicts {teacher_classes} classes but the dataset has {dataset_classes}. "
            "Its head cannot teach these classes (timm would silently re-initialise it and distil noise). "
            f"Use a teacher trained on your {dataset_classes} classes: fine-tune one on this dataset "
            "(e.g. `deit-distill train --model <teacher-arch> --pretrained ...`) and pass its checkpoint "
            "as the teacher's checkpoint_path (--teacher-path).")


def count_classes(model: nn.Module, input_size: Sequence[int] | None) -> int:
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
