"""`deit-distill eval`'s measurement, from typed settings: per-head accuracy of a checkpoint (or of a model's
pretrained weights) and its agreement with a teacher, and the files it writes (the JSON results, timm
validate.py's summary, per-image predictions). The measurement itself is
:func:`timm_deit_distill.evaluation.evaluate`; the command line prints what this returns."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from timm.data import resolve_model_data_config

from ..errors import UsageError
from ..evaluation import evaluate, head_logits, is_distilled
from ..progress import progress_bar
from .builders import select_device
from .settings import EvalSettings
from .teacher import get_teacher

if TYPE_CHECKING:
    from ..checkpoint import RunMetadata

__all__ = ["run_evaluation", "check_outputs", "write_outputs", "default_results_path"]


def run_evaluation(settings: EvalSettings) -> dict[str, Any]:
    """Measure the checkpoint (or pretrained model) on the split, with the teacher when one is given; returns the
    results (what eval.json holds). Writes only ``--predict``'s file, when asked; :func:`write_outputs` the rest."""
    from ..checkpoint import check_checkpoint_file
    from ..data import build_eval_loader, check_num_classes, check_same_classes, label_names, open_split

    s = settings
    if s.teacher.checkpoint_path:  # a damaged teacher file is refused before any work, like the checkpoint
        check_checkpoint_file(s.teacher.checkpoint_path, what="--distill-teacher-path")
    device = torch.device(select_device(s.device))
    model, meta, weights, epoch = _load_student(s)
    if s.head != "fused" and not is_distilled(model):
        raise UsageError(f"--head {s.head} needs a distilled student; {meta.model} has one head. "
                         "Use --head fused.")
    data_config = resolve_model_data_config(model)  # what the checkpoint's metadata set in its pretrained_cfg
    # One split of any source the trainer reads, checked and opened by the data pipeline.
    data = s.data_settings(int(data_config["input_size"][0]))
    dataset = open_split(data, s.split, training=False, num_classes=model.num_classes,
                         batch_size=s.loader.batch_size, seed=0)
    labels = label_names(dataset)
    trained = meta.label_names
    where = f"--dataset {s.dataset} split {s.split}" if s.dataset else f"{s.data_dir}/{s.split}"
    check_same_classes(trained, labels, f"the training classes of {s.checkpoint}", where,
                       "evaluate on data with the training classes in their order (pass the --class-map used in "
                       "training, or one listing the checkpoint's classes).")
    if check_num_classes(dataset, None) != model.num_classes:
        raise UsageError(f"{s.checkpoint} predicts {model.num_classes} classes but {where} has "
                         f"{check_num_classes(dataset, None)}; evaluate on data with the training classes.")
    model.to(device)
    loader = build_eval_loader(dataset, data_config, s.loader)
    teacher = check = None
    if s.teacher.given:
        checked = 0 if not s.teacher.check else min(s.teacher.check_images, len(dataset))
        # Checked before the full pass: a teacher near chance makes its agreement figures meaningless.
        teacher, check = get_teacher(
            s.teacher, num_classes=model.num_classes, data_config=data_config, device=device,
            label_names=labels or None, dataset=dataset, loader=s.loader, seed=0,
            batch_size=s.loader.eval_batch_size, steps=len(loader) + math.ceil(checked / s.loader.eval_batch_size))
    autocast = ((lambda: torch.autocast(device.type, dtype=getattr(torch, s.amp_dtype)))
                if s.amp else contextlib.nullcontext)
    metrics = evaluate(model, loader, device=device, teacher=teacher, amp_autocast=autocast,
                       progress=lambda it: progress_bar(it, "eval"))
    chosen = {"fused": ("top1", "top5"), "cls": ("top1_cls", "top5_cls"), "dist": ("top1_dist", "top5_dist")}
    k1, k5 = chosen[s.head]
    result: dict[str, Any] = {
        "checkpoint": os.path.abspath(s.checkpoint) if s.checkpoint else None, "model": meta.model,
        "epoch": epoch, "weights": weights, "ema": weights == "ema",
        "data_dir": os.path.abspath(s.data_dir) if s.data_dir else None, "dataset": s.dataset,
        "split": s.split, "count": metrics["count"], "head": s.head,
        "top1": metrics[k1], "top5": metrics[k5], "loss": metrics["loss"],
        "heads": {"fused": {"top1": metrics["top1"], "top5": metrics["top5"]}},
        "teacher": None,
    }
    if is_distilled(model):
        result["heads"]["cls"] = {"top1": metrics["top1_cls"], "top5": metrics["top5_cls"]}
        result["heads"]["dist"] = {"top1": metrics["top1_dist"], "top5": metrics["top5_dist"]}
    if teacher is not None:
        result["teacher"] = {"description": getattr(teacher, "description", None),
                             "top1": metrics["teacher_top1"], "top5": metrics["teacher_top5"],
                             "agreement": metrics["teacher_agreement"],
                             "check": check.as_dict() if check is not None else None}
    result["timm_summary"] = _timm_summary(s.model or result["model"], result, model, data_config)
    if s.predict:
        _write_predictions(s.predict, model, loader, dataset, labels, s.head, device, autocast, replace=s.overwrite)
        result["predictions"] = os.path.abspath(s.predict)
    return result


def _load_student(settings: EvalSettings) -> tuple[nn.Module, RunMetadata, str, int | None]:
    """The model to evaluate, its :class:`RunMetadata`, which weights (``raw``, ``ema``, ``plain`` or
    ``pretrained``) and the epoch they are from: the --checkpoint's, else --model's pretrained weights."""
    from ..checkpoint import RunMetadata, model_from_checkpoint, read_checkpoint, select_weights

    if not settings.checkpoint:
        model = _pretrained_model(settings.model)
        labels = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
        return model, RunMetadata(model=settings.model, label_names=labels, layout="weights"), "pretrained", None
    checkpoint = read_checkpoint(settings.checkpoint, what="--checkpoint")
    meta = RunMetadata.from_checkpoint(checkpoint)
    if settings.model:
        _check_model_name(settings.model, meta.model, settings.checkpoint)
    name = f"--checkpoint {settings.checkpoint}"
    state_dict, weights = select_weights(checkpoint, use_ema=settings.use_ema, name=name, flags=("--use-ema", "--no-ema"))
    model = model_from_checkpoint(checkpoint, state_dict, name=name)
    epoch = checkpoint.get("epoch")
    return model, meta, weights, epoch if isinstance(epoch, int) else None


def _architecture(name: str) -> str:
    """A timm model name without its pretrained tag (``hf-hub:`` / ``local-dir:`` sources as given)."""
    from timm.models import split_model_name_tag

    return name if ":" in name else split_model_name_tag(name)[0]


def _check_model_name(model: str, recorded: str | None, checkpoint: str) -> None:
    """timm's validate.py builds --model and loads --checkpoint into it; here the checkpoint says what it is, so a
    --model that names another architecture is a mistake, refused rather than ignored."""
    if recorded and _architecture(model) != _architecture(recorded):
        raise UsageError(f"--model {model} is not the architecture --checkpoint {checkpoint} records ({recorded}); "
                         f"pass --model {recorded}, or leave --model out (the checkpoint names its model).")


def _pretrained_model(name: str | None) -> nn.Module:
    """``name``'s pretrained weights: a folder save_pretrained or pull wrote (``local-dir:DIR`` or a folder), a
    Hub repo (``hf-hub:ORG/NAME[@REV]``, pulled and verified), or a timm name with a pretrained tag."""
    if not name:
        raise UsageError("nothing to evaluate: pass --checkpoint FILE (written by deit-distill train), or --model "
                         "with pretrained weights (local-dir:DIR, hf-hub:ORG/NAME, or a timm name with a tag).")
    if name.startswith(("local-dir:", "hf-hub:")) or os.path.isdir(name):
        from ..hub import load_model

        return load_model(name)
    import timm

    try:
        return timm.create_model(name, pretrained=True).eval()
    except (RuntimeError, ValueError) as e:  # an unknown name; a model without pretrained weights
        raise UsageError(f"--model {name}: {str(e).rstrip('.')}. Without --checkpoint, --model names a model with pretrained "
                         "weights: local-dir:DIR (deit-distill push --to-dir, pull --out), hf-hub:ORG/NAME, or a timm "
                         "name with a pretrained tag; to evaluate a training checkpoint pass --checkpoint FILE.") from None


def _timm_summary(name: str, result: dict[str, Any], model: nn.Module, data_config: dict[str, Any]) -> dict[str, Any]:
    """The row timm's validate.py reports and writes to --results-file, with its keys and rounding (top-1/top-5
    of --head; the fused head is what a timm distilled model returns in eval mode)."""
    top1, top5 = float(result["top1"]), float(result["top5"])
    return {"model": name, "top1": round(top1, 4), "top1_err": round(100 - top1, 4), "top5": round(top5, 4),
            "top5_err": round(100 - top5, 4), "param_count": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "img_size": data_config["input_size"][-1], "crop_pct": data_config["crop_pct"],
            "interpolation": data_config["interpolation"]}


def _write_predictions(path: str, model: nn.Module, loader: Any, dataset: Any, labels: list[str], head: str,
                       device: torch.device, autocast: Callable[[], Any], *, replace: bool) -> None:
    import csv
    import io

    from ..atomic import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    k = min(5, getattr(model, "num_classes", 0) or len(labels))
    w.writerow(["path", "label", *[f"pred{i + 1}" for i in range(k)], *[f"prob{i + 1}" for i in range(k)]])
    from ..data import is_streamed, sample_name

    streamed = is_streamed(dataset)
    i = 0
    with torch.inference_mode():
        for inputs, targets in loader:
            with autocast():
                logits = getattr(head_logits(model, inputs.to(device)), head).float()
            probs, preds = logits.softmax(1).topk(k, dim=1)
            for t, pr, pb in zip(targets.tolist(), preds.tolist(), probs.tolist(), strict=True):
                # a stream has no names: its samples are numbered in the (fixed) order one process reads them
                name = f"{dataset.source_info.split}#{i}" if streamed else sample_name(dataset, i)
                w.writerow([name, labels[t] if labels else t, *[labels[c] if labels else c for c in pr],
                            *[f"{p:.5f}" for p in pb]])
                i += 1
    try:
        atomic_write_text(path, buf.getvalue(), replace=replace)
    except FileExistsError:
        raise UsageError(f"--predict {path} was created by someone else while evaluating; the predictions were not "
                         "written. Rerun with another --predict, or --overwrite.") from None


def _output_problem(flag: str, path: str) -> str | None:
    """Why ``path`` cannot receive a file (its folder is missing, not a folder or not writable, or it is a
    folder), or None."""
    from ..atomic import unwritable_reason

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        return (f"{flag} {path}: the folder {folder} {what}; create it first (mkdir -p {folder}) or write "
                "somewhere else.")
    if os.path.isdir(path):
        return f"{flag} {path} is a folder; give a file name inside it, e.g. {os.path.join(path, 'eval.json')}."
    reason = unwritable_reason(folder)
    if reason is not None:
        return (f"{flag} {path}: no file can be written in {folder} (creating one there failed: {reason}); "
                "write somewhere else.")
    return None


def _input_problem(flag: str, path: str, settings: EvalSettings) -> str | None:
    """Why writing ``path`` would destroy one of the command's inputs, or None."""
    from ..run_folder import output_inside_data

    inside = output_inside_data(flag, path, settings.data_dir)
    if inside is not None:  # a new file there becomes part of the data (an unreadable "image", a class folder)
        return inside
    if not os.path.isfile(path):
        return None
    for name, source in (("--checkpoint", settings.checkpoint), ("--distill-teacher-path", settings.teacher.checkpoint_path),
                         ("--class-map", settings.class_map)):
        if source and os.path.isfile(source) and os.path.samefile(path, source):
            return f"{flag} {path} is the {name} file; writing there would destroy it. Give another file name."
    return None


def default_results_path(settings: EvalSettings) -> str | None:
    """The JSON results' file when --json is not given: next to the checkpoint (none without one: printed only)."""
    if settings.json is not None or not settings.checkpoint:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(settings.checkpoint)),
                        f"eval-{os.path.basename(settings.checkpoint).split('.')[0]}-{settings.split}.json")


def _write_results(out: str, text: str, *, replace: bool, free_name: bool, flag: str = "--json") -> str:
    """Write the results; returns where. ``free_name``: the default file, never replaced unless ``replace``
    (the next free name is taken, also when one appeared while evaluating)."""
    from ..atomic import atomic_write_text, next_free_name

    while True:
        target = str(next_free_name(out)) if free_name and not replace else out
        try:
            atomic_write_text(target, text, replace=replace)
            return target
        except FileExistsError:
            if not free_name:
                raise UsageError(f"{flag} {out} was created by someone else while evaluating; the results were "
                                 f"not written there (they are printed above). Rerun with another {flag}, or "
                                 "--overwrite.") from None


def _summary_text(summary: dict[str, Any], fmt: str) -> str:
    """timm validate.py's ``write_results`` for one model: a CSV header and row, or the dict as JSON."""
    import csv
    import io

    if fmt == "json":
        return json.dumps(summary, indent=4)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(summary))
    writer.writeheader()
    writer.writerow(summary)
    return buf.getvalue()


def check_outputs(settings: EvalSettings) -> None:
    """Where the results go, checked before the evaluation, which may take long, not after it: a
    :class:`UsageError` naming the first problem."""
    default_out = default_results_path(settings)
    explicit = [(flag, path) for flag, path in (("--predict", settings.predict), ("--json", settings.json),
                                                ("--results-file", settings.results_file)) if path]
    outputs = list(explicit)
    if default_out and os.path.isdir(os.path.dirname(default_out)):
        outputs.append(("the results file (next to the checkpoint; choose another with --json)", default_out))
    problems = [p for flag, path in outputs if (p := _output_problem(flag, path))]
    what = {"--predict": "the predictions", "--json": "the JSON results", "--results-file": "validate.py's summary",
            None: "the JSON results"}
    written = [(flag, path) for flag, path in [*explicit, (None, default_out)] if path]
    for i, (flag, path) in enumerate(written):
        same = [other for other, where in written[i + 1:] if os.path.abspath(where) == os.path.abspath(path)]
        if same:
            problems.append(f"{flag} {path} is also where {what[same[0]]} go; give them different files.")
    for flag, path in explicit:  # an output written over an input would destroy it, --overwrite or not
        if problem := _input_problem(flag, path, settings):
            problems.append(problem)
    for flag, path in explicit:  # an explicit output is replaced only when asked
        if os.path.lexists(path) and not os.path.isdir(path) and not settings.overwrite:
            problems.append(f"{flag} {path} already exists; writing there would replace it. Give a new file name, "
                            "or pass --overwrite to replace it.")
    if problems:
        raise UsageError(problems[0])


def write_outputs(settings: EvalSettings, result: dict[str, Any], written: list[str]) -> str | None:
    """Write the JSON results (``--json``, else next to the checkpoint under a free name) and ``--results-file``;
    ``written`` receives a line for each file written, as it is written (a full disk stops the rest). Returns
    where the JSON results went (None: nowhere, a model without a checkpoint and no ``--json``)."""
    out = settings.json or default_results_path(settings)
    where = None
    if out:
        text = json.dumps(result, indent=2) + "\n"
        where = _write_results(out, text, replace=settings.overwrite, free_name=settings.json is None)
        kept = f" ({out} already exists and was kept; --overwrite replaces it)" if where != out else ""
        written.append(f"results written to {where}{kept}")
    if settings.results_file:
        _write_results(settings.results_file, _summary_text(result["timm_summary"], settings.results_format),
                       replace=settings.overwrite, free_name=False, flag="--results-file")
        written.append(f"validate.py's summary ({settings.results_format}) written to {settings.results_file}")
    return where
