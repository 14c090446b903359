"""Shared test set-up: offline Hub, quiet telemetry, small thread pools on the 2-core CI machine."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
