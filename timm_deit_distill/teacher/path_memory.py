"""Remembered teacher path measurements: a small JSON file in the user's cache folder, so reruns skip measuring.

One entry per (machine, torch and timm versions, teacher weights, batch shape, ...): the measured rows of
:mod:`.paths` (ms/batch, agreement, compile warm-up per path), not only the choice, so a rerun of another
length chooses again from the same figures. The file lives at ``$DEIT_DISTILL_TEACHER_PATHS`` when that is set
(empty: remember nothing), else ``$XDG_CACHE_HOME/timm-deit-distill/teacher-paths.json`` (default
``~/.cache/...``). It is written atomically; a damaged file is set aside (``.damaged``) with a warning and a new
one started; a folder that cannot be written only costs the next run a measurement.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from .paths import PathMeasurement

__all__ = ["PathMemory", "default_memory_file", "machine_identity", "ENV_VAR"]

_logger = logging.getLogger(__name__)

ENV_VAR = "DEIT_DISTILL_TEACHER_PATHS"
_FORMAT = "timm-deit-distill teacher paths"
_VERSION = 1


def default_memory_file() -> Path | None:
    """Where decisions are remembered: ``$DEIT_DISTILL_TEACHER_PATHS`` (empty: nowhere), else the user's cache."""
    env = os.environ.get(ENV_VAR)
    if env is not None:
        return Path(env).expanduser() if env.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "timm-deit-distill" / "teacher-paths.json"


def _cpu_model_name() -> str:
    """The CPU's model name: Linux's /proc/cpuinfo (torch does not report it), elsewhere what platform tells."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_identity(device: torch.device | str) -> dict[str, Any]:
    """What makes timings comparable: the CPU model, the vector instructions torch's kernels use (its CPU
    capability: AVX2, AVX512, SVE256, ...) and torch's thread count; or the GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return {"device": "cuda", "name": torch.cuda.get_device_name(index), "capability": f"{major}.{minor}",
                "cuda": torch.version.cuda}
    identity = {"device": device.type, "name": _cpu_model_name(), "threads": torch.get_num_threads()}
    if device.type == "cpu":
        identity["capability"] = torch.backends.cpu.get_cpu_capability()
    return identity


def describe_machine(identity: Mapping[str, Any]) -> str:
    if identity.get("device") == "cuda":
        return f"{identity.get('name')} (CUDA {identity.get('cuda')})"
    threads = identity.get("threads")
    capability = f" ({identity['capability']})" if identity.get("capability") else ""
    return (f"{identity.get('device')}: {identity.get('name')}{capability}, "
            f"{threads} thread{'s' if threads != 1 else ''}")


def _key_id(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class PathMemory:
    """The remembered measurements in ``file`` (None: remember nothing)."""

    def __init__(self, file: str | os.PathLike[str] | None) -> None:
        self.file = Path(file) if file is not None else None
        self._warned = False

    @classmethod
    def default(cls) -> PathMemory:
        return cls(default_memory_file())

    def _read(self) -> dict[str, Any]:
        """The file's entries; a missing file is empty, a damaged one is empty with a warning."""
        if self.file is None or not self.file.exists():
            return {}
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("entries"), dict):
                raise ValueError("not a teacher paths file")
            return data["entries"]
        except (OSError, ValueError, UnicodeDecodeError) as e:
            if not self._warned:
                _logger.warning("Teacher paths file %s is damaged (%s); ignoring it: the path is measured again and "
                                "the file rewritten (the damaged one kept as %s.damaged).", self.file,
                                f"{type(e).__name__}: {e}"[:120], self.file.name)
                self._warned = True
            return {"__damaged__": True}

    def lookup(self, key: Mapping[str, Any]) -> list[PathMeasurement] | None:
        """The rows remembered for ``key``, or None (none, or an entry that does not read back)."""
        entry = self._read().get(_key_id(key))
        if not isinstance(entry, dict) or entry.get("key") != json.loads(json.dumps(key)):
            return None
        try:
            return [PathMeasurement.from_dict(row) for row in entry["rows"]]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            _logger.warning("Teacher paths file %s: the entry for this teacher does not read back (%s); measuring "
                            "again.", self.file, e)
            return None

    def warmups(self, machine: Mapping[str, Any]) -> list[float]:
        """Every compile warm-up remembered for this machine (any teacher): what a new compile is estimated from."""
        found = []
        for entry in self._read().values():
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), dict):
                continue
            if entry["key"].get("machine") != json.loads(json.dumps(machine)):
                continue
            for row in entry.get("rows") or []:
                value = row.get("warmup_s") if isinstance(row, dict) else None
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                    found.append(float(value))
        return found

    def warmup_estimate(self, machine: Mapping[str, Any], default: float) -> tuple[float, str]:
        found = self.warmups(machine)
        if found:
            return statistics.median(found), f"median of {len(found)} compile warm-up(s) measured on this machine"
        return default, "default estimate"

    def store(self, key: Mapping[str, Any], rows: Sequence[PathMeasurement]) -> None:
        """Remember ``rows`` for ``key`` (other entries kept, re-read just before writing)."""
        if self.file is None:
            return
        entries = self._read()
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            if entries.pop("__damaged__", False) and self.file.exists():
                os.replace(self.file, self.file.with_name(self.file.name + ".damaged"))
            entries[_key_id(key)] = {"key": dict(key), "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                     "rows": [m.as_dict() for m in rows]}
            text = json.dumps({"format": _FORMAT, "version": _VERSION, "entries": entries}, indent=1) + "\n"
            atomic_write_text(self.file, text)
        except OSError as e:
            _logger.warning("Could not remember the teacher path in %s (%s); the next run measures again. Set %s to "
                            "a writable file (or to nothing to stop remembering).", self.file, e, ENV_VAR)
