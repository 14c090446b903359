"""The demo's regime: what it trains (data, models, schedule, seeds), and its runs as `deit-distill train` options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["Regime", "DEFAULT_REGIME", "QUICK_REGIME", "MODES", "STUDENTS", "StudentKind", "STUDENT", "PLAIN_STUDENT",
           "PLAIN_STUDENT_KWARGS", "TEACHER", "teacher_options", "student_options", "UNLABELED_STUDENTS",
           "UNLABELED_MODES", "UNLABELED_PER_BATCH"]

STUDENT = "deit_tiny_distilled_patch4_32"  # DeiT⚗: DeiT-Ti with the distillation token, 4x4 patches
# The same vision transformer without the distillation token (timm's DeiT-Ti with the distilled variant's
# patches and classes; the image size comes from --img-size as for the distilled one): DeiT's Table 3 rows
# "no distillation", "usual distillation" and "hard distillation" train this.
PLAIN_STUDENT = "deit_tiny_patch16_224"
PLAIN_STUDENT_KWARGS = {"patch_size": 4, "num_classes": 10}
TEACHER = "resnet10t"


@dataclass(frozen=True)
class StudentKind:
    """One of DeiT's Table 3 students: its key in results.json, its distillation type, whether it has the
    distillation token, and the row it is in the paper's table."""

    name: str
    distill_type: str
    token: bool
    label: str
    unlabeled: bool = False  # also trains on the unlabelled digits (`deit-distill demo --unlabeled`)
    pseudo_labels: bool = False  # --pseudo-labels: the class head learns the teacher's argmax on them

    @property
    def model(self) -> str:
        return STUDENT if self.token else PLAIN_STUDENT


STUDENTS = (
    StudentKind("none", "none", False, "no distillation"),
    StudentKind("usual", "soft", False, "usual distillation"),
    StudentKind("hard", "hard", False, "hard distillation"),
    StudentKind("deit_hard", "hard", True, "DeiT⚗ hard distillation"),
    StudentKind("deit_soft", "soft", True, "DeiT⚗ soft distillation"),
)
MODES = tuple(kind.name for kind in STUDENTS)
# `deit-distill demo --unlabeled`: students that also see the other training digits without their labels. The
# single-head student is Table 3's "hard distillation" student plus --pseudo-labels, so each row has a twin of the
# same architecture and distillation type trained without the unlabelled images.
UNLABELED_STUDENTS = (
    StudentKind("hard_pseudo_unlabeled", "hard", False, "hard distillation + pseudo-labels, unlabelled images",
                unlabeled=True, pseudo_labels=True),
    StudentKind("deit_hard_unlabeled", "hard", True, "DeiT⚗ hard distillation, unlabelled images", unlabeled=True),
    StudentKind("deit_soft_unlabeled", "soft", True, "DeiT⚗ soft distillation, unlabelled images", unlabeled=True),
)
UNLABELED_MODES = tuple(kind.name for kind in UNLABELED_STUDENTS)
# Unlabelled images added to each batch of --batch-size labelled ones: the labelled part of every step stays the
# Table 3 run's (same batches, same number of steps), so a row and its twin differ only by the added images.
UNLABELED_PER_BATCH = 16
_KINDS = {kind.name: kind for kind in (*STUDENTS, *UNLABELED_STUDENTS)}


@dataclass(frozen=True)
class Regime:
    """Everything that decides what the demo trains; the README explains the default's choices.

    Teacher and students share every augmentation and optimisation setting; only the schedule length
    (``teacher_epochs``) and drop-path (off for the convnet) differ.
    """

    name: str
    train_per_class: int  # labelled training images per class (the scarce-data regime)
    val_fraction: float  # held-out share of the 1,797 digits (stratified, fixed by split_seed)
    img_size: int  # 8x8 digits upsampled; the student's tokens are (img_size / 4) ** 2
    epochs: int
    teacher_epochs: int
    batch_size: int
    lr: float
    warmup_epochs: int
    weight_decay: float
    clip_grad: float
    smoothing: float
    drop_path: float
    ema_decay: float  # 0 turns EMA off
    scale: tuple[float, float]  # RandomResizedCrop area range, shared by teacher and students
    val_interval: int
    seeds: tuple[int, ...]
    split_seed: int = 0
    teacher_seed: int = 0
    distill_alpha: float = 0.5  # DeiT's defaults for the loss
    distill_tau: float = 1.0
    # Measure the teacher before it teaches (--teacher-min-top1 auto); off only where the teacher is a
    # smoke-test stand-in trained too briefly to beat chance.
    teacher_check: bool = True
    extra_options: Mapping[str, Any] = field(default_factory=dict)  # more `deit-distill train` options, by dest

    @property
    def ema(self) -> bool:
        return self.ema_decay > 0


DEFAULT_REGIME = Regime(
    name="default", train_per_class=20, val_fraction=0.2, img_size=12, epochs=30, teacher_epochs=60,
    batch_size=32, lr=1e-3, warmup_epochs=5, weight_decay=0.05, clip_grad=1.0, smoothing=0.1, drop_path=0.1,
    ema_decay=0.0, scale=(0.25, 1.0), val_interval=10, seeds=(0, 1, 2))
QUICK_REGIME = replace(
    DEFAULT_REGIME, name="quick", train_per_class=5, epochs=2, teacher_epochs=2, warmup_epochs=1, val_interval=1,
    seeds=(0,), teacher_check=False)  # a 2-epoch teacher on 50 images scores near chance: nothing to check


# ----------------------------------------------------------------------------------------------------------
# Runs: the demo's runs are ordinary `deit-distill train` runs, given to the Python API as keywords (the flags'
# dest names), so each is exactly the command line `deit-distill train` would run with those flags.


def _common_train_options(regime: Regime, data_dir: Path) -> dict[str, Any]:
    options: dict[str, Any] = dict(
        data_dir=str(data_dir), img_size=regime.img_size, batch_size=regime.batch_size, opt="adamw", lr=regime.lr,
        weight_decay=regime.weight_decay, sched="cosine", warmup_epochs=regime.warmup_epochs, warmup_lr=1e-6,
        min_lr=1e-5, clip_grad=regime.clip_grad, smoothing=regime.smoothing,
        # Digits are not mirror-symmetric and have no colour; crops keep most of the stroke.
        scale=list(regime.scale), hflip=0.0, color_jitter=0.0, train_interpolation="bicubic",
        crop_pct=1.0,  # evaluate the whole digit (a centre crop would cut strokes), teacher and students alike
        workers=0,  # 8x8 PNGs decode faster than worker processes start
        # A 64 MB checkpoint each epoch costs ~10 % of a run; saving at evaluations bounds a kill's loss just as well.
        val_interval=regime.val_interval, checkpoint_interval=regime.val_interval, checkpoint_hist=1,
        log_interval=1000)
    if regime.ema:
        options.update(model_ema=True, model_ema_decay=regime.ema_decay)
    return {**options, **regime.extra_options}


def teacher_options(regime: Regime, data_dir: Path, output: Path) -> dict[str, Any]:
    """`deit-distill train` options of the convnet teacher (same augmentation as the students)."""
    return {**_common_train_options(regime, data_dir), "model": TEACHER, "epochs": regime.teacher_epochs,
            "drop_path": 0.0, "distill_type": "none", "seed": regime.teacher_seed, "output": str(output),
            "experiment": "teacher"}


def student_options(regime: Regime, data_dir: Path, output: Path, mode: str, seed: int,
                    teacher_checkpoint: Path, unlabeled_dir: Path | None = None) -> dict[str, Any]:
    """`deit-distill train` options of one student (``mode``: a name in :data:`MODES` or :data:`UNLABELED_MODES`,
    the latter with ``unlabeled_dir``); the budget is the same for every mode, the unlabelled images come on top."""
    kind = _KINDS[mode]
    options = {**_common_train_options(regime, data_dir), "model": kind.model, "epochs": regime.epochs,
               "drop_path": regime.drop_path, "distill_type": kind.distill_type, "seed": seed,
               "output": str(output), "experiment": f"{mode}-seed{seed}"}
    if kind.unlabeled:
        if unlabeled_dir is None:
            raise ValueError(f"the demo's {mode} student needs the unlabelled images' folder")
        per_batch = UNLABELED_PER_BATCH
        # --batch-size counts both kinds: B labelled + u unlabelled, fraction u / (B + u) (round() gives back u)
        options.update(unlabeled_data_dir=str(unlabeled_dir), batch_size=regime.batch_size + per_batch,
                       unlabeled_fraction=per_batch / (regime.batch_size + per_batch))
        if kind.pseudo_labels:
            options["pseudo_labels"] = True
    if not kind.token:
        options["model_kwargs"] = dict(PLAIN_STUDENT_KWARGS)
    if kind.distill_type != "none":
        options.update(distill_teacher=TEACHER, distill_teacher_path=str(teacher_checkpoint),
                       distill_alpha=regime.distill_alpha, distill_tau=regime.distill_tau,
                       distill_soft_reduction="deit", teacher_precision="fp32")
        if regime.ema:
            options["distill_teacher_ema"] = True
        if not regime.teacher_check:
            options["no_teacher_check"] = True
    return options
