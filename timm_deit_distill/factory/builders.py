"""The builders: what `deit-distill train`, `eval`, `cache build` and the Python API build alike, from typed settings.

Each builder takes the settings it needs (:class:`StudentSettings`, :class:`DataSettings`, the library's
:class:`~timm_deit_distill.losses.DistillSettings`, the data pipeline's settings), never an options namespace, so
every road into a run shares one way of building the student, its data config, the loss, the datasets and the
device, and a refusal reads the same whichever road hits it. The teacher has its own module, :mod:`.teacher`.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import timm
import torch
import torch.nn as nn
from timm.models import get_pretrained_cfg_value, is_model, list_pretrained, split_model_name_tag

from ..data import DataSettings, LoaderSettings, check_same_classes, open_source
from ..errors import CheckpointError, UsageError
from ..losses import DistillationLoss, DistillSettings
from ..targets import TargetSource
from ..teacher.sources import SOURCE_PREFIXES

if TYPE_CHECKING:
    from ..checkpoint import RunMetadata
    from ..task import DeiTDistillationTask

__all__ = [
    "DataSettings", "StudentSettings", "DeviceInfo", "select_device", "init_device", "check_model_name",
    "fixed_input_size", "open_datasets", "architecture_kwargs", "create_student", "student_data_config",
    "create_criterion", "base_criterion", "create_task", "task_heads", "feature_module", "initial_weights_origin",
]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudentSettings:
    """The student to build (timm's ``create_model`` arguments as timm train.py's flags name them) and the
    settings timm's ``resolve_data_config`` reads to give its data config."""

    model: str
    pretrained: bool
    pretrained_path: str | None
    initial_checkpoint: str
    initial_ema: bool | None  # which weights of an --initial-checkpoint / --pretrained-path holding both
    num_classes: int | None  # as asked (--num-classes); the dataset's is checked against it
    gp: str | None
    img_size: int | None
    input_size: Sequence[int] | None
    in_chans: int | None
    model_kwargs: Mapping[str, Any]
    drop: float | None
    drop_path: float | None
    drop_connect: float | None
    drop_block: float | None
    bn_momentum: float | None
    bn_eps: float | None
    head_init_scale: float | None
    head_init_bias: float | None
    grad_checkpointing: bool
    mean: Sequence[float] | None
    std: Sequence[float] | None
    crop_pct: float | None
    interpolation: str

    def data_config_args(self) -> dict[str, Any]:
        """The keys timm's ``resolve_data_config(args, model=...)`` reads, as the trainer passes them."""
        return {"in_chans": self.in_chans, "input_size": self.input_size, "img_size": self.img_size,
                "interpolation": self.interpolation, "mean": self.mean, "std": self.std, "crop_pct": self.crop_pct}


@dataclass(frozen=True)
class DeviceInfo:
    """This process's device and its place among the processes of the run."""

    device: torch.device
    rank: int
    local_rank: int
    world_size: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# ----------------------------------------------------------------------------------------------------------
# Device


def select_device(device: str | None) -> str:
    """``--device`` as asked, else cuda when present, else cpu; refused when it asks for CUDA that is not there."""
    wanted = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {wanted}: CUDA is not available on this machine; use --device cpu "
                         "(or leave --device unset to pick cuda when present).")
    return wanted


def init_device(device: str | None) -> DeviceInfo:
    """The device (:func:`select_device`) and, under torchrun, the process group, through timm's
    ``init_distributed_device_so`` (NCCL for CUDA, gloo otherwise; each process on its local rank's GPU)."""
    from timm.utils.distributed import init_distributed_device_so

    info = init_distributed_device_so(device=select_device(device))
    return DeviceInfo(torch.device(info["device"]), info["global_rank"], info["local_rank"], info["world_size"])


# ----------------------------------------------------------------------------------------------------------
# Names and data


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f" Did you mean {', '.join(close)}?" if close else ""


def check_model_name(name: str, flag: str) -> None:
    """Refuse a timm model name (optionally ``arch.tag``) that timm does not know, suggesting close matches.

    Model sources that are not names (``hf-hub:``, ``local-dir:``, ...: the teacher module's
    :data:`~timm_deit_distill.teacher.sources.SOURCE_PREFIXES`) are left to the loader.
    """
    if name.startswith(SOURCE_PREFIXES):
        return
    arch, tag = split_model_name_tag(name)
    if not is_model(arch):
        hint = _suggest(arch, timm.list_models())
        raise UsageError(f"{flag} {name!r} is not a timm model.{hint} List models with "
                         "`python -c \"import timm; print(timm.list_models('*deit*'))\"` (or `deit-distill models`).")
    if tag:
        tags = list_pretrained(f"{arch}.*")
        if name not in tags:
            listed = ", ".join(tags[:8]) or "none"
            raise UsageError(f"{flag} {name!r}: {arch} has no pretrained tag {tag!r}.{_suggest(name, tags)} "
                             f"Its tags: {listed}.")


def fixed_input_size(name: str) -> bool:
    """Whether the architecture is built for one input size (ViTs), so ``--img-size`` must reach the model."""
    if name.startswith(SOURCE_PREFIXES):
        return False
    try:
        return bool(get_pretrained_cfg_value(name, "fixed_input_size"))
    except RuntimeError:
        return False


def open_datasets(data: DataSettings, *, num_classes: int | None, loader: LoaderSettings, seed: int) -> tuple[Any, Any]:
    """The training and validation splits of any source, checked (see :func:`~timm_deit_distill.data.open_source`).

    ``num_classes`` is ``--num-classes`` (sources without a class list need it); a stream's epochs are sized by the
    training batch and ordered by the seed, as timm's train.py makes them. Under torchrun call it after the process
    group is up.
    """
    return open_source(data, num_classes=num_classes, batch_size=loader.batch_size, seed=seed)


# ----------------------------------------------------------------------------------------------------------
# The student


def architecture_kwargs(student: StudentSettings, num_classes: int) -> dict[str, Any]:
    """create_model kwargs that define the architecture (stored in checkpoints to rebuild the student)."""
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    in_chans = student.in_chans if student.in_chans is not None else (
        student.input_size[0] if student.input_size else None)
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    size = student.input_size[1:] if student.input_size else ([student.img_size] * 2 if student.img_size else None)
    if size is not None and fixed_input_size(student.model):
        # timm's train.py only resizes the data; a ViT built for another size would refuse the images.
        kwargs["img_size"] = size[0] if size[0] == size[1] else list(size)
    if student.gp is not None:
        kwargs["global_pool"] = student.gp
    kwargs.update(student.model_kwargs or {})
    return kwargs


def create_student(student: StudentSettings, arch_kwargs: Mapping[str, Any], *,
                   label_names: Sequence[str] | None = None) -> nn.Module:
    """The student, built by timm with ``arch_kwargs`` (:func:`architecture_kwargs`) and the training-time
    settings, starting from ``--pretrained``/``--pretrained-path`` or ``--initial-checkpoint`` weights.

    ``label_names`` are the training data's classes: an ``--initial-checkpoint`` whose head records others (or the
    same in another order) is refused, since its head rows would start on the wrong classes."""
    kwargs = dict(arch_kwargs)
    train_kwargs = dict(drop_rate=student.drop, drop_path_rate=student.drop_path if student.drop_path is not None
                        else student.drop_connect, drop_block_rate=student.drop_block,
                        bn_momentum=student.bn_momentum, bn_eps=student.bn_eps)
    kwargs.update({k: v for k, v in train_kwargs.items() if v is not None})
    overlay, initial, initial_meta = _initial_weights(student)
    try:
        model = timm.create_model(student.model, pretrained=student.pretrained, pretrained_cfg_overlay=overlay,
                                  checkpoint_path=initial if isinstance(initial, str) else None, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError, OSError) as e:
        raise UsageError(f"--model {student.model} could not be built with {kwargs}: {type(e).__name__}: {e}. "
                         "Check --model-kwargs / --img-size / --gp / --drop-* for this architecture, and that "
                         "--pretrained weights or --initial-checkpoint are available offline.") from None
    if overlay and "state_dict" in overlay:
        # timm keeps the cfg it loaded from, here a copy of the weights: drop it, record the file instead.
        model.pretrained_cfg.pop("state_dict", None)
        model.pretrained_cfg["file"] = os.path.abspath(str(student.pretrained_path))
    if isinstance(initial, dict):
        try:
            model.load_state_dict(initial)  # strict, as timm loads --initial-checkpoint
        except RuntimeError as e:
            flag = initial_meta.model_kwargs_flag if initial_meta is not None else None
            built = f"; its run built it with {flag}: pass the same" if flag else ""
            raise CheckpointError(
                f"--initial-checkpoint {student.initial_checkpoint} does not fit --model {student.model} built "
                f"with {kwargs}: {' '.join(str(e).split())[:400]}. It loads strictly (same architecture and "
                f"classes{built}); to start from weights with another head or input size use --pretrained "
                "--pretrained-path FILE (head replaced, position embedding resampled).") from None
        check_same_classes(initial_meta.label_names if initial_meta is not None else None, label_names, f"the classes of --initial-checkpoint "
                           f"{student.initial_checkpoint}", "the training data", "train on data with the "
                           "checkpoint's classes in their order (a --class-map listing them), or start from it with "
                           f"--pretrained --pretrained-path {student.initial_checkpoint} (its head replaced).")
    if student.head_init_scale is not None or student.head_init_bias is not None:
        heads = model.get_classifier()
        for head in heads if isinstance(heads, tuple) else (heads,):
            with torch.no_grad():
                if student.head_init_scale is not None:
                    head.weight.mul_(student.head_init_scale)
                    head.bias.mul_(student.head_init_scale)
                if student.head_init_bias is not None:
                    head.bias.fill_(student.head_init_bias)
    if student.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    return model


def _initial_weights(student: StudentSettings,
                     ) -> tuple[dict[str, Any] | None, dict[str, Any] | str | None, RunMetadata | None]:
    """The student's starting weights from --pretrained-path / --initial-checkpoint, read by the package's
    reader and weights policy (timm's loaders would take a file's EMA weights silently).

    Returns (pretrained_cfg_overlay for timm.create_model, the --initial-checkpoint state dict, what that
    checkpoint records of its run: classes, --model-kwargs); NumPy .npz/.npy files stay with timm, whose models read them with their own
    load_pretrained.
    """
    from ..checkpoint import read_checkpoint, read_run_metadata, select_weights

    flags = ("--initial-ema", "--no-initial-ema")
    overlay = None
    if student.pretrained_path:
        if not student.pretrained:
            raise UsageError(f"--pretrained-path {student.pretrained_path} is only read with --pretrained (timm's "
                             "rule); add --pretrained, or use --initial-checkpoint for weights that fit the model.")
        if student.pretrained_path.lower().endswith((".npz", ".npy")):
            overlay = dict(file=student.pretrained_path, num_classes=-1)
        else:
            checkpoint = read_checkpoint(student.pretrained_path, what="--pretrained-path")
            state_dict, _ = select_weights(checkpoint, use_ema=student.initial_ema,
                                           name=f"--pretrained-path {student.pretrained_path}", flags=flags)
            # num_classes=-1: timm replaces the head of --pretrained-path weights (timm train.py's behaviour)
            overlay = dict(state_dict=state_dict, num_classes=-1)
    initial: dict[str, Any] | str | None = None
    initial_meta: RunMetadata | None = None
    if student.initial_checkpoint:
        if student.initial_checkpoint.lower().endswith((".npz", ".npy")):
            initial = student.initial_checkpoint
        else:
            checkpoint = read_checkpoint(student.initial_checkpoint, what="--initial-checkpoint")
            initial_meta = read_run_metadata(checkpoint)
            initial, _ = select_weights(checkpoint, use_ema=student.initial_ema,
                                        name=f"--initial-checkpoint {student.initial_checkpoint}", flags=flags)
    if student.initial_ema is not None and overlay is None and not isinstance(initial, dict):
        raise UsageError("--initial-ema / --no-initial-ema choose between the raw and EMA weights of an "
                         "--initial-checkpoint or --pretrained-path file; pass one, or drop the flag.")
    return overlay, initial, initial_meta


def initial_weights_origin(student: StudentSettings, model: nn.Module, *,
                           resumed: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Where the student's starting weights came from, as its checkpoints record it (``initial_weights``):
    the flag, the file or model named, and ``hub_id``, the Hub model they are from when that is known (a model
    card's ``base_model``). None when training starts from random weights; a resumed run keeps its start's.

    Known: ``--pretrained`` weights timm fetches from the Hub (its pretrained config names the repo), a file in
    the Hugging Face cache (its path names the repo), or a checkpoint that records a Hub start of its own.
    """
    if resumed is not None:
        from ..checkpoint import read_run_metadata

        return read_run_metadata(resumed).initial_weights
    path = student.initial_checkpoint or (student.pretrained_path if student.pretrained else None)
    if path:
        flag = "--initial-checkpoint" if student.initial_checkpoint else "--pretrained-path"
        return {"flag": flag, "file": os.path.basename(path), "hub_id": _file_hub_id(path)}
    if not student.pretrained:
        return None
    hub_id = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id")
    return {"flag": "--pretrained", "model": student.model, "hub_id": hub_id.partition("@")[0] if hub_id else None}


def _file_hub_id(path: str) -> str | None:
    """The Hub model a weights file is from: its Hugging Face cache path says, or (a checkpoint this package
    wrote) the start it records."""
    from ..checkpoint import read_checkpoint, read_run_metadata
    from ..hub.transfer import cached_repo_id

    repo_id = cached_repo_id(path)
    if repo_id is not None or path.lower().endswith((".npz", ".npy", ".safetensors")):
        return repo_id
    try:  # read once more (cached by the OS): only the metadata is wanted here
        recorded = read_run_metadata(read_checkpoint(path))
    except CheckpointError:
        return None
    return (recorded.initial_weights or {}).get("hub_id")


def student_data_config(student: StudentSettings, num_classes: int, *, model: nn.Module | None = None,
                        verbose: bool = False) -> dict[str, Any]:
    """timm's resolved data config for the student, exactly as the trainer resolves it.

    Without ``model`` the student is built on the meta device with :func:`architecture_kwargs` (``--img-size``,
    ``--input-size``, ``--model-kwargs``): only its pretrained config is read, nothing is allocated.
    """
    from timm.data import resolve_data_config

    if model is None:
        import timm_deit_distill  # noqa: F401  (registers the distilled variants)

        with torch.device("meta"):
            model = timm.create_model(student.model, pretrained=False,
                                      **architecture_kwargs(student, num_classes))
    return dict(resolve_data_config(student.data_config_args(), model=model, verbose=verbose))


# ----------------------------------------------------------------------------------------------------------
# The loss


def create_criterion(distill: DistillSettings, *, smoothing: float, mixup_active: bool,
                     single_head: bool = False) -> DistillationLoss:
    """The run's loss (DeiT's, or timm's task's weights) over timm's base criterion (:func:`base_criterion`)."""
    return DistillationLoss(base_criterion(smoothing=smoothing, mixup_active=mixup_active), None, distill.type,
                            distill.alpha, distill.tau, soft_reduction=distill.soft_reduction,
                            weights=distill.weights, single_head=single_head)


def feature_module(student: nn.Module, teacher: Any, distill: DistillSettings) -> nn.Module:
    """timm's FeatureDistillationTrainableModule for ``student``: a projection onto the teacher's pooled features
    where the sizes (``--kd-*-feature-dim``, else detected as timm detects them) differ."""
    from ..task import feature_trainable

    teacher_dim = distill.kd_teacher_feature_dim or teacher.feature_dim
    return feature_trainable(student, teacher_dim, student_dim=distill.kd_student_feature_dim)


def task_heads(distill: DistillSettings) -> str:
    """Which of the student's heads learn (:data:`timm_deit_distill.task.HEADS`): timm's logit task trains the one
    output, its token task the two heads; DeiT's distillation decides by the student's architecture."""
    return {"logit": "one", "token": "two"}.get(distill.kd_distill_type or "", "auto")


def base_criterion(*, smoothing: float, mixup_active: bool) -> nn.Module:
    """timm train.py's class-head loss: soft-target CE under Mixup (which already smoothed the targets), label
    smoothing when asked, else plain cross-entropy."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_active:
        return SoftTargetCrossEntropy()
    if smoothing:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


def create_task(model: nn.Module, targets: TargetSource | None, distill: DistillSettings, *, smoothing: float,
                mixup_active: bool, device: torch.device, pseudo_labels: bool = False) -> DeiTDistillationTask:
    """The training step: the package's Task over ``model`` (the trainable module: DDP or compiled wrapper when
    used) with ``targets`` (the teacher online or a cache; None for ``'none'``) and DeiT's loss over
    :func:`base_criterion`."""
    from ..task import DeiTDistillationTask

    return DeiTDistillationTask(model, targets if distill.type != "none" else None,
                                base_criterion(smoothing=smoothing, mixup_active=mixup_active),
                                distillation_type=distill.type, alpha=distill.alpha, tau=distill.tau,
                                soft_reduction=distill.soft_reduction, weights=distill.weights,
                                heads=task_heads(distill), pseudo_labels=pseudo_labels, device=device,
                                verbose=False)
