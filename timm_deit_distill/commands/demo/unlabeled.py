"""`deit-distill demo --unlabeled`: what the teacher adds where there are no labels.

The demo's 20 labelled digits per class and 360 validation digits, plus the rest of the training digits as a flat
folder of unlabelled images beside them. Students, each paired by seed with the no-distillation student (labels
only, Table 3's run) and with its twin trained without the unlabelled images (the same architecture and
distillation type: Table 3's run of the same seed):

    hard_pseudo_unlabeled   the ViT without the distillation token, hard distillation + --pseudo-labels   twin: hard
    deit_hard_unlabeled     DeiT⚗, hard distillation                                                     twin: deit_hard
    deit_soft_unlabeled     DeiT⚗, soft distillation                                                     twin: deit_soft

Each step holds Table 3's batch of 32 labelled views plus 16 unlabelled ones, so a row and its twin take the same
labelled steps. The teacher and Table 3's runs are the demo's own (``--out`` of `deit-distill demo`): reused when
present, trained otherwise. Writes ``digits-<n>-per-class-unlabeled/``, ``results_unlabeled.json`` and
``results_unlabeled.md`` into ``--out``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .regime import (
    PLAIN_STUDENT,
    STUDENT,
    STUDENTS,
    TEACHER,
    UNLABELED_MODES,
    UNLABELED_PER_BATCH,
    UNLABELED_STUDENTS,
    Regime,
)
from .report import aggregate, fill_agreement, mean_std
from .runner import Job, Progress, run_jobs

__all__ = ["run_unlabeled_demo", "unlabeled_table", "TWINS", "REFERENCE_MODES", "paired_with"]

_logger = logging.getLogger("timm_deit_distill.demo")

# Each student with unlabelled images and its Table 3 twin (same architecture and distillation type, no unlabelled
# images): the pair that says what the unlabelled images did.
TWINS = {"hard_pseudo_unlabeled": "hard", "deit_hard_unlabeled": "deit_hard", "deit_soft_unlabeled": "deit_soft"}
REFERENCE_MODES = ("none", *TWINS.values())  # Table 3's runs this table needs
_LABELS = {k.name: k.label for k in (*STUDENTS, *UNLABELED_STUDENTS)}
_TOKEN = {k.name: k.token for k in (*STUDENTS, *UNLABELED_STUDENTS)}


def paired_with(per_seed: dict[str, list[dict[str, Any]]], mode: str, reference: str) -> dict[str, Any] | None:
    """``mode`` minus ``reference`` of the same seed, each read-out both have (top-1 of the class head, the
    distillation head, both; agreement with the teacher), then mean and std over the seeds; ``per_seed`` the seeds
    compared. None without a common seed."""
    base = {r["seed"]: r for r in per_seed[reference]}
    rows = [r for r in per_seed[mode] if r["seed"] in base]
    if not rows:
        return None
    keys = [k for k in ("top1_cls", "top1_dist", "top1_fused", "agreement")
            if rows[0].get(k) is not None and base[rows[0]["seed"]].get(k) is not None]
    diffs = [{"seed": r["seed"], **{k: r[k] - base[r["seed"]][k] for k in keys}} for r in rows]
    entry: dict[str, Any] = {"reference": reference}
    for key in keys:
        entry[key], entry[f"{key}_std"] = mean_std([d[key] for d in diffs])
    entry["per_seed"] = diffs
    return entry


def run_unlabeled_demo(regime: Regime, out: Path, *, workers: int = 1) -> dict[str, Any]:
    """Train (or reuse) the teacher, Table 3's reference runs and the students with unlabelled images, and write
    results_unlabeled.json / .md; returns the results."""
    from ...atomic import atomic_write_text
    from ...data.digits import write_digits_imagefolder, write_digits_unlabeled

    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / f"digits-{regime.train_per_class}-per-class"
    unlabeled_dir = out / f"digits-{regime.train_per_class}-per-class-unlabeled"
    split = dict(val_fraction=regime.val_fraction, train_per_class=regime.train_per_class, seed=regime.split_seed)
    write_digits_imagefolder(data_dir, **split)
    unlabeled = write_digits_unlabeled(unlabeled_dir, **split)
    train_images = sum(1 for _ in (data_dir / "train").rglob("*.png"))
    val_images = sum(1 for _ in (data_dir / "validation").rglob("*.png"))
    runs_dir = out / "runs" / regime.name  # the demo's own: its teacher and Table 3 runs are reused
    modes = (*REFERENCE_MODES, *UNLABELED_MODES)
    _logger.info("deit-distill demo --unlabeled: %d labelled, %d unlabelled (%d left out: the same pixels as a "
                 "validation image), %d validation digits; students %s x seeds %s.", train_images,
                 unlabeled["images"], unlabeled["same_as_validation"], val_images, ", ".join(modes),
                 list(regime.seeds))
    jobs = [Job(regime, data_dir, runs_dir), *(
        Job(regime, data_dir, runs_dir, mode, seed, unlabeled_dir if mode in UNLABELED_MODES else None)
        for seed in regime.seeds for mode in modes)]
    records = run_jobs(jobs, min(workers, len(jobs)), Progress(len(jobs)))
    teacher = records[0]
    per_seed: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for job, record in zip(jobs[1:], records[1:], strict=True):
        per_seed[job.mode].append(record)
    fill_agreement(teacher["predictions"], per_seed)
    for rows in per_seed.values():
        for row in rows:
            row.pop("predictions")
            row.pop("token_cosine", None)  # Table 3's report; not this table's
    results: dict[str, Any] = {
        "teacher": {"model": TEACHER, "top1": teacher["top1"], "top5": teacher["top5"]},
        "student_model": STUDENT, "plain_student_model": PLAIN_STUDENT,
        "rows": list(modes), "twins": dict(TWINS),
        "students": aggregate(per_seed),
        "vs_none": {m: paired_with(per_seed, m, "none") for m in modes if m != "none"},
        "vs_twin": {m: paired_with(per_seed, m, twin) for m, twin in TWINS.items()},
        "seeds": list(regime.seeds),
        "data": {"dataset": "sklearn.datasets.load_digits", "train_images": train_images, "val_images": val_images,
                 "unlabeled_images": unlabeled["images"],
                 "unlabeled_same_as_validation": unlabeled["same_as_validation"],
                 "train_per_class": regime.train_per_class, "dir": str(data_dir), "unlabeled_dir": str(unlabeled_dir)},
        "unlabeled_per_batch": UNLABELED_PER_BATCH, "labeled_per_batch": regime.batch_size,
        "regime": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(regime).items()},
        "elapsed_s": round(time.time() - started, 1),
        "parallel_runs": min(workers, len(jobs)),
        "cpu_count": os.cpu_count(),
    }
    atomic_write_text(out / "results_unlabeled.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results_unlabeled.md", unlabeled_table(results))
    return results


def _cell(d: dict[str, Any] | None, key: str, *, scale: float = 1.0, signed: bool = False) -> str:
    if d is None or d.get(key) is None:
        return ""
    mean, std = d[key] * scale, d.get(f"{key}_std")
    text = f"{'+' if signed and mean >= 0 else ''}{mean:.1f}"
    return text if std is None else f"{text} ± {std * scale:.1f}"


def unlabeled_table(results: dict[str, Any]) -> str:
    """results_unlabeled.md: each row's top-1 (class+distillation for DeiT⚗), its paired differences from no
    distillation and from its twin without unlabelled images, and its agreement with the teacher."""
    data, n = results["data"], len(results["seeds"])
    lines = [
        f"Validation top-1 (%) on {data['val_images']} held-out digits; {data['train_images']} labelled training "
        f"images, plus {data['unlabeled_images']} unlabelled ones where the row says so ({results['labeled_per_batch']} "
        f"labelled + {results['unlabeled_per_batch']} unlabelled images a step); mean ± std over {n} "
        f"seed{'s' if n > 1 else ''} ({', '.join(str(s) for s in results['seeds'])}). Paired columns: the row's "
        "top-1 minus that of the named run of the same seed, in points.",
        "",
        "| row | student | unlabelled images | top-1 | minus no distillation, paired | minus the same student "
        "without unlabelled images, paired | agreement with teacher (%) |",
        "|---|---|---|---:|---:|---:|---:|",
        f"| teacher | {results['teacher']['model']} | no | {results['teacher']['top1']:.1f} | | | |",
    ]
    for mode in results["rows"]:
        s = results["students"][mode]
        model = results["student_model"] if _TOKEN[mode] else results["plain_student_model"]
        uses = f"{data['unlabeled_images']}" if mode in results["twins"] else "no"
        lines.append(f"| {_LABELS[mode]} | {model} | {uses} | {_cell(s, 'top1_fused')} | "
                     f"{_cell(results['vs_none'].get(mode), 'top1_fused', signed=True)} | "
                     f"{_cell(results['vs_twin'].get(mode), 'top1_fused', signed=True)} | "
                     f"{_cell(s, 'agreement', scale=100)} |")
    return "\n".join(lines) + "\n"
