"""Shared set-up for the examples: the bundled digits as loaders, and a teacher trained on them.

Real distillation needs a teacher trained on *your* classes; here a small convnet learns the 10 digits
in a few seconds and is saved as a ``.safetensors`` state dict, which the examples load as their teacher.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.data import ImageDataset, create_transform, resolve_data_config

from timm_deit_distill.data.digits import write_digits_imagefolder

STUDENT = "deit_tiny_distilled_patch4_32"  # 32x32 inputs, 4x4 patches, 10 classes
TEACHER = "resnet10t"


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workdir", default="output/examples", help="digits folder and teacher weights")
    parser.add_argument("--steps", type=int, default=150, help="student training steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--teacher-epochs", type=int, default=4)
    return parser.parse_args()


def digits_loaders(workdir: str, data_config: dict, batch_size: int):
    """Train and validation loaders over the digits, normalised as ``data_config`` says."""
    root = write_digits_imagefolder(Path(workdir) / "digits")
    transform = create_transform(**data_config, is_training=False)
    train = ImageDataset(str(root / "train"), transform=transform)
    val = ImageDataset(str(root / "validation"), transform=transform)
    return (torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True),
            torch.utils.data.DataLoader(val, batch_size=256))


def digits_teacher(workdir: str, data_config: dict, epochs: int) -> Path:
    """Weights of a small convnet trained on the digits (trained once, then reused)."""
    path = Path(workdir) / f"{TEACHER}-digits.safetensors"
    if path.exists():
        return path
    import safetensors.torch

    torch.manual_seed(0)
    teacher = timm.create_model(TEACHER, num_classes=10)
    train_loader, val_loader = digits_loaders(workdir, data_config, 64)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=2e-3, weight_decay=0.05)
    for epoch in range(epochs):
        teacher.train()
        for images, labels in train_loader:
            optimizer.zero_grad()
            F.cross_entropy(teacher(images), labels).backward()
            optimizer.step()
        print(f"teacher epoch {epoch}: val top-1 {accuracy(teacher, val_loader):.3f}")
    tmp = path.with_suffix(".tmp")
    safetensors.torch.save_file(teacher.state_dict(), str(tmp))
    tmp.replace(path)  # atomic: an interrupted run never leaves half a teacher behind
    return path


def student_data_config(student: torch.nn.Module) -> dict:
    return resolve_data_config({}, model=student)


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += (model(images).argmax(1) == labels).sum().item()
        total += len(labels)
    return correct / total
