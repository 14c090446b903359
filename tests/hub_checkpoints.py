"""Run folders in the trainer's format, written by hand for the hub tests (fast: no training).

The checkpoint holds the keys of ``timm_deit_distill.checkpoint.CheckpointSaver.state_for`` (timm's
CheckpointSaver keys plus ``deit_distill``, the metadata train.py records); ``summary.csv`` and
``args.yaml`` are written with the trainer's own writers (``timm_deit_distill.records``). The slow test in
test_hub_trained.py checks the same path on a checkpoint the real trainer wrote.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

import timm_deit_distill  # noqa: F401  (registers the variants)
from timm_deit_distill.records import write_args_yaml, write_summary

TOKEN = "hf_standin_write_token"  # the stand-in's write token; must never appear in any output
LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEACHER = {"name": "regnety_160", "tag": "deit_in1k", "hub_id": "timm/regnety_160.deit_in1k",
           "file": "/somewhere/private/teachers/regnety_160.pth", "sha256": "5f" * 32, "num_classes": 10, "precision": "bf16",
           "input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


@dataclass
class RunFiles:
    checkpoint: Path
    raw: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    variant: str
    num_classes: int
    summary_rows: list[dict]


def summary_rows(epochs: int, *, ema: bool) -> list[dict]:
    rows = []
    for e in range(epochs):
        row = {"epoch": e, "train_loss": 2.0 - 0.3 * e, "eval_loss": 1.9 - 0.25 * e, "eval_top1": 40.125 + 11 * e,
               "eval_top5": 80.5 + 3 * e, "lr": 5e-4 * (e + 1), "train_task_loss": 1.5 - 0.2 * e,
               "train_distill_loss": 0.5 - 0.1 * e, "eval_top1_cls": 39.375 + 11 * e, "eval_top5_cls": 80.0,
               "eval_top1_dist": 41.625 + 11 * e, "eval_top5_dist": 81.0, "teacher_top1": 83.875,
               "teacher_agreement": 60.25 + 7 * e}
        if ema:
            row.update(eval_top1_ema=42.875 + 11 * e, eval_top5_ema=82.0)
        rows.append(row)
    return rows


def write_run(run_dir: Path, *, ema: bool = True, epoch: int = 1, epochs: int = 3, seed: int = 0,
              distill_type: str = "hard", variant: str = "deit_tiny_distilled_patch4_32",
              num_classes: int = 10) -> RunFiles:
    """A run folder as the trainer leaves it: ``checkpoint-{epoch}.pth.tar``, ``summary.csv``, ``args.yaml``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = timm.create_model(variant, num_classes=num_classes)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    ema_state = {k: v + 0.01 * torch.randn_like(v) for k, v in raw.items()} if ema else None
    args = argparse.Namespace(model=variant, num_classes=num_classes, epochs=epochs, batch_size=64, opt="adamw",
                              lr=5e-4, weight_decay=0.05, sched="cosine", warmup_epochs=5, smoothing=0.1,
                              mixup=0.8, cutmix=1.0, aa="rand-m9-mstd0.5-inc1", reprob=0.25, model_ema=ema,
                              model_ema_decay=0.99996, seed=seed, drop_path=0.1, img_size=None, mean=None, std=None,
                              dataset="", data_dir="/somewhere/private/data", recipe="deit_tiny")
    distill = {"teacher": None, "teacher_description": None, "type": "none", "alpha": 0.5, "tau": 1.0,
               "soft_reduction": "deit"}
    if distill_type != "none":
        distill.update(teacher="regnety_160.deit_in1k", teacher_description=dict(TEACHER), type=distill_type,
                       alpha=0.5, tau=3.0 if distill_type == "soft" else 1.0)
    rows = summary_rows(epochs, ema=ema)
    state = {
        "epoch": epoch, "arch": variant, "state_dict": raw,
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0]}]},
        "version": 2, "args": args, "metric": rows[epoch]["eval_top1"],
        "saver": {"checkpoint_files": [], "best_epoch": epoch, "best_metric": rows[epoch]["eval_top1"]},
        "summary": rows[: epoch + 1],
        "deit_distill": {
            "model": variant, "model_kwargs": {"num_classes": num_classes},
            "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                               "crop_pct": 1.0, "interpolation": "bilinear"},
            "label_names": LABELS[:num_classes], "distill": distill, "recipe": "deit_tiny", "ema": ema,
        },
    }
    if ema:
        state["state_dict_ema"] = ema_state
    path = run_dir / f"checkpoint-{epoch}.pth.tar"
    torch.save(state, path)
    write_summary(run_dir / "summary.csv", rows, ema=ema)
    write_args_yaml(run_dir / "args.yaml", vars(args))
    return RunFiles(path, raw, ema_state, variant, num_classes, rows)


def reference_model(run: RunFiles, *, ema: bool) -> torch.nn.Module:
    """The student as trained, built with this package's variant: the reference outputs come from it."""
    model = timm.create_model(run.variant, num_classes=run.num_classes)
    model.load_state_dict(run.ema if ema else run.raw)
    return model.eval()
