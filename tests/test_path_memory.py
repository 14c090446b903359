"""Which machine a remembered teacher path was measured on: the CPU model, torch's CPU capability (the vector
instructions its kernels dispatch to, as torch itself reports it) and the thread count. A machine whose key
differs measures again; nothing is read from the CPU's flag list by hand."""

from __future__ import annotations

import torch

from timm_deit_distill.teacher import PathMemory
from timm_deit_distill.teacher.path_memory import describe_machine, machine_identity
from timm_deit_distill.teacher.paths import PathMeasurement


def test_the_cpu_is_identified_by_torchs_own_capability():
    identity = machine_identity("cpu")
    assert identity["capability"] == torch.backends.cpu.get_cpu_capability()
    assert identity["threads"] == torch.get_num_threads()
    assert set(identity) == {"device", "name", "threads", "capability"}  # no hand-read flag list
    assert f"({identity['capability']})" in describe_machine(identity)


def _rows() -> list[PathMeasurement]:
    """Rows as the memory file stores them (PathMeasurement.as_dict)."""
    return [PathMeasurement.from_dict({"path": "fp32 eager", "ms": 10.0, "agreement": 1.0, "images": 8}),
            PathMeasurement.from_dict({"path": "bf16 eager", "ms": 4.0, "agreement": 1.0, "images": 8, "warmup_s": 2.5})]


def test_a_machine_with_another_capability_measures_again(tmp_path, monkeypatch):
    memory = PathMemory(tmp_path / "paths.json")
    key = {"machine": machine_identity("cpu"), "batch_shape": [8, 3, 16, 16]}
    memory.store(key, _rows())
    assert memory.lookup({"machine": machine_identity("cpu"), "batch_shape": [8, 3, 16, 16]}) is not None
    assert memory.warmups(machine_identity("cpu")) == [2.5]

    other = "AVX2" if torch.backends.cpu.get_cpu_capability() != "AVX2" else "AVX512"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: other)
    moved = {"machine": machine_identity("cpu"), "batch_shape": [8, 3, 16, 16]}
    assert moved["machine"]["capability"] == other
    assert memory.lookup(moved) is None  # not this machine's figures: measured again
    assert memory.warmups(moved["machine"]) == []
