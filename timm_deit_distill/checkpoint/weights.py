"""Choosing a checkpoint's raw or EMA weights: one policy for every reader (train, eval, push, teachers)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from timm.models import clean_state_dict

from ..errors import CheckpointError

__all__ = ["select_weights", "RAW_KEYS", "EMA_KEYS"]

_logger = logging.getLogger(__name__)

RAW_KEYS = ("state_dict", "model")  # timm's CheckpointSaver, facebookresearch/deit
EMA_KEYS = ("state_dict_ema", "model_ema")


def _holds_weights(value: Any) -> bool:
    return isinstance(value, Mapping) and any(isinstance(v, torch.Tensor) for v in value.values())


def select_weights(
    checkpoint: Mapping[str, Any],
    *,
    use_ema: bool | None,
    name: str = "the checkpoint",
    flags: tuple[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict to use from ``checkpoint`` and which it is: ``'raw'``, ``'ema'`` or ``'plain'``.

    Reads timm checkpoints (``state_dict`` / ``state_dict_ema``), facebookresearch/deit ones (``model`` /
    ``model_ema``) and plain state dicts. The one policy: a file holding raw AND EMA weights needs an explicit
    choice (``use_ema=True`` / ``False``), otherwise :class:`CheckpointError` names both keys and the flags
    (``flags``: the command line's pair, e.g. ``('--use-ema', '--no-ema')``) - never a silent pick, as timm's
    loaders make (EMA). A file with one set uses it; asking for a set the file lacks is refused. The state
    dict comes back with DDP / torch.compile prefixes removed (timm's ``clean_state_dict``).
    """
    choose = (f"{flags[0]} or {flags[1]} (use_ema=True / use_ema=False)" if flags
              else "use_ema=True or use_ema=False")
    raw_key = next((k for k in RAW_KEYS if _holds_weights(checkpoint.get(k))), None)
    ema_key = next((k for k in EMA_KEYS if _holds_weights(checkpoint.get(k))), None)
    if raw_key is None and ema_key is None:
        if not checkpoint or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            raise CheckpointError(
                f"{name} holds no weights: neither a state dict nor one under {', '.join(RAW_KEYS + EMA_KEYS)} "
                f"(its keys: {sorted(map(str, checkpoint))[:10]}); pass a training checkpoint or a state dict.")
        if use_ema:
            raise CheckpointError(f"{name} is a plain state dict, one set of weights with no EMA copy; "
                                  f"drop {flags[0] if flags else 'use_ema=True'}.")
        _logger.info("%s: using its weights (a plain state dict).", name)
        return clean_state_dict(dict(checkpoint)), "plain"
    if raw_key and ema_key and use_ema is None:
        raise CheckpointError(
            f"{name} holds both raw weights ('{raw_key}') and EMA weights ('{ema_key}'); choose with {choose}. "
            "Nothing picks one silently (timm's loaders would take the EMA weights).")
    if use_ema and ema_key is None:
        raise CheckpointError(f"{name} holds no EMA weights (no '{EMA_KEYS[0]}' or '{EMA_KEYS[1]}'), only raw "
                              f"weights ('{raw_key}'); drop {flags[0] if flags else 'use_ema=True'}.")
    if use_ema is False and raw_key is None:
        raise CheckpointError(f"{name} holds only EMA weights ('{ema_key}'); use them with "
                              f"{flags[0] if flags else 'use_ema=True'}.")
    key = ema_key if (use_ema or raw_key is None) else raw_key
    weights = "ema" if key == ema_key else "raw"
    _logger.info("%s: using its %s weights ('%s').", name, "EMA" if weights == "ema" else "raw", key)
    return clean_state_dict(dict(checkpoint[key])), weights
