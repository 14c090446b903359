"""timm's dataset sources behind --dataset: each opened by timm's create_dataset holds the reference folder's images
and classes; every bad input the issue lists is refused in one line naming the fix, before anything is read.

The sources are written from one digits folder (source_fixtures); the reference for content is that folder read
with Pillow directly, not through the package.
"""

from __future__ import annotations

import collections
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from source_fixtures import (
    CLASS_NAMES,
    corrupt_wds_sample,
    fake_hub_cache,
    records,
    write_hf_parquet,
    write_image_tar,
)

from timm_deit_distill.data import (
    DataSettings,
    LoaderSettings,
    build_eval_loader,
    check_num_classes,
    check_views_supported,
    dataset_fingerprint,
    is_streamed,
    label_names,
    load_image,
    open_source,
    open_split,
    resolve_input_img_mode,
)
from timm_deit_distill.errors import DataError

DATA_CONFIG = dict(input_size=(1, 8, 8), mean=(0.0,), std=(1.0 / 255,), interpolation="nearest", crop_pct=1.0,
                   crop_mode="center")


def settings(dataset: str = "", data_dir=None, **changes) -> DataSettings:
    values = dict(data_dir=None if data_dir is None else str(data_dir), train_split="train", val_split="validation",
                  class_map="", skip_bad_images=False, dataset=dataset, train_num_samples=None, val_num_samples=None,
                  input_key=None, target_key=None, input_img_mode="L", download=False)
    values.update(changes)
    return DataSettings(**values)


def opened(data: DataSettings, num_classes=None):
    return open_source(data, num_classes=num_classes, batch_size=8, seed=0)


def refusal(call, *fragments: str) -> str:
    """``call()`` raises one DataError line naming every fragment (and the fix)."""
    with pytest.raises(DataError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message and "fix" in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def reference(folder: Path, split: str) -> list[tuple[bytes, int]]:
    """(pixels, class) of every image of an image folder split, in timm's order, read by Pillow alone."""
    out = []
    for label, name in enumerate(CLASS_NAMES):
        for path in sorted((folder / split / name).iterdir()):
            out.append((np.asarray(Image.open(path).convert("L")).tobytes(), label))
    return sorted(out, key=lambda x: x[1])  # timm sorts by path: class folder first, then file


def pixels(ds) -> list[tuple[bytes, int]]:
    return [(np.asarray(img).tobytes(), t) for img, t in (load_image(ds, i) for i in range(len(ds)))]


def stream_pixels(ds) -> list[tuple[bytes, int]]:
    loader = build_eval_loader(ds, DATA_CONFIG, LoaderSettings(batch_size=50, validation_batch_size=None, workers=0,
                                                               pin_mem=False))
    out = []
    for x, y in loader:
        for img, t in zip(x, y.tolist(), strict=True):
            out.append((img[0].round().to(dtype=__import__("torch").uint8).numpy().tobytes(), t))
    return out


# --- every source holds the same images and classes -----------------------------------------------------------

@pytest.mark.parametrize("kind", ["folder", "tar", "hf_parquet", "hf_disk", "mnist"])
def test_map_style_sources_hold_the_folders_images_in_its_order(sources, kind):
    dataset = {"folder": "", "tar": "", "hf_parquet": f"hfds/{sources['hf_parquet']}",
               "hf_disk": f"hfds/{sources['hf_disk']}", "mnist": "torch/mnist"}[kind]
    data_dir = None if kind.startswith("hf") else sources[kind]
    train, val = opened(settings(dataset, data_dir))
    for split, ds in (("train", train), ("validation", val)):
        assert not is_streamed(ds)
        got = pixels(ds)
        want = reference(sources["folder"], split)
        assert [t for _, t in got] == [t for _, t in want]
        assert collections.Counter(got) == collections.Counter(want)
    names = label_names(train)
    assert names == (["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
                      "8 - eight", "9 - nine"] if kind == "mnist" else list(CLASS_NAMES))
    assert check_num_classes(train, None) == 10
    fp = dataset_fingerprint(train)
    assert fp["num_samples"] == 160 and fp["num_classes"] == 10
    if kind != "folder":
        assert fp["split"] == "train" and fp["targets_sha256"]


@pytest.mark.parametrize("kind", ["wds", "hfids"])
def test_streams_hold_the_folders_images(sources, kind):
    dataset = "wds/digits" if kind == "wds" else f"hfids/{sources['hf_parquet']}"
    train, val = opened(settings(dataset, sources["wds"] if kind == "wds" else None))
    assert is_streamed(train) and is_streamed(val)
    assert collections.Counter(stream_pixels(val)) == collections.Counter(reference(sources["folder"], "validation"))
    assert label_names(train) == (list(CLASS_NAMES) if kind == "hfids" else list(CLASS_NAMES))  # _info.json classes
    fp = dataset_fingerprint(train)
    assert fp["source"] == dataset and fp["split"] == "train" and fp["num_samples"] == 160


def test_the_input_img_mode_is_applied_to_torchvision_data_timm_leaves_unconverted(sources):
    train, _ = opened(settings("torch/mnist", sources["mnist"], input_img_mode="RGB"))
    img, _ = load_image(train, 0)
    assert img.mode == "RGB"  # timm's torch/ path yields MNIST's L images whatever the mode asked


def test_a_hub_dataset_is_read_offline_from_the_datasets_cache_it_was_loaded_into(sources, tmp_path):
    cache = tmp_path / "cache"
    prepared = fake_hub_cache(cache, "acme/digits", sources["hf_parquet"])
    train, val = opened(settings("hfds/acme/digits", cache))
    assert len(train) == 160 and label_names(train) == list(CLASS_NAMES)
    assert dataset_fingerprint(train)["revision"] == prepared.name  # the cached version, recorded
    # another cache dir: nothing to read offline, said in one line
    refusal(lambda: opened(settings("hfds/acme/digits", tmp_path / "elsewhere")), "acme/digits", "--data-dir")


# --- refusals: each one line before any sample is read -----------------------------------------------------------

def test_a_split_that_does_not_exist_is_refused_for_every_source(sources, tmp_path):
    refusal(lambda: opened(settings("", sources["folder"], val_split="test")), "no 'test' split")
    refusal(lambda: opened(settings("", sources["tar"], val_split="test")), "no 'test' split", "test.tar")
    refusal(lambda: opened(settings(f"hfds/{sources['hf_parquet']}", val_split="test")), "no split 'test'")
    refusal(lambda: opened(settings(f"hfids/{sources['hf_parquet']}", val_split="test", val_num_samples=10)),
            "no split 'test'", "train, validation")
    refusal(lambda: opened(settings("wds/digits", sources["wds"], val_split="test")), "no split 'test'",
            "train, validation")
    # torchvision has train and test; timm reads the test set for any other name, typos included
    refusal(lambda: opened(settings("torch/mnist", sources["mnist"], val_split="valdiation")), "'valdiation'")


def test_a_key_the_source_lacks_is_refused(sources):
    hfds = f"hfds/{sources['hf_parquet']}"
    refusal(lambda: opened(settings(hfds, input_key="img")), "no image column 'img'", "--input-key")
    refusal(lambda: opened(settings(hfds, target_key="lbl")), "no target column 'lbl'", "--target-key")
    hfids = f"hfids/{sources['hf_parquet']}"
    refusal(lambda: opened(settings(hfids, input_key="img")), "no column 'img'", "--input-key")
    refusal(lambda: opened(settings(hfids, target_key="lbl")), "no column 'lbl'", "--target-key")
    refusal(lambda: opened(settings("wds/digits", sources["wds"], target_key="lbl")),
            "no target field 'lbl'", "class_name, filename, idx, label")
    refusal(lambda: opened(settings("wds/digits", sources["wds"], input_key="webp;jpg")),
            "has no image under webp;jpg", "png;jpg")
    # keys a source takes in another form, or not at all
    refusal(lambda: settings("", sources["folder"], input_key="png"), "with the dot", "--input-key .png")
    refusal(lambda: settings("", sources["folder"], target_key="label"), "--target-key label")
    refusal(lambda: opened(settings("", sources["tar"], input_key=".png")), "tar reader takes no keys")
    refusal(lambda: settings("torch/mnist", sources["mnist"], input_key="image"), "take no keys")
    refusal(lambda: settings("wds/digits", sources["wds"], input_key="png"), "include jpg", "--input-key png;jpg")


def test_keys_the_source_has_read_the_named_fields(sources):
    # the json sidecar's 'label' (wds) and the png images under an explicit key read like the defaults
    train, _ = opened(settings("wds/digits", sources["wds"], target_key="label", input_key="png;jpg"))
    assert collections.Counter(t for _, t in stream_pixels(train)) == collections.Counter(
        t for _, t in reference(sources["folder"], "train"))
    folder, _ = opened(settings("", sources["folder"], input_key=".png"))
    assert len(folder) == 160


def test_train_and_validation_with_different_classes_are_refused(sources, tmp_path):
    recs = records(sources["folder"])
    recs["validation"] = [r for r in recs["validation"] if r[1] != 9]
    write_image_tar(tmp_path / "tar", recs)
    refusal(lambda: opened(settings("", tmp_path / "tar")), "different classes",
            "class 9 is '9' in the train split but missing in the validation split (10 and 9 classes)")


def test_a_missing_shard_is_refused_before_training_naming_it(sources, tmp_path):
    shutil.copytree(sources["wds"], tmp_path / "wds")
    (tmp_path / "wds" / "digits-train-0003.tar").unlink()
    refusal(lambda: opened(settings("wds/digits", tmp_path / "wds")), "digits-train-0003.tar", "is missing")


def test_wds_layouts_timm_reads_differently_than_it_seems_are_refused(sources, tmp_path):
    root = tmp_path / "wds"
    shutil.copytree(sources["wds"], root)
    info = json.loads((root / "_info.json").read_text())
    (root / "_info.json").unlink()
    (root / "_info.yaml").write_text(json.dumps(info))
    refusal(lambda: opened(settings("wds/digits", root)), "timm 1.0 reads only _info.json")
    # a shard pattern needs its sample count to size training
    refusal(lambda: opened(settings("wds/digits", root, train_split="digits-train-{0000..0007}.tar")), "|N")
    ds = open_split(settings("wds/digits", root, train_split="digits-train-{0000..0007}.tar|160"),
                    "digits-train-{0000..0007}.tar|160", training=True, num_classes=10, batch_size=8, seed=0)
    assert ds.source_info.identity["num_samples"] == 160
    # a shard name that would escape --data-dir or run a shell
    info["splits"]["train"]["filenames"][0] = "pipe:cat /etc/passwd"
    (root / "_info.json").write_text(json.dumps(info))
    refusal(lambda: opened(settings("wds/digits", root)), "pipe:cat", "not a file under --data-dir")


def test_a_stream_without_class_names_needs_the_class_count(sources, tmp_path):
    root = tmp_path / "wds"
    shutil.copytree(sources["wds"], root)
    info = json.loads((root / "_info.json").read_text())
    del info["classes"], info["num_classes"]  # timm's own _info.json has neither
    (root / "_info.json").write_text(json.dumps(info))
    refusal(lambda: opened(settings("wds/digits", root)), "no class list", "--num-classes")
    train, _ = opened(settings("wds/digits", root), num_classes=10)
    assert label_names(train) == [] and check_num_classes(train, None) == 10
    refusal(lambda: check_num_classes(train, 12), "--num-classes 12", "has 10 classes")


def test_hfids_without_split_sizes_needs_the_sample_counts(sources, tmp_path):
    nocard = tmp_path / "nocard"
    write_hf_parquet(nocard, records(sources["folder"], 16))
    refusal(lambda: opened(settings(f"hfids/{nocard}")), "size is unknown", "--train-num-samples")
    refusal(lambda: opened(settings(f"hfids/{nocard}", train_num_samples=160), num_classes=10), "size is unknown",
            "--val-num-samples")
    # without a card the class names are the ClassLabel the files' own features declare
    train, _ = opened(settings(f"hfids/{nocard}", train_num_samples=160, val_num_samples=90))
    assert label_names(train) == list(CLASS_NAMES) and dataset_fingerprint(train)["num_samples"] == 160
    # and files that declare none have no class names: the count must be given
    import pyarrow.parquet as pq

    for path in (nocard / "data").glob("*.parquet"):
        pq.write_table(pq.read_table(path).replace_schema_metadata(None), path)
    refusal(lambda: opened(settings(f"hfids/{nocard}", train_num_samples=160, val_num_samples=90)),
            "no class names", "--num-classes")
    train, _ = opened(settings(f"hfids/{nocard}", train_num_samples=160, val_num_samples=90), num_classes=10)
    assert label_names(train) == [] and dataset_fingerprint(train)["num_samples"] == 160


def test_a_save_to_disk_split_folder_names_its_parent(sources):
    refusal(lambda: opened(settings(f"hfds/{sources['hf_disk']}/train")), f"hfds/{sources['hf_disk']}")


def test_an_unreadable_image_is_named_or_skipped_before_training(sources, tmp_path):
    recs = records(sources["folder"], 16)
    broken = recs["validation"][3]
    recs["validation"][3] = (broken[0], broken[1], broken[2][:20])
    write_image_tar(tmp_path / "tar", recs)
    refusal(lambda: opened(settings("", tmp_path / "tar")), f"validation.tar:{broken[1]}/{broken[0]}.png",
            "--skip-bad-images")
    _, val = opened(settings("", tmp_path / "tar", skip_bad_images=True))
    assert len(val) == 159 and val.skipped_files == [f"{tmp_path / 'tar' / 'validation.tar'}:{broken[1]}/{broken[0]}.png"]
    write_hf_parquet(tmp_path / "pq", recs, shards=1)
    refusal(lambda: opened(settings(f"hfds/{tmp_path / 'pq'}"), num_classes=10), "split validation row 3")
    _, val = opened(settings(f"hfds/{tmp_path / 'pq'}", skip_bad_images=True))
    assert len(val) == 159 and pixels(val) == [p for i, p in enumerate(reference(sources["folder"], "validation"))
                                                if i != 3]


def test_flags_a_source_ignores_are_refused_by_name(sources):
    refusal(lambda: settings("", sources["folder"], train_num_samples=100), "--train-num-samples 100",
            "image folder")
    refusal(lambda: settings(f"hfds/{sources['hf_parquet']}", val_num_samples=5), "--val-num-samples 5")
    refusal(lambda: settings(f"hfds/{sources['hf_parquet']}", download=True), "--dataset-download", "hfds/")
    refusal(lambda: settings("wds/digits", sources["wds"], class_map="names.txt"), "--class-map", "wds/")
    refusal(lambda: settings(f"hfids/{sources['hf_parquet']}", skip_bad_images=True), "--skip-bad-images",
            "hfids/")
    refusal(lambda: settings(f"hfds/{sources['hf_parquet']}", target_key="a,b"), "multi-label")
    settings("torch/mnist", sources["mnist"], download=True)  # torchvision downloads MNIST: allowed
    settings(f"hfids/{sources['hf_parquet']}", download=True)  # timm's local prepared copy: allowed


def test_source_names_timm_does_not_read_safely_are_refused():
    refusal(lambda: settings("tfds/imagenet2012"), "TensorFlow", "hfds/")
    refusal(lambda: settings("torch/cifar10"), "unpickles", "hfds/")
    refusal(lambda: settings("torch/imagenette"), "no torchvision dataset 'imagenette'")
    refusal(lambda: settings("cifar10"), "names no source", "torch/cifar10")
    refusal(lambda: settings("hfdss/x"), "unknown source type 'hfdss'")
    for folder in ("", "folder", "imagefolder"):
        settings(folder)


def test_a_missing_extra_is_named(monkeypatch, sources):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "webdataset" else real(name, *a))
    refusal(lambda: opened(settings("wds/digits", sources["wds"])), "timm-deit-distill[wds]")


def test_the_input_mode_must_have_the_models_channels():
    assert resolve_input_img_mode(None, 3) == "RGB" and resolve_input_img_mode(None, 1) == "L"
    assert resolve_input_img_mode("RGBA", 4) == "RGBA"
    refusal(lambda: resolve_input_img_mode("L", 3), "--input-img-mode L gives 1 channel(s)", "--in-chans 1")
    refusal(lambda: resolve_input_img_mode("P", 3), "not a Pillow mode")


def test_streams_refuse_what_needs_a_stable_sample_index():
    for dataset in ("wds/x", "hfids/x"):
        refusal(lambda d=dataset: check_views_supported(d, deterministic_aug=True, distill_cache=False, aug_repeats=1),
                "--deterministic-aug", "stable sample index")
        refusal(lambda d=dataset: check_views_supported(d, deterministic_aug=True, distill_cache=True, aug_repeats=1),
                "--distill-cache")
        refusal(lambda d=dataset: check_views_supported(d, deterministic_aug=False, distill_cache=False, aug_repeats=3),
                "--aug-repeats 3")
    for dataset in ("", "hfds/x", "torch/mnist"):
        check_views_supported(dataset, deterministic_aug=True, distill_cache=True, aug_repeats=3)


def test_a_corrupt_wds_sample_stays_named_by_its_shard(sources, tmp_path):
    # the shard reads as a tar, so the first sample peeked before training is fine: the bad one is found in flight
    root = tmp_path / "wds"
    shutil.copytree(sources["wds"], root)
    key = corrupt_wds_sample(root, "digits-validation-0002.tar", 1)
    with tarfile.open(root / "digits-validation-0002.tar") as tf:
        assert len(tf.getnames()) == 60
    _, val = opened(settings("wds/digits", root))
    with pytest.raises(DataError, match=rf"digits-validation-0002\.tar key {key}.*--skip-bad-images"):
        stream_pixels(val)


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_bad_images_skips_and_counts_a_corrupt_wds_sample(sources, tmp_path, caplog, workers):
    from timm_deit_distill.commands.args import parse_args
    from timm_deit_distill.data import ViewSettings, build_train_loader
    from timm_deit_distill.factory.settings import settings_from_options

    root = tmp_path / "wds"
    shutil.copytree(sources["wds"], root)
    key = corrupt_wds_sample(root, "digits-train-0005.tar", 2)
    argv = ["--dataset", "wds/digits", "--data-dir", str(root), "--target-key", "idx", "-b", "8", "--workers",
            str(workers), "--num-classes", "160", "--in-chans", "1", "--input-img-mode", "L", "--skip-bad-images"]
    info = json.loads((root / "_info.json").read_text())
    del info["classes"], info["num_classes"]  # the sample id (json idx) is the target
    (root / "_info.json").write_text(json.dumps(info))
    settings = settings_from_options(parse_args(argv))
    train, _ = open_source(settings.data, num_classes=160, batch_size=8, seed=0)
    loader = build_train_loader(train, ViewSettings.resolve(settings.augment, DATA_CONFIG, 160), settings.loader)
    with tarfile.open(root / "digits-train-0005.tar") as tf:
        bad = json.loads(tf.extractfile(f"{key}.json").read())["idx"]
    loader.set_epoch(0)
    with caplog.at_level("WARNING"):
        ids = [int(t) for _, y, _ in loader for t in y]
    assert bad not in ids and set(ids) == set(range(160)) - {bad}  # every other sample, the bad one skipped
    assert len(ids) == 160  # timm tops each worker's share up to whole batches
    assert "Skipped 1 unreadable sample(s) of wds/digits in epoch 0" in caplog.text


def test_a_stream_without_workers_transforms_in_chunks_with_the_views_of_one_sample_at_a_time(
        sources, monkeypatch):
    import random

    import torch

    from timm_deit_distill.commands.args import parse_args
    from timm_deit_distill.data import ViewSettings, build_train_loader, streams
    from timm_deit_distill.factory.settings import settings_from_options

    settings = settings_from_options(parse_args(
        ["--dataset", "wds/digits", "--data-dir", str(sources["wds"]), "-b", "10", "--workers", "0",
         "--in-chans", "1", "--input-img-mode", "L", "--seed", "3", "--aa", "rand-m9-mstd0.5-inc1",
         "--reprob", "0.25", "--mixup", "0", "--cutmix", "0"]))

    def epoch_views(chunk):
        monkeypatch.setattr(streams, "_MAIN_PROCESS_CHUNK", chunk)
        train, _ = open_source(settings.data, num_classes=None, batch_size=10, seed=3)
        loader = build_train_loader(train, ViewSettings.resolve(settings.augment, DATA_CONFIG, 10), settings.loader)
        loader.set_epoch(1)
        random.seed(5)
        np.random.seed(7)
        torch.manual_seed(11)
        views = [(x.clone(), y.clone()) for x, y, _ in loader]
        after = (random.random(), np.random.rand(), torch.rand(1).item())
        return views, after

    reference, untouched = epoch_views(1)
    random.seed(5)
    np.random.seed(7)
    torch.manual_seed(11)
    assert untouched == (random.random(), np.random.rand(), torch.rand(1).item())  # the trainer's draws unmoved
    for chunk in (16, 3):  # the default, and one that does not divide the batch
        views, after = epoch_views(chunk)
        assert after == untouched and len(views) == len(reference) > 0
        for (x, y), (rx, ry) in zip(views, reference, strict=True):
            assert torch.equal(x, rx) and torch.equal(y, ry)


def test_a_resumed_stream_epoch_deals_the_shards_of_the_uninterrupted_one(sources, tmp_path):
    # process 0 of 2: which shards it reads in epoch 1 depends on (seed, epoch) only, not on epoch 0 having run
    from timm_deit_distill.commands.args import parse_args
    from timm_deit_distill.data import ViewSettings, build_train_loader
    from timm_deit_distill.factory.settings import settings_from_options

    root = tmp_path / "wds"
    shutil.copytree(sources["wds"], root)
    info = json.loads((root / "_info.json").read_text())
    del info["classes"], info["num_classes"]  # the sample id (json idx) is the target
    (root / "_info.json").write_text(json.dumps(info))
    settings = settings_from_options(parse_args(
        ["--dataset", "wds/digits", "--data-dir", str(root), "--target-key", "idx", "-b", "8", "--workers", "0",
         "--num-classes", "160", "--in-chans", "1", "--input-img-mode", "L", "--seed", "3"]))

    def rank0_loader():
        train, _ = open_source(settings.data, num_classes=160, batch_size=8, seed=3)
        train.reader.dist_rank, train.reader.dist_num_replicas = 0, 2  # as under a 2-process group
        return build_train_loader(train, ViewSettings.resolve(settings.augment, DATA_CONFIG, 160), settings.loader,
                                  rank=0, world_size=2)

    def shards(loader, epoch):
        loader.set_epoch(epoch)
        return {int(t) // 20 for _, y, _ in loader for t in y}  # 8 shards of 20 consecutive ids

    whole = rank0_loader()
    epoch0, epoch1 = shards(whole, 0), shards(whole, 1)
    resumed = shards(rank0_loader(), 1)
    assert len(epoch0) == len(epoch1) == 4 and epoch0 != epoch1  # half the shards, dealt anew each epoch
    assert resumed == epoch1
