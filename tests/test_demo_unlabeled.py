"""`deit-distill demo --unlabeled`: the unlabelled digits (the rest of the training split, no validation image), the
students' options, the pairing by seed, and a quick run end to end."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import statistics
from pathlib import Path

import numpy as np
import pytest

from timm_deit_distill.commands import demo
from timm_deit_distill.commands.demo import regime as demo_regime
from timm_deit_distill.commands.demo import unlabeled as demo_unlabeled


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sklearn_split(val_fraction: float, train_per_class: int, seed: int = 0):
    """The demo's split recomputed from scikit-learn directly: (training indices, validation indices, labelled)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    train, val = train_test_split(np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=seed)
    rng = np.random.default_rng(seed)
    labelled = np.concatenate([rng.permutation(train[labels[train] == c])[:train_per_class] for c in range(10)])
    return train, val, labelled


def test_the_unlabelled_digits_are_the_rest_of_the_training_split(tmp_path):
    from timm_deit_distill.data.digits import write_digits_imagefolder, write_digits_unlabeled

    labelled_dir = write_digits_imagefolder(tmp_path / "d", train_per_class=20, val_fraction=0.2)
    manifest = write_digits_unlabeled(tmp_path / "u", train_per_class=20, val_fraction=0.2)
    files = sorted((tmp_path / "u").iterdir())
    images = [p for p in files if p.suffix == ".png"]
    assert {p.name for p in files} - {p.name for p in images} == {"unlabeled.json"}  # flat: no class folders
    train, val, labelled = _sklearn_split(0.2, 20)
    assert len(images) == manifest["images"] > 1000
    assert manifest["images"] + manifest["same_as_validation"] == len(train) - len(labelled) == 1237
    assert {int(p.stem) for p in images} <= set(train.tolist()) - set(labelled.tolist())
    # by content, as the trainer compares them: no validation image, no labelled training image
    validation = {_sha(p) for p in (labelled_dir / "validation").rglob("*.png")}
    training = {_sha(p) for p in (labelled_dir / "train").rglob("*.png")}
    assert len(validation) > 300 and not {_sha(p) for p in images} & (validation | training)
    # a second call reuses the folder
    assert write_digits_unlabeled(tmp_path / "u", train_per_class=20, val_fraction=0.2) == manifest


def test_an_unlabelled_digit_equal_to_a_validation_digit_is_left_out(tmp_path, monkeypatch):
    """The digits may hold exact duplicates: one planted in the unlabelled part is left out and counted, and the
    folder then passes the trainer's own refusal (compared by content)."""
    import sklearn.datasets

    from timm_deit_distill.data import DataSettings, open_source
    from timm_deit_distill.data.digits import write_digits_imagefolder, write_digits_unlabeled
    from timm_deit_distill.data.unlabeled import check_unlabeled, open_unlabeled

    train, val, labelled = _sklearn_split(0.2, 20)
    rest = sorted(set(train.tolist()) - set(labelled.tolist()))
    real = sklearn.datasets.load_digits()

    def planted(**kwargs):
        bunch = sklearn.datasets._base.Bunch(**real)
        bunch.images = real.images.copy()
        bunch.images[rest[3]] = real.images[val[7]]  # a training digit with a validation digit's pixels
        return bunch

    monkeypatch.setattr(sklearn.datasets, "load_digits", planted)
    data = write_digits_imagefolder(tmp_path / "d", train_per_class=20, val_fraction=0.2)
    manifest = write_digits_unlabeled(tmp_path / "u", train_per_class=20, val_fraction=0.2)
    assert manifest["same_as_validation"] == 1 and manifest["images"] == len(rest) - 1
    assert not (tmp_path / "u" / f"{rest[3]:04d}.png").exists() and (tmp_path / "u" / f"{rest[4]:04d}.png").exists()
    train_ds, val_ds = open_source(DataSettings(data_dir=str(data)), batch_size=32, seed=0)
    unlabeled = open_unlabeled(str(tmp_path / "u"), None, "train", skip_bad_images=False, input_img_mode="RGB",
                               batch_size=32, seed=0)
    assert len(unlabeled) == len(rest) - 1
    check_unlabeled(unlabeled, train_ds, val_ds, flag="--unlabeled-data-dir")  # no leak left: no refusal


def test_each_student_with_unlabelled_images_is_its_twin_plus_the_images():
    """The options differ from the Table 3 twin only by the unlabelled images (and the batch that holds them)."""
    regime = demo.DEFAULT_REGIME
    twin_of = demo_unlabeled.TWINS
    assert set(twin_of) == set(demo_regime.UNLABELED_MODES)
    u = demo_regime.UNLABELED_PER_BATCH
    for mode, twin in twin_of.items():
        mine = demo.student_options(regime, Path("/d"), Path("/r"), mode, 1, Path("/t"), Path("/u"))
        theirs = demo.student_options(regime, Path("/d"), Path("/r"), twin, 1, Path("/t"))
        differ = {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)}
        extra = {"pseudo_labels"} if mode == "hard_pseudo_unlabeled" else set()
        assert differ == {"experiment", "unlabeled_data_dir", "batch_size", "unlabeled_fraction", *extra}, mode
        assert mine["unlabeled_data_dir"] == "/u" and mine["batch_size"] == regime.batch_size + u
        assert round(mine["unlabeled_fraction"] * mine["batch_size"]) == u  # the trainer's count of unlabelled ones
    with pytest.raises(ValueError, match="unlabelled"):
        demo.student_options(regime, Path("/d"), Path("/r"), "deit_hard_unlabeled", 1, Path("/t"))


def test_a_student_with_unlabelled_images_takes_its_twins_labelled_steps(tmp_path):
    """The pairing's premise on the trainer's real set-up: same initial weights and, in every step, the twin's
    labelled views first, then the unlabelled ones."""
    import torch
    from train_fixtures import digits, teacher_checkpoint

    from timm_deit_distill.data.digits import write_digits_unlabeled
    from timm_deit_distill.factory.api import train_settings
    from timm_deit_distill.factory.run import build_run

    data = digits(tmp_path / "digits", train_per_class=2)
    write_digits_unlabeled(tmp_path / "u", train_per_class=2, val_fraction=0.05)
    teacher = teacher_checkpoint(tmp_path / "teacher.pth")
    regime = dataclasses.replace(demo.QUICK_REGIME, batch_size=4)
    built = {}
    for mode, twin in demo_unlabeled.TWINS.items():
        for m in (mode, twin):
            options = demo.student_options(regime, data, tmp_path / "runs", m, 3, teacher, tmp_path / "u")
            options["model_kwargs"] = {**options.get("model_kwargs", {}), "depth": 1, "embed_dim": 32, "num_heads": 2}
            run = build_run(train_settings(**options))
            run.train_loader.set_epoch(1)
            batches = list(run.train_loader)
            built[m] = (run.student.state_dict(), batches)
        (w_u, b_u), (w_t, b_t) = built[mode], built[twin]
        assert all(torch.equal(w_t[k], v) for k, v in w_u.items()), mode
        assert len(b_u) == len(b_t) > 0, mode
        for (inputs, targets, _), (twin_inputs, twin_targets, _) in zip(b_u, b_t, strict=True):
            assert inputs.shape[0] == regime.batch_size + demo_regime.UNLABELED_PER_BATCH
            assert torch.equal(inputs[: len(twin_inputs)], twin_inputs) and torch.equal(targets, twin_targets), mode


def test_paired_differences_are_taken_seed_by_seed():
    def rows(values):
        return [{"seed": s, "top1_cls": None, "top1_dist": None, "top1_fused": v, "agreement": a}
                for s, (v, a) in values.items()]

    per_seed = {"none": rows({0: (70.0, 0.7), 1: (80.0, 0.8), 2: (75.0, 0.7)}),
                "hard": rows({2: (76.0, 0.8), 0: (72.0, 0.9), 1: (79.0, 0.8)}),
                "hard_pseudo_unlabeled": rows({1: (84.0, 0.9), 0: (75.0, 0.95), 2: (80.0, 0.9)})}
    vs_twin = demo_unlabeled.paired_with(per_seed, "hard_pseudo_unlabeled", "hard")
    diffs = [3.0, 5.0, 4.0]  # seeds 1, 0, 2 (the row's order)
    assert [d["seed"] for d in vs_twin["per_seed"]] == [1, 0, 2]
    assert vs_twin["top1_fused"] == pytest.approx(statistics.mean(diffs))
    assert vs_twin["top1_fused_std"] == pytest.approx(statistics.stdev(diffs))
    assert vs_twin["agreement"] == pytest.approx(statistics.mean([0.1, 0.05, 0.1]))
    assert "top1_cls" not in vs_twin  # neither has a class head of its own
    vs_none = demo_unlabeled.paired_with(per_seed, "hard_pseudo_unlabeled", "none")
    assert vs_none["top1_fused"] == pytest.approx(statistics.mean([4.0, 5.0, 5.0]))
    assert demo_unlabeled.paired_with({"a": rows({0: (1.0, 0.1)}), "b": rows({1: (2.0, 0.2)})}, "a", "b") is None


@pytest.mark.slow
def test_quick_unlabeled_demo_end_to_end(tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "demo"
    assert demo.main(["--quick", "--unlabeled", "--out", str(out)]) == 0
    assert "| row | student | unlabelled images |" in capfd.readouterr().out
    results = json.loads((out / "results_unlabeled.json").read_text())
    assert not (out / "results.json").exists()  # Table 3's report is `deit-distill demo`'s

    # the unlabelled folder: the other training digits of the quick split, none of them a validation image
    unlabeled_dir = Path(results["data"]["unlabeled_dir"])
    images = list(unlabeled_dir.glob("*.png"))
    train, _, labelled = _sklearn_split(demo.QUICK_REGIME.val_fraction, demo.QUICK_REGIME.train_per_class)
    assert len(images) == results["data"]["unlabeled_images"] == len(train) - len(labelled) > 1000
    assert results["data"]["unlabeled_same_as_validation"] == 0
    validation = {_sha(p) for p in (Path(results["data"]["dir"]) / "validation").rglob("*.png")}
    assert len(validation) == results["data"]["val_images"] == 360
    assert not {_sha(p) for p in images} & validation

    # the rows, and each paired difference is the same seed's
    assert results["rows"] == ["none", "hard", "deit_hard", "deit_soft", *demo_regime.UNLABELED_MODES]
    assert results["twins"] == demo_unlabeled.TWINS
    students = results["students"]
    for mode in results["rows"]:
        (row,) = students[mode]["per_seed"]
        assert row["seed"] == 0 and 0 <= row["top1_fused"] <= 100 and 0 <= row["agreement"] <= 1, mode
    for mode, twin in [*((m, "none") for m in results["rows"][1:]), *results["twins"].items()]:
        table = results["vs_none"] if twin == "none" else results["vs_twin"]
        expected = students[mode]["top1_fused"] - students[twin]["top1_fused"]
        assert table[mode]["top1_fused"] == pytest.approx(expected) and table[mode]["top1_fused_std"] is None

    # every student with unlabelled images was a `deit-distill train` run given the folder; the others were not
    runs = out / "runs" / "quick"
    for mode in results["rows"]:
        options = json.loads((runs / f"{mode}-seed0" / "demo_run.json").read_text())["options"]
        assert options.get("unlabeled_data_dir") == (str(unlabeled_dir) if mode in results["twins"] else None)
        assert options.get("pseudo_labels", False) is (mode == "hard_pseudo_unlabeled")
    assert (out / "results_unlabeled.md").read_text().startswith("Validation top-1")

    # a rerun reuses every run
    caplog.clear()
    assert demo.main(["--quick", "--unlabeled", "--out", str(out)]) == 0
    assert (capfd.readouterr().out + caplog.text).count("reusing the finished run") == 1 + len(results["rows"])
    again = json.loads((out / "results_unlabeled.json").read_text())
    assert again["students"] == students and again["vs_twin"] == results["vs_twin"]
