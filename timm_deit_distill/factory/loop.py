"""The epoch loop of a :class:`~timm_deit_distill.factory.run.Run`: train, evaluate, step the schedule,
checkpoint, record. timm's train.py loop with DeiT distillation, calling the package's Task as timm's train.py
calls its tasks; per step::

    inputs, targets, views  <- loader (timm transforms + Mixup/CutMix, repeated augmentation)
    out = task(inputs, targets, views=views)    # {'loss', 'output', 'task_loss', 'distill_loss'}
        teacher targets     <- the target source: teacher(inputs), or the cache's rows of (epoch, views)
        (cls, dist)         <- student(inputs)
        loss                <- (1 - alpha) * CE(cls, targets) + alpha * distill(dist, teacher targets)
    backward, step; the log and summary.csv record out's parts
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import torch

from ..errors import NonFiniteLoss
from ..progress import is_progress_bar, progress_bar
from ..stops import check as check_stop
from ..stops import deferred
from .run import Run

__all__ = ["run_epochs", "train_one_epoch", "evaluate_epoch", "ema_evaluated"]

# the parts of a batch with unlabelled images beyond the three every batch has (DistillationLoss.parts)
UNLABELED_PARTS = ("task_loss_labeled", "pseudo_loss", "distill_loss_labeled", "distill_loss_unlabeled")

_logger = logging.getLogger("timm_deit_distill.train")  # the name the trainer's log lines always had


def run_epochs(run: Run) -> tuple[Any, Any]:
    """The epoch loop: train, evaluate, step the schedule, checkpoint, record. Returns (best metric, its epoch)
    of the checkpoints ranked so far (None, None without an evaluation)."""
    run.looping = True
    for epoch in range(run.start_epoch, run.num_epochs):
        row, metric = _epoch(run, epoch)
        if run.primary:
            _log_epoch(run, row)
            with deferred():  # a stop waits for the epoch's files: checkpoint, summary and curves agree
                _save_epoch(run, epoch, row, metric)
    if run.primary:
        if run.best[0] is not None:
            _logger.info("Best %s %.4f at epoch %s; checkpoints in %s.", run.settings.intervals.eval_metric,
                         run.best[0], run.best[1], run.output_dir)
        else:
            _logger.info("Done; checkpoints in %s.", run.output_dir)
    return run.best


def _epoch(run: Run, epoch: int) -> tuple[dict[str, Any], Any]:
    """One epoch's training, evaluation (when due) and schedule step; returns its summary row and ranking metric."""
    from ..checkpoint import rng_state

    train_metrics = train_one_epoch(run, epoch)
    row: dict[str, Any] = {"epoch": epoch, "train_loss": train_metrics["loss"],
                           "train_task_loss": train_metrics["task_loss"],
                           "train_distill_loss": train_metrics["distill_loss"]}
    row |= {f"train_{k}": train_metrics[k] for k in UNLABELED_PARTS if k in train_metrics}
    lrs = [g["lr"] for g in run.optimizer.param_groups]
    row["lr"] = sum(lrs) / len(lrs)
    if _evaluates(run, epoch):
        row.update(evaluate_epoch(run, epoch))
    metric = row.pop("_metric", None)
    run.lr_scheduler.step(epoch + 1, metric)
    run.history.append(row)
    # Every rank's generator states, captured at the same point of the loop.
    states = [rng_state()]
    if run.distributed:
        states = [None] * run.world_size
        torch.distributed.all_gather_object(states, rng_state())
    run.rng_states = states
    return row, metric


def _evaluates(run: Run, epoch: int) -> bool:
    return (epoch + 1) % run.settings.intervals.val_interval == 0 or epoch + 1 == run.num_epochs


def _save_epoch(run: Run, epoch: int, row: dict[str, Any], metric: Any) -> None:
    """Rank 0: the epoch's checkpoint (when due), summary.csv and curves.png."""
    from ..plots import plot_curves
    from ..records import write_summary

    settings = run.settings
    last = epoch + 1 == run.num_epochs
    # A skipped epoch is only unranked history: evaluated epochs are always saved so that model_best and the
    # ranked checkpoints see every evaluation.
    if metric is not None or last or (epoch + 1) % settings.intervals.checkpoint_interval == 0:
        run.best = run.saver.save_checkpoint(epoch, metric=metric)
        run.last_saved_epoch = epoch
    write_summary(os.path.join(run.output_dir, "summary.csv"), run.history, ema=ema_evaluated(run),
                  unlabeled=run.unlabeled_ds is not None)
    if metric is not None or last:  # redraw with new eval points only: a plot costs ~0.5 s of CPU
        plot_curves(run.history, os.path.join(run.output_dir, "curves.png"),
                    title=f"{settings.student.model} ({settings.distill.type} distillation)")


def _all_reduce_sum(values: list[float], run: Run) -> list[float]:
    if not run.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=run.device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def train_one_epoch(run: Run, epoch: int) -> dict[str, float]:
    """One pass over the training loader; returns the epoch's mean losses (reduced over ranks; with unlabelled
    images also their parts, :data:`UNLABELED_PARTS`)."""
    from timm.utils import dispatch_clip_grad

    from ..task import clip_parameters

    settings, optimizer = run.settings, run.optimizer
    run.train_loader.set_epoch(epoch)
    run.task.set_epoch(epoch)
    run.epoch_now, run.steps_done = epoch, 0
    run.task.train()  # the student trains; the teacher never does
    accum = settings.step.grad_accum_steps
    num_batches = len(run.train_loader)
    last_accum = num_batches % accum or accum
    unlabeled = run.unlabeled_ds is not None
    # samples, then the total, class-head and distillation losses (and the unlabelled parts), sample-weighted
    sums = [0.0] * (4 + (len(UNLABELED_PARTS) if unlabeled else 0))
    optimizer.zero_grad()
    log = _StepLog(run, epoch)
    batches = progress_bar(run.train_loader, f"train {epoch}", show=run.primary)
    log.batches = batches
    for batch_idx, (inputs, targets, views) in enumerate(batches):
        check_stop()  # a stop that arrived while an exception was being handled (e.g. a skipped image)
        inputs, targets = inputs.to(run.device, non_blocking=True), targets.to(run.device, non_blocking=True)
        if settings.misc.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        need_update = (batch_idx + 1) % accum == 0 or batch_idx == num_batches - 1
        steps_in_update = last_accum if batch_idx >= num_batches - last_accum else accum
        values = _step(run, epoch, batch_idx, inputs, targets, views, need_update, steps_in_update,
                       (clip_parameters, dispatch_clip_grad))
        n = len(inputs)
        sums = [sums[0] + n, *(total + value * n for total, value in zip(sums[1:], values, strict=True))]
        log.samples += n * run.world_size
        if not need_update:
            continue
        _after_update(run)
        update_idx = batch_idx // accum
        if update_idx % settings.intervals.log_interval == 0 or batch_idx == num_batches - 1:
            log.line(update_idx, values)
        run.lr_scheduler.step_update(num_updates=run.num_updates, metric=sums[1] / max(sums[0], 1))

    if hasattr(optimizer, "sync_lookahead"):
        optimizer.sync_lookahead()
    total = _all_reduce_sum(sums, run)
    n = max(total[0], 1.0)
    keys = ("loss", "task_loss", "distill_loss") + (UNLABELED_PARTS if unlabeled else ())
    return {k: value / n for k, value in zip(keys, total[1:], strict=True)}


def _step(run: Run, epoch: int, batch_idx: int, inputs: torch.Tensor, targets: torch.Tensor, views: Any,
          need_update: bool, steps_in_update: int, timm_fns: tuple[Any, Any]) -> list[float]:
    """One batch through the Task (the teacher's targets, online or replayed; the student's loss and its parts)
    and its backward (the update when due); returns the batch's (loss, task loss, distillation loss). A loss that
    is not finite stops every rank at once."""
    sync = contextlib.nullcontext() if need_update or not run.distributed else run.model.no_sync()
    with sync:
        with run.amp_autocast():
            out = run.task(inputs, targets, views=views)
        loss = out["loss"]
        parts = torch.stack([loss.detach().float(), out["task_loss"].float(), out["distill_loss"].float(),
                             *(out[k].float() for k in UNLABELED_PARTS if k in out)])
        finite = torch.isfinite(parts[0]).to(torch.float32)
        if run.distributed:  # every rank must stop together
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not bool(finite.item()):
            raise NonFiniteLoss(
                f"the training loss became {parts[0].item()} at epoch {epoch}, step {batch_idx} "
                f"(update {run.num_updates + 1})")
        _backward(run, loss / steps_in_update, need_update, *timm_fns)
    return parts.tolist()


def _after_update(run: Run) -> None:
    """What follows an optimizer update: counters, zeroed gradients, the EMA, a device synchronisation."""
    run.num_updates += 1
    run.steps_done += 1
    run.optimizer.zero_grad()
    if run.model_ema is not None:
        run.model_ema.update(run.student, step=run.num_updates)
    if run.settings.device.synchronize_step and run.device.type == "cuda":
        torch.cuda.synchronize()


class _StepLog:
    """The training log line every --log-interval updates (the progress bar's postfix on a terminal)."""

    def __init__(self, run: Run, epoch: int) -> None:
        self.run, self.epoch, self.batches = run, epoch, None
        self.started, self.samples = time.time(), 0

    def line(self, update_idx: int, values: list[float]) -> None:
        run, optimizer = self.run, self.run.optimizer
        lr = sum(g["lr"] for g in optimizer.param_groups) / len(optimizer.param_groups)
        elapsed = max(time.time() - self.started, 1e-9)
        line = f"loss {values[0]:#.4g} (task {values[1]:#.4g}, distill {values[2]:#.4g})  "
        if len(values) > 3:  # unlabelled images: the terms on each kind (UNLABELED_PARTS' order)
            line += (f"[labelled: task {values[3]:#.4g}, distill {values[5]:#.4g}; unlabelled: "
                     f"pseudo {values[4]:#.4g}, distill {values[6]:#.4g}]  ")
        line += f"lr {lr:.3e}  {self.samples / elapsed:.1f} img/s"
        if run.primary:
            if is_progress_bar(self.batches):
                self.batches.set_postfix_str(line)  # type: ignore[union-attr]
            else:
                _logger.info("Train: %d [%d/%d]  %s", self.epoch, update_idx + 1, run.updates_per_epoch, line)
        self.started, self.samples = time.time(), 0


def _backward(run: Run, loss: torch.Tensor, need_update: bool, clip_parameters: Any, clip: Any) -> None:
    step = run.settings.step
    params = (clip_parameters(run.model, exclude_head="agc" in step.clip_mode)
              if step.clip_grad is not None else None)
    if run.loss_scaler is not None:
        run.loss_scaler(loss, run.optimizer, clip_grad=step.clip_grad, clip_mode=step.clip_mode,
                        parameters=params, need_update=need_update)
        return
    loss.backward()
    if need_update:
        if step.clip_grad is not None:
            clip(params, value=step.clip_grad, mode=step.clip_mode)
        run.optimizer.step()


def ema_evaluated(run: Run) -> bool:
    """Whether the epochs evaluate the EMA (timm: ``--model-ema`` without ``--model-ema-force-cpu``)."""
    return run.model_ema is not None and not run.settings.ema.model_ema_force_cpu


def evaluate_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """The epoch's evaluation, as timm's train.py's: the raw weights, then the EMA when it is evaluated, whose
    figures then fill the ``eval_*`` columns and rank the checkpoint (``_metric``), the raw ones going to
    ``raw_eval_*``. The teacher runs beside the weights the ``eval_*`` columns describe."""
    from timm.utils import distribute_bn

    from ..evaluation import evaluate
    from ..records import RAW_PREFIX

    settings = run.settings
    if run.distributed and run.dist_bn in ("broadcast", "reduce"):
        distribute_bn(run.model, run.world_size, run.dist_bn == "reduce")
    common = dict(device=run.device, amp_autocast=run.amp_autocast, channels_last=settings.misc.channels_last,
                  distributed=run.distributed)
    with_ema = ema_evaluated(run)
    metrics = evaluate(run.student, run.eval_loader, teacher=None if with_ema else run.teacher,
                       progress=lambda it: progress_bar(it, f"eval {epoch}", show=run.primary), **common)
    row = _eval_row(metrics)
    if with_ema:
        if run.distributed and run.dist_bn in ("broadcast", "reduce"):
            distribute_bn(run.model_ema, run.world_size, run.dist_bn == "reduce")
        raw = {RAW_PREFIX + k: v for k, v in row.items() if k.startswith("eval_")}
        metrics = evaluate(run.model_ema.module, run.eval_loader, teacher=run.teacher,
                           progress=lambda it: progress_bar(it, f"eval {epoch} (EMA)", show=run.primary), **common)
        row = {**_eval_row(metrics), **raw}
    row["_metric"] = metrics[settings.intervals.eval_metric]  # timm ranks by what it writes under eval_*
    return row


def _eval_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """One evaluation's summary.csv columns."""
    return {"eval_loss": metrics["loss"], "eval_top1": metrics["top1"], "eval_top5": metrics["top5"],
            "eval_top1_cls": metrics["top1_cls"], "eval_top5_cls": metrics["top5_cls"],
            "eval_top1_dist": metrics["top1_dist"], "eval_top5_dist": metrics["top5_dist"],
            "teacher_top1": metrics["teacher_top1"], "teacher_agreement": metrics["teacher_agreement"]}


def _log_epoch(run: Run, row: dict[str, Any]) -> None:
    def f(key: str, fmt: str = "{:.2f}") -> str:
        return "-" if row.get(key) is None else fmt.format(row[key])

    parts = [f"Epoch {row['epoch']}: train loss {f('train_loss', '{:.4f}')} (task {f('train_task_loss', '{:.4f}')}, "
             f"distill {f('train_distill_loss', '{:.4f}')})"]
    if "train_distill_loss_unlabeled" in row:
        parts.append(f"labelled: task {f('train_task_loss_labeled', '{:.4f}')}, distill "
                     f"{f('train_distill_loss_labeled', '{:.4f}')}; unlabelled: pseudo "
                     f"{f('train_pseudo_loss', '{:.4f}')}, distill {f('train_distill_loss_unlabeled', '{:.4f}')}")
    if row.get("eval_top1") is not None:
        # the heads' figures only where there are two heads (a single-head student has neither)
        inner = [f"cls {f('eval_top1_cls')}, dist {f('eval_top1_dist')}"] if row.get("eval_top1_cls") is not None \
            else []
        inner += [f"raw weights {f('raw_eval_top1')}"] if "raw_eval_top1" in row else []
        parts.append(f"eval top-1{' (EMA)' if 'raw_eval_top1' in row else ''} {f('eval_top1')}"
                     + (f" ({'; '.join(inner)})" if inner else ""))
    if row.get("teacher_top1") is not None:
        parts.append(f"teacher top-1 {f('teacher_top1')}, agreement {f('teacher_agreement', '{:.3f}')}")
    _logger.info("  ".join(parts))
