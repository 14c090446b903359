"""The precisions a teacher can run at. Which one is fastest on a machine is measured, not read from CPU
flags (see :mod:`.paths`): on one AVX512-BF16 CPU bf16 ran 2x faster than fp32, on another 1.3-1.8x slower."""

from __future__ import annotations

import torch

from ..errors import TeacherError

__all__ = ["PRECISIONS", "check_precision", "has_autocast", "precision_name"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> str:
    """``precision`` when it is one of :data:`PRECISIONS`, else a :class:`TeacherError`."""
    if precision not in PRECISIONS:
        raise TeacherError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    return precision


def has_autocast(device_type: str) -> bool:
    return device_type in ("cpu", "cuda", "xpu", "mps", "hpu")


def precision_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]
