"""The model card (README.md) pushed beside a distilled student.

timm's own ``generate_readme`` knows nothing about distillation, so this card records what a reader needs
to trust and reproduce a student: the architecture plain timm builds, the teacher (name, tag, hub id or
checkpoint sha256, its accuracy), the distillation type / alpha / tau / reduction, the key recipe settings
and the results the run logged in ``summary.csv`` for the very epoch whose weights are published.
The YAML front matter is written by huggingface_hub's ``ModelCardData``, so the Hub parses what it expects:
``model-index`` (the Hub's results widget) from the same summary row, ``base_model`` (with
``base_model_relation: finetune``) when training started from a Hub model, and the teacher as a
``teacher:ID`` tag (not ``base_model``: the student's weights do not derive from the teacher's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from ..errors import DataError

__all__ = ["CardFacts", "build_model_card", "RESULT_COLUMNS", "RECIPE_KEYS"]

# summary.csv column -> label. Teacher columns are accepted with or without timm's 'eval_' prefix.
RESULT_COLUMNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("eval_top1",), "top-1, fused heads (average of class and distillation heads)"),
    (("eval_top1_cls",), "top-1, class-token head"),
    (("eval_top1_dist",), "top-1, distillation-token head"),
    (("eval_top5",), "top-5, fused heads"),
    (("eval_top1_ema",), "top-1, EMA weights"),
    (("teacher_top1", "eval_teacher_top1"), "teacher top-1 on the same evaluation set"),
    (("teacher_agreement", "eval_teacher_agreement"), "student-teacher agreement"),
    (("teacher_agreement_ema",), "student-teacher agreement, EMA weights"),
    (("eval_loss",), "evaluation loss"),
)

# Training arguments (timm train.py names) worth a reader's attention, in display order.
RECIPE_KEYS: tuple[str, ...] = (
    "epochs", "batch_size", "opt", "lr", "min_lr", "weight_decay", "sched", "warmup_epochs", "warmup_lr",
    "smoothing", "mixup", "cutmix", "mixup_prob", "aa", "reprob", "aug_repeats", "drop_path", "model_ema",
    "model_ema_decay", "amp", "seed", "img_size", "input_size", "dataset", "train_split", "val_split",
)

_TAGS = ["image-classification", "timm"]

_CITATION = """@InProceedings{pmlr-v139-touvron21a,
  title     = {Training data-efficient image transformers & distillation through attention},
  author    = {Touvron, Hugo and Cord, Matthieu and Douze, Matthijs and Massa, Francisco and Sablayrolles, Alexandre and Jegou, Herve},
  booktitle = {Proceedings of the 38th International Conference on Machine Learning},
  pages     = {10347--10357},
  year      = {2021},
  volume    = {139},
  series    = {Proceedings of Machine Learning Research},
  publisher = {PMLR}
}"""


@dataclass(frozen=True)
class CardFacts:
    """Everything the card states; every field comes from the checkpoint, its run directory or the export."""

    variant: str  # the name the student was trained under
    timm_architecture: str  # the name plain timm builds it with
    model_args: Mapping[str, Any]
    num_params: int
    num_classes: int
    data_config: Mapping[str, Any]  # input_size, mean, std, crop_pct, interpolation
    weights: str  # 'raw', 'ema' or 'module' (an in-memory model as given)
    repo_id: str | None = None
    label_names: Sequence[str] | None = None
    epoch: int | None = None
    distill: Mapping[str, Any] | None = None  # the checkpoint's deit_distill['distill']
    recipe: str | None = None
    train_args: Mapping[str, Any] = field(default_factory=dict)
    summary_rows: Sequence[Mapping[str, str]] = ()
    # where summary_rows come from: "csv" (the run's summary.csv), "checkpoint" (the rows it records itself),
    # "checkpoint, not the other run's csv" (its own, a summary.csv beside it being another run's)
    summary_source: str = "csv"
    source_file: str | None = None
    source_sha256: str | None = None
    license: str = "apache-2.0"
    datasets: Sequence[str] = ()
    initial_weights: Mapping[str, Any] | None = None  # the checkpoint's deit_distill['initial_weights']
    distilled: bool = True  # the student has a distillation head (else its one output is all there is)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    if isinstance(value, str):
        try:  # summary.csv values arrive as strings
            return f"{float(value):.2f}" if value.strip() not in ("", "nan") else "n/a"
        except ValueError:
            return value
    return str(value)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows]
    return "\n".join(lines)


def _row_epoch(row: Mapping[str, str]) -> int | None:
    try:
        return int(float(row.get("epoch", "")))
    except ValueError:
        return None


def _column(row: Mapping[str, str], names: Sequence[str]) -> str | None:
    for name in names:
        value = row.get(name)
        if value not in (None, ""):
            return value
    return None


def _by_weights(row: Mapping[str, Any]) -> dict[str, Any]:
    """A summary row with the raw weights' figures under ``eval_*`` and the EMA's under ``*_ema`` (what the
    card's labels say), whichever layout the run wrote (timm's rule: ``eval_*`` the EMA's, ``raw_eval_*``)."""
    from ..records import weights_view

    out = weights_view(row, "raw")
    ema = weights_view(row, "ema")
    for column in ("eval_top1", "eval_top5", "teacher_agreement"):
        if ema.get(column) not in (None, ""):
            out[f"{column}_ema"] = ema[column]
    return out


def _one_head_label(label: str) -> str:
    """A result's label for a student with one head: its output is not an average of heads."""
    return {"top-1, fused heads (average of class and distillation heads)": "top-1",
            "top-5, fused heads": "top-5"}.get(label, label)


def _published_row(facts: CardFacts) -> tuple[Mapping[str, str] | None, str]:
    """The summary row that describes the published weights, and a sentence saying which it is."""
    rows = list(facts.summary_rows)
    if not rows:
        return None, ""
    if facts.epoch is not None:
        for row in rows:
            if _row_epoch(row) == facts.epoch:
                return row, f"Epoch {facts.epoch}, the epoch these weights were saved at."
    row = rows[-1]
    return row, (f"Last logged epoch ({row.get('epoch', '?')}); the checkpoint does not say which epoch its "
                 "weights are from.")


# DistillationTeacher.description['input_size_source'] -> why the teacher ran at that size
_SIZE_SOURCES = {
    "fixed_size": "its fixed-size architecture",
    "override": "set with --teacher-input-size",
    "checkpoint": "recorded in its checkpoint",
    "pretrained_cfg": "its pretrained config",
    "student": "the student's: the teacher's weights record none",
}


def _check_text(check: Mapping[str, Any] | None) -> str:
    """The teacher check (``TeacherCheck.as_dict()``) as one cell; None means it was skipped."""
    if not check:
        return "not run (--no-teacher-check)"
    text = f"top-1 {float(check['top1']):.2f}% on {int(check['images'])} validation images"
    if check.get("min_top1") is None:
        return text + " (measured only, no threshold)"
    return text + f" (threshold {float(check['min_top1']):.2f}%, chance {float(check['chance']):.2f}%)"


def _teacher_section(distill: Mapping[str, Any], published: Mapping[str, str] | None) -> list[tuple[str, Any]]:
    desc = distill.get("teacher_description") or {}
    rows: list[tuple[str, Any]] = []
    name = desc.get("name") or distill.get("teacher")
    if name:
        tag = desc.get("tag")
        rows.append(("teacher", f"`{name}.{tag}`" if tag and "." not in str(name) else f"`{name}`"))
    if desc.get("hub_id"):
        rows.append(("teacher hub id", f"`{desc['hub_id']}`"))
    if desc.get("file"):
        rows.append(("teacher checkpoint", f"`{Path(str(desc['file'])).name}`"))
    if desc.get("sha256"):
        rows.append(("teacher weights sha256", f"`{desc['sha256']}`"))
    if desc.get("num_classes") is not None:
        rows.append(("teacher num classes", _fmt(desc["num_classes"])))
    if desc.get("input_size"):
        why = _SIZE_SOURCES.get(str(desc.get("input_size_source")), "")
        rows.append(("teacher input size", "x".join(str(v) for v in desc["input_size"][-2:]) + (f" ({why})" if why else "")))
    if desc.get("precision") is not None:
        rows.append(("teacher precision", _fmt(desc["precision"])))
    if "teacher_check" in distill:
        rows.append(("teacher check before training", _check_text(distill["teacher_check"])))
    if published is not None:
        top1 = _column(published, RESULT_COLUMNS[5][0])
        if top1 is not None:
            rows.append(("teacher top-1 (this run's evaluation set)", _fmt(top1)))
    return rows


def _loss_rows(distill: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The distillation loss: its type, alpha, tau and soft reduction; for a student of timm's train.py also the
    weights it gave the two terms (``n/a`` for what its loss does not use)."""
    def value(key: str) -> str:
        return "n/a" if distill.get(key) is None else _fmt(distill[key])

    rows: list[tuple[str, Any]] = [("distillation type", distill.get("type"))]
    if distill.get("family") == "timm":
        rows.append(("distillation spelled as", f"timm train.py's {distill.get('kd_distill_type')} distillation"))
    if distill.get("heads"):
        rows.append(("what each head learned from", distill["heads"]))
    unlabeled = distill.get("unlabeled")
    if unlabeled:
        rows.append(("unlabelled images", _unlabeled_text(unlabeled)))
    if "task_loss_weight" in distill:
        rows.append(("loss weights (timm's train.py)",
                     f"{value('task_loss_weight')} x task loss + {value('distill_loss_weight')} x distillation loss"))
    return rows + [("alpha", value("alpha")), ("tau", value("tau")), ("soft-loss reduction", value("soft_reduction"))]


def _unlabeled_text(u: Mapping[str, Any]) -> str:
    """Which unlabelled source the teacher taught on, how many images, and what learned from them."""
    where = f"`{u.get('dataset')}`" + (f" split `{u['split']}`" if u.get("split") else "") + \
        f" at `{Path(str(u.get('location'))).name}`"
    head = "the teacher's argmax as the class term (pseudo-labels)" if u.get("pseudo_labels") else \
        "no class term (only the teacher's answer)"
    return (f"{u.get('num_images')} images from {where}, {u.get('per_batch')} of each batch; on them the "
            f"distillation term, {head}")


def _teacher_id(distill: Mapping[str, Any]) -> str | None:
    """The teacher as one identifier: its Hub repo when known, else its timm name (with its tag)."""
    desc = distill.get("teacher_description") or {}
    if desc.get("hub_id"):
        return str(desc["hub_id"])
    name, tag = desc.get("name") or distill.get("teacher"), desc.get("tag")
    if not name:
        return None
    return f"{name}.{tag}" if tag and "." not in str(name) else str(name)


def _eval_dataset(facts: CardFacts) -> tuple[str, str]:
    """(type, name) of the evaluation set for the model-index: a Hub dataset id where one is known (``datasets``,
    ``--dataset hfds/ID``), a torchvision name, else ``imagefolder`` (local class folders, as transformers'
    Trainer records them)."""
    from ..data.sources import source_for

    if facts.datasets:
        return str(facts.datasets[0]), str(facts.datasets[0])
    spec = str(facts.train_args.get("dataset") or "")
    try:
        source = source_for(spec)
    except DataError:  # a spec this version does not read: nothing to say about it
        source = source_for("")
    return source.card_dataset(spec.partition("/")[2])


def _eval_results(facts: CardFacts, published: Mapping[str, str] | None) -> list[EvalResult]:
    """The published weights' top-1/top-5 (%) on the run's validation split, for the Hub's results widget."""
    if published is None:
        return []
    suffix = "_ema" if facts.weights == "ema" else ""
    dataset_type, dataset_name = _eval_dataset(facts)
    split = str(facts.train_args.get("val_split") or "validation")
    results = []
    for key, metric_type, metric_name in ((f"eval_top1{suffix}", "accuracy", "Top 1 Accuracy"),
                                          (f"eval_top5{suffix}", "top_5_accuracy", "Top 5 Accuracy")):
        try:
            value = float(published.get(key) or "nan")
        except ValueError:
            continue
        if value == value:  # not nan: the row measured it
            results.append(EvalResult(task_type="image-classification", task_name="Image Classification",
                                      dataset_type=dataset_type, dataset_name=dataset_name, dataset_split=split,
                                      metric_type=metric_type, metric_name=metric_name, metric_value=value))
    return results


def _card_data(facts: CardFacts, published: Mapping[str, str] | None) -> ModelCardData:
    """The front matter: what the Hub filters and displays by."""
    distill = dict(facts.distill or {})
    dtype = distill.get("type")
    deit, vit = _family(facts)
    tags = list(_TAGS) + (["deit"] if deit else []) + (["vision-transformer"] if vit else [])
    if dtype and dtype != "none":
        teacher = _teacher_id(distill)
        tags += ["knowledge-distillation", f"distillation-{dtype}"] + ([f"teacher:{teacher}"] if teacher else [])
    base_model = (facts.initial_weights or {}).get("hub_id") or None
    results = _eval_results(facts, published)
    return ModelCardData(
        library_name="timm",
        license=facts.license,
        tags=tags,
        datasets=list(facts.datasets) or None,
        pipeline_tag="image-classification",
        base_model=base_model,
        base_model_relation="finetune" if base_model else None,
        model_name=(facts.repo_id or facts.variant) if results else None,
        eval_results=results or None,
    )


def _start_text(initial: Mapping[str, Any]) -> str:
    """The student's starting weights, for the details table."""
    what = f"`{initial['hub_id']}`" if initial.get("hub_id") else f"`{initial.get('file') or initial.get('model')}`"
    return f"{what} ({initial.get('flag', 'pretrained')})"


def _family(facts: CardFacts) -> tuple[bool, bool]:
    """Whether the student is a DeiT, and a vision transformer (timm's registry says, by the module it is in)."""
    from timm.models import is_model_in_modules

    name = str(facts.variant)
    return (is_model_in_modules(name, ["deit"]),
            is_model_in_modules(name, ["deit", "vision_transformer", "vision_transformer_hybrid"]))


def _headline(facts: CardFacts, dtype: str | None, distill: Mapping[str, Any]) -> str:
    """The card's first sentence: which student, how it was distilled (through attention only with the token)."""
    teacher = distill.get("teacher") or (distill.get("teacher_description") or {}).get("name")
    what = "DeiT" if _family(facts)[0] else "timm"
    tail = "published by timm-deit-distill. It loads with plain timm."
    if dtype in ("hard", "soft") and facts.distilled:
        return (f"A DeiT student (`{facts.variant}`) trained with **{dtype}** distillation through attention from "
                f"the teacher `{teacher}`, {tail}")
    if dtype in ("hard", "soft"):
        return (f"A {what} student (`{facts.variant}`, one head, no distillation token) trained with **{dtype}** "
                f"distillation on its one head from the teacher `{teacher}`, {tail}")
    if dtype and dtype != "none":  # timm's train.py's other distillation tasks
        return (f"A {what} student (`{facts.variant}`) trained with timm's **{dtype}** distillation from the teacher "
                f"`{teacher}`, {tail}")
    return f"A {what} model (`{facts.variant}`) trained without a teacher, {tail}"


def build_model_card(facts: CardFacts) -> str:
    """The README.md text: YAML front matter, then the architecture, teacher, recipe, results and usage."""
    facts = replace(facts, summary_rows=[_by_weights(row) for row in facts.summary_rows])
    distill = dict(facts.distill or {})
    dtype = distill.get("type")
    name = facts.repo_id or facts.variant
    published, published_note = _published_row(facts)
    data = _card_data(facts, published)
    size = "x".join(str(s) for s in facts.data_config.get("input_size", ())[1:])
    out: list[str] = [f"---\n{data.to_yaml()}\n---", f"# {name}", ""]

    out.append(_headline(facts, dtype, distill))

    out += ["", "## Model details", ""]
    args_text = ", ".join(f"{k}={_fmt(v)}" for k, v in facts.model_args.items())
    details: list[tuple[str, Any]] = [
        ("architecture (as trained)", f"`{facts.variant}`"),
        ("architecture (plain timm)", f"`{facts.timm_architecture}` with `{args_text}`"),
        ("parameters", f"{facts.num_params / 1e6:.2f} M"),
        ("classes", facts.num_classes),
        ("input size", f"{size} ({facts.data_config.get('interpolation', '?')}, "
                       f"crop_pct {_fmt(facts.data_config.get('crop_pct'))})"),
        ("normalisation", f"mean {_fmt(facts.data_config.get('mean'))}, std {_fmt(facts.data_config.get('std'))}"),
        ("published weights", {"ema": "EMA weights (`state_dict_ema`)", "raw": "raw weights (`state_dict`)",
                               "module": "the in-memory model as given"}.get(facts.weights, facts.weights)),
    ]
    if facts.epoch is not None:
        details.append(("epoch", facts.epoch))
    if facts.initial_weights:  # recorded by the trainer when training started from weights
        details.append(("starting weights", _start_text(facts.initial_weights)))
    if facts.source_file:
        src = f"`{facts.source_file}`" + (f" (sha256 `{facts.source_sha256}`)" if facts.source_sha256 else "")
        details.append(("source checkpoint", src))
    if facts.label_names:
        shown = ", ".join(str(n) for n in list(facts.label_names)[:20])
        more = f", ... ({len(facts.label_names)} in all)" if len(facts.label_names) > 20 else ""
        details.append(("labels", shown + more))
    out.append(_table(details))

    out += ["", "## Distillation", ""]
    if dtype and dtype != "none":
        out.append(_table(_teacher_section(distill, published) + _loss_rows(distill)))
    else:
        out.append("None: trained on labels only.")

    recipe_rows = [(k, _fmt(facts.train_args[k])) for k in RECIPE_KEYS
                   if facts.train_args.get(k) not in (None, "", [], ())]
    out += ["", "## Training recipe", ""]
    if facts.recipe:
        out.append(f"Recipe preset: `{facts.recipe}`.\n")
    out.append(_table(recipe_rows) if recipe_rows else "The checkpoint records no training arguments.")

    out += ["", "## Results", ""]
    if published is None:
        out.append("No `summary.csv` was found beside the checkpoint, so no results are stated.")
    else:
        rows = [(_one_head_label(label) if not facts.distilled else label, _fmt(v)) for names, label in RESULT_COLUMNS
                if (v := _column(published, names)) is not None]
        where = {"csv": "From the run's `summary.csv`.",
                 "checkpoint": "From the epochs the checkpoint itself records."}.get(
            facts.summary_source,
            "From the epochs the checkpoint itself records (the `summary.csv` beside it is another run's).")
        out += [f"{where} {published_note}", "", _table(rows)]
        if facts.weights == "ema":
            out += ["", "The published weights are the EMA weights: the EMA row is their accuracy."]
        best = max(facts.summary_rows, key=lambda r: float(r.get("eval_top1") or "-inf"), default=None)
        if best is not None and best.get("eval_top1") and best is not published:
            fused = "fused " if facts.distilled else ""
            out += ["", f"Best {fused}top-1 during the run: {_fmt(best['eval_top1'])} at epoch {best.get('epoch')}."]

    hub_name = f"hf-hub:{facts.repo_id}" if facts.repo_id else "local-dir:PATH/TO/THIS/FOLDER"
    out += ["", "## Usage", "", "Plain timm is enough; this package is not needed to load the model.", "",
            "```python", "import timm", "import torch", "",
            f'model = timm.create_model("{hub_name}", pretrained=True).eval()',
            "config = timm.data.resolve_data_config({}, model=model)",
            "transform = timm.data.create_transform(**config)",
            "with torch.inference_mode():",
            "    probs = model(transform(image).unsqueeze(0)).softmax(-1)  # image: a PIL image",
            "```"]
    if facts.distilled:
        out += ["", "In eval mode the model returns the average of its class-token and distillation-token heads."]
    if facts.repo_id:
        out += ["To download with every file checked against the sha256 the Hub lists for it:", "",
                "```bash", f"deit-distill pull {facts.repo_id}", "```"]
    out += ["", "## Citation", "", "```bibtex", _CITATION, "```", ""]
    return "\n".join(out)

