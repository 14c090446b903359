"""What a source could get silently wrong, refused in one line before any work: splits whose class names differ
(a Hugging Face dataset's splits each declare their own ClassLabel, which datasets replaces by the first split's),
labels outside the classes, and sample values quoted whole.

The data are the ``sources`` fixture's digits (conftest), rewritten where a case needs another layout; the
reference for what a split holds is the image folder they were written from.
"""

from __future__ import annotations

import collections
import json
import shutil

import pytest
from source_fixtures import CLASS_NAMES, fake_hub_cache, records, write_hf_with_classes, write_mnist_raw
from test_sources import DATA_CONFIG, opened, pixels, reference, refusal, settings

from timm_deit_distill.data import open_source

REVERSED = CLASS_NAMES[::-1]


# --- class names compared between the splits --------------------------------------------------------------------

@pytest.mark.parametrize("form", ["parquet", "disk"])
def test_hub_splits_naming_the_classes_in_another_order_are_refused_and_a_class_map_reads_each_by_its_names(
        sources, tmp_path, form):
    out = write_hf_with_classes(tmp_path / form, records(sources["folder"]),
                                {"train": CLASS_NAMES, "validation": REVERSED}, form=form)
    message = refusal(lambda: opened(settings(f"hfds/{out}")), "different classes",
                      "class 0 is '0' in the train split but '9' in the validation split", "another order",
                      "--class-map")
    assert len(message) < 400
    # the fix it names works: with a class map each split's labels are read by the names its own files declare
    class_map = tmp_path / "classes.txt"
    class_map.write_text("\n".join(CLASS_NAMES) + "\n")
    train, val = opened(settings(f"hfds/{out}", class_map=str(class_map)))
    for split, ds in (("train", train), ("validation", val)):
        assert collections.Counter(pixels(ds)) == collections.Counter(reference(sources["folder"], split))


def test_a_streamed_hub_dataset_compares_the_names_of_its_splits_too(sources, tmp_path):
    recs = records(sources["folder"])
    out = write_hf_with_classes(tmp_path / "pq", recs, {"train": CLASS_NAMES, "validation": REVERSED})
    refusal(lambda: opened(settings(f"hfids/{out}", train_num_samples=len(recs["train"]),
                                    val_num_samples=len(recs["validation"]))),
            "class 0 is '0' in the train split but '9' in the validation split")


def test_a_hub_validation_split_with_a_class_more_is_refused_before_training(sources, tmp_path):
    out = write_hf_with_classes(tmp_path / "pq", records(sources["folder"]),
                                {"train": CLASS_NAMES[:9], "validation": CLASS_NAMES})
    refusal(lambda: opened(settings(f"hfds/{out}")), "class 9 is missing in the train split but '9' in the "
            "validation split (9 and 10 classes)")
    # the same data from the datasets cache (a Hub download: one set of features for both splits): its labels
    # beyond the 9 names datasets reports are found in the label column
    cache = tmp_path / "cache"
    fake_hub_cache(cache, "acme/nine", out)
    refusal(lambda: opened(settings("hfds/acme/nine", cache)), "split validation row 144 has label 9, outside the "
            "9 classes its ClassLabel names")


def test_the_files_of_one_split_must_name_the_classes_alike(sources, tmp_path):
    recs = records(sources["folder"])
    out = write_hf_with_classes(tmp_path / "pq", recs, {"train": CLASS_NAMES, "validation": CLASS_NAMES})
    other = write_hf_with_classes(tmp_path / "other", recs, {"train": REVERSED, "validation": CLASS_NAMES})
    (other / "data" / "train-00000-of-00001.parquet").rename(out / "data" / "train-00001-of-00001.parquet")
    refusal(lambda: opened(settings(f"hfds/{out}")), "class 0 is '0' in", "train-00000-of-00001.parquet but '9' in",
            "train-00001-of-00001.parquet", "one ClassLabel")


# --- labels outside the classes ------------------------------------------------------------------------------------

def _labelled(out, recs, labels: dict[str, list[int]], *, class_label: bool):
    """``recs`` written as parquet with the given labels per split (a ClassLabel of CLASS_NAMES, or plain int64)."""
    import datasets

    label = datasets.ClassLabel(names=CLASS_NAMES) if class_label else datasets.Value("int64")
    features = datasets.Features({"image": datasets.Image(), "label": label})
    (out / "data").mkdir(parents=True)
    for split, rs in recs.items():
        datasets.Dataset.from_dict({"image": [{"bytes": d, "path": None} for _, _, d in rs], "label": labels[split]},
                                   features=features).to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
    return out


def test_unlabelled_rows_and_labels_beyond_the_classes_are_refused_naming_the_row(sources, tmp_path):
    recs = records(sources["folder"], 2)
    labels = {split: [lab for _, lab, _ in rs] for split, rs in recs.items()}
    unlabelled = {**labels, "validation": [*labels["validation"][:5], -1, *labels["validation"][6:]]}
    out = _labelled(tmp_path / "unlabelled", recs, unlabelled, class_label=True)
    refusal(lambda: opened(settings(f"hfds/{out}")), "split validation row 5 has label -1", "unlabelled")
    out = _labelled(tmp_path / "ints", recs, labels, class_label=False)
    refusal(lambda: opened(settings(f"hfds/{out}"), num_classes=9), "split train row 18 has label 9, outside the 9 "
            "classes of --num-classes 9", "largest label (9)")
    train, _ = opened(settings(f"hfds/{out}"), num_classes=10)
    assert len(train) == 20


def test_a_torchvision_label_beyond_its_classes_is_refused_naming_the_sample(sources, tmp_path):
    recs = records(sources["folder"], 2)
    name, _, png = recs["validation"][3]
    recs["validation"][3] = (name, 12, png)
    out = write_mnist_raw(tmp_path / "mnist", recs)
    refusal(lambda: opened(settings("torch/mnist", out)), "torch/mnist split validation: sample 3 has label 12, "
            "outside its 10 classes")


def test_a_class_map_that_leaves_out_a_class_of_a_hub_dataset_is_refused(sources, tmp_path):
    # timm's hfds reader would stop on the first such row with a KeyError inside an epoch
    class_map = tmp_path / "nine.txt"
    class_map.write_text("\n".join(CLASS_NAMES[:9]) + "\n")
    refusal(lambda: opened(settings(f"hfds/{sources['hf_parquet']}", class_map=str(class_map))),
            "split train row 144 has class '9', which --class-map", "does not list")


# --- sample values quoted short ------------------------------------------------------------------------------------

def test_a_sample_value_in_a_message_is_its_type_and_a_short_repr(sources):
    message = refusal(lambda: opened(settings(f"hfds/{sources['hf_parquet']}", target_key="image")),
                      "column 'image' is not a class label", "dict {'bytes': b'\\x89PNG")
    assert len(message) < 300  # the image's bytes would make it kilobytes long
    refusal(lambda: opened(settings(f"hfds/{sources['hf_parquet']}", target_key="file_name")),
            "column 'file_name' is not a class label (string, e.g. str '")
    refusal(lambda: opened(settings(f"hfids/{sources['hf_parquet']}", target_key="image"), num_classes=10),
            "column 'image' is not a class label (Image(")
    refusal(lambda: opened(settings("wds/digits", sources["wds"], target_key="filename")),
            "target field 'filename' is not a class index (str '", ".png')")


# --- the commands: refused before anything is written ---------------------------------------------------------------

def _refused(main, argv, capsys, prog: str) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1 and "Traceback" not in out + err, err
    return err


def test_eval_on_a_hub_split_naming_the_classes_in_another_order_is_refused(sources, trained_teacher, tmp_path,
                                                                           capsys):
    from timm_deit_distill.commands import evaluate

    # the case that reported top-1 0.0 with exit 0: datasets read the split with the train split's names
    out = write_hf_with_classes(tmp_path / "pq", records(sources["folder"]), {"train": CLASS_NAMES,
                                                                                "validation": REVERSED})
    checkpoint, results = trained_teacher["checkpoint"], tmp_path / "results.json"
    err = _refused(evaluate.main, ["--checkpoint", str(checkpoint), "--dataset", f"hfds/{out}", "--split",
                                   "validation", "--workers", "0", "--json", str(results)], capsys,
                   "deit-distill eval")
    assert (f"class 0 is '0' in the training classes of {checkpoint} but '9' in --dataset hfds/{out} split "
            "validation") in err and "--class-map" in err
    assert not results.exists()


@pytest.mark.parametrize("classes", [{"train": CLASS_NAMES, "validation": REVERSED},
                                     {"train": CLASS_NAMES[:9], "validation": CLASS_NAMES}],
                         ids=["another-order", "a-class-more"])
def test_training_on_hub_splits_with_other_classes_is_refused_before_the_run_folder(sources, tmp_path, capsys,
                                                                                   classes):
    from train_fixtures import FAST, STUDENT

    from timm_deit_distill.commands import train

    out = write_hf_with_classes(tmp_path / "pq", records(sources["folder"], 2), classes)
    err = _refused(train.main, ["--dataset", f"hfds/{out}", *STUDENT, *FAST, "--epochs", "1", "--img-size", "16",
                                "--output", str(tmp_path / "runs"), "--experiment", "run"], capsys, "deit-distill train")
    assert "different classes: class " in err and "in the train split but" in err
    assert not (tmp_path / "runs" / "run").exists()


# --- sample counts: an overstated one refused where the data can be counted, said after an epoch where not -----------

def _wds_claiming(src, root, factor: int = 2):
    """A copy of the wds fixture whose _info.json claims ``factor`` times the train split's samples."""
    shutil.copytree(src, root)
    info = json.loads((root / "_info.json").read_text())
    train = info["splits"]["train"]
    train["num_samples"] *= factor
    train["shard_lengths"] = [n * factor for n in train["shard_lengths"]]
    (root / "_info.json").write_text(json.dumps(info))
    return root


def test_an_overstated_wds_count_is_refused_counting_the_local_shards(sources, tmp_path):
    root = _wds_claiming(sources["wds"], tmp_path / "wds")
    refusal(lambda: opened(settings("wds/digits", root)), f"{root}/_info.json gives 320 samples but its 8 shard(s) "
            f"under {root} (counted from the tar headers) hold 160", "--train-num-samples 160")
    refusal(lambda: opened(settings("wds/digits", sources["wds"], train_num_samples=5000)),
            "--train-num-samples asks for 5000 samples", "hold 160", "--train-num-samples 160 or fewer")
    train, _ = opened(settings("wds/digits", sources["wds"], train_num_samples=100))  # fewer: timm's sub-sampling
    assert train.source_info.counted == 160 and train.reader.num_samples == 100
    # the right total, but one shard's length overstated (another's understated)
    info = json.loads((root / "_info.json").read_text())
    info["splits"]["train"].update(num_samples=160, shard_lengths=[30, 10, 20, 20, 20, 20, 20, 20])
    (root / "_info.json").write_text(json.dumps(info))
    refusal(lambda: opened(settings("wds/digits", root)), f"gives shard {root}/digits-train-0000.tar 30 samples but "
            "it holds 20", "shard_lengths")


def test_an_overstated_hfids_count_is_refused_from_the_parquet_row_counts(sources, tmp_path):
    hfids = f"hfids/{sources['hf_parquet']}"
    refusal(lambda: opened(settings(hfids, train_num_samples=5000)), "--train-num-samples asks for 5000 samples "
            f"but its 4 data file(s) under {sources['hf_parquet']} (their row counts) hold 160")
    train, _ = opened(settings(hfids, train_num_samples=100))
    assert train.source_info.counted == 160 and train.reader.num_samples == 100
    card = shutil.copytree(sources["hf_parquet"], tmp_path / "pq")
    readme = (card / "README.md").read_text()
    (card / "README.md").write_text(readme.replace("num_examples: 160", "num_examples: 400"))
    refusal(lambda: opened(settings(f"hfids/{card}")), "its dataset card gives 400 samples", "hold 160",
            "num_examples")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_count_that_could_not_be_checked_is_said_after_the_first_epoch(sources, tmp_path, monkeypatch, caplog,
                                                                         workers):
    from timm_deit_distill.commands.args import parse_args
    from timm_deit_distill.data import ViewSettings, build_train_loader
    from timm_deit_distill.data.sources import source_wds
    from timm_deit_distill.factory.settings import settings_from_options

    def first_epochs(root, factor):
        settings = settings_from_options(parse_args(
            ["--dataset", "wds/digits", "--data-dir", str(root), "-b", "8", "--workers", str(workers), "--in-chans",
             "1", "--input-img-mode", "L"]))
        train, _ = open_source(settings.data, num_classes=None, batch_size=8, seed=0)
        loader = build_train_loader(train, ViewSettings.resolve(settings.augment, DATA_CONFIG, 10), settings.loader)
        caplog.clear()
        views = []
        with caplog.at_level("WARNING"):
            for epoch in (0, 1):
                loader.set_epoch(epoch)
                views.append(sum(len(y) for _, y, _ in loader))
        assert views == [160 * factor] * 2
        return [r.getMessage() for r in caplog.records if "distinct" in r.getMessage()]

    # shards that cannot be counted before training (as remote ones): an _info.json claiming twice what they hold
    monkeypatch.setattr(source_wds, "_check_wds_count", lambda *args, **kwargs: None)
    said = first_epochs(_wds_claiming(sources["wds"], tmp_path / "wds"), 2)
    assert len(said) == 1, said  # after the first epoch only
    assert ("wds/digits split train: epoch 0 read 160 distinct sample(s) but the epoch was sized for 320" in said[0]
            and "160 of its 320 views were repeats" in said[0] and "--train-num-samples 160" in said[0])
    assert first_epochs(sources["wds"], 1) == []  # the right count: nothing to say


def test_a_streamed_local_dataset_that_cannot_be_counted_is_said_after_the_first_epoch(sources, caplog):
    # datasets' image folder builder: one file per image, no row counts to read before training
    from timm_deit_distill.commands.args import parse_args
    from timm_deit_distill.data import ViewSettings, build_train_loader
    from timm_deit_distill.factory.settings import settings_from_options

    settings = settings_from_options(parse_args(
        ["--dataset", f"hfids/{sources['folder']}", "--train-num-samples", "5000", "--val-num-samples", "50", "-b",
         "8", "--workers", "0", "--in-chans", "1", "--input-img-mode", "L", "--num-classes", "10"]))
    train, _ = open_source(settings.data, num_classes=10, batch_size=8, seed=0)
    assert getattr(train.source_info, "counted", None) is None
    loader = build_train_loader(train, ViewSettings.resolve(settings.augment, DATA_CONFIG, 10), settings.loader)
    loader.set_epoch(0)
    with caplog.at_level("WARNING"):
        assert sum(len(y) for _, y, _ in loader) == 5000
    assert "epoch 0 read 160 distinct sample(s) but the epoch was sized for 5000" in caplog.text
