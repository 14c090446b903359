"""The precision a teacher runs at: what 'auto' resolves to on this device, and why."""

from __future__ import annotations

import torch

from ..errors import TeacherError

__all__ = ["PRECISIONS", "cpu_has_fast_bf16", "resolve_precision", "has_autocast", "precision_name"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices faster than fp32: true with AMX (Sapphire Rapids+).

    AVX512-BF16 alone is not enough: on a Sapphire Rapids VM without AMX, bf16 convolutions and
    matmuls measured 1.3-1.8x *slower* than fp32 (its dot-product instruction issues on one port, the
    fp32 FMA on two), so 'auto' keeps fp32 there.
    """
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:  # pragma: no cover - CPU detection unavailable
            pass
    try:  # pragma: no cover - older torch without the probe
        with open("/proc/cpuinfo") as f:
            return "amx_bf16" in f.read()
    except OSError:  # pragma: no cover
        return False


def resolve_precision(precision: str, device: torch.device | str) -> tuple[torch.dtype, str]:
    """The compute dtype for ``precision`` on ``device`` and a short reason for the log."""
    if precision not in PRECISIONS:
        raise TeacherError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    device = torch.device(device)
    if precision != "auto":
        return _DTYPES[precision], "requested"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16, "auto: CUDA with native bf16"
        return torch.float16, "auto: CUDA without native bf16"
    if device.type == "cpu":
        if cpu_has_fast_bf16():
            return torch.bfloat16, "auto: CPU with AMX bf16"
        return torch.float32, "auto: CPU without AMX, where bf16 is not faster than fp32"
    return torch.float32, f"auto: {device.type} device"


def has_autocast(device_type: str) -> bool:
    return device_type in ("cpu", "cuda", "xpu", "mps", "hpu")


def precision_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]
