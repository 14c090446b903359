"""The demo's report: per-seed figures, their means and spreads, the paired differences, the Markdown table and
the plot."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .regime import MODES

__all__ = ["mean_std", "student_record", "aggregate", "paired_differences", "results_table", "plot_students"]


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value: no spread can be measured)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


_STUDENT_METRICS = ("top1_cls", "top1_dist", "top1_fused", "agreement")


def student_record(evaluation: dict[str, Any]) -> dict[str, float]:
    """One student's figures from its ``deit-distill eval`` JSON: top-1 in percent, agreement a fraction."""
    heads = evaluation["heads"]
    return {"top1_cls": heads["cls"]["top1"], "top1_dist": heads["dist"]["top1"],
            "top1_fused": heads["fused"]["top1"], "agreement": evaluation["teacher"]["agreement"]}


def aggregate(per_seed: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Means over seeds with the standard deviation beside each (``<metric>_std``), plus the per-seed rows."""
    out: dict[str, dict[str, Any]] = {}
    for mode, rows in per_seed.items():
        entry: dict[str, Any] = {}
        for key in _STUDENT_METRICS:
            entry[key], entry[f"{key}_std"] = mean_std([r[key] for r in rows])
        entry["per_seed"] = rows
        out[mode] = entry
    return out


_PAIRED_METRICS = ("top1_fused", "agreement")


def paired_differences(per_seed: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each distilled student minus the undistilled one *of the same seed*, then mean and std over seeds.

    A seed fixes the student's initial weights and its sequence of training views whatever the distillation
    type, so the per-seed difference removes the share of the spread the modes have in common. ``outside_spread``
    says whether the mean difference is larger than its own standard deviation across seeds.
    """
    base = {r["seed"]: r for r in per_seed.get("none", [])}
    out: dict[str, dict[str, Any]] = {}
    for mode in ("soft", "hard"):
        rows = [r for r in per_seed.get(mode, []) if r["seed"] in base]
        if not rows:
            continue
        diffs = [{"seed": r["seed"], **{k: r[k] - base[r["seed"]][k] for k in _PAIRED_METRICS}} for r in rows]
        entry: dict[str, Any] = {}
        for key in _PAIRED_METRICS:
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


def results_table(results: dict[str, Any]) -> str:
    """The comparison as a Markdown table (Table 3 of the paper, in spirit)."""
    teacher = results["teacher"]
    n = len(results["seeds"])
    lines = [
        f"Validation top-1 (%) on {results['data']['val_images']} held-out digits; students trained on "
        f"{results['data']['train_images']} labelled images; mean ± std over {n} seed{'s' if n > 1 else ''} "
        f"({', '.join(str(s) for s in results['seeds'])}).",
        "",
        "| model | distillation | class head | distillation head | class+distillation | agreement with teacher |",
        "|---|---|---:|---:|---:|---:|",
        f"| {teacher['model']} (teacher) | - | | | {teacher['top1']:.1f} | |",
    ]
    for mode in MODES:
        s = results["students"].get(mode)
        if s is None:
            continue
        lines.append(
            f"| {results['student_model']} | {mode} | {_fmt(s['top1_cls'], s['top1_cls_std'])} | "
            f"{_fmt(s['top1_dist'], s['top1_dist_std'])} | {_fmt(s['top1_fused'], s['top1_fused_std'])} | "
            f"{_fmt(s['agreement'], s['agreement_std'], scale=100)} % |")
    paired = results.get("vs_none") or {}
    if paired:
        verdict = {True: "outside the spread", False: "within the spread", None: "one seed: no spread"}
        parts = [f"{mode} {'+' if d['top1_fused'] >= 0 else ''}{_fmt(d['top1_fused'], d['top1_fused_std'])} "
                 f"({verdict[d['outside_spread']]})" for mode, d in paired.items()]
        lines += ["", "Class+distillation top-1 minus no distillation's, paired by seed (same initial weights and "
                      "training views), in points: " + "; ".join(parts) + "."]
    tc = results.get("token_cosine")
    if tc:
        lines += ["", f"Cosine similarity of the class and distillation tokens of the hard-distilled student: "
                      f"{_fmt(tc['input'], tc['input_std'], digits=2)} at the input, "
                      f"{_fmt(tc['output'], tc['output_std'], digits=2)} at the output (the paper: 0.06 and 0.93)."]
    return "\n".join(lines) + "\n"


def plot_students(runs: dict[str, list[Path]], teacher_top1: float, path: Path) -> None:
    """curves.png: validation top-1 (fused) and training loss per epoch for every student run."""
    from ...plots import Panel, Series, plot_panels
    from ...records import read_summary

    colors = {"none": "tab:gray", "soft": "tab:blue", "hard": "tab:red"}
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
