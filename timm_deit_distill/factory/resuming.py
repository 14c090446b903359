"""What `--resume` says and does beyond restoring state: the refusals of a resume that cannot be exact or has
nothing left to train (each with ways out that work), its log lines, and the warning for a new --lr a plateau
schedule does not take."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import TrainSettings

if TYPE_CHECKING:
    from ..checkpoint import RunMetadata

__all__ = ["identity_refusal", "optimizer_refusal", "nothing_to_train", "warn_changes", "log_resumed", "plateau_keeps_lr"]

_logger = logging.getLogger("timm_deit_distill.train")


def identity_refusal(settings: TrainSettings, comparison: Any, checkpoint: dict[str, Any], metadata: RunMetadata,
                     plan: Any) -> str:
    """The refusal of a resume that changes what an exact resume needs, with ways out that work.

    Keeping the run: its args.yaml with this command's run folder (the folder already passed its checks; the
    yaml's own --output/--experiment may name a folder where resuming this checkpoint is refused). A new run
    from these weights: --initial-checkpoint only when they still fit the student (same model, architecture,
    classes); --pretrained-path when only the classes or the input size differ; none for another model.
    """
    import shlex

    ckpt, q = settings.run.resume, shlex.quote
    record = os.path.join(os.path.dirname(os.path.abspath(ckpt)), "args.yaml")
    folder = _resume_folder(settings, plan, record)
    if os.path.isfile(record):
        keep = f"resume with the original values: -c {q(record)} --resume {q(ckpt)}{folder}"
    else:
        keep = (f"resume with the original values (the first of each pair above) and --resume {q(ckpt)}; "
                f"{record} is not there to repeat them with -c")
    new = _new_run_from(settings, comparison, checkpoint, metadata)
    return (f"--resume {ckpt}: {'; '.join(comparison.refused)}. An exact resume needs the student, the training "
            f"data, the seed and the teacher of the run it continues. fix: {keep}; or {new}.")


def optimizer_refusal(settings: TrainSettings, checkpoint: dict[str, Any], metadata: RunMetadata) -> str | None:
    """The refusal of a resume whose ``--opt`` is not the checkpoint's run's (a timm train.py run's SGD resumed
    with AdamW): the saved state (momentum buffers, moments, the groups' hyperparameters) would be loaded into
    another optimizer, which then fails at its first step. None when the optimizer state is not resumed."""
    import shlex

    before, now = (metadata.args or {}).get("opt"), settings.optimizer.opt
    if settings.run.no_resume_opt or "optimizer" not in checkpoint or not isinstance(before, str) or \
            before.lower() == now.lower():
        return None
    return (f"--resume {settings.run.resume}: its optimizer state is --opt {shlex.quote(before)}'s and this run "
            f"trains with --opt {now}, which cannot take it. fix: resume with --opt {shlex.quote(before)}, or add "
            f"--no-resume-opt to start {now} afresh (the weights, EMA, epoch and schedule are still resumed).")


def _resume_folder(settings: TrainSettings, plan: Any, record: str) -> str:
    """The --output/--experiment flags that keep the resumed run in the folder this command was checked for."""
    import shlex

    import yaml

    q = shlex.quote
    if plan.continuing:
        return f" --output {q(os.path.dirname(plan.path))} --experiment {q(os.path.basename(plan.path))}"
    if plan.path is not None:
        return f" --output {q(plan.root)} --experiment {q(settings.run.experiment)}"
    folder = f" --output {q(plan.root)}"
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
        if (yaml.safe_load(Path(record).read_text()) or {}).get("experiment"):
            folder += " --experiment ''"  # the yaml's would otherwise pick the folder
    return folder


def _new_run_from(settings: TrainSettings, comparison: Any, checkpoint: dict[str, Any],
                  metadata: RunMetadata) -> str:
    """How a NEW run starts from the checkpoint's weights, as far as they fit the student asked for."""
    import shlex

    from ..checkpoint import read_run_metadata

    ckpt, q = settings.run.resume, shlex.quote
    what = set(comparison.refused_what)
    if "model" in what:
        return (f"a NEW run of --model {settings.student.model} cannot start from these weights (another "
                "architecture): start it from scratch, with another --experiment")
    if what & {"architecture", "classes"}:
        old_kwargs = dict(read_run_metadata(checkpoint).model_kwargs or {})
        new_kwargs = dict(metadata.model_kwargs or {})
        fits = ({k: v for k, v in old_kwargs.items() if k not in ("img_size", "num_classes")}
                == {k: v for k, v in new_kwargs.items() if k not in ("img_size", "num_classes")})
        return (f"start a NEW run from these weights with --pretrained --pretrained-path {q(ckpt)} (head replaced, "
                "position embedding resampled) and another --experiment" if fits else
                "these weights do not fit the new architecture: start a NEW run from scratch, with another "
                "--experiment")
    return f"start a NEW run from these weights with --initial-checkpoint {q(ckpt)} and another --experiment"


def nothing_to_train(settings: TrainSettings, resume_epoch: int | None, start_epoch: int, num_epochs: int) -> str:
    """The refusal of a run that would start at or after its schedule's end (it trained nothing and exited 0)."""
    epochs = settings.schedule.epochs
    length = f"--epochs {epochs}" + (f" (a schedule of {num_epochs} epochs with warm-up and cool-down)"
                                     if num_epochs != epochs else "")
    if settings.run.start_epoch is None and resume_epoch is not None:
        return (f"--resume {settings.run.resume} has already trained epochs 0-{resume_epoch} ({resume_epoch + 1} "
                f"epochs) and {length} ends at epoch {num_epochs - 1}: nothing is left to train. fix: to train "
                f"further, give a longer schedule (--epochs {epochs + resume_epoch + 2 - num_epochs} or more); its "
                "checkpoints already hold the run as it is (evaluate one with `deit-distill eval`).")
    return (f"--start-epoch {start_epoch} is at or past the end of the schedule ({length} ends at epoch "
            f"{num_epochs - 1}): nothing would be trained. fix: a smaller --start-epoch, or a larger --epochs.")


def warn_changes(comparison: Any) -> None:
    """The settings a resume changed, and what its comparison noted (rank 0)."""
    for key, (old, new) in comparison.changed.items():
        _logger.warning("Resumed with a changed setting: %s %s -> %s (recorded in args.yaml).", key, old, new)
    for note in comparison.notes:
        _logger.warning("Resume check: %s.", note)


def log_resumed(settings: TrainSettings, resumed: Any, start_epoch: int) -> None:
    """The "Resumed from" line (rank 0)."""
    _logger.info("Resumed from %s at epoch %d (RNG states %s; schedule %s).", settings.run.resume, start_epoch,
                 "restored" if resumed.rng_restored else "not in the checkpoint: reseeded",
                 _schedule_how(settings, resumed.scheduler_restored))


def _schedule_how(settings: TrainSettings, restored: bool) -> str:
    """What became of the schedule on --resume, for the "Resumed from" line."""
    if restored:
        return "restored"
    if settings.schedule.sched == "plateau":  # its state moves with the metric: rebuilt, it forgets what it had seen
        return ("rebuilt from these flags: the plateau's best metric and its patience and cooldown counters "
                "start anew")
    return "rebuilt from these flags"


def plateau_keeps_lr(settings: TrainSettings, changed: dict[str, list[Any]], *, optimizer_restored: bool,
                     lr_scheduler: Any, optimizer: Any, start_epoch: int) -> str | None:
    """The warning for a plateau run resumed with another --lr, which then has no effect: past its warm-up timm's
    plateau schedule sets no rate, it only cuts the one the optimizer holds, and the optimizer state restored
    from the checkpoint holds the rate the checkpoint's run reached. None when --lr does apply."""
    if settings.schedule.sched != "plateau" or "lr" not in changed or settings.run.no_resume_opt:
        return None
    if not optimizer_restored or start_epoch <= lr_scheduler.warmup_t:
        return None  # the warm-up still ramps to the new --lr
    old, new = (f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in changed["lr"])
    kept = sum(float(g["lr"]) for g in optimizer.param_groups) / len(optimizer.param_groups)
    return (f"Resumed with --lr {new} (was {old}), which has no effect here: the plateau schedule keeps the "
            f"learning rate the checkpoint's run reached ({kept:g}, held by the optimizer state it restored); "
            "--lr applies to new runs only.")
