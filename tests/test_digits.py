"""The bundled digits ImageFolder against scikit-learn's own arrays and timm's folder reader."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from timm.data import create_dataset

from timm_deit_distill.data.digits import write_digits_imagefolder


def test_split_is_stratified_complete_and_pixel_exact(tmp_path):
    root = write_digits_imagefolder(tmp_path / "digits", val_fraction=0.2, seed=0)
    train = create_dataset("", root=str(root), split="train")
    val = create_dataset("", root=str(root), split="validation")
    digits = load_digits()
    assert len(train) + len(val) == len(digits.target) == 1797
    assert len(val) == 360
    val_counts = np.bincount([t for _, t in val.reader.samples], minlength=10)
    assert val_counts.min() >= 35 and val_counts.max() <= 37  # 20% of ~180 per class
    # Every file is the sklearn image it is named after, with its true label as the folder.
    for path, label in train.reader.samples[::97]:
        idx = int(path.rsplit("/", 1)[1].split(".")[0])
        assert label == digits.target[idx]
        pixels = np.asarray(Image.open(path))
        np.testing.assert_array_equal(pixels, np.rint(digits.images[idx] * 255 / 16).astype(np.uint8))


def test_train_per_class_and_reuse(tmp_path):
    root = write_digits_imagefolder(tmp_path / "d", train_per_class=5, seed=1)
    labels = [t for _, t in create_dataset("", root=str(root), split="train").reader.samples]
    assert np.bincount(labels).tolist() == [5] * 10
    assert write_digits_imagefolder(tmp_path / "d", train_per_class=5, seed=1) == root  # reused as is
    with pytest.raises(FileExistsError, match="other settings"):
        write_digits_imagefolder(tmp_path / "d", train_per_class=6, seed=1)


def test_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a digits folder"):
        write_digits_imagefolder(tmp_path / "x")
    assert (tmp_path / "x" / "mine.txt").read_text() == "keep me"


def test_a_concurrent_writer_of_the_same_split_is_not_an_error(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    target = tmp_path / "shared"
    with ProcessPoolExecutor(max_workers=3) as pool:
        roots = list(pool.map(write_digits_imagefolder, [target] * 3))
    assert all(r == target for r in roots)
    assert len(create_dataset("", root=str(target), split="train")) == 1437
