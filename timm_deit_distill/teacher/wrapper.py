""":class:`DistillationTeacher`: loaded explicitly, adapted to the student's data, run cheaply, never trained.

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
checkpoint or an optimizer), and runs under ``torch.inference_mode``, in channels_last for convnets, on a path
(precision x eager/compiled) chosen by measurement on the machine: see :meth:`DistillationTeacher.select_path`
and :mod:`.paths`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..atomic import sha256_file
from ..data.loaders import CHECK_IMAGES
from ..errors import TeacherError
from .check import TeacherCheck, measure_teacher
from .fit import (
    as_channel_tensor,
    check_classes,
    check_label_names,
    count_classes,
    fixed_input_hw,
    fmt_hw,
    is_convnet,
    parse_teacher_input_size,
    resolve_input_hw,
)
from .path_memory import PathMemory
from .paths import MEASURE_BUDGET_S, MIN_AGREEMENT, PathChoice, TeacherPath, parse_compile
from .precision import check_precision, has_autocast
from .sources import build_model, state_dict_sha256

__all__ = ["DistillationTeacher"]

_logger = logging.getLogger(__name__)

# torch.compile's arguments for a compiled teacher path: inductor freezing folds the frozen weights (and their
# bf16 casts) into constants; one static batch shape (smaller batches are padded to it, see _fixed_batch).
COMPILE_OPTIONS: dict[str, Any] = {"options": {"freezing": True}, "dynamic": False}


def _autocast(device_type: str, dtype: torch.dtype) -> AbstractContextManager[Any]:
    # The teacher's precision is its own: an fp32 teacher also stays fp32 inside a training loop's
    # autocast region, so its targets do not depend on the student's AMP setting.
    if dtype == torch.float32:
        return torch.autocast(device_type=device_type, enabled=False) if has_autocast(device_type) else nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


class _PathRunner(nn.Module):
    """The teacher's model under one precision's autocast: what a path runs (and what a compiled path compiles)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _autocast(x.device.type, self.dtype):
            return self.model(x)


class DistillationTeacher(nn.Module):
    """A frozen teacher that returns float32 logits ``(B, C)`` for the student's input batch.

    Build it with :meth:`create`. The wrapped model is kept outside the module tree (``self.model``
    is a plain attribute), so ``state_dict()``, ``parameters()``, ``.train()`` and DDP of any parent
    never see it, while ``.to()`` / ``.cuda()`` still move it.

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
        compile: bool | str = "auto",
        info: Mapping[str, Any] | None = None,
        min_agreement: float = MIN_AGREEMENT,
    ) -> None:
        super().__init__()
        model.eval()
        model.requires_grad_(False)
        if channels_last is None:
            channels_last = is_convnet(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        # Plain attributes, deliberately not registered submodules: see the class docstring.
        self.__dict__["model"] = model
        self.num_classes = int(num_classes)
        self.channels_last = bool(channels_last)
        self.precision = check_precision(precision)  # as requested: 'auto' or one precision
        self.compile_request = parse_compile(compile)  # as requested: 'auto', 'yes' or 'no'
        self.compile_options: dict[str, Any] = dict(COMPILE_OPTIONS)
        self.min_agreement = float(min_agreement)  # what select_path asks of a faster path by default
        self.fixed_input_hw = fixed_input_hw
        # The (H, W) every batch is resized to before the teacher sees it; None: run at the size given.
        self.input_hw = tuple(input_hw) if input_hw is not None else fixed_input_hw
        self.interpolation = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
        self._info = dict(info or {})
        self._sha256: str | None = self._info.pop("sha256", None)
        self.dataset_label_names: list[str] | None = None  # set by create(label_names=...), for diagnoses

        t_mean, t_std = as_channel_tensor(teacher_mean, "teacher mean"), as_channel_tensor(teacher_std, "teacher std")
        d_mean = t_mean if data_mean is None else as_channel_tensor(data_mean, "data_mean")
        d_std = t_std if data_std is None else as_channel_tensor(data_std, "data_std")
        self.teacher_mean, self.teacher_std = [float(v) for v in teacher_mean], [float(v) for v in teacher_std]
        self.data_mean = [float(v) for v in (data_mean if data_mean is not None else teacher_mean)]
        self.data_std = [float(v) for v in (data_std if data_std is not None else teacher_std)]
        self.adapts_normalisation = not (torch.equal(d_mean, t_mean) and torch.equal(d_std, t_std))
        # x_teacher = ((x * data_std + data_mean) - teacher_mean) / teacher_std = x * scale + shift
        self.register_buffer("input_scale", d_std / t_std, persistent=False)
        self.register_buffer("input_shift", (d_mean - t_mean) / t_std, persistent=False)
        device = next(iter(model.parameters()), torch.empty(0)).device
        self.input_scale, self.input_shift = self.input_scale.to(device), self.input_shift.to(device)
        # The path it runs on: None until chosen (precision 'auto': measured by select_path, else eager fp32 at the
        # first forward).
        self._runners: dict[TeacherPath, Callable[[torch.Tensor], torch.Tensor]] = {}
        self._warm: set[TeacherPath] = set()
        self._compiled_batch: int | None = None
        self.path_choice: PathChoice | None = None
        self._path: TeacherPath | None = self._requested_path()

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
        compile: bool | str = "auto",
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
            precision: ``'auto'`` (chosen by measurement when :meth:`select_path` is called; eager fp32 until
                then), ``'fp32'``, ``'bf16'`` or ``'fp16'``; computed under autocast, logits returned in float32.
            channels_last: default ``True`` for convnets.
            compile: ``'auto'`` (compiled with ``torch.compile`` when :meth:`select_path` measures that it pays
                for its warm-up over the run), ``'yes'``/``True`` or ``'no'``/``False``.
            device: where the teacher lives (default: CPU for models built here, unchanged for modules).
            pretrained: for a timm name without ``checkpoint_path``: load its pretrained weights
                (``False`` builds random weights, for tests and timing only).
            model_kwargs: extra ``timm.create_model`` arguments (e.g. ``img_size``); ``num_classes``
                is only accepted for random weights, since it would discard a trained head.
            teacher_mean, teacher_std: the teacher's own normalisation, when its config lacks it.

        The size it runs at and what an ``nn.Module`` or ``DistillationTeacher`` source becomes: see the class
        docstring.
        """
        check_precision(precision)  # reject a bad value before loading anything
        parse_compile(compile)
        override = parse_teacher_input_size(teacher_input_size)
        if label_names is not None:
            label_names = [str(n) for n in label_names]
            if num_classes is None:
                num_classes = len(label_names)
            elif num_classes != len(label_names):
                raise TeacherError(f"num_classes={num_classes} but {len(label_names)} label_names were given; "
                                   "pass the dataset's class names, one per class.")
        if isinstance(source, DistillationTeacher):
            return source._checked_against(num_classes, label_names, override)
        model, meta = build_model(source, checkpoint_path=checkpoint_path, use_ema=use_ema,
                                   pretrained=pretrained, model_kwargs=dict(model_kwargs or {}))
        if device is not None:
            model = model.to(device)
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        cfg.update(meta.pop("pretrained_cfg", None) or {})
        fixed_hw = fixed_input_hw(model)
        student_hw = tuple(int(v) for v in input_size[-2:]) if input_size else None
        teacher_input, run_hw, source_key, reason = _input_size(meta, cfg, fixed_hw, override, student_hw)
        classes = count_classes(model, teacher_input or cfg.get("input_size"))
        if num_classes is not None:
            check_classes(classes, num_classes, meta.get("name") or type(model).__name__)
        if label_names is not None:
            check_label_names(meta.get("label_names"), label_names, meta.get("name") or type(model).__name__)

        teacher_mean, teacher_std = _normalisation(meta, cfg, teacher_mean, teacher_std, data_mean, data_std)
        meta["input_size"] = list(teacher_input) if teacher_input else None
        meta["input_size_source"], meta["input_size_reason"] = source_key, reason
        teacher = cls(
            model, num_classes=classes, teacher_mean=teacher_mean, teacher_std=teacher_std,
            data_mean=data_mean, data_std=data_std, fixed_input_hw=fixed_hw,
            input_hw=run_hw if source_key != "student" else None,
            interpolation=str(cfg.get("interpolation", "bicubic")), precision=precision,
            channels_last=channels_last, compile=compile, info=meta)
        teacher.dataset_label_names = label_names
        teacher._log_resolution(student_hw)
        return teacher

    def _checked_against(self, num_classes: int | None, label_names: list[str] | None,
                         override: Sequence[int] | None) -> DistillationTeacher:
        """This teacher, given again to :meth:`create`: checked against the dataset's classes and labels, and
        against a ``teacher_input_size`` (which cannot change once built)."""
        if num_classes is not None:
            check_classes(self.num_classes, num_classes, self.name)
        if override is not None and tuple(override[-2:]) != tuple(self.input_hw or ()):
            raise TeacherError(
                f"teacher_input_size {fmt_hw(override[-2:])} for a teacher already built to run at "
                f"{fmt_hw(self.input_hw) if self.input_hw else 'the size it is given'}: pass "
                "teacher_input_size when building it with DistillationTeacher.create.")
        if label_names is not None:
            check_label_names(self._info.get("label_names"), label_names, self.name)
            self.dataset_label_names = label_names
        return self

    def _log_resolution(self, student_hw: tuple[int, int] | None) -> None:
        info = self._info
        source = info.get("hub_id") or info.get("file") or "memory"
        run_hw = tuple(info["input_size"][-2:]) if info.get("input_size") else None
        if run_hw is None:
            size = ("input size unknown and no student size given: it runs at whatever size it is given "
                    "(pass teacher_input_size / --teacher-input-size to fix one)")
        elif info.get("input_size_source") == "student":
            size = (f"input {fmt_hw(run_hw)}: {info['input_size_reason']} (its weights record no training "
                    "size; if it was trained at another, pass teacher_input_size / --teacher-input-size H W)")
        else:
            size = f"input {fmt_hw(run_hw)} ({info['input_size_reason']})"
            if student_hw is not None and tuple(student_hw) != run_hw:
                size += (f", the student's {fmt_hw(student_hw)} batches resized to {fmt_hw(run_hw)} "
                         f"({self.interpolation}, antialiased)")
            elif student_hw is not None:
                size += ", the student's batches are that size: not resized"
        path = (f"path {self._path} (requested)" if self._path is not None and self.compile_request != "auto"
                else f"precision {self.precision}, compile {self.compile_request} (the path is chosen by measurement)")
        _logger.info(
            "Teacher %s (tag %s) from %s, %s weights: %d classes, %s, channels_last=%s, %s, normalisation %s.",
            info.get("name"), info.get("tag"), source, info.get("weights", "given"), self.num_classes,
            path, self.channels_last, size,
            "adapted from the data pipeline's to the teacher's" if self.adapts_normalisation else "unchanged")

    # -- nn.Module behaviour ------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> DistillationTeacher:
        """A teacher never trains: stays in eval mode whatever a parent asks."""
        return super().train(False)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> DistillationTeacher:
        # .to()/.cuda() of this module or a parent also moves the hidden model.
        before = self.device
        super()._apply(fn, *args, **kwargs)
        self.model._apply(fn, *args, **kwargs)
        # Compiled paths hold the old weights as constants: rebuilt on next use. A measured choice was for the
        # device it was measured on.
        self._runners.clear()
        self._warm.clear()
        if self.device != before and self.path_choice is not None and self.path_choice.how != "requested":
            self._path, self.path_choice = self._requested_path(), None
        return self

    def compile(self, *args: Any, **kwargs: Any) -> DistillationTeacher:  # type: ignore[override]
        """Run the teacher ``torch.compile``d (arguments as ``torch.compile``'s; default: inductor with freezing).

        Same as ``compile='yes'``: with precision ``'auto'`` the precision is still chosen by measurement.
        """
        if args:
            raise TypeError("DistillationTeacher.compile takes torch.compile's keyword arguments only.")
        if kwargs:
            self.compile_options = dict(kwargs)
        self.compile_request = "yes"
        self._runners = {p: r for p, r in self._runners.items() if not p.compiled}
        self._warm = {p for p in self._warm if not p.compiled}
        if self._path is not None:
            self._path, self.path_choice = TeacherPath(self._path.precision, True), None
        return self

    def extra_repr(self) -> str:
        return (f"name={self._info.get('name')!r}, num_classes={self.num_classes}, "
                f"path={self._path or 'not chosen yet'}, channels_last={self.channels_last}")

    # -- the path it runs on ------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(iter(self.model.parameters()), self.input_scale).device

    @property
    def path(self) -> TeacherPath | None:
        """The path (precision, eager or compiled) the teacher runs on; None until chosen."""
        return self._path

    @property
    def compute_dtype(self) -> torch.dtype:
        """The autocast dtype of its path (float32 until a path is chosen)."""
        return self._path.dtype if self._path is not None else torch.float32

    def _requested_path(self) -> TeacherPath | None:
        """The path fixed by the request alone: an explicit precision (compiled only when asked), else None."""
        if self.precision == "auto":
            return None
        return TeacherPath(self.precision, self.compile_request == "yes")

    def select_path(
        self,
        batches: Iterable[Any],
        *,
        batch_size: int | None = None,
        steps: int | None = None,
        min_agreement: float | None = None,
        budget_s: float = MEASURE_BUDGET_S,
        memory: PathMemory | None = None,
    ) -> PathChoice:
        """Choose the path this teacher runs on by measuring it here, on real batches of the run's shape.

        Times the candidate paths (fp32 and bf16, plus fp16 on CUDA; eager, and compiled with inductor freezing
        where that could repay its warm-up over ``steps`` batches) on ``batches`` of ``batch_size`` real images
        (``(inputs, ...)`` as the data pipeline normalises them), checks each one's argmax agreement with eager
        fp32 on them, and switches to the cheapest path that agrees on at least ``min_agreement`` of the images
        (default: this teacher's, 0.995). An explicit ``precision`` / ``compile`` narrows the candidates (both
        explicit: nothing is measured). The figures are remembered per machine (``memory``: default the user's
        cache folder, see :mod:`~timm_deit_distill.teacher.path_memory`), so a rerun does not measure again.
        Logs the table it measured; returns the :class:`~timm_deit_distill.teacher.paths.PathChoice`.

        Without a call, a teacher with ``precision='auto'`` runs eager fp32 (see :meth:`forward`): measuring is
        this explicit call, never a side effect of a forward pass.
        """
        from .tuning import select_path

        return select_path(self, batches, batch_size=batch_size, steps=steps,
                           min_agreement=self.min_agreement if min_agreement is None else min_agreement,
                           budget_s=budget_s, memory=memory)

    def use_path(self, path: TeacherPath | str, reason: str = "given by use_path") -> DistillationTeacher:
        """Run on ``path`` (e.g. ``'bf16 compiled'``, one chosen by another process) without measuring."""
        path = TeacherPath.parse(path) if isinstance(path, str) else path
        self._use_path(PathChoice(path, "requested", reason))
        return self

    def _use_path(self, choice: PathChoice) -> PathChoice:
        self._path, self.path_choice = choice.path, choice
        # Compiled paths not taken hold a frozen copy of the weights each: let them go.
        self._runners = {p: r for p, r in self._runners.items() if p == choice.path or not p.compiled}
        self._warm &= set(self._runners)
        if choice.measurements:
            _logger.info("Teacher %s paths on %s, batch %s, %s (%s in %.1f s):\n%s", self.name, choice.machine,
                         "x".join(map(str, choice.batch_shape or ())),
                         f"{choice.steps:,} teacher batches to serve" if choice.steps is not None else "run length unknown",
                         choice.how, choice.seconds, choice.table())
        _logger.info("Teacher %s runs %s.", self.name, choice.summary())
        return choice

    def _use_default_path(self) -> None:
        path = TeacherPath("fp32", self.compile_request == "yes")
        self._use_path(PathChoice(path, "default", "no path measured: select_path(...) is the call that measures "
                                                   "the paths and takes a faster one that agrees with fp32"))

    def _warm_paths(self) -> set[TeacherPath]:
        return set(self._warm)

    def _runner(self, path: TeacherPath) -> Callable[[torch.Tensor], torch.Tensor]:
        """The callable that runs a prepared batch on ``path`` (built once; a compiled one compiles at its first call)."""
        run = self._runners.get(path)
        if run is None:
            runner = _PathRunner(self.model, path.dtype)
            if path.compiled:
                run = self._fixed_batch(torch.compile(runner, **self.compile_options), path)
            else:
                run = runner
            self._runners[path] = run
        return run

    def _fixed_batch(self, compiled: Callable[[torch.Tensor], torch.Tensor], path: TeacherPath,
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``compiled`` fed batches of one size: others are cut into it, the last part padded with zeros.

        A compiled graph is specialised to its input shape; an evaluation batch, a cache build's last batch or
        the teacher check would otherwise each compile again (tens of seconds). Rows do not interact in an
        eval-mode network, so padding changes none of the real rows' logits.
        """

        def run(x: torch.Tensor) -> torch.Tensor:
            size = self._compiled_batch or len(x)
            self._compiled_batch = size
            if len(x) == size:
                out = compiled(x)
            else:
                parts = []
                for start in range(0, len(x), size):
                    part = x[start:start + size]
                    real = len(part)
                    if real < size:
                        part = torch.cat([part, part.new_zeros((size - real, *part.shape[1:]))])
                        if self.channels_last:
                            part = part.contiguous(memory_format=torch.channels_last)
                    parts.append(compiled(part)[:real])
                out = torch.cat(parts)
            self._warm.add(path)
            return out

        return run

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits ``(B, num_classes)`` for a batch normalised by the data pipeline.

        Nothing is measured, compiled on purpose or written here: with no path chosen yet (precision ``'auto'`` and
        no :meth:`select_path`), the teacher takes its default path, eager fp32 (compiled only when asked with
        ``compile='yes'``), and says once that :meth:`select_path` is the call that measures a faster one.
        """
        if self._path is None:
            self._use_default_path()
        assert self._path is not None
        with torch.inference_mode():
            x = self.prepare_input(x.float())
            logits = self._runner(self._path)(x).float()
        # A normal tensor (not an inference tensor), so losses built on it can be differentiated.
        return logits.clone()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 pooled pre-logits features ``(B, D)`` for a batch normalised by the data pipeline (timm's
        ``forward_head(forward_features(x), pre_logits=True)``, what timm's feature distillation matches), on the
        same input the logits see (renormalised, at the teacher's size), eager at its path's precision."""
        model = self.model
        if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
            raise TeacherError(f"{type(model).__name__} has no forward_features/forward_head: timm's feature "
                               "distillation needs a timm classifier as the teacher.")
        if self._path is None:
            self._use_default_path()
        assert self._path is not None
        with torch.inference_mode(), _autocast(x.device.type, self._path.dtype):
            x = self.prepare_input(x.float())
            out = model.forward_head(model.forward_features(x), pre_logits=True).float()
        return out.clone()

    @property
    def feature_dim(self) -> int:
        """The size of :meth:`features` (timm's ``head_hidden_size``, else ``num_features``)."""
        return int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)

    # -- measuring ----------------------------------------------------------------------------------------

    def check(
        self,
        loader: Iterable[Any],
        *,
        max_images: int = CHECK_IMAGES,
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
        (see :func:`~timm_deit_distill.teacher.check.measure_teacher`) is named as a class order that differs from the dataset's, and refused
        even when plain top-1 clears the threshold: a head with some classes reordered still scores well
        above chance while teaching those classes wrong. The error carries the result as ``error.check``.
        """
        return measure_teacher(self, loader, max_images=max_images, min_top1=min_top1)

    # -- description --------------------------------------------------------------------------------------

    @property
    def name(self) -> str | None:
        return self._info.get("name")

    @property
    def info(self) -> Mapping[str, Any]:
        """What was resolved when the teacher was built: name, tag, source file or hub id, weights, the input
        size it runs at and why, where its normalisation came from, the facts its weights record."""
        return self._info

    @property
    def description(self) -> dict[str, Any]:
        """JSON-serialisable identity of this teacher, for cache fingerprints and model cards."""
        if self._sha256 is None:
            file = self._info.get("file")
            self._sha256 = sha256_file(Path(file)) if file and Path(file).is_file() else state_dict_sha256(self.model)
        info = self._info
        description = {
            "name": info.get("name"),
            "tag": info.get("tag"),
            "hub_id": info.get("hub_id"),
            "file": info.get("file"),
            "sha256": self._sha256,
            "weights": info.get("weights"),
            "num_classes": self.num_classes,
            # What it runs at now ('auto' until a path is chosen); a compiled path says so, an eager one keeps
            # the keys every cache and card so far recorded.
            "precision": self._path.precision if self._path is not None else "auto",
            "input_size": info.get("input_size"),  # the size it really runs at (None: whatever it is given)
            "input_size_source": info.get("input_size_source"),
            "mean": [float(v) for v in self.teacher_mean],
            "std": [float(v) for v in self.teacher_std],
        }
        if self._path is not None and self._path.compiled:
            description["compiled"] = True
        json.dumps(description)  # fail here, not in a cache writer, if something is not JSON-able
        return description


def _normalisation(meta: dict[str, Any], cfg: Mapping[str, Any], teacher_mean: Sequence[float] | None,
                   teacher_std: Sequence[float] | None, data_mean: Sequence[float] | None,
                   data_std: Sequence[float] | None) -> tuple[Sequence[float], Sequence[float]]:
    """The teacher's own normalisation: given, else its config's, else assumed to be the data pipeline's (said in
    a warning); where it came from goes into ``meta['normalisation_source']``."""
    if teacher_mean is not None and teacher_std is not None:
        meta["normalisation_source"] = "given"
        return teacher_mean, teacher_std
    if "mean" not in cfg or "std" not in cfg:
        if data_mean is not None:
            _logger.warning(
                "Teacher %s records no normalisation; assuming it expects the data pipeline's "
                "(pass teacher_mean/teacher_std if it was trained with another).", meta.get("name"))
        meta["normalisation_source"] = "assumed: its weights record none"
        return teacher_mean or data_mean or (0.485, 0.456, 0.406), teacher_std or data_std or (0.229, 0.224, 0.225)
    meta["normalisation_source"] = "its config"
    return teacher_mean or cfg["mean"], teacher_std or cfg["std"]


def _input_size(meta: Mapping[str, Any], cfg: Mapping[str, Any], fixed_hw: tuple[int, int] | None,
                override: Sequence[int] | None, student_hw: tuple[int, int] | None) -> tuple[Any, Any, str, str]:
    """The ``(C, H, W)`` the teacher runs at (None: whatever it is given), its ``(H, W)``, and where that size
    comes from and why (:func:`~timm_deit_distill.teacher.fit.resolve_input_hw`); a ``teacher_input_size`` with
    another channel count than the teacher takes is refused."""
    in_chans = int((cfg.get("input_size") or (3,))[0])
    if override is not None and len(override) == 3 and override[0] != in_chans:
        raise TeacherError(f"teacher_input_size {tuple(override)} has {override[0]} channels but the teacher "
                           f"takes {in_chans}; give H W (or {in_chans} H W).")
    run_hw, source_key, reason = resolve_input_hw(meta, fixed_hw, override, student_hw)
    return ((in_chans, *run_hw) if run_hw else None), run_hw, source_key, reason
