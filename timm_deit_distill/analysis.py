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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TokenCosine", "token_cosine"]


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
