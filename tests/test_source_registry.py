"""The data sources as one class per kind behind one lookup: every ``--dataset`` prefix finds its source, the list
is defined once (the registry: ``--dataset``'s help and docs/data.md's table are read from it), nothing outside
``data/sources/`` asks which kind a source is, and a new source is one class and its registration, opened, checked,
fingerprinted and loaded by the same road as the others.

Also the one road to open an image folder (``open_source``): its refusals name the problem before the images are
read.
"""

from __future__ import annotations

import ast
import hashlib
import io
import os
import types
from pathlib import Path

import numpy as np
import pytest
from aug_fixtures import make_args
from PIL import Image
from source_fixtures import CLASS_NAMES, open_folder, records

import timm_deit_distill
from timm_deit_distill.data import (
    DataSettings,
    build_train_loader,
    check_num_classes,
    check_views_supported,
    dataset_fingerprint,
    label_names,
    load_image,
    open_source,
    sample_name,
    source_size,
    split_dataset_name,
)
from timm_deit_distill.data.digits import write_digits_imagefolder
from timm_deit_distill.data.sources import (
    Source,
    SourceInfo,
    base,
    dataset_help,
    docs_table,
    register,
    registered,
    source_for,
)
from timm_deit_distill.errors import DataError

ROOT = Path(timm_deit_distill.__file__).parent
DATA_CONFIG = dict(input_size=(1, 8, 8), mean=(0.0,), std=(1.0 / 255,), interpolation="nearest", crop_pct=1.0,
                   crop_mode="center")


def refusal(call, *fragments: str) -> str:
    with pytest.raises(DataError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message and "fix" in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- the one lookup -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset,kind", [("", "folder"), ("folder", "folder"), ("ImageFolder", "folder"),
                                          ("hfds/acme/digits", "hfds"), ("HFIDS/acme/digits", "hfids"),
                                          ("wds/digits", "wds"), ("torch/MNIST", "torch")])
def test_every_dataset_prefix_finds_its_source(dataset, kind):
    source = source_for(dataset)
    assert source.kind == kind and source in registered()
    assert split_dataset_name(dataset)[0] == source.prefix


def test_the_list_of_sources_is_the_registry_and_help_and_docs_read_it(capsys):
    from timm_deit_distill.commands.cli import main

    assert [s.prefix for s in registered()] == ["", "hfds", "hfids", "wds", "torch"]
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = "".join(capsys.readouterr().out.split())  # argparse wraps the help: compare without whitespace
    assert "".join(dataset_help().split()) in shown
    for source in registered():
        assert source.help and source.help in dataset_help()
    docs = (ROOT.parent / "docs" / "data.md").read_text()
    assert docs_table() in docs, "docs/data.md's table of sources is not the registry's: paste docs_table()"
    # the refusal of an unknown source names every registered one, and tfds/ as refused
    refusal(lambda: split_dataset_name("hfdss/x"), "timm reads hfds/, hfids/, wds/ and torch/ (tfds/ is not supported)")


_SOURCE_WORDS = {"hfds", "hfids", "wds"}  # spellings that mean a data source and nothing else in the package


def _dispatches(tree: ast.AST) -> list[int]:
    """Lines comparing a value with a data source's name (``== "wds"``, ``in ("hfds", ...)``, ``startswith``)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "startswith", "endswith"):
            operands = list(node.args)
        else:
            continue
        for operand in operands:
            values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
            if any(isinstance(v, ast.Constant) and isinstance(v.value, str) and v.value.rstrip("/") in _SOURCE_WORDS
                   for v in values):
                lines.append(node.lineno)
    return lines


def test_no_module_outside_the_sources_asks_which_kind_a_source_is():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("data/sources/"):
            continue
        found += [f"{rel}:{line}" for line in _dispatches(ast.parse(path.read_text()))]
    assert not found, f"string dispatch on a data source's kind (ask its Source instead): {found}"


# --- a new source: one class, registered ------------------------------------------------------------------------

class _Arrays:
    """A split held as numpy arrays (what the toy source opens)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)


class NpzSource(Source):
    """``npz/NAME``: images and labels in ``--data-dir/<split>.npz`` (no pickles: ``np.load`` refuses them)."""

    kind = "npz"
    prefix = "npz"
    what = "npz/"
    example = "digits"
    help = "npz/NAME numpy arrays DIR/<split>.npz"
    docs_row = "`npz/` (numpy arrays)"

    def open_split(self, data, split, *, training, num_classes, batch_size, seed):
        path = os.path.join(str(data.data_dir), f"{split}.npz")
        if not os.path.isfile(path):
            raise DataError(f"--dataset {data.dataset} has no split {split!r} ({path}); fix: name one with "
                            f"{data.split_flags}.")
        arrays = np.load(path)
        ds = _Arrays(arrays["images"], arrays["labels"])
        classes = [str(c) for c in arrays["classes"]]
        ds.source_info = SourceInfo(source=self, spec=data.dataset, split=split, location=path,
                                    input_img_mode=data.input_img_mode, classes=classes, num_classes=len(classes),
                                    identity={"file_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()})
        return ds

    def decode(self, ds, index):
        return Image.fromarray(ds.images[index]).convert(self.input_img_mode(ds)), int(ds.labels[index])

    def targets(self, ds):
        return ds.labels


@pytest.fixture
def npz(tmp_path, monkeypatch):
    """The digits as ``npz/`` splits, the toy source registered for this test only."""
    monkeypatch.setattr(base, "_SOURCES", dict(base._SOURCES))
    monkeypatch.setattr(base, "_KINDS", list(base._KINDS))
    register(NpzSource())
    recs = records(write_digits_imagefolder(tmp_path / "digits", train_per_class=3), per_class=3)
    for split, rs in recs.items():
        images = np.stack([np.asarray(Image.open(io.BytesIO(d))) for _, _, d in rs])
        np.savez(tmp_path / f"{split}.npz", images=images, labels=np.array([lab for _, lab, _ in rs]),
                 classes=np.array(CLASS_NAMES))
    return tmp_path, recs


def test_a_new_source_is_one_class_and_its_registration(npz):
    root, recs = npz
    data = DataSettings(data_dir=str(root), dataset="npz/digits", input_img_mode="L")
    assert source_for("npz/digits").kind == "npz" and "npz/NAME numpy arrays" in dataset_help()
    assert "`npz/` (numpy arrays)" in docs_table()
    # the flags a map-style source ignores, the unknown-prefix message, the views: all from the registry
    refusal(lambda: DataSettings(data_dir=str(root), dataset="npz/digits", train_num_samples=5),
            "--train-num-samples 5 does nothing for npz/")
    refusal(lambda: split_dataset_name("zzz/x"), "hfds/, hfids/, wds/, torch/ and npz/")
    refusal(lambda: split_dataset_name("npz/"), "e.g. npz/digits")
    check_views_supported("npz/digits", deterministic_aug=True, distill_cache=True, aug_repeats=3)
    refusal(lambda: open_source(DataSettings(data_dir=str(root), dataset="npz/digits", val_split="test"),
                                batch_size=8, seed=0), "no split 'test'")
    # opened by the one road, answered by the same questions as any other source
    train, val = open_source(data, batch_size=8, seed=0)
    assert label_names(train) == CLASS_NAMES and check_num_classes(train, None) == 10
    assert source_size(train) == len(recs["train"]) == 30
    img, target = load_image(train, 4)
    assert img.mode == "L" and target == recs["train"][4][1]
    assert np.asarray(img).tobytes() == np.asarray(Image.open(io.BytesIO(recs["train"][4][2]))).tobytes()
    assert sample_name(train, 4) == "npz/digits split train item 4"
    fp = dataset_fingerprint(train)
    want = hashlib.sha256(np.ascontiguousarray([lab for _, lab, _ in recs["train"]], dtype=np.int64).tobytes())
    assert fp["source"] == "npz/digits" and fp["targets_sha256"] == want.hexdigest() and fp["num_samples"] == 30
    args = make_args(data_config=DATA_CONFIG, batch_size=10, aug_repeats=1)  # DeiT's views, deterministic
    loader = build_train_loader(train, args.view, args.loader)
    loader.set_epoch(0)
    batches = list(loader)
    assert [tuple(x.shape) for x, _, _ in batches] == [(10, 1, 8, 8)] * 3
    assert sorted(int(v) for _, _, views in batches for v in views) == list(range(30))


# --- the one road to open a folder --------------------------------------------------------------------------------

def _every_field(data_dir, **changes) -> DataSettings:
    values = dict(data_dir=str(data_dir), train_split="train", val_split="validation", class_map="",
                  skip_bad_images=False, dataset="", train_num_samples=None, val_num_samples=None, input_key=None,
                  target_key=None, input_img_mode="RGB", download=False)
    return DataSettings(**{**values, **changes})


def test_a_data_dir_that_is_a_file_is_called_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    refusal(lambda: open_source(_every_field(tmp_path / "notes.txt"), num_classes=None, batch_size=8, seed=0),
            "notes.txt is a file, not a folder", "--data-dir")
    refusal(lambda: open_source(_every_field(tmp_path / "nope"), num_classes=None, batch_size=8, seed=0),
            "nope does not exist")


def test_a_misnamed_validation_split_is_refused_before_the_training_images_are_read(tmp_path, monkeypatch):
    root = write_digits_imagefolder(tmp_path / "d", train_per_class=2)
    first = sorted((root / "train" / "0").iterdir())[0]
    first.write_bytes(b"not an image")  # reading the training split would stop here
    refusal(lambda: open_source(_every_field(root, val_split="valdation"), num_classes=None, batch_size=8, seed=0),
            "no 'valdation' split folder or tar", "--val-split")
    # and with the split named right, the unreadable image is what is said
    refusal(lambda: open_folder(root), "unreadable image", first.name)


def test_the_model_card_names_each_sources_evaluation_set():
    from timm_deit_distill.hub.card import _eval_dataset

    def card(dataset, datasets=()):
        return _eval_dataset(types.SimpleNamespace(datasets=list(datasets), train_args={"dataset": dataset}))

    assert card("hfds/acme/digits") == ("acme/digits", "acme/digits")
    assert card("hfids/acme/digits") == ("acme/digits", "acme/digits")
    assert card("torch/mnist") == ("mnist", "mnist")
    assert card("wds/imagenet") == ("webdataset", "imagenet")
    assert card("") == card("imagefolder") == card("tfds/x") == ("imagefolder", "image folders")
    assert card("wds/imagenet", ["acme/imagenet"]) == ("acme/imagenet", "acme/imagenet")
