"""The demo's report: per-seed figures, their means and spreads, the paired differences, the Markdown table and
the plot."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .regime import MODES, STUDENTS

__all__ = ["mean_std", "student_record", "aggregate", "paired_differences", "fill_agreement", "disagreement_models",
           "results_table", "plot_students", "TOKEN_COSINE_STUDENT", "DISAGREEMENT_MODELS"]

TOKEN_COSINE_STUDENT = "deit_hard"  # the paper measures its tokens' similarity on the hard-distilled DeiT⚗
_LABELS = {kind.name: kind.label for kind in STUDENTS}


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value: no spread can be measured)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


_STUDENT_METRICS = ("top1_cls", "top1_dist", "top1_fused", "agreement")


def student_record(evaluation: dict[str, Any]) -> dict[str, float]:
    """One student's figures from its ``deit-distill eval`` JSON: top-1 in percent, agreement a fraction."""
    heads = evaluation["heads"]  # a student without the distillation token has its one head only ("fused")
    return {"top1_cls": heads["cls"]["top1"] if "cls" in heads else None,
            "top1_dist": heads["dist"]["top1"] if "dist" in heads else None,
            "top1_fused": heads["fused"]["top1"],
            "agreement": evaluation["teacher"]["agreement"] if evaluation.get("teacher") else None}


def aggregate(per_seed: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Means over seeds with the standard deviation beside each (``<metric>_std``; None where the student has no
    such head), plus the per-seed rows."""
    out: dict[str, dict[str, Any]] = {}
    for mode, rows in per_seed.items():
        entry: dict[str, Any] = {}
        for key in _STUDENT_METRICS:
            values = [r[key] for r in rows if r.get(key) is not None]
            entry[key], entry[f"{key}_std"] = mean_std(values) if values else (None, None)
        entry["per_seed"] = rows
        out[mode] = entry
    return out


_PAIRED_METRICS = ("top1_cls", "top1_dist", "top1_fused", "agreement")


def paired_differences(per_seed: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each distilled student minus the undistilled one *of the same seed*, then mean and std over seeds.

    A seed fixes the student's initial weights (for each architecture) and its sequence of training views whatever
    the distillation type, so the per-seed difference removes the share of the spread the modes have in common.
    ``outside_spread`` says whether the mean difference is larger than its own standard deviation across seeds.
    Each of a distilled student's read-outs (class head, distillation head, both) is compared with the undistilled
    student's one head.
    """
    base = {r["seed"]: r for r in per_seed.get("none", [])}
    out: dict[str, dict[str, Any]] = {}
    for mode in (m for m in per_seed if m != "none"):
        rows = [r for r in per_seed.get(mode, []) if r["seed"] in base]
        if not rows:
            continue
        keys = [k for k in _PAIRED_METRICS if rows[0].get(k) is not None]
        reference = {k: "top1_fused" if k.startswith("top1") else k for k in keys}
        diffs = [{"seed": r["seed"], **{k: r[k] - base[r["seed"]][reference[k]] for k in keys}} for r in rows]
        entry: dict[str, Any] = {}
        for key in keys:
            entry[key], entry[f"{key}_std"] = mean_std([d[key] for d in diffs])
        entry["per_seed"] = diffs
        std = entry["top1_fused_std"]
        entry["outside_spread"] = None if std is None else abs(entry["top1_fused"]) > std
        out[mode] = entry
    return out


def _fmt(mean: float | None, std: float | None, *, scale: float = 1.0, digits: int = 1) -> str:
    if mean is None:
        return "-"
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


# The models of DeiT's Table 4 (disagreement): (key, the run kind (None: the teacher's run), its read-out); the
# ground truth is the validation labels; the DeiT⚗ soft student added.
DISAGREEMENT_MODELS = (
    ("ground_truth", None, "labels"), ("teacher", None, "fused"), ("none", "none", "fused"), ("usual", "usual", "fused"), ("hard", "hard", "fused"),
    ("deit_hard_cls", "deit_hard", "cls"), ("deit_hard_dist", "deit_hard", "dist"), ("deit_hard", "deit_hard", "fused"),
    ("deit_soft", "deit_soft", "fused"),
)
_DISAGREEMENT_LABELS = {"ground_truth": "ground truth", "teacher": "teacher", "none": "no distillation", "usual": "usual distillation",
                        "hard": "hard distillation", "deit_hard_cls": "DeiT⚗ class", "deit_hard_dist": "DeiT⚗ distil.",
                        "deit_hard": "DeiT⚗ class+distil.", "deit_soft": "DeiT⚗ soft, class+distil."}


def fill_agreement(teacher: dict[str, list[int]], per_seed: dict[str, list[dict[str, Any]]]) -> None:
    """Give every student row evaluated without the teacher its agreement with it, from the two runs' validation
    predictions (the fraction of images where the fused argmax equals the teacher's, as `deit-distill eval`
    measures it)."""
    from ...analysis import disagreement

    for rows in per_seed.values():
        for row in rows:
            if row.get("agreement") is None:
                row["agreement"] = 1.0 - disagreement(row["predictions"]["fused"], teacher["fused"])


def disagreement_models(teacher: dict[str, list[int]], per_seed: dict[str, list[dict[str, Any]]]
                        ) -> list[dict[str, list[int]]]:
    """Per seed, each model of the disagreement table with its validation predictions (the one teacher in every
    seed): the input of :func:`timm_deit_distill.analysis.disagreement_table`."""
    seeds = sorted({r["seed"] for rows in per_seed.values() for r in rows})
    runs = []
    for seed in seeds:
        models: dict[str, list[int]] = {}
        for key, mode, head in DISAGREEMENT_MODELS:
            if mode is None:
                if head in teacher:
                    models[key] = teacher[head]
                continue
            row = next((r for r in per_seed.get(mode, []) if r["seed"] == seed), None)
            if row is not None and head in row["predictions"]:
                models[key] = row["predictions"][head]
        runs.append(models)
    return runs


def _signed(d: dict[str, Any], key: str) -> str:
    return f"{'+' if d[key] >= 0 else ''}{_fmt(d[key], d[f'{key}_std'])}"


def _table3_rows(results: dict[str, Any]) -> list[str]:
    teacher = results["teacher"]
    rows = [f"| teacher | {teacher['model']} | {teacher['top1']:.1f} | | |"]
    paired = results.get("vs_none") or {}
    readouts = (("top1_cls", "class embedding"), ("top1_dist", "distillation embedding"),
                ("top1_fused", "class+distillation"))
    for mode in MODES:
        s = results["students"].get(mode)
        if s is None:
            continue
        model = results["student_model"] if s["top1_cls"] is not None else results["plain_student_model"]
        for key, readout in readouts:
            if s[key] is None:
                continue
            name = f"{_LABELS[mode]}: {readout}" if s["top1_cls"] is not None else _LABELS[mode]
            diff = _signed(paired[mode], key) if mode in paired else ""
            agreement = (f"{_fmt(s['agreement'], s['agreement_std'], scale=100)}" if key == "top1_fused" else "")
            rows.append(f"| {name} | {model} | {_fmt(s[key], s[f'{key}_std'])} | {diff} | {agreement} |")
    return rows


def _disagreement_rows(disagreement: dict[str, Any]) -> list[str]:
    names = [n for n in disagreement["models"] if n in disagreement["table"]]
    table = disagreement["table"]
    rows = ["| | " + " | ".join(_DISAGREEMENT_LABELS.get(n, n) for n in names) + " |",
            "|---|" + "---:|" * len(names)]
    for a in names:
        cells = []
        for b in names:
            cell = table[a].get(b)
            cells.append("" if cell is None or a == b else _fmt(cell["mean"], cell["std"], scale=100))
        rows.append(f"| {_DISAGREEMENT_LABELS.get(a, a)} | " + " | ".join(cells) + " |")
    return rows


def results_table(results: dict[str, Any]) -> str:
    """DeiT's Table 3 (every student and read-out, with its paired difference from no distillation) and Table 4
    (pairwise disagreement) as Markdown."""
    n = len(results["seeds"])
    lines = [
        f"Validation top-1 (%) on {results['data']['val_images']} held-out digits; students trained on "
        f"{results['data']['train_images']} labelled images; mean ± std over {n} seed{'s' if n > 1 else ''} "
        f"({', '.join(str(s) for s in results['seeds'])}). The paired column is each row's top-1 minus the "
        "no-distillation student's of the same seed (same training views), in points.",
        "",
        "| DeiT Table 3 row | student | top-1 | minus no distillation, paired | agreement with teacher (%) |",
        "|---|---|---:|---:|---:|",
        *_table3_rows(results),
    ]
    tc = results.get("token_cosine")
    if tc:
        lines += ["", f"Cosine similarity of the class and distillation tokens of the hard-distilled DeiT⚗: "
                      f"{_fmt(tc['input'], tc['input_std'], digits=2)} at the input, "
                      f"{_fmt(tc['output'], tc['output_std'], digits=2)} at the output (the paper: 0.06 and 0.93)."]
    if results.get("disagreement"):
        lines += ["", "Disagreement (DeiT Table 4): the share of validation images (%) on which two models' "
                      "predictions differ, per seed (the same seed's runs), mean ± std over the seeds.", "",
                  *_disagreement_rows(results["disagreement"])]
    return "\n".join(lines) + "\n"


def plot_students(runs: dict[str, list[Path]], teacher_top1: float, path: Path) -> None:
    """curves.png: validation top-1 (fused) and training loss per epoch for every student run."""
    from ...plots import Panel, Series, plot_panels
    from ...records import read_summary

    colors = {"none": "tab:gray", "usual": "tab:cyan", "hard": "tab:orange", "deit_hard": "tab:red",
              "deit_soft": "tab:blue"}
    accuracy: list[Series] = []
    loss: list[Series] = []
    for mode, run_dirs in runs.items():
        for i, run_dir in enumerate(run_dirs):
            rows = read_summary(run_dir / "summary.csv")
            label = mode if i == 0 else None
            accuracy.append(Series([(r["epoch"] + 1, r.get("eval_top1_ema") or r["eval_top1"]) for r in rows
                                    if r.get("eval_top1") is not None], label,
                                   dict(color=colors[mode], alpha=0.8, marker="o", markersize=2.5)))
            loss.append(Series([(r["epoch"] + 1, r["train_loss"]) for r in rows if r.get("train_loss") is not None],
                               label, dict(color=colors[mode], alpha=0.8)))
    teacher_line = (teacher_top1, "teacher", dict(color="black", linestyle="--", linewidth=1))
    plot_panels(path, [
        Panel(accuracy, "epoch", "validation top-1 (%), class+distillation", "accuracy (one line per seed)",
              hlines=[teacher_line]),
        Panel(loss, "epoch", "training loss (total)", "training loss"),
    ], size=(11, 4.2))
