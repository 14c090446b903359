"""Run a fixed set of `deit-distill` commands and record what they write, to prove a refactor changed nothing.

    python tools/snapshot_outputs.py run  WORK SNAPSHOT.json      # run the commands in WORK, record their files
    python tools/snapshot_outputs.py record WORK SNAPSHOT.json     # record what WORK holds, without running
    python tools/snapshot_outputs.py diff BEFORE.json AFTER.json   # compare two records; exit 1 on a difference

Run `run` on the commit before a change and on the commit after it, with the same WORK path (outputs record
absolute paths) on the same machine (floating point differs between CPUs), then `diff` the two records.
Every command runs in a fresh process on one thread with the teacher's path fixed (fp32, eager), so a record
does not depend on what the machine measures fastest.

What is recorded, per file: checkpoints as the sha256 of every tensor (state_dict, EMA, optimizer, ...) and the
rest of their contents as plain values; safetensors per tensor; JSON, YAML and CSV files as their parsed values;
everything else (curves.png, cache chunks, the model card) as its sha256. Values that measure time are blanked, and
so is the sha256 of the checkpoint file a pushed folder names (the file holds those times).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

STUDENT = ["--model", "deit_tiny_distilled_patch4_32", "--model-kwargs", "depth=1", "embed_dim=32", "num_heads=2",
           "--img-size", "16"]
FAST = ["-b", "16", "--workers", "0", "--opt", "adamw", "--lr", "1e-3", "--warmup-epochs", "0", "--log-interval",
        "100", "--seed", "3"]
PATH = ["--teacher-precision", "fp32", "--teacher-compile", "no"]
# Keys whose values are wall-clock measurements (they differ between any two runs).
VOLATILE = {"seconds", "elapsed", "elapsed_s", "wall_s", "time", "ms", "warmup_s", "created", "date"}
# Keys of a teacher-path record that quote measured times or name the machine.
PATH_VOLATILE = {"reason", "machine"}


def commands(work: Path) -> list[list[str]]:
    """The commands, in order: a teacher, distilled students (hard + EMA, resumed; soft + Mixup/CutMix on
    deterministic views), a cache built and replayed, an evaluation, a Hub folder, the quick demo."""
    data, runs = str(work / "digits"), str(work / "runs")
    teacher = ["--distill-teacher", "resnet10t", "--distill-teacher-path", f"{runs}/teacher/last.pth.tar", *PATH]
    hard = ["--data-dir", data, *STUDENT, *FAST, *teacher, "--model-ema", "--model-ema-decay", "0.9",
            "--output", runs, "--experiment", "hard"]
    soft = ["--data-dir", data, *STUDENT, *FAST, "--distill-type", "soft", "--mixup", "0.8", "--cutmix", "1.0",
            "--deterministic-aug", "--epochs", "2", "--output", runs]
    return [
        ["train", "--data-dir", data, "--model", "resnet10t", "--img-size", "32", "--epochs", "3", "-b", "64",
         "--opt", "adamw", "--lr", "2e-3", "--warmup-epochs", "0", "--workers", "0", "--hflip", "0",
         "--color-jitter", "0", "--scale", "0.5", "1", "--seed", "0", "--checkpoint-hist", "1", "--log-interval",
         "1000", "--output", runs, "--experiment", "teacher"],
        ["train", *hard, "--epochs", "2"],
        ["train", *hard, "--epochs", "3", "--resume", f"{runs}/hard/last.pth.tar"],
        ["train", *soft, *teacher, "--experiment", "soft"],
        ["cache", "build", *[a for a in soft if a not in ("--output", runs)], *teacher, "--store", "full",
         "--out", str(work / "cache")],
        ["train", *soft, "--distill-cache", str(work / "cache"), "--distill-teacher-path",
         f"{runs}/teacher/last.pth.tar", "--experiment", "soft-cache"],
        ["eval", "--checkpoint", f"{runs}/hard/last.pth.tar", "--data-dir", data, "--use-ema", *teacher,
         "--json", str(work / "eval-hard.json")],
        ["push", f"{runs}/hard/last.pth.tar", "--use-ema", "--to-dir", str(work / "hub")],
        ["demo", "--quick", "--out", str(work / "demo")],
    ]


def run(work: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    from timm_deit_distill.data.digits import write_digits_imagefolder

    write_digits_imagefolder(work / "digits", val_fraction=0.2, train_per_class=40)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEIT_DISTILL_TEACHER_PATHS": "", "HF_HUB_OFFLINE": "1"}
    for argv in commands(work):
        print("$ deit-distill", " ".join(argv), flush=True)
        proc = subprocess.run([sys.executable, "-m", "timm_deit_distill", *argv], env=env, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            sys.exit(f"failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def _plain(value: Any) -> Any:
    """A checkpoint's value as JSON: tensors by shape, dtype and sha256; time measurements blanked."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        digest = hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()
        return {"tensor": list(t.shape), "dtype": str(t.dtype), "sha256": digest}
    if isinstance(value, dict):
        out = {str(k): (None if str(k) in VOLATILE else _plain(v)) for k, v in value.items()}
        if isinstance(out.get("teacher_path"), dict):
            out["teacher_path"] = {k: (None if k in PATH_VOLATILE else v) for k, v in out["teacher_path"].items()}
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, argparse.Namespace):
        return _plain(vars(value))
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


# A pushed folder names its checkpoint by the file's sha256, which changes with every run: the checkpoint holds
# measured times (blanked above; its contents are recorded tensor by tensor). Blanked in config.json and the card.
_SOURCE_SHA = re.compile(r"(source checkpoint \| `[^`]*` \(sha256 `)[0-9a-f]{64}")


def _source_blanked(value: Any) -> Any:
    source = value.get("deit_distill", {}).get("source") if isinstance(value, dict) else None
    if isinstance(source, dict) and "sha256" in source:
        source["sha256"] = None
    return value


def record_file(path: Path) -> Any:
    name = path.name
    if name.endswith((".pth.tar", ".pth", ".pt")):
        with torch.serialization.safe_globals([argparse.Namespace]):
            return _plain(torch.load(path, map_location="cpu", weights_only=True))
    if name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return _plain(load_file(path))
    if name.endswith(".json"):
        return _source_blanked(_plain(json.loads(path.read_text())))
    if name.endswith(".md"):
        return {"sha256": hashlib.sha256(_SOURCE_SHA.sub(r"\1<blanked>", path.read_text()).encode()).hexdigest()}
    if name.endswith((".yaml", ".yml")):
        return _plain(yaml.safe_load(path.read_text()))
    if name.endswith(".csv"):
        return list(csv.reader(io.StringIO(path.read_text())))
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def record(work: Path) -> dict[str, Any]:
    files = sorted(p for p in work.rglob("*") if p.is_file() and "digits" not in p.relative_to(work).parts[:1])
    return {str(p.relative_to(work)): record_file(p) for p in files if not p.name.startswith(".")}


def _differences(a: Any, b: Any, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a:
                out.append(f"{where}/{key}: only after")
            elif key not in b:
                out.append(f"{where}/{key}: only before")
            else:
                _differences(a[key], b[key], f"{where}/{key}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _differences(x, y, f"{where}[{i}]", out)
    elif a != b:
        out.append(f"{where}: {json.dumps(a)[:120]} -> {json.dumps(b)[:120]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "record"):  # record: the files already in WORK, without running the commands
        r = sub.add_parser(name)
        r.add_argument("work", type=Path)
        r.add_argument("snapshot", type=Path)
    d = sub.add_parser("diff")
    d.add_argument("before", type=Path)
    d.add_argument("after", type=Path)
    args = p.parse_args()
    if args.cmd in ("run", "record"):
        if args.cmd == "run":
            run(args.work.resolve())
        snap = record(args.work.resolve())
        args.snapshot.write_text(json.dumps(snap, indent=1, sort_keys=True))
        print(f"recorded {len(snap)} files in {args.snapshot}")
        return 0
    out: list[str] = []
    _differences(json.loads(args.before.read_text()), json.loads(args.after.read_text()), "", out)
    print("\n".join(out) if out else "identical")
    return 1 if out else 0


if __name__ == "__main__":
    sys.exit(main())
