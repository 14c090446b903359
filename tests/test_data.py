"""The data pipeline: deterministic views, repeated augmentation, safe posterize, refusals."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from aug_fixtures import DATA_CONFIG, make_args
from PIL import Image, ImageOps
from source_fixtures import open_folder
from timm.data.auto_augment import rand_augment_transform
from timm.data.distributed_sampler import RepeatAugSampler

from timm_deit_distill.data import (
    DataError,
    ViewLayout,
    build_eval_loader,
    build_train_loader,
    build_train_transform,
    make_posterize_safe,
    safe_posterize,
)
from timm_deit_distill.data.digits import write_digits_imagefolder


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = write_digits_imagefolder(tmp_path_factory.mktemp("digits") / "d", train_per_class=4)
    return open_folder(str(root))


def collect(args, train_ds, *, epoch=3, rank=0, world_size=1):
    loader = build_train_loader(train_ds, args.view, args.loader, rank=rank, world_size=world_size)
    loader.set_epoch(epoch)
    views = {}
    for inputs, targets, view_index in loader:
        for i, p in enumerate(view_index.tolist()):
            assert p not in views
            views[p] = (inputs[i].clone(), targets[i].clone())
    return views


def assert_same_views(a, b, min_common):
    common = set(a) & set(b)
    assert len(common) >= min_common
    for p in common:
        assert torch.equal(a[p][0], b[p][0]), f"view {p} differs"
        assert torch.equal(a[p][1], b[p][1]), f"target of view {p} differs"


# ---------------------------------------------------------------------------------------------
# deterministic views


def test_views_identical_across_worker_counts_batch_sizes_and_world_sizes(digits):
    train_ds, _ = digits
    reference = collect(make_args(workers=0, batch_size=8), train_ds)
    assert len(reference) == 40  # one epoch = len(dataset) views, no rounding
    assert_same_views(reference, collect(make_args(workers=2, batch_size=4), train_ds), 40)
    two_ranks = {**collect(make_args(batch_size=6), train_ds, rank=0, world_size=2),
                 **collect(make_args(batch_size=6), train_ds, rank=1, world_size=2)}
    assert_same_views(reference, two_ranks, 36)
    # a different epoch shows different views
    other = collect(make_args(), train_ds, epoch=4)
    assert not torch.equal(reference[0][0], other[0][0])


def test_view_seeds_are_splitmix64_and_the_batch_form_equals_the_scalar_one():
    from timm_deit_distill.data import views

    # splitmix64 seeded with 0: its first two outputs (Vigna's reference implementation, splitmix64.c)
    assert views._splitmix64(0) == 0xE220A8397B1DCDAF
    assert views._splitmix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4
    rng = random.Random(0)
    for seed in (0, 42, -7, 2**64 - 1, 2**63 + 5):
        for epoch in (0, 1, 299):
            positions = [0, 1, 2**40 + 3, 2**62] + [rng.randrange(2**50) for _ in range(100)]
            for stream in (views.STREAM_VIEW, views.STREAM_MIX_GROUP):
                assert views.view_seeds(seed, epoch, positions, stream) == [
                    views.view_seed(seed, epoch, p, stream) for p in positions]
    assert views.view_seeds(0, 0, []) == []


def test_a_batch_fetch_gives_the_views_of_one_fetch_per_view(digits):
    train_ds, _ = digits
    loader = build_train_loader(train_ds, make_args().view, make_args().loader)
    views = loader.loader.dataset
    keys = [(3, p, (7 * p) % len(train_ds)) for p in range(12)]
    mixed_epochs = [(3, 0, 5), (4, 0, 5)]
    for batch in (keys, mixed_epochs):
        one_by_one = [views[k] for k in batch]
        together = views.__getitems__(batch)
        for a, b in zip(one_by_one, together, strict=True):
            assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    assert not torch.equal(views[mixed_epochs[0]][0], views[mixed_epochs[1]][0])


def _collated_in_a_worker(collate, batch):
    inputs = collate(batch)[0]
    return inputs.is_shared(), torch.utils.data.default_collate([b[0] for b in batch]).is_shared()


@pytest.mark.parametrize("mixup", [0.0, 0.8])
def test_a_worker_collates_into_shared_memory_as_timms_loader_does(digits, mixup):
    # else every batch is copied once more on its way from a loader worker to the trainer
    import functools

    train_ds, _ = digits
    args = make_args(mixup=mixup, cutmix=0.0, batch_size=4)
    loader = build_train_loader(train_ds, args.view, args.loader)
    probe = torch.utils.data.DataLoader(
        loader.loader.dataset, batch_sampler=[[(3, p, p) for p in range(4)]], num_workers=1,
        collate_fn=functools.partial(_collated_in_a_worker, loader.loader.collate_fn))
    assert list(probe) == [(True, True)]


def test_mix_partner_and_lambda_follow_the_view_identity(digits):
    """Mixup only: view p is lam * view(p) + (1 - lam) * view(partner), partner in p's group of 2."""
    train_ds, _ = digits
    mixed = collect(make_args(mixup=0.8, cutmix=0.0, smoothing=0.0, batch_size=4), train_ds)
    plain = collect(make_args(mixup=0.0, cutmix=0.0, batch_size=8), train_ds)
    labels = {p: int(t) for p, (_, t) in plain.items()}
    lams = set()
    for p, (x, y) in mixed.items():
        partner = p ^ 1  # groups of two consecutive positions: i <-> G-1-i
        lam = float(y[labels[p]]) if labels[p] != labels[partner] else None
        if lam is None:
            continue
        expected = plain[p][0] * lam + plain[partner][0] * (1 - lam)
        torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
        assert float(y[labels[partner]]) == pytest.approx(1 - lam, abs=1e-6)
        lams.add(round(min(lam, 1 - lam), 5))
    assert len(lams) > 3  # one lambda per group of two, not one per batch


def test_timm_mode_is_a_function_of_seed_and_epoch_and_uses_batch_wide_mixup(digits):
    train_ds, _ = digits
    args = make_args(deterministic_aug=False, mixup=0.8, cutmix=0.0, smoothing=0.0, batch_size=8)
    first = collect(args, train_ds)
    assert_same_views(first, collect(make_args(deterministic_aug=False, mixup=0.8, cutmix=0.0, smoothing=0.0,
                                               batch_size=8, workers=2), train_ds), 40)
    labels = collect(make_args(deterministic_aug=False, mixup=0.0, cutmix=0.0), train_ds)
    loader = build_train_loader(train_ds, args.view, args.loader)
    loader.set_epoch(3)
    for _, targets, view_index in loader:
        onehot = torch.nn.functional.one_hot(torch.stack([labels[p][1] for p in view_index.tolist()]), 10)
        # timm's batch mode: sample i mixed with B-1-i, one lambda for the whole batch
        torch.testing.assert_close(targets + targets.flip(0), (onehot + onehot.flip(0)).float())
        lams = {round(float(t.max()), 5) for t in targets if float(t.max()) < 1}
        assert len({min(lam, 1 - lam) for lam in lams}) <= 1


def test_loading_does_not_touch_the_global_generators(digits):
    train_ds, _ = digits
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    collect(make_args(workers=0), train_ds)
    build_eval_loader(digits[1], DATA_CONFIG, make_args(workers=0).loader)
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert np.random.rand() == expected[2]


# ---------------------------------------------------------------------------------------------
# repeated augmentation


@pytest.mark.parametrize("grouped", [False, True])
def test_repeated_augmentation_layout(grouped):
    n, repeats = 300, 3
    layout = ViewLayout(n, seed=1, repeats=repeats, group_size=2, grouped=grouped)
    samples, copies = layout.epoch(0)
    assert len(samples) == n  # DeiT's epoch length, not rounded down to a multiple of 256
    counts = np.bincount(samples, minlength=n)
    assert counts.max() <= repeats and (counts == repeats).sum() >= n // repeats - 2 * layout.group_size
    assert set(copies.tolist()) == set(range(repeats))
    if grouped:
        # a mix group never pairs an image with its own copy
        assert np.all(samples[0::2] != samples[1::2])
    else:
        # DeiT's layout: copies consecutive, so round-robin ranks get different copies
        assert np.all(samples[:297].reshape(-1, 3) == samples[:297:3, None])
    assert not np.array_equal(samples, layout.epoch(1)[0])
    # timm's (DeiT's) RepeatAugSampler rounds the same epoch down to 256 and refuses to run on one process
    assert len(RepeatAugSampler(list(range(n)), num_replicas=1, rank=0, num_repeats=3)) == 256
    with pytest.raises((RuntimeError, ValueError)):
        RepeatAugSampler(list(range(n)), num_repeats=3)


@pytest.mark.parametrize("deterministic", [False, True])
def test_repeated_augmentation_on_one_process_with_a_dataset_smaller_than_a_batch(tmp_path, deterministic):
    root = write_digits_imagefolder(tmp_path / "d", train_per_class=1)
    train_ds, _ = open_folder(str(root))
    assert len(train_ds) == 10
    args = make_args(batch_size=64, aug_repeats=3, deterministic_aug=deterministic)
    loader = build_train_loader(train_ds, args.view, args.loader)
    for epoch in range(3):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(loader) == len(batches) == 1
        inputs, targets, view_index = batches[0]
        assert inputs.shape == (10, 3, 32, 32) and targets.shape == (10, 10)
        assert sorted(view_index.tolist()) == list(range(10))


def test_two_ranks_get_disjoint_views_and_equal_batch_counts(digits):
    train_ds, _ = digits
    seen = []
    for rank in range(2):
        args = make_args(batch_size=4)
        loader = build_train_loader(train_ds, args.view, args.loader, rank=rank, world_size=2)
        assert len(loader) == 5
        seen.append({p for _, _, v in loader for p in v.tolist()})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(40))


# ---------------------------------------------------------------------------------------------
# posterize with Pillow 13


def test_pillow_rejects_zero_bit_posterize_and_safe_posterize_matches_old_pillow():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8), mode="RGB")
    with pytest.raises(ValueError):
        ImageOps.posterize(img, 0)  # the real Pillow refuses what timm asks for
    black = safe_posterize(img, 0)
    # Pillow < 13: mask ~(2 ** (8 - 0) - 1) -> every value & mask == 0
    arr = np.asarray(img)
    assert np.array_equal(np.asarray(black), arr.astype(np.int64) & ~(2 ** 8 - 1))
    for bits in range(1, 9):
        assert np.array_equal(np.asarray(safe_posterize(img, bits)), np.asarray(ImageOps.posterize(img, bits)))


def test_rand_augment_posterize_increasing_at_full_magnitude():
    img = Image.new("RGB", (16, 16), (200, 100, 50))
    transform = rand_augment_transform("rand-m10-n1-p1.0-inc1", {}, transforms=["PosterizeIncreasing"])
    with pytest.raises(ValueError):
        transform(img)  # timm + Pillow 13, unpatched
    assert make_posterize_safe(transform) == 1
    assert np.asarray(transform(img)).max() == 0


def test_deit_rand_augment_never_crashes():
    """DeiT's rand-m9-mstd0.5-inc1 asks for 0-bit posterize about once per thousand images."""
    from timm.data.auto_augment import RandAugment, posterize

    transform = build_train_transform(make_args(aa="rand-m9-mstd0.5-inc1").view)
    (safe,) = [t for t in transform.transforms if isinstance(t, RandAugment)]
    unsafe = copy.deepcopy(safe)
    for op in unsafe.ops:  # timm's own posterize back in, to show the failure is real
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    failures = 0
    for i in range(4000):
        random.seed(i)
        np.random.seed(i)
        try:
            unsafe(img)
        except ValueError:
            failures += 1
            random.seed(i)
            np.random.seed(i)
            safe(img)  # the same draws, patched: no crash
    assert failures > 0


# ---------------------------------------------------------------------------------------------
# refusals


def test_missing_and_empty_data_dirs(tmp_path):
    with pytest.raises(DataError, match="does not exist.*--data-dir"):
        open_folder(str(tmp_path / "nope"))
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no 'validation' split folder.*--val-split"):
        open_folder(str(tmp_path))
    (tmp_path / "validation" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        open_folder(str(tmp_path))


def _write_png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)


def test_class_folders_that_differ_are_named(tmp_path):
    for split, classes in (("train", "abc"), ("val", "abd")):
        for c in classes:
            _write_png(tmp_path / split / c / "x.png")
    with pytest.raises(DataError, match="different classes: class 2 is 'c' in the train split but 'd' in the validation "
                                        "split.*--class-map"):
        open_folder(str(tmp_path))


def test_empty_class_folder_is_refused(tmp_path):
    for split in ("train", "validation"):
        for c in "ab":
            _write_png(tmp_path / split / c / "x.png")
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(DataError, match="class folder.*c.*hold no images"):
        open_folder(str(tmp_path))


def test_unreadable_image_is_named_or_skipped(tmp_path, caplog):
    for split in ("train", "validation"):
        for c in "ab":
            for i in range(3):
                _write_png(tmp_path / split / c / f"{i}.png", 10 * i)
    bad = tmp_path / "train" / "b" / "1.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"unreadable image .*b/1\.png.*--skip-bad-images"):
        open_folder(str(tmp_path))
    train_ds, val_ds = open_folder(str(tmp_path), skip_bad_images=True)
    assert len(train_ds) == 5 and len(val_ds) == 6
    assert train_ds.skipped_files == [str(bad)]
    assert "skipped 1 unreadable image" in caplog.text


def test_bad_loader_settings_are_refused(digits):
    train_ds, _ = digits
    def build(args, ds=train_ds, **kw):
        return build_train_loader(ds, args.view, args.loader, **kw)

    with pytest.raises(DataError, match="multiple of the mix group size 2"):
        build(make_args(batch_size=7))
    with pytest.raises(DataError, match="aug-repeats 2.5.*whole number"):
        build(make_args(aug_repeats=2.5))
    with pytest.raises(DataError, match="--num-classes 7 .* 10 class folders"):
        build(make_args(num_classes=7))
    with pytest.raises(DataError, match="fewer than the 8 one epoch needs across 4"):
        build(make_args(), _tiny(train_ds, 5), rank=0, world_size=4)


def _tiny(ds, n):
    small = copy.copy(ds)
    small.reader = copy.copy(ds.reader)
    small.reader.samples = ds.reader.samples[:n]
    return small


def test_eval_loader_is_in_order_and_split_by_rank(digits):
    _, val_ds = digits
    loader = build_eval_loader(val_ds, DATA_CONFIG, make_args(batch_size=64).loader)
    targets = torch.cat([t for _, t in loader])
    assert targets.tolist() == [t for _, t in val_ds.reader.samples]
    halves = [torch.cat([t for _, t in build_eval_loader(val_ds, DATA_CONFIG, make_args(batch_size=64).loader,
                                                         rank=r, world_size=2)]) for r in range(2)]
    assert len(halves[0]) + len(halves[1]) >= len(val_ds)
