"""The demo's regime: what it trains (data, models, schedule, seeds), and its runs as `deit-distill train` command lines."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = ["Regime", "DEFAULT_REGIME", "QUICK_REGIME", "MODES", "STUDENT", "TEACHER", "teacher_args", "student_args"]

MODES = ("none", "soft", "hard")
STUDENT = "deit_tiny_distilled_patch4_32"
TEACHER = "resnet10t"


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
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ema(self) -> bool:
        return self.ema_decay > 0


DEFAULT_REGIME = Regime(
    name="default", train_per_class=20, val_fraction=0.2, img_size=12, epochs=80, teacher_epochs=60,
    batch_size=32, lr=1e-3, warmup_epochs=10, weight_decay=0.05, clip_grad=1.0, smoothing=0.1, drop_path=0.1,
    ema_decay=0.0, scale=(0.25, 1.0), val_interval=10, seeds=(0, 1, 2))
QUICK_REGIME = replace(
    DEFAULT_REGIME, name="quick", train_per_class=5, epochs=2, teacher_epochs=2, warmup_epochs=1, val_interval=1,
    seeds=(0,), teacher_check=False)  # a 2-epoch teacher on 50 images scores near chance: nothing to check


# ----------------------------------------------------------------------------------------------------------
# Command lines: the demo's runs are ordinary `deit-distill train` / `deit-distill eval` invocations.


def _common_train_args(regime: Regime, data_dir: Path) -> list[str]:
    args = [
        "--data-dir", str(data_dir), "--img-size", str(regime.img_size),
        "--batch-size", str(regime.batch_size), "--opt", "adamw", "--lr", f"{regime.lr:g}",
        "--weight-decay", f"{regime.weight_decay:g}", "--sched", "cosine", "--warmup-epochs", str(regime.warmup_epochs),
        "--warmup-lr", "1e-6", "--min-lr", "1e-5", "--clip-grad", f"{regime.clip_grad:g}",
        "--smoothing", f"{regime.smoothing:g}",
        # Digits are not mirror-symmetric and have no colour; crops keep most of the stroke.
        "--scale", f"{regime.scale[0]:g}", f"{regime.scale[1]:g}", "--hflip", "0", "--color-jitter", "0",
        "--train-interpolation", "bicubic",
        "--crop-pct", "1",  # evaluate the whole digit (a centre crop would cut strokes), teacher and students alike
        "--workers", "0",  # 8x8 PNGs decode faster than worker processes start
        # A 64 MB checkpoint each epoch costs ~10 % of a run; saving at evaluations bounds a kill's loss just as well.
        "--val-interval", str(regime.val_interval), "--checkpoint-interval", str(regime.val_interval),
        "--checkpoint-hist", "1", "--log-interval", "1000",
    ]
    if regime.ema:
        args += ["--model-ema", "--model-ema-decay", f"{regime.ema_decay:g}"]
    return args + list(regime.extra_args)


def teacher_args(regime: Regime, data_dir: Path, output: Path) -> list[str]:
    """`deit-distill train` arguments of the convnet teacher (same augmentation as the students)."""
    return [*_common_train_args(regime, data_dir), "--model", TEACHER, "--epochs", str(regime.teacher_epochs),
            "--drop-path", "0", "--distill-type", "none", "--seed", str(regime.teacher_seed),
            "--output", str(output), "--experiment", "teacher"]


def student_args(regime: Regime, data_dir: Path, output: Path, mode: str, seed: int,
                 teacher_checkpoint: Path) -> list[str]:
    """`deit-distill train` arguments of one student; the budget is the same for every mode."""
    args = [*_common_train_args(regime, data_dir), "--model", STUDENT, "--epochs", str(regime.epochs),
            "--drop-path", f"{regime.drop_path:g}", "--distill-type", mode, "--seed", str(seed),
            "--output", str(output), "--experiment", f"{mode}-seed{seed}"]
    if mode != "none":
        args += ["--distill-teacher", TEACHER, "--distill-teacher-path", str(teacher_checkpoint),
                 "--distill-alpha", f"{regime.distill_alpha:g}", "--distill-tau", f"{regime.distill_tau:g}",
                 "--distill-soft-reduction", "deit", "--teacher-precision", "fp32"]
        if regime.ema:
            args += ["--teacher-ema"]
        if not regime.teacher_check:
            args += ["--no-teacher-check"]
    return args
