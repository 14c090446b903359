"""Rebuilding the student a checkpoint holds, with its raw or EMA weights, in eval mode."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError
from .metadata import RunMetadata
from .reader import _first_line, read_checkpoint
from .weights import select_weights

__all__ = ["model_from_checkpoint", "create_model_from_checkpoint"]


def model_from_checkpoint(checkpoint: Mapping[str, Any], state_dict: dict[str, torch.Tensor], *,
                          name: str = "the checkpoint") -> nn.Module:
    """Rebuild the student ``checkpoint`` describes (its :class:`RunMetadata`: this package's ``deit_distill``
    metadata, timm train.py's ``args`` with its ``--model-kwargs``, or DeiT main.py's) and load ``state_dict``
    strictly (one of its weight sets, from :func:`select_weights`). In eval mode, its ``pretrained_cfg`` carrying
    the data config the checkpoint records (input size, mean, std, crop, interpolation)."""
    import timm

    metadata = RunMetadata.from_checkpoint(checkpoint)
    if not metadata.model:
        raise CheckpointError(f"{name} has neither 'deit_distill' metadata nor timm's 'args'; cannot tell "
                              "which model it holds. Pass a checkpoint written by deit-distill train (or "
                              "timm's train.py).")
    kwargs = {k: v for k, v in (metadata.model_kwargs or {}).items() if v is not None}
    try:
        model = timm.create_model(metadata.model, **kwargs)
    except RuntimeError as e:  # an architecture timm does not know in this process
        raise CheckpointError(f"{name} holds a {metadata.model!r}, which cannot be built here ({_first_line(e)}); "
                              "import the module that registers it.") from None
    except (TypeError, ValueError, AssertionError) as e:  # kwargs the architecture does not take
        raise CheckpointError(f"{name} holds a {metadata.model!r} with the architecture kwargs {kwargs}, which "
                              f"timm cannot build ({_first_line(e)}); the file is inconsistent.") from None
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise CheckpointError(f"{name}: its weights do not fit the {metadata.model} its metadata describes "
                              f"({' '.join(str(e).split())[:300]}); the file is inconsistent.") from None
    if metadata.pretrained_cfg:
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in metadata.pretrained_cfg.items()}
        model.pretrained_cfg = {**model.pretrained_cfg, **cfg}
    return model.eval()


def create_model_from_checkpoint(
    path: str | os.PathLike[str], *, use_ema: bool | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the student a checkpoint was trained as and load its raw or EMA weights.

    ``use_ema`` follows the one policy of :func:`select_weights`: required when the file holds both raw and
    EMA weights (``None`` then raises :class:`CheckpointError`), optional when it holds one set.
    Returns ``(model in eval mode, checkpoint dict)``.
    """
    checkpoint = read_checkpoint(path)
    name = f"checkpoint {Path(path)}"
    state_dict, _ = select_weights(checkpoint, use_ema=use_ema, name=name)
    return model_from_checkpoint(checkpoint, state_dict, name=name), checkpoint
