"""Shared test set-up: offline Hub, quiet telemetry, small thread pools on the 2-core CI machine."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
# Teacher path decisions are not remembered across tests (nor written into the user's cache folder): each test
# sees what its own run measures. Tests of the memory pass their own file.
os.environ.setdefault("DEIT_DISTILL_TEACHER_PATHS", "")


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory):
    """A resnet10t that has learned the digits at 32px (trained once per test session, ~15 s)."""
    from train_fixtures import train_teacher

    return train_teacher(tmp_path_factory.mktemp("trained-teacher"))
