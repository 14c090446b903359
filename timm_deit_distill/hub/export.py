"""Export a distilled student as a folder plain timm loads: weights, config.json and a model card.

The student comes from a checkpoint the trainer wrote (timm's CheckpointSaver format plus the
``deit_distill`` metadata key, with ``summary.csv`` / ``args.yaml`` beside it), a bare state dict, or a timm
model. It is rebuilt (on the meta device, so at no initialisation cost) under an architecture timm itself
registers, this package's variants re-expressed with ``models.timm_equivalent``, and the weights are
adopted strictly: a checkpoint that would not load in plain timm fails here, with the flag that fixes it.
timm's own ``save_for_hf`` then writes ``model.safetensors`` and ``config.json``; the source-checkpoint
fields it carries over from the registry cfg (a stale ``tag``, ``notes``) are removed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..atomic import sha256_file
from ..errors import HubExportError, OutputExistsError
from ..records import read_summary_text, timm_rows
from ..task import has_distillation_head
from ..version import __version__
from .card import CardFacts, build_model_card

if TYPE_CHECKING:
    from ..checkpoint import RunMetadata

_logger = logging.getLogger(__name__)

__all__ = ["HubExportError", "plain_timm_architecture", "save_pretrained", "WEIGHTS_NAME", "CONFIG_NAME",
           "CARD_NAME", "EXPORT_FILES", "check_output_folder"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
EXPORT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)  # everything an export writes, and nothing else
# pretrained_cfg fields that describe where a *source* checkpoint came from; none of them is true of an export
_STALE_CFG_KEYS = ("tag", "notes", "hf_hub_id", "hf_hub_filename", "url", "file", "source", "state_dict")
_DATA_KEYS = ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation")


# ----------------------------------------------------------------------------------------------------------
# What is exported: the student's weights and the facts about them.


@dataclass
class _Student:
    state_dict: dict[str, torch.Tensor]
    variant: str
    model_kwargs: dict[str, Any]
    weights: str  # 'raw' | 'ema' | 'module'
    data_config: dict[str, Any] = field(default_factory=dict)  # only the keys the source states
    label_names: list[str] | None = None
    distill: dict[str, Any] | None = None
    recipe: str | None = None
    train_args: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    source_file: str | None = None
    source_sha256: str | None = None
    summary_rows: list[dict[str, str]] = field(default_factory=list)
    summary_source: str = "checkpoint"  # see CardFacts.summary_source
    initial_weights: dict[str, Any] | None = None  # where training started (deit_distill['initial_weights'])


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _load_checkpoint_file(path: Path) -> Mapping[str, Any]:
    from ..checkpoint import read_checkpoint  # the package's one reader: weights_only, safetensors by content

    return read_checkpoint(path)


def _public_distill(distill: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The distillation facts fit to publish: local paths (the teacher's file) reduced to their names."""
    if not distill:
        return None
    distill = dict(_jsonable(distill))
    teacher = distill.get("teacher")
    if isinstance(teacher, str) and (teacher.startswith("local-dir:") or os.sep in teacher):
        prefix = "local-dir:" if teacher.startswith("local-dir:") else ""
        distill["teacher"] = prefix + Path(teacher.removeprefix("local-dir:")).name
    desc = distill.get("teacher_description")
    if isinstance(desc, dict) and desc.get("file"):
        distill["teacher_description"] = dict(desc, file=Path(str(desc["file"])).name)
    return distill


def _pick_weights(ckpt: Mapping[str, Any], use_ema: bool | None, name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The raw or EMA state dict, by the package's one policy (an explicit choice whenever both are there)."""
    from ..checkpoint import select_weights

    state_dict, weights = select_weights(ckpt, use_ema=use_ema, name=name, flags=("--use-ema", "--no-ema"))
    return state_dict, "raw" if weights == "plain" else weights  # a bare state dict is published as given


def _beside_args(source: Path | None) -> dict[str, Any] | None:
    """The args.yaml beside a checkpoint file (its run's settings), when there is a readable one."""
    if source is None or not (source.parent / "args.yaml").is_file():
        return None
    import yaml

    try:
        loaded = yaml.safe_load((source.parent / "args.yaml").read_text())
    except yaml.YAMLError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _student_from_checkpoint(
    ckpt: Mapping[str, Any],
    *,
    source: Path | None,
    use_ema: bool | None,
    model_name: str | None,
    num_classes: int | None,
    img_size: int | None,
) -> _Student:
    from timm.models import is_model

    from ..checkpoint import RunMetadata

    name = f"checkpoint {source}" if source is not None else "the checkpoint"
    state_dict, weights = _pick_weights(ckpt, use_ema, name)
    meta = saved = RunMetadata.from_checkpoint(ckpt)
    beside_args = _beside_args(source)
    if meta.args is None and meta.layout != "deit-distill" and beside_args:
        meta = RunMetadata.from_timm_args(beside_args)  # weights alone in a run folder: its settings describe them
    train_args: dict[str, Any] = dict(meta.args or beside_args or {})

    recorded = meta.model if meta.layout == "deit-distill" or (meta.model and is_model(meta.model)) else None
    variant = model_name or recorded or train_args.get("model")
    if not variant:
        raise HubExportError(f"{name} does not name its architecture; pass --model NAME (model_name=...)")
    model_kwargs = dict(meta.model_kwargs or {})
    data_config = {k: v for k, v in (meta.pretrained_cfg or {}).items() if k in _DATA_KEYS}
    if num_classes is not None:
        model_kwargs["num_classes"] = num_classes
    if img_size is not None:
        model_kwargs["img_size"] = img_size
        data_config.pop("input_size", None)
    summary_rows, source_kind = _summary_rows(ckpt, source, train_args, beside_args,
                                              saved_args=bool(saved.args))
    if meta.layout == "timm":  # timm's eval_* columns follow its evaluated EMA
        summary_rows = timm_rows(summary_rows, ema_evaluated=bool(train_args.get("model_ema"))
                                 and not train_args.get("model_ema_force_cpu"))
    epoch = ckpt.get("epoch")
    return _Student(
        state_dict=state_dict,
        variant=str(variant),
        model_kwargs=model_kwargs,
        weights=weights,
        data_config=data_config,
        label_names=list(meta.label_names) if meta.label_names else None,
        distill=_public_distill(meta.distill.as_dict() if meta.distill is not None else None),
        recipe=meta.recipe,
        train_args=_jsonable(train_args),
        epoch=int(epoch) if isinstance(epoch, int) else None,
        source_file=source.name if source is not None else None,
        source_sha256=sha256_file(source) if source is not None else None,
        summary_rows=summary_rows,
        summary_source=source_kind,
        initial_weights=_jsonable(meta.initial_weights) or None,
    )


def _summary_rows(ckpt: Mapping[str, Any], source: Path | None, train_args: Mapping[str, Any],
                  beside_args: Mapping[str, Any] | None, *, saved_args: bool) -> tuple[list[dict[str, str]], str]:
    """The epochs the card reports, and where they come from (see ``CardFacts.summary_source``).

    The trainer stores the rows so far in each checkpoint; the summary.csv beside it also holds the epochs
    after it (the run's best), but only if it is the same run's: a copied checkpoint may sit in another's."""
    own_rows = [{k: "" if v is None else str(v) for k, v in row.items()} for row in ckpt.get("summary") or []]
    summary = source.parent / "summary.csv" if source is not None else None
    if summary is None or not summary.is_file():
        return own_rows, "checkpoint"
    beside = read_summary_text(summary)
    # Rows alone cannot tell runs apart whose first epochs are identical (same seed and settings, another
    # --epochs): the settings the checkpoint was saved with must also be those of the args.yaml beside it.
    changed = _changed_settings(train_args, beside_args) if saved_args and beside_args is not None else []
    if changed:
        _logger.warning("%s was saved with other settings than the %s beside it (%s; another run's?); the "
                        "card uses the checkpoint's own rows.", source.name, source.parent / "args.yaml",
                        ", ".join(changed[:3]) + (", ..." if len(changed) > 3 else ""))
        return own_rows, "checkpoint, not the other run's csv"
    if not own_rows or _same_run(own_rows, beside):
        return beside, "csv"
    _logger.warning("%s does not hold the rows %s was saved with (another run's?); the card uses the "
                    "checkpoint's own.", summary, source.name)
    return own_rows, "checkpoint, not the other run's csv"


# Settings a checkpoint records resolved (the learning rate, the class count) or as history (a resume), while
# args.yaml keeps them as given: they differ within one run. timm's train.py also resolves --lr-base-scale, the
# device ('cuda' -> 'cuda:N' under torchrun), --data-dir (from the positional data) and
# --grad-accum-steps before it saves its args, after it wrote args.yaml. This package's args.yaml adds itself to
# --device-modules for timm's train.py (factory.timm_args) where its checkpoints keep the flag as given.
_RESOLVED_SETTINGS = frozenset({"num_classes", "lr", "dist_bn", "resume", "no_resume_opt", "start_epoch",
                                "resumed", "teacher_check", "config", "lr_base_scale", "device", "data_dir",
                                "grad_accum_steps", "device_modules"})


# The keys of timm's train.py a DeiT-spelled run's args.yaml renders its distill_* settings in (factory.timm_args);
# its checkpoints keep timm's defaults there.
_TIMM_RENDERING = frozenset({"kd_model_name", "kd_distill_type", "kd_token_distill_type", "kd_temperature",
                             "task_loss_weight", "distill_loss_weight", "kd_loss_type"})


def _changed_settings(saved: Mapping[str, Any], beside: Mapping[str, Any]) -> list[str]:
    """``key: checkpoint value vs args.yaml value`` for each setting both record differently."""
    skip = _RESOLVED_SETTINGS | (_TIMM_RENDERING if beside.get("distill_type") in ("soft", "hard") else set())
    return [f"{key}: {saved[key]!r} vs {beside[key]!r}" for key in sorted(saved.keys() & beside.keys())
            if key not in skip and _jsonable(saved[key]) != _jsonable(beside[key])]


def _same_run(own: list[dict[str, str]], rows: list[dict[str, str]]) -> bool:
    """Whether ``rows`` (a summary.csv) hold the checkpoint's own rows, to the precision the csv keeps."""
    by_epoch = {row.get("epoch"): row for row in rows}
    for row in own:
        other = by_epoch.get(row.get("epoch"))
        if other is None:
            return False
        for key in ("train_loss", "eval_top1"):
            a, b = row.get(key) or "", other.get(key) or ""
            if (a == "") != (b == "") or (a and not math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-9)):
                return False
    return True


def _student_from_module(model: nn.Module, *, use_ema: bool | None,
                         metadata: RunMetadata | Mapping[str, Any] | None) -> _Student:
    from timm.models import get_model_args, get_model_input_config
    from timm.utils import unwrap_model

    from ..checkpoint import RunMetadata

    if use_ema is not None:
        raise HubExportError(
            "use_ema chooses between the weights of a checkpoint file; for an in-memory model pass the "
            "module whose weights you want to publish (e.g. the EMA model) and leave use_ema unset")
    model = unwrap_model(model)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if "architecture" not in cfg:
        raise HubExportError(
            f"{type(model).__name__} has no pretrained_cfg['architecture']: build it with timm.create_model, "
            "or export a checkpoint file instead")
    meta = metadata if isinstance(metadata, RunMetadata) else RunMetadata.from_dict(metadata or {})
    data_config = {k: cfg[k] for k in _DATA_KEYS if cfg.get(k) is not None}
    data_config["input_size"] = get_model_input_config(model)["input_size"]
    data_config.update({k: v for k, v in (meta.pretrained_cfg or {}).items() if k in _DATA_KEYS})
    labels = meta.label_names or cfg.get("label_names")
    return _Student(
        state_dict=dict(model.state_dict()),
        variant=meta.model or cfg["architecture"],
        model_kwargs=dict(get_model_args(model), **(meta.model_kwargs or {})),
        weights="module",
        data_config=data_config,
        label_names=list(labels) if labels else None,
        distill=_public_distill(meta.distill.as_dict() if meta.distill is not None else None),
        recipe=meta.recipe,
        initial_weights=_jsonable(meta.initial_weights) or None,
    )


def _read_student(
    model_or_checkpoint: nn.Module | Mapping[str, Any] | str | os.PathLike[str],
    *,
    use_ema: bool | None,
    model_name: str | None,
    num_classes: int | None,
    img_size: int | None,
    metadata: RunMetadata | Mapping[str, Any] | None,
) -> _Student:
    if isinstance(model_or_checkpoint, nn.Module):
        return _student_from_module(model_or_checkpoint, use_ema=use_ema, metadata=metadata)
    options = dict(use_ema=use_ema, model_name=model_name, num_classes=num_classes, img_size=img_size)
    if isinstance(model_or_checkpoint, Mapping):
        return _student_from_checkpoint(model_or_checkpoint, source=None, **options)
    path = Path(model_or_checkpoint)
    return _student_from_checkpoint(_load_checkpoint_file(path), source=path, **options)


# ----------------------------------------------------------------------------------------------------------
# Building the student the way plain timm will, so a mismatch is found before anything is written.


def plain_timm_architecture(variant: str, model_kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The architecture timm itself registers, and the model args that build ``variant`` with it."""
    from timm.models import is_model, model_entrypoint

    from ..models import VARIANT_ARGS, timm_equivalent

    if variant in VARIANT_ARGS:
        return timm_equivalent(variant, **model_kwargs)
    if not is_model(variant):
        raise HubExportError(f"{variant!r} is not a model timm knows; pass the architecture with --model NAME")
    module = model_entrypoint(variant).__module__
    if not module.startswith("timm."):
        raise HubExportError(
            f"{variant!r} is registered by {module}, which plain timm lacks, so the published model could not "
            "be loaded without it; publish a timm architecture or one of this package's distilled variants")
    return variant, dict(model_kwargs)


def _fit_hints(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    hints = []
    head = state_dict.get("head.weight")
    if head is not None and getattr(model, "num_classes", None) != head.shape[0]:
        hints.append(f"the weights' head has {head.shape[0]} classes: pass --num-classes {head.shape[0]}")
    pos, proj = state_dict.get("pos_embed"), state_dict.get("patch_embed.proj.weight")
    model_pos = getattr(model, "pos_embed", None)
    if pos is not None and proj is not None and model_pos is not None and pos.shape != model_pos.shape:
        grid = math.isqrt(pos.shape[1] - getattr(model, "num_prefix_tokens", 0))
        hints.append(f"the weights' position embedding fits {grid * proj.shape[-1]}px images: "
                     f"pass --img-size {grid * proj.shape[-1]}")
    return hints


def _build_plain_model(arch: str, model_args: Mapping[str, Any], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Build ``arch`` on the meta device and adopt the weights: a strict check at no initialisation cost."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, **model_args)
    except TypeError as e:
        raise HubExportError(f"timm cannot build {arch} with {dict(model_args)}: {e}") from e
    expected = model.state_dict()
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or wrong:
        problems = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                    f"shape (weights vs model) {wrong[:3]}" if wrong else ""]
        hints = _fit_hints(model, state_dict) or ["check --model, --num-classes and --img-size"]
        raise HubExportError(f"the weights do not fit {arch} built with {dict(model_args)}: "
                             f"{'; '.join(p for p in problems if p)}. Fix: {'; '.join(hints)}")
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def _data_config(student: _Student) -> dict[str, Any]:
    """Preprocessing to publish: the variant's own cfg, overridden by what the checkpoint states."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(student.variant)
    base = {k: getattr(cfg, k) for k in _DATA_KEYS if cfg is not None and k != "input_size"}
    return {k: v for k, v in dict(base, **student.data_config).items() if v is not None}


# ----------------------------------------------------------------------------------------------------------
# save_pretrained / push_to_hub


def check_output_folder(directory: str | os.PathLike[str], what: str, writes: Sequence[str], *, overwrite: bool,
                        also: str = "") -> None:
    """Raise ``OutputExistsError`` when ``directory`` holds anything and ``overwrite`` is not set.

    A folder the user names may hold their own files (a README.md of theirs, a training run): files of the names
    in ``writes`` would be replaced, and the others would have the written files mixed in among them, so a
    non-empty folder is refused before any work, saying which of the two it is. With ``overwrite`` only the
    files written are replaced; the others are kept. ``also``: more the writer may replace (a pulled repo's own
    files, unknown before the download).
    """
    from ..atomic import next_free_name
    from ..run_folder import run_files

    directory = Path(directory)
    if overwrite or not directory.is_dir():
        return
    present = sorted(p.name for p in directory.iterdir())
    if not present:
        return
    replaced = [name for name in present if name in writes]
    shown = ", ".join(present[:6]) + (f" and {len(present) - 6} more" if len(present) > 6 else "")
    holds = f"is a `deit-distill train` run folder (it holds {shown})" if run_files(directory) else \
        f"is not empty (it holds {shown})"
    written = ", ".join(sorted(writes)) + also
    if replaced:
        would = f"writing there would replace {', '.join(replaced)}{also}"
    else:
        would = f"no file there would be replaced, but the files written ({written}) would be mixed in among them"
    elsewhere = next_free_name(f"{directory}-export")
    raise OutputExistsError(
        f"{what} {directory} {holds}; {would}. fix: give a new or empty folder (e.g. {elsewhere}), or pass "
        "--overwrite (overwrite=True) to write there all the same, replacing only the files written (the others "
        "are kept).")


def _apply_umask(folder: Path) -> None:
    """Give staged files the permissions a plain write would (mkdtemp and some writers use 0o700/0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def _replace_dir_contents(staging: Path, directory: Path) -> None:
    """Move every file of ``staging`` into ``directory``, each replaced atomically (same filesystem)."""
    if not directory.exists() or (directory.is_dir() and not any(directory.iterdir())):
        if directory.exists():
            directory.rmdir()
        os.replace(staging, directory)  # whole folder at once
        return
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is not a directory")
    # weights first, card last: a reader never sees a card describing weights that are not there yet
    order = {WEIGHTS_NAME: 0, CONFIG_NAME: 1, CARD_NAME: 2}
    for f in sorted(staging.iterdir(), key=lambda p: order.get(p.name, 1)):
        os.replace(f, directory / f.name)
    staging.rmdir()


def _export(
    model_or_checkpoint: nn.Module | Mapping[str, Any] | str | os.PathLike[str],
    directory: str | os.PathLike[str],
    *,
    repo_id: str | None,
    use_ema: bool | None,
    model_name: str | None,
    num_classes: int | None,
    img_size: int | None,
    license: str,
    datasets: Sequence[str],
    metadata: RunMetadata | Mapping[str, Any] | None,
    overwrite: bool,
) -> tuple[Path, _Student]:
    from timm.models import save_for_hf

    check_output_folder(directory, "the output folder", EXPORT_FILES, overwrite=overwrite)

    student = _read_student(model_or_checkpoint, use_ema=use_ema, model_name=model_name,
                            num_classes=num_classes, img_size=img_size, metadata=metadata)
    arch, model_args = plain_timm_architecture(student.variant, student.model_kwargs)
    model = _build_plain_model(arch, model_args, student.state_dict)
    if student.label_names is not None and len(student.label_names) != model.num_classes:
        raise HubExportError(f"{len(student.label_names)} label names for a {model.num_classes}-class model; "
                             "the checkpoint's label_names and num_classes disagree")

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.staging-"))
    try:
        try:
            save_for_hf(model, staging, model_config={"label_names": student.label_names} if student.label_names
                        else None, data_config=_data_config(student), safe_serialization=True)
        except ValueError as e:  # timm's own consistency checks, e.g. an input size the model cannot take
            raise HubExportError(f"timm refused the export of {arch}: {e}") from e
        config = json.loads((staging / CONFIG_NAME).read_text())
        pretrained_cfg = config["pretrained_cfg"]
        for key in _STALE_CFG_KEYS:
            pretrained_cfg.pop(key, None)
        pretrained_cfg["license"] = license
        config["deit_distill"] = {  # provenance for readers; timm ignores unknown top-level keys
            "variant": student.variant,
            "weights": student.weights,
            "epoch": student.epoch,
            "distill": student.distill,
            "recipe": student.recipe,
            "source": {"file": student.source_file, "sha256": student.source_sha256},
            "initial_weights": student.initial_weights,
            "exported_by": f"timm-deit-distill {__version__}",
        }
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        facts = CardFacts(
            variant=student.variant, timm_architecture=arch, model_args=config.get("model_args", model_args),
            num_params=sum(p.numel() for p in model.parameters()), num_classes=model.num_classes,
            data_config=pretrained_cfg, weights=student.weights, repo_id=repo_id,
            label_names=student.label_names, epoch=student.epoch, distill=student.distill, recipe=student.recipe,
            train_args=student.train_args, summary_rows=student.summary_rows,
            summary_source=student.summary_source, source_file=student.source_file,
            source_sha256=student.source_sha256, license=license, datasets=tuple(datasets),
            initial_weights=student.initial_weights, distilled=has_distillation_head(model),
        )
        (staging / CARD_NAME).write_text(build_model_card(facts), encoding="utf-8")
        _apply_umask(staging)
        _replace_dir_contents(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory, student


def save_pretrained(
    model_or_checkpoint: nn.Module | Mapping[str, Any] | str | os.PathLike[str],
    directory: str | os.PathLike[str],
    *,
    use_ema: bool | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    license: str = "apache-2.0",
    datasets: Sequence[str] = (),
    metadata: RunMetadata | Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` for a student into ``directory``.

    ``model_or_checkpoint`` is a checkpoint file the trainer wrote (timm format with ``deit_distill``
    metadata; ``summary.csv`` and ``args.yaml`` beside it feed the card), one timm's train.py or DeiT's main.py
    wrote (their ``args`` describe the model and its distillation), a bare state dict file (``.pth`` or
    ``.safetensors``; give ``model_name`` and, if not the variant's defaults, ``num_classes`` / ``img_size``), a
    loaded checkpoint dict, or a timm model (``metadata`` may carry the ``deit_distill`` facts: a
    ``RunMetadata`` or its dict). ``use_ema`` must be given when the checkpoint holds both raw and EMA weights.
    ``repo_id`` only names the model in the card. Files are written into a staging folder and moved in atomically. A
    ``directory`` that already holds files is refused (``OutputExistsError``, naming those that would be
    replaced) unless ``overwrite``; then only the three files above are replaced, anything else is kept.
    """
    path, _ = _export(model_or_checkpoint, directory, repo_id=repo_id, use_ema=use_ema, model_name=model_name,
                      num_classes=num_classes, img_size=img_size, license=license, datasets=datasets,
                      metadata=metadata, overwrite=overwrite)
    return path


