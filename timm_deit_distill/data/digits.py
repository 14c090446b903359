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
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_digits_imagefolder", "DIGITS_CLASSES"]

DIGITS_CLASSES = tuple(str(i) for i in range(10))
_MANIFEST = "digits.json"


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
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The bundled digits need scikit-learn: pip install 'timm-deit-distill[demo]'") from e
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")

    root = Path(root)
    spec = {"dataset": "sklearn.load_digits", "val_fraction": val_fraction,
            "train_per_class": train_per_class, "seed": seed}
    manifest = root / _MANIFEST
    if manifest.exists():
        if json.loads(manifest.read_text()) == spec:
            return root
        raise FileExistsError(
            f"{root} holds a digits split written with other settings ({manifest.read_text().strip()}); "
            "choose another directory or delete it.")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not a digits folder written by this tool; choose another.")

    digits = load_digits()
    # 0..16 intensities scaled to 0..255 grayscale.
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target
    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(
        idx, test_size=val_fraction, stratify=labels, random_state=seed)
    if train_per_class is not None:
        rng = np.random.default_rng(seed)
        keep = [rng.permutation(train_idx[labels[train_idx] == c])[:train_per_class] for c in range(10)]
        train_idx = np.sort(np.concatenate(keep))

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        for split, split_idx in (("train", train_idx), ("validation", val_idx)):
            for c in DIGITS_CLASSES:
                (tmp / split / c).mkdir(parents=True)
            for i in sorted(split_idx):
                Image.fromarray(images[i], mode="L").save(tmp / split / str(labels[i]) / f"{i:04d}.png")
        (tmp / _MANIFEST).write_text(json.dumps(spec))
        if root.exists():
            root.rmdir()  # empty, checked above
        os.replace(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        # Another process may have written the same split first (parallel demo runs): theirs is ours.
        if manifest.exists() and json.loads(manifest.read_text()) == spec:
            return root
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
