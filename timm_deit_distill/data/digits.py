"""scikit-learn's bundled handwritten digits written once as an ImageFolder.

1,797 real 8x8 grayscale digits, 10 classes, shipped inside scikit-learn: real data that needs no
download. The split is stratified and fixed by a seed; the folder is written atomically (into a
temporary sibling, then renamed) so an interrupted write never leaves a half-written dataset behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["write_digits_imagefolder", "write_digits_unlabeled", "DIGITS_CLASSES", "UNLABELED_MANIFEST"]

DIGITS_CLASSES = tuple(str(i) for i in range(10))
_MANIFEST = "digits.json"
UNLABELED_MANIFEST = "unlabeled.json"  # in the unlabelled folder: its settings and counts (not an image)


def write_digits_imagefolder(
    root: str | os.PathLike[str],
    *,
    val_fraction: float = 0.2,
    train_per_class: int | None = None,
    seed: int = 0,
) -> Path:
    """Write the digits as ``root/train/<class>/*.png`` and ``root/validation/<class>/*.png``.

    ``train_per_class`` keeps only that many training images per class (the scarce-data regime);
    the validation split is unaffected. Calling again with the same arguments reuses the folder;
    different arguments on an existing folder raise ``FileExistsError`` rather than mix two splits.
    Returns ``root``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")

    root = Path(root)
    spec = {"dataset": "sklearn.load_digits", "val_fraction": val_fraction,
            "train_per_class": train_per_class, "seed": seed}
    if _reuse(root, _MANIFEST, spec):
        return root
    images, labels, train_idx, val_idx, _ = _split(val_fraction, train_per_class, seed)

    def write(tmp: Path) -> None:
        for split, split_idx in (("train", train_idx), ("validation", val_idx)):
            for c in DIGITS_CLASSES:
                (tmp / split / c).mkdir(parents=True)
            for i in sorted(split_idx):
                Image.fromarray(images[i], mode="L").save(tmp / split / str(labels[i]) / f"{i:04d}.png")
        (tmp / _MANIFEST).write_text(json.dumps(spec))

    _write_atomically(root, write, _MANIFEST, spec)
    return root


def write_digits_unlabeled(
    root: str | os.PathLike[str],
    *,
    val_fraction: float = 0.2,
    train_per_class: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the training digits that :func:`write_digits_imagefolder` (same arguments) leaves out of its
    ``train_per_class`` labelled ones as a flat folder of unlabelled PNGs, ``root/<index>.png``.

    The digits hold a few exact duplicates; an image whose pixels equal a validation image's is left out (it would
    be a validation image trained on, which the trainer refuses by content). Reused, or ``FileExistsError``, as
    :func:`write_digits_imagefolder`. Returns the manifest: the settings, ``images`` (written) and
    ``same_as_validation`` (left out).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    root = Path(root)
    spec: dict[str, Any] = {"dataset": "sklearn.load_digits", "val_fraction": val_fraction,
                            "train_per_class": train_per_class, "seed": seed, "unlabeled": "the other training digits"}
    if _reuse(root, UNLABELED_MANIFEST, spec):
        return json.loads((root / UNLABELED_MANIFEST).read_text())
    images, _, train_idx, val_idx, all_train_idx = _split(val_fraction, train_per_class, seed)
    validation = {images[i].tobytes() for i in val_idx}
    rest = np.setdiff1d(all_train_idx, train_idx)
    kept = [i for i in rest if images[i].tobytes() not in validation]
    manifest = {**spec, "images": len(kept), "same_as_validation": len(rest) - len(kept)}

    def write(tmp: Path) -> None:
        for i in kept:
            Image.fromarray(images[i], mode="L").save(tmp / f"{i:04d}.png")
        (tmp / UNLABELED_MANIFEST).write_text(json.dumps(manifest))

    _write_atomically(root, write, UNLABELED_MANIFEST, manifest)
    return manifest


def _split(val_fraction: float, train_per_class: int | None, seed: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits as uint8 images, their labels, the kept training indices, the validation indices and every
    training index (before ``train_per_class``)."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The bundled digits need scikit-learn: pip install 'timm-deit-distill[demo]'") from e
    digits = load_digits()
    # 0..16 intensities scaled to 0..255 grayscale.
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target
    idx = np.arange(len(labels))
    all_train_idx, val_idx = train_test_split(
        idx, test_size=val_fraction, stratify=labels, random_state=seed)
    train_idx = all_train_idx
    if train_per_class is not None:
        rng = np.random.default_rng(seed)
        keep = [rng.permutation(all_train_idx[labels[all_train_idx] == c])[:train_per_class] for c in range(10)]
        train_idx = np.sort(np.concatenate(keep))
    return images, labels, train_idx, val_idx, all_train_idx


def _reuse(root: Path, manifest_name: str, spec: dict[str, Any]) -> bool:
    """True when ``root`` was written with ``spec``; ``FileExistsError`` when it holds anything else."""
    manifest = root / manifest_name
    if manifest.exists():
        written = json.loads(manifest.read_text())
        if {k: written.get(k) for k in spec} == spec:
            return True
        raise FileExistsError(
            f"{root} holds a digits split written with other settings ({manifest.read_text().strip()}); "
            "choose another directory or delete it.")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not a digits folder written by this tool; choose another.")
    return False


def _write_atomically(root: Path, write: Callable[[Path], None], manifest_name: str, spec: dict[str, Any]) -> None:
    """``write`` into a temporary sibling of ``root``, then rename it to ``root``."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        write(tmp)
        if root.exists():
            root.rmdir()  # empty, checked above
        os.replace(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        # Another process may have written the same split first (parallel demo runs): theirs is ours.
        manifest = root / manifest_name
        if manifest.exists() and json.loads(manifest.read_text()) == spec:
            return
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
