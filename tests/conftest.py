"""Shared test set-up: offline Hub, quiet telemetry, small thread pools on the 2-core CI machine."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
# datasets reads these into module constants when first imported, so they are set here, before any test imports
# it (subprocesses inherit them): no Hub lookups or download-count pings from datasets (HF_DATASETS_OFFLINE, not
# HF_HUB_OFFLINE, which the Hub tests set per test), no progress bars, and a datasets cache of the session's own.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
if "HF_DATASETS_CACHE" not in os.environ:
    _datasets_cache = tempfile.mkdtemp(prefix="deit-distill-tests-datasets-")
    os.environ["HF_DATASETS_CACHE"] = _datasets_cache
    atexit.register(shutil.rmtree, _datasets_cache, ignore_errors=True)
# Teacher path decisions are not remembered across tests (nor written into the user's cache folder): each test
# sees what its own run measures. Tests of the memory pass their own file.
os.environ.setdefault("DEIT_DISTILL_TEACHER_PATHS", "")


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory):
    """A resnet10t that has learned the digits at 32px (trained once per test session, ~15 s)."""
    from train_fixtures import train_teacher

    return train_teacher(tmp_path_factory.mktemp("trained-teacher"))


@pytest.fixture(scope="session")
def sources(tmp_path_factory, trained_teacher):
    """Every timm dataset source written from the trained teacher's digits (16 images per class and split, so the
    teacher knows them): {"folder", "tar", "hf_parquet", "hf_disk", "wds", "mnist"} -> path (see source_fixtures)."""
    from source_fixtures import write_sources

    return write_sources(tmp_path_factory.mktemp("sources"), trained_teacher["data"], per_class=16)
