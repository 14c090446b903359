"""Per-head accuracy of a distilled student and its agreement with a teacher.

A distilled DeiT predicts with two heads: the class token's (``cls``) and the distillation token's
(``dist``); timm's inference output is their average (``fused``). :func:`evaluate` measures top-1/top-5
of all three in one pass, the loss of the fused output (timm's ``eval_loss``), and with a teacher its
top-1 and the fraction of images where the student's fused argmax equals the teacher's.
Counts are summed across ranks, so distributed results are exact (timm's padding of the last rank
is not counted). `deit-distill eval` (:mod:`timm_deit_distill.commands.evaluate`) and the trainer use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils.model import unwrap_model

__all__ = ["HeadLogits", "head_logits", "is_distilled", "evaluate"]


class HeadLogits(NamedTuple):
    """Logits of the class head, the distillation head (None for plain models) and their average."""

    cls: torch.Tensor | None
    dist: torch.Tensor | None
    fused: torch.Tensor


def is_distilled(model: nn.Module) -> bool:
    """True for students with a distillation head (timm's ``VisionTransformerDistilled`` and kin)."""
    m = unwrap_model(model)
    return hasattr(m, "set_distilled_training") and hasattr(m, "head_dist")


def head_logits(model: nn.Module, x: torch.Tensor) -> HeadLogits:
    """Run ``model`` once and return each head's logits.

    For a distilled model in eval mode this takes the two tokens from ``forward_features`` and applies
    timm's ``forward_head`` steps to each, so ``fused`` is bit-identical to ``model(x)``.
    """
    m = unwrap_model(model)
    if not is_distilled(m):
        out = model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return HeadLogits(None, None, out)
    feats = m.forward_features(x)
    cls = m.head(m.head_drop(feats[:, 0]))
    dist = m.head_dist(m.head_drop(feats[:, 1]))
    return HeadLogits(cls, dist, (cls + dist) / 2)


def _topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int]) -> list[torch.Tensor]:
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(target.view(-1, 1))
    return [hit[:, :min(k, maxk)].any(dim=1).sum().to(torch.float64) for k in ks]


def _real_count(loader: Any) -> int | None:
    """Samples of this rank that are not timm's wrap-around padding (OrderedDistributedSampler)."""
    sampler = getattr(loader, "sampler", None)
    if sampler is None or not hasattr(sampler, "num_replicas") or not hasattr(sampler, "num_samples"):
        return None
    total = len(sampler.dataset)
    return max(0, min(sampler.num_samples, total - sampler.rank * sampler.num_samples))


_KEYS = ("n", "loss", "top1", "top5", "top1_cls", "top5_cls", "top1_dist", "top5_dist", "teacher_top1",
         "teacher_top5", "agree")


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Any,
    *,
    device: torch.device | str = "cpu",
    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
    amp_autocast: Callable[[], Any] = contextlib.nullcontext,
    channels_last: bool = False,
    distributed: bool = False,
    progress: Callable[[Any], Any] | None = None,
) -> dict[str, float | None]:
    """Evaluate ``model`` on ``loader`` (yielding ``(inputs, targets)``).

    Returns ``loss`` (cross-entropy of the fused output), ``top1``/``top5`` (fused, in percent, as timm),
    ``top1_cls``/``top5_cls``/``top1_dist``/``top5_dist`` (None for a plain model), and with a teacher
    ``teacher_top1``/``teacher_top5`` (percent) and ``teacher_agreement`` (a fraction in [0, 1]);
    ``count`` is the number of images. With ``distributed`` the sums are all-reduced.
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    sums = torch.zeros(len(_KEYS), dtype=torch.float64)
    remaining = _real_count(loader) if distributed else None
    distilled = is_distilled(model)
    batches = progress(loader) if progress is not None else loader
    for inputs, targets in batches:
        if remaining is not None:
            if remaining <= 0:
                continue
            inputs, targets = inputs[:remaining], targets[:remaining]
            remaining -= len(targets)
        inputs, targets = inputs.to(device), targets.to(device)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            heads = head_logits(model, inputs)
        fused = heads.fused.float()
        add = dict.fromkeys(_KEYS, 0.0)
        add["n"] = float(len(targets))
        add["loss"] = F.cross_entropy(fused, targets, reduction="sum").double().cpu()
        add["top1"], add["top5"] = _topk_correct(fused, targets, (1, 5))
        if distilled:
            add["top1_cls"], add["top5_cls"] = _topk_correct(heads.cls.float(), targets, (1, 5))
            add["top1_dist"], add["top5_dist"] = _topk_correct(heads.dist.float(), targets, (1, 5))
        if teacher is not None:
            teacher_logits = teacher(inputs).float()
            add["teacher_top1"], add["teacher_top5"] = _topk_correct(teacher_logits, targets, (1, 5))
            add["agree"] = fused.argmax(1).eq(teacher_logits.argmax(1)).sum().double()
        sums += torch.tensor([float(add[k]) for k in _KEYS], dtype=torch.float64)
    if distributed:
        reduced = sums.to(device)
        torch.distributed.all_reduce(reduced)
        sums = reduced.cpu()
    s = dict(zip(_KEYS, sums.tolist(), strict=True))
    n = max(s["n"], 1.0)
    pct = lambda key: 100.0 * s[key] / n  # noqa: E731
    metrics: dict[str, float | None] = {
        "count": int(s["n"]), "loss": s["loss"] / n, "top1": pct("top1"), "top5": pct("top5"),
        "top1_cls": pct("top1_cls") if distilled else None, "top5_cls": pct("top5_cls") if distilled else None,
        "top1_dist": pct("top1_dist") if distilled else None, "top5_dist": pct("top5_dist") if distilled else None,
        "teacher_top1": pct("teacher_top1") if teacher is not None else None,
        "teacher_top5": pct("teacher_top5") if teacher is not None else None,
        "teacher_agreement": s["agree"] / n if teacher is not None else None,
    }
    model.train(was_training)
    return metrics
