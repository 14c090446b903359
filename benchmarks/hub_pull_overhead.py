"""What `pull`'s checksum verification costs next to a plain `snapshot_download` of the same commit.

Both run side by side against the loopback Hub stand-in (tests/hub_standin.py), into fresh caches, on a
pushed DeiT student. Loopback has no network latency, so the ratio is an upper bound: on the real Hub the
download itself dominates. Prints medians and the ratio.

    python benchmarks/hub_pull_overhead.py [--model deit_small_distilled_patch16_224] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import timm  # noqa: E402
from hub_standin import HubStandIn  # noqa: E402
from huggingface_hub import HfApi, snapshot_download  # noqa: E402

from timm_deit_distill.hub import pull, push_to_hub  # noqa: E402

TOKEN = "hf_standin_write_token"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small_distilled_patch16_224")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, HubStandIn(Path(tmp) / "hub") as hub:
        model = timm.create_model(args.model, num_classes=10)
        push_to_hub(model, "bench/student", token=TOKEN, endpoint=hub.url)
        size = (hub.object_path("bench/student", "model.safetensors")).stat().st_size
        sha = HfApi(endpoint=hub.url).model_info("bench/student").sha
        plain, verified = [], []
        for i in range(args.repeats):
            t = time.perf_counter()
            snapshot_download("bench/student", revision=sha, cache_dir=Path(tmp) / f"plain{i}", endpoint=hub.url)
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            pull("bench/student", cache_dir=Path(tmp) / f"verified{i}", endpoint=hub.url)
            verified.append(time.perf_counter() - t)
    p, v = statistics.median(plain), statistics.median(verified)
    print(f"{args.model}: model.safetensors {size / 1e6:.1f} MB over loopback, median of {args.repeats}")
    print(f"  snapshot_download at a pinned commit: {p:.3f} s")
    print(f"  pull (resolve + download + verify):   {v:.3f} s")
    print(f"  ratio pull / snapshot_download:        {v / p:.2f}x")


if __name__ == "__main__":
    main()
