"""The unlabelled-images benchmark runs its five modes on the trainer's own pieces and prints its ratios (the
figures themselves live in docs; a test never asserts a time)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_the_unlabeled_step_benchmark_measures_every_mode_and_prints_its_ratios():
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "unlabeled_step.py"), "--quick", "--cycles", "1",
                           "--clock", "cpu"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    ratios = dict(re.findall(r"(\w+)=([0-9.]+)", line))
    assert set(ratios) == {"online", "unlabeled_online", "cached", "unlabeled_cached"}, line
    assert all(float(v) > 0 for v in ratios.values()) and "over plain" in line
