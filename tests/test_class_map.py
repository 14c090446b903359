"""--class-map: a file timm cannot use is refused in one line before any work (timm asserts, or fails inside the
first epoch); a map that leaves folders out is timm's subset use, kept but named; classes without images are
refused. Also the data folder and split messages."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
from PIL import Image
from source_fixtures import open_folder

from timm_deit_distill.commands import evaluate
from timm_deit_distill.data import DataError, label_names


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 0).save(path)


@pytest.fixture
def folder(tmp_path):
    """train/ and validation/ with classes a, b, c (3 and 1 images each)."""
    for split, n in (("train", 3), ("validation", 1)):
        for c in "abc":
            for i in range(n):
                _png(tmp_path / "data" / split / c / f"{i}.png")
    return tmp_path


def _map(folder: Path, text: str, name: str = "map.txt") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def test_a_missing_class_map_is_refused_in_one_line(folder):
    with pytest.raises(DataError, match=r"--class-map .*nonexist.txt does not exist; fix:"):
        open_folder(str(folder / "data"), class_map=str(folder / "nonexist.txt"))


def test_a_class_map_naming_a_class_twice_is_refused(folder):
    # timm keeps the last index of a duplicate: 3 classes with indices {0, 1, 3}, index 3 out of bounds in epoch 0
    with pytest.raises(DataError, match=r"names class 'b' twice \(lines 2 and 3\)"):
        open_folder(str(folder / "data"), class_map=_map(folder, "a\nb\nb\nc\n"))
    with pytest.raises(DataError, match="line 2 is blank"):
        open_folder(str(folder / "data"), class_map=_map(folder, "a\n\nb\nc\n"))


def test_a_pkl_map_needs_indices_0_to_n_minus_1(folder):
    path = folder / "map.pkl"
    path.write_bytes(pickle.dumps({"a": 0, "b": 2, "c": 3}))
    with pytest.raises(DataError, match="indices 0..N-1"):
        open_folder(str(folder / "data"), class_map=str(path))
    path.write_bytes(pickle.dumps({"c": 0, "a": 1, "b": 2}))
    train, _ = open_folder(str(folder / "data"), class_map=str(path))
    assert label_names(train) == ["c", "a", "b"]
    with pytest.raises(DataError, match="timm reads .txt"):
        open_folder(str(folder / "data"), class_map=_map(folder, "a\nb\nc\n", "map.csv"))


def test_classes_a_map_lists_without_images_are_refused(folder):
    (folder / "data" / "train" / "d").mkdir()  # a folder without images
    with pytest.raises(DataError, match=r"lists 2 class\(es\) with no images in .*train: 'ten' \(no folder\), "
                                        r"'d' \(no images\)"):
        open_folder(str(folder / "data"), class_map=_map(folder, "a\nb\nc\nten\nd\n"))


def test_a_map_that_leaves_folders_out_keeps_timms_subset_use_and_names_them(folder, caplog):
    with caplog.at_level(logging.WARNING):
        train, val = open_folder(str(folder / "data"), class_map=_map(folder, "c\na\n"))
    assert label_names(train) == ["c", "a"] and len(train) == 6 and len(val) == 2
    assert "ignoring 3 image(s) in 1 folder(s) of" in caplog.text and "b (3 images)" in caplog.text
    assert "b (1 images)" in caplog.text  # the validation split too


def test_a_file_as_data_dir_is_called_a_file(folder):
    (folder / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="notes.txt is a file, not a folder"):
        open_folder(str(folder / "notes.txt"))


def test_eval_names_its_own_split_flag(folder, capsys, monkeypatch):
    from timm_deit_distill import checkpoint

    # the checkpoint is read before the data: stand in for it, the split message is what is tested
    monkeypatch.setattr(checkpoint, "read_checkpoint", lambda *a, **k: {"state_dict": {}})
    monkeypatch.setattr(checkpoint, "select_weights", lambda *a, **k: ({}, "raw"))
    monkeypatch.setattr(checkpoint, "model_from_checkpoint",
                        lambda *a, **k: __import__("timm").create_model("resnet10t", num_classes=10))
    code = evaluate.main(["--checkpoint", str(folder / "c.pth.tar"), "--data-dir", str(folder / "data"),
                          "--split", "nosuch", "--json", str(folder / "out.json")])
    err = capsys.readouterr().err
    assert code == 2 and "name the split with --split." in err and "--train-split" not in err
