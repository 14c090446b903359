"""Shared set-up for the trainer's tests: small real-digit folders, teacher checkpoints, a tiny student.

The digits are scikit-learn's bundled handwritten digits written by ``write_digits_imagefolder``; the
teachers are timm's ``resnet10t`` saved as plain state dicts (random weights: the tests check the
plumbing and the formulas, not the teacher's skill).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import timm
import torch

from timm_deit_distill.data.digits import write_digits_imagefolder

STUDENT = ["--model", "deit_tiny_distilled_patch4_32", "--model-kwargs", "depth=1", "embed_dim=32", "num_heads=2"]
FAST = ["-b", "16", "--workers", "0", "--opt", "adamw", "--lr", "1e-3", "--warmup-epochs", "0",
        "--log-interval", "100", "--seed", "3"]
STUDENT_KWARGS = dict(depth=1, embed_dim=32, num_heads=2)


def digits(root: Path, train_per_class: int, val_fraction: float = 0.05) -> Path:
    """A digits ImageFolder (train/ and validation/, classes '0'..'9')."""
    return write_digits_imagefolder(root, train_per_class=train_per_class, val_fraction=val_fraction)


def teacher_checkpoint(path: Path, num_classes: int = 10, seed: int = 0) -> Path:
    """A resnet10t teacher with ``num_classes`` outputs, saved as a plain state dict."""
    torch.manual_seed(seed)
    torch.save(timm.create_model("resnet10t", num_classes=num_classes).state_dict(), path)
    return path


def load(path: str | os.PathLike[str]) -> dict:
    """A checkpoint as the brief says readers load it (weights_only, Namespace allowed)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def keywords(argv: list[str]) -> dict:
    """The `deit-distill train` flags of ``argv`` as the Python API's keywords (dest -> value, only those given)."""
    from timm_deit_distill.factory.options import given_options, train_parser

    return given_options(train_parser(), argv)


def run_cli(argv: list[str], *, env: dict[str, str] | None = None, timeout: int = 300,
            **kwargs) -> subprocess.CompletedProcess:
    """``python -m timm_deit_distill train ARGV`` in a fresh process, one thread."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "timm_deit_distill", "train", *argv], capture_output=True,
                          text=True, timeout=timeout, env=full_env, **kwargs)


def run_torchrun(argv: list[str], *, timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 -m timm_deit_distill train ARGV``: two CPU processes (gloo over
    loopback), one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "timm_deit_distill", "train", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_cli_on_terminal(argv: list[str], *, timeout: int = 300) -> tuple[subprocess.CompletedProcess, str]:
    """Like :func:`run_cli` with stderr on a pseudo-terminal; returns the process and what the terminal showed."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    master, slave = pty.openpty()
    # A fresh pty is 0 columns wide, in which tqdm draws nothing; give it a real terminal's size.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    shown: list[bytes] = []

    def drain() -> None:  # keep the terminal's buffer empty so the child never blocks on it
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed its end
                return
            if not chunk:
                return
            shown.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "timm_deit_distill", "train", *argv], stdout=subprocess.PIPE,
                              stderr=slave, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    return proc, b"".join(shown).decode(errors="replace")


# A teacher that has really learned the digits: needed wherever a test exercises the teacher check, which
# (rightly) refuses the random-weight teachers above.
TRAINED_TEACHER_IMG_SIZE = 32


def train_teacher(root: Path, *, epochs: int = 3) -> dict[str, Path]:
    """A resnet10t trained at 32px on the digits by ``deit-distill train`` (about 95 % top-1 in ~15 s).

    Returns ``{"data": digits folder, "checkpoint": its last.pth.tar}``; the checkpoint records the input
    size it was trained at (``deit_distill.pretrained_cfg.input_size``), as every trainer checkpoint does.
    """
    data = write_digits_imagefolder(root / "digits", val_fraction=0.2)
    argv = ["--data-dir", str(data), "--model", "resnet10t", "--img-size", str(TRAINED_TEACHER_IMG_SIZE),
            "--epochs", str(epochs), "-b", "64", "--opt", "adamw", "--lr", "2e-3", "--warmup-epochs", "0",
            "--workers", "0", "--hflip", "0", "--color-jitter", "0", "--scale", "0.5", "1", "--seed", "0",
            "--checkpoint-hist", "1", "--log-interval", "1000", "--output", str(root), "--experiment", "teacher"]
    proc = run_cli(argv)
    checkpoint = root / "teacher" / "last.pth.tar"
    assert proc.returncode == 0 and checkpoint.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    return {"data": data, "checkpoint": checkpoint}
