"""`deit-distill eval`: per-head accuracy of a checkpoint and its agreement with a teacher, printed and
written as JSON (the measurement is :func:`timm_deit_distill.evaluation.evaluate`).

It also takes the command line of timm's ``validate.py``: a positional data folder, ``--model NAME``,
``--checkpoint``, ``--pretrained``, ``--num-samples`` and ``--results-file`` (validate.py's summary row,
CSV or ``--results-format json``), so a timm user changes the program name and gets the same numbers."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from timm.data import resolve_model_data_config

from ..data import LoaderSettings
from ..errors import DataError, DeitDistillError, DiskFullError, UsageError
from ..evaluation import evaluate, head_logits, is_distilled
from ..progress import progress_bar
from .common import ArgumentParser, refuse
from .stops import Stopped, run_stoppable

if TYPE_CHECKING:
    from ..checkpoint import RunMetadata

__all__ = ["main", "build_parser"]

_logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The `deit-distill eval` parser of the command line (declared in :mod:`timm_deit_distill.factory.options`)."""
    from ..factory.options import EVAL_PROG, eval_parser
    from .args import HelpFormatter

    return eval_parser(EVAL_PROG, ArgumentParser, HelpFormatter)


def _run_eval(args: argparse.Namespace, loader_settings: LoaderSettings) -> dict[str, Any]:
    from .. import factory
    from ..checkpoint import check_checkpoint_file
    from ..data import (
        DataSettings,
        build_eval_loader,
        check_num_classes,
        check_same_classes,
        label_names,
        open_split,
    )
    from ..data import resolve_input_img_mode as input_img_mode
    from ..factory.options import validate_teacher_check_flags
    from .args import teacher_settings

    validate_teacher_check_flags(args, has_teacher=bool(args.distill_teacher or args.distill_teacher_path))
    if args.distill_teacher_path:  # a damaged teacher file is refused before any work, like the checkpoint
        check_checkpoint_file(args.distill_teacher_path, what="--distill-teacher-path")
    device = torch.device(factory.select_device(args.device))
    model, meta, weights, epoch = _load_student(args)
    if args.head != "fused" and not is_distilled(model):
        raise UsageError(f"--head {args.head} needs a distilled student; {meta.model} has one head. "
                         "Use --head fused.")
    data_config = resolve_model_data_config(model)  # what the checkpoint's metadata set in its pretrained_cfg
    # One split of any source the trainer reads, checked and opened by the data pipeline.
    data = DataSettings(data_dir=args.data_dir, train_split=args.split, val_split=args.split, class_map=args.class_map,
                        skip_bad_images=args.skip_bad_images, dataset=args.dataset, train_num_samples=None,
                        val_num_samples=args.val_num_samples, input_key=args.input_key, target_key=args.target_key,
                        input_img_mode=input_img_mode(args.input_img_mode, int(data_config["input_size"][0])),
                        download=args.dataset_download, split_flags="--split")
    dataset = open_split(data, args.split, training=False, num_classes=model.num_classes,
                         batch_size=args.batch_size, seed=0)
    labels = label_names(dataset)
    trained = meta.label_names
    where = f"--dataset {args.dataset} split {args.split}" if args.dataset else f"{args.data_dir}/{args.split}"
    check_same_classes(trained, labels, f"the training classes of {args.checkpoint}", where,
                       "evaluate on data with the training classes in their order (pass the --class-map used in "
                       "training, or one listing the checkpoint's classes).")
    if check_num_classes(dataset, None) != model.num_classes:
        raise UsageError(f"{args.checkpoint} predicts {model.num_classes} classes but {where} has "
                         f"{check_num_classes(dataset, None)}; evaluate on data with the training classes.")
    model.to(device)
    loader = build_eval_loader(dataset, data_config, loader_settings)
    teacher = check = None
    if args.distill_teacher or args.distill_teacher_path:
        recorded = meta.distill.teacher if meta.distill is not None else None
        source = args.distill_teacher or (None if args.distill_teacher_path else recorded)
        settings = teacher_settings(args, source=source, checkpoint_path=args.distill_teacher_path,
                                    use_ema=args.teacher_ema, channels_last=None)
        teacher = factory.create_teacher(settings, model.num_classes, data_config, device, label_names=labels or None)
        checked = 0 if not settings.check else min(settings.check_images, len(dataset))
        steps = len(loader) + math.ceil(checked / loader_settings.eval_batch_size)
        factory.select_teacher_path(teacher, settings, dataset, data_config, loader_settings, seed=0,
                                    batch_size=loader_settings.eval_batch_size, steps=steps)
        # Before the full pass: a teacher near chance makes its agreement figures meaningless.
        check = factory.check_teacher(teacher, settings, dataset, data_config, loader_settings, seed=0)
    autocast = ((lambda: torch.autocast(device.type, dtype=getattr(torch, args.amp_dtype)))
                if args.amp else contextlib.nullcontext)
    metrics = evaluate(model, loader, device=device, teacher=teacher, amp_autocast=autocast,
                       progress=lambda it: progress_bar(it, "eval"))
    chosen = {"fused": ("top1", "top5"), "cls": ("top1_cls", "top5_cls"), "dist": ("top1_dist", "top5_dist")}
    k1, k5 = chosen[args.head]
    result: dict[str, Any] = {
        "checkpoint": os.path.abspath(args.checkpoint) if args.checkpoint else None, "model": meta.model,
        "epoch": epoch, "weights": weights, "ema": weights == "ema",
        "data_dir": os.path.abspath(args.data_dir) if args.data_dir else None, "dataset": args.dataset,
        "split": args.split, "count": metrics["count"], "head": args.head,
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
    result["timm_summary"] = _timm_summary(args.model or result["model"], result, model, data_config)
    if args.predict:
        _write_predictions(args.predict, model, loader, dataset, labels, args.head, device, autocast,
                           replace=args.overwrite)
        result["predictions"] = os.path.abspath(args.predict)
    return result


def _load_student(args: argparse.Namespace) -> tuple[nn.Module, RunMetadata, str, int | None]:
    """The model to evaluate, its :class:`RunMetadata`, which weights (``raw``, ``ema``, ``plain`` or
    ``pretrained``) and the epoch they are from: the --checkpoint's, else --model's pretrained weights."""
    from ..checkpoint import RunMetadata, model_from_checkpoint, read_checkpoint, select_weights

    if not args.checkpoint:
        model = _pretrained_model(args.model)
        labels = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
        return model, RunMetadata(model=args.model, label_names=labels, layout="weights"), "pretrained", None
    checkpoint = read_checkpoint(args.checkpoint, what="--checkpoint")
    meta = RunMetadata.from_checkpoint(checkpoint)
    if args.model:
        _check_model_name(args.model, meta.model, args.checkpoint)
    name = f"--checkpoint {args.checkpoint}"
    state_dict, weights = select_weights(checkpoint, use_ema=args.use_ema, name=name, flags=("--use-ema", "--no-ema"))
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


def _format(result: dict[str, Any]) -> str:
    weights = {"ema": "EMA weights", "raw": "raw weights", "plain": "plain state dict",
               "pretrained": "pretrained weights"}[result["weights"]]
    epoch = f" epoch {result['epoch']}" if result["epoch"] is not None else ""
    lines = [f"{result['model']}{epoch} ({weights}) on {result['count']} images of {result['split']}:"]
    for name, m in result["heads"].items():
        lines.append(f"  {name:<6} top-1 {m['top1']:6.2f}%  top-5 {m['top5']:6.2f}%")
    if result["teacher"]:
        t = result["teacher"]
        lines.append(f"  teacher top-1 {t['top1']:6.2f}%  agreement with fused student {100 * t['agreement']:.2f}%")
        if t.get("check"):
            c = t["check"]
            threshold = "no threshold" if c["min_top1"] is None else f"threshold {c['min_top1']:.2f}%"
            lines.append(f"  teacher check before evaluating: top-1 {c['top1']:.2f}% on {c['images']} images ({threshold})")
    return "\n".join(lines)


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


def _input_problem(flag: str, path: str, args: argparse.Namespace) -> str | None:
    """Why writing ``path`` would destroy one of the command's inputs, or None."""
    from ..run_folder import output_inside_data

    inside = output_inside_data(flag, path, args.data_dir)
    if inside is not None:  # a new file there becomes part of the data (an unreadable "image", a class folder)
        return inside
    if not os.path.isfile(path):
        return None
    for name, source in (("--checkpoint", args.checkpoint), ("--distill-teacher-path", args.distill_teacher_path),
                         ("--class-map", args.class_map)):
        if source and os.path.isfile(source) and os.path.samefile(path, source):
            return f"{flag} {path} is the {name} file; writing there would destroy it. Give another file name."
    return None


def _default_results_path(args: argparse.Namespace) -> str | None:
    """The JSON results' file when --json is not given: next to the checkpoint (none without one: printed only)."""
    if args.json is not None or not args.checkpoint:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                        f"eval-{os.path.basename(args.checkpoint).split('.')[0]}-{args.split}.json")


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


def _input_problems(args: argparse.Namespace) -> list[str]:
    """What to evaluate and on which data, checked before anything is read: the dataset given once, a model."""
    problems = []
    if args.data and args.data_dir and os.path.abspath(args.data) != os.path.abspath(args.data_dir):
        problems.append(f"the dataset is given twice, as {args.data} and as --data-dir {args.data_dir}; give it once.")
    args.data_dir = args.data_dir or args.data
    if not args.checkpoint and not args.model:
        problems.append("nothing to evaluate: pass --checkpoint FILE (written by deit-distill train), or --model with "
                        "pretrained weights (local-dir:DIR, hf-hub:ORG/NAME, or a timm name with a pretrained tag).")
    elif not args.checkpoint and args.use_ema is not None:
        flag = "--use-ema" if args.use_ema else "--no-ema"
        problems.append(f"{flag} chooses between a checkpoint's raw and EMA weights; --model {args.model} without "
                        "--checkpoint has one set (its pretrained weights): drop it, or pass --checkpoint.")
    return problems


def _output_problems(args: argparse.Namespace, default_out: str | None) -> list[str]:
    """Where the results go, checked before the evaluation, which may take long, not after it."""
    explicit = [(flag, path) for flag, path in (("--predict", args.predict), ("--json", args.json),
                                                ("--results-file", args.results_file)) if path]
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
        if problem := _input_problem(flag, path, args):
            problems.append(problem)
    for flag, path in explicit:  # an explicit output is replaced only when asked
        if os.path.lexists(path) and not os.path.isdir(path) and not args.overwrite:
            problems.append(f"{flag} {path} already exists; writing there would replace it. Give a new file name, "
                            "or pass --overwrite to replace it.")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """`deit-distill eval`; returns the exit code (2 for bad input, with a message and no traceback; 130 / 143 when
    SIGINT / SIGTERM stopped it: its files are written whole at the end, never in part)."""
    import shlex

    argv = list(sys.argv[1:] if argv is None else argv)

    def stopped(stop: Stopped) -> str:
        return (f"stopped by {stop.name}; eval writes its files whole once it has measured, so nothing partial was "
                f"written. Rerun the same command: {shlex.join(['deit-distill', 'eval', *argv])}")

    return run_stoppable("eval", lambda: _evaluate_command(argv), stopped)


def _evaluate_command(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    problems = _input_problems(args)
    default_out = _default_results_path(args)
    problems += _output_problems(args, default_out)
    try:
        loader_settings = LoaderSettings(batch_size=args.batch_size, validation_batch_size=None,
                                         workers=args.workers, pin_mem=False)
    except DataError as e:
        problems.insert(0, str(e))
    if problems:
        return refuse("eval", UsageError(problems[0]))
    written = []
    result = None
    try:
        result = _run_eval(args, loader_settings)
        text = json.dumps(result, indent=2) + "\n"
        print(_format(result))
        print(text, end="")
        out = args.json or default_out
        if out:
            where = _write_results(out, text, replace=args.overwrite, free_name=args.json is None)
            kept = f" ({out} already exists and was kept; --overwrite replaces it)" if where != out else ""
            written.append(f"results written to {where}{kept}")
        if args.results_file:
            _write_results(args.results_file, _summary_text(result["timm_summary"], args.results_format),
                           replace=args.overwrite, free_name=False, flag="--results-file")
            written.append(f"validate.py's summary ({args.results_format}) written to {args.results_file}")
    except DiskFullError as e:  # no input's fault (exit 1); the results, when computed, are printed above
        for line in written:
            print(line, file=sys.stderr)
        hint = (" The results are printed above (JSON included); for the file, free space there or rerun with "
                "--json elsewhere." if result is not None else " Free space there (or pass --predict elsewhere) and rerun.")
        return refuse("eval", e, hint=hint)
    except (DeitDistillError, ValueError, FileNotFoundError) as e:  # refusals name the fix (timm's too)
        for line in written:
            print(line, file=sys.stderr)
        return refuse("eval", e)
    for line in written:
        print(line, file=sys.stderr)
    return 0
