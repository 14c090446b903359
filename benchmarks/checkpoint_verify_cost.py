"""What verifying a checkpoint on read costs next to loading it, for a DeiT-S-sized training checkpoint.

The checkpoint is written by the package's CheckpointSaver: DeiT-S (distilled, 1000 classes) raw weights, an EMA
copy and AdamW's two moments (about 360 MB). Times, as medians over --repeats reads of the same file (in the page
cache after the first):

* load: ``torch.load(weights_only=True)`` alone (what the reader did before it verified anything);
* digest: the sha256 of every entry's tensors, compared with the recorded ones (files this package wrote);
* zip CRC32, pickle: the CRC32 of the zip's small records (the pickle), checked before loading (every torch zip);
* zip CRC32, tensors: the CRC32 of the tensor records (a torch zip without a digest: timm's, DeiT's);
* read_checkpoint: the package's whole reader (load + pickle CRC32 + digest).

    python benchmarks/checkpoint_verify_cost.py [--model deit_small_distilled_patch16_224] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch

from timm_deit_distill import checkpoint as ckpt
from timm_deit_distill.checkpoint import reader as ckpt_reader


def _median(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm: the file in the page cache, lazy imports done
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _write(folder: Path, model_name: str) -> Path:
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=1000)
    ema = timm.utils.ModelEmaV3(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    out = model(torch.randn(2, 3, 224, 224))
    (out[0] if isinstance(out, tuple) else out).sum().backward()
    optimizer.step()
    saver = ckpt.CheckpointSaver(model=model, optimizer=optimizer, model_ema=ema,
                                 args=argparse.Namespace(model=model_name), checkpoint_dir=str(folder),
                                 recovery_dir=str(folder))
    start = time.perf_counter()
    saver.save_checkpoint(0, metric=1.0)
    print(f"save (incl. the digest): {time.perf_counter() - start:.3f} s")
    return folder / "last.pth.tar"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small_distilled_patch16_224")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), args.model)
        print(f"{args.model} checkpoint: {path.stat().st_size / 1e6:.0f} MB")

        def load() -> dict:
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)

        loaded = load()
        times = {
            "load (torch.load)": _median(load, args.repeats),
            "digest (sha256 of the tensors)": _median(lambda: ckpt_reader._verify_digests(loaded, "x"), args.repeats),
            "zip CRC32, pickle": _median(lambda: ckpt_reader._zip_crc_failure(path, tensors=False), args.repeats),
            "zip CRC32, tensors": _median(lambda: ckpt_reader._zip_crc_failure(path, tensors=True), args.repeats),
            "read_checkpoint (all)": _median(lambda: ckpt.read_checkpoint(path), args.repeats),
        }
    base = times["load (torch.load)"]
    for name, seconds in times.items():
        print(f"{name:<32} {seconds:7.3f} s  {seconds / base:5.2f}x load")


if __name__ == "__main__":
    main()
