"""Rebuilding the student a checkpoint holds, with its raw or EMA weights, in eval mode."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError
from .reader import _first_line, read_checkpoint
from .weights import select_weights

__all__ = ["model_from_checkpoint", "create_model_from_checkpoint"]


def model_from_checkpoint(checkpoint: Mapping[str, Any], state_dict: dict[str, torch.Tensor], *,
                          name: str = "the checkpoint") -> nn.Module:
    """Rebuild the student ``checkpoint`` describes (its ``deit_distill`` metadata, else timm's ``args``/``arch``)
    and load ``state_dict`` strictly (one of its weight sets, from :func:`select_weights`). In eval mode."""
    import timm

    meta = checkpoint.get("deit_distill")
    if meta is None:
        args = checkpoint.get("args")
        arch = getattr(args, "model", None) or checkpoint.get("arch")
        if not arch:
            raise CheckpointError(f"{name} has neither 'deit_distill' metadata nor timm's 'args'; cannot tell "
                                  "which model it holds. Pass a checkpoint written by deit-distill train (or "
                                  "timm's train.py).")
        meta = {"model": arch, "model_kwargs": {"num_classes": getattr(args, "num_classes", None)}}
    kwargs = {k: v for k, v in meta.get("model_kwargs", {}).items() if v is not None}
    try:
        model = timm.create_model(meta["model"], **kwargs)
    except RuntimeError as e:  # an architecture timm does not know in this process
        raise CheckpointError(f"{name} holds a {meta['model']!r}, which cannot be built here ({_first_line(e)}); "
                              "import the module that registers it.") from None
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise CheckpointError(f"{name}: its weights do not fit the {meta['model']} its metadata describes "
                              f"({' '.join(str(e).split())[:300]}); the file is inconsistent.") from None
    if meta.get("pretrained_cfg"):
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["pretrained_cfg"].items()}
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
