"""How alike a distilled student's class and distillation tokens are, layer by layer.

DeiT (Touvron et al., 2021, section 4) reports that the learned class and distillation tokens start
almost orthogonal (average cosine 0.06) and end almost aligned after the last layer (0.93): the two
heads see related but not identical embeddings. :func:`token_cosine` measures the same thing on any
timm distilled model (two prefix tokens: class at position 0, distillation at position 1) by
reading the token sequence where timm's ``forward_features`` has it, with forward hooks:

* ``input``: after the position embedding (and ``patch_drop``/``norm_pre``), i.e. what block 0 receives;
* ``layers``: the output of each block;
* ``output``: after the final norm, i.e. what the two heads read.

Each figure is the cosine between the two tokens of one image, averaged over the images.

DeiT's Table 4 compares models by how often they disagree: :func:`head_predictions` gives a model's argmax on
each image from every head it has (a distilled student read from its class head, its distillation head and
both, as timm's inference output averages them), and :func:`disagreement` / :func:`disagreement_table` the
fraction of images on which two models' predictions differ.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TokenCosine", "token_cosine", "head_predictions", "disagreement", "disagreement_table"]


@dataclass(frozen=True)
class TokenCosine:
    """Mean cosine similarity of the class and distillation tokens over the images measured."""

    input: float
    output: float
    layers: list[float] = field(default_factory=list)
    num_images: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _pair_cosine(tokens: torch.Tensor) -> torch.Tensor:
    """Per-image cosine between token 0 (class) and token 1 (distillation) of a (B, N, D) sequence."""
    return F.cosine_similarity(tokens[:, 0].double(), tokens[:, 1].double(), dim=-1)


def _check_distilled(model: nn.Module) -> None:
    missing = [name for name in ("dist_token", "blocks", "norm") if not hasattr(model, name)]
    if missing or getattr(model, "num_prefix_tokens", None) != 2:
        raise ValueError(
            f"token_cosine needs a distilled vision transformer (class + distillation token, e.g. timm's "
            f"VisionTransformerDistilled such as deit_tiny_distilled_patch16_224); got "
            f"{type(model).__name__} (missing {missing or 'a second prefix token'}).")


@torch.inference_mode()
def token_cosine(model: nn.Module, images: torch.Tensor | Iterable[torch.Tensor]) -> TokenCosine:
    """Cosine similarity between the class and distillation tokens of ``model`` on ``images``.

    ``images`` is a normalised batch ``(B, C, H, W)`` or an iterable of batches (e.g. a loader's
    inputs). The model runs in eval mode (restored afterwards); no gradient is kept.
    """
    _check_distilled(model)
    batches = [images] if isinstance(images, torch.Tensor) else images
    sums: dict[str, torch.Tensor] = {}
    count = 0

    def accumulate(key: str, tokens: torch.Tensor) -> None:
        value = _pair_cosine(tokens).sum()
        sums[key] = sums[key] + value if key in sums else value

    hooks = [
        model.blocks[0].register_forward_pre_hook(lambda _m, args: accumulate("input", args[0])),
        model.norm.register_forward_hook(lambda _m, _args, out: accumulate("output", out)),
    ]
    for i, block in enumerate(model.blocks):
        hooks.append(block.register_forward_hook(
            lambda _m, _args, out, i=i: accumulate(f"block{i}", out)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for batch in batches:
            if isinstance(batch, (tuple, list)):  # a loader's (inputs, targets, ...) tuple
                batch = batch[0]
            model.forward_features(batch.to(device))
            count += batch.shape[0]
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("token_cosine got no images; pass a non-empty batch or loader.")
    return TokenCosine(
        input=float(sums["input"] / count),
        output=float(sums["output"] / count),
        layers=[float(sums[f"block{i}"] / count) for i in range(len(model.blocks))],
        num_images=count,
    )


@torch.inference_mode()
def head_predictions(model: nn.Module, batches: Iterable[torch.Tensor | Sequence[torch.Tensor]]) -> dict[str, list[int]]:
    """The model's argmax per image, in the loader's order: ``fused`` (what the model predicts in eval mode:
    timm's ``(x + x_dist) / 2`` for a distilled student) and, for a distilled student, ``cls`` and ``dist`` (each
    head alone, through timm's ``forward_head`` steps). ``batches``: inputs or a loader's ``(inputs, targets)``."""
    from .evaluation import head_logits

    was_training = model.training
    model.eval()
    out: dict[str, list[int]] = {}
    try:
        device = next(model.parameters()).device
        for batch in batches:
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            heads = head_logits(model, inputs.to(device))
            for name in ("cls", "dist", "fused"):
                logits = getattr(heads, name)
                if logits is not None:
                    out.setdefault(name, []).extend(logits.argmax(1).tolist())
    finally:
        model.train(was_training)
    return out


def disagreement(a: Sequence[int], b: Sequence[int]) -> float:
    """The fraction of images on which two models' predictions (argmax per image, same images in the same
    order) differ: DeiT's Table 4."""
    if len(a) != len(b) or not a:
        raise ValueError(f"disagreement needs two equally long, non-empty prediction lists; got {len(a)} and {len(b)}")
    return sum(x != y for x, y in zip(a, b, strict=True)) / len(a)


def disagreement_table(runs: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, dict[str, dict[str, object]]]:
    """Pairwise disagreement of named models, paired by run: ``runs[k][name]`` is model ``name``'s predictions in
    run (seed) ``k``. Each pair's fraction is computed within every run that has both models, then averaged:
    ``table[a][b] = {"mean", "std" (sample std, None for one run), "per_run"}``, symmetric, 0 on the diagonal."""
    names = list(dict.fromkeys(name for run in runs for name in run))
    table: dict[str, dict[str, dict[str, object]]] = {a: {} for a in names}
    for a, b in itertools.product(names, repeat=2):
        values = [disagreement(run[a], run[b]) for run in runs if a in run and b in run]
        if not values:
            continue
        std = statistics.stdev(values) if len(values) > 1 else None
        table[a][b] = {"mean": statistics.fmean(values), "std": std, "per_run": values}
    return table
