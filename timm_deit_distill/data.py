"""The data pipeline: ImageFolder datasets, timm's transforms and Mixup, DeiT's repeated augmentation.

Everything random here is a function of ``(seed, epoch)``, so a run killed and resumed at an epoch
boundary sees exactly the same images, augmentations and mixes. Two modes:

* default (timm's behaviour): sample order is a seeded permutation, repeated augmentation follows
  DeiT's ``RASampler`` layout (copies of an image are consecutive and dealt round-robin to ranks),
  Mixup/CutMix is timm's batch-wide ``Mixup`` (one lambda per batch, sample ``i`` mixed with
  ``B-1-i``). Views then depend on ``(seed, epoch)`` and on the batch size and world size.
* ``args.deterministic_aug``: a *view* is identified by ``(seed, epoch, position)``. Its sample
  index, its repeated-augmentation copy, every random draw of its augmentation and its mix partner
  and lambda derive from that identity alone: the same for any worker count, batch size and world
  size. Mixing happens in fixed groups of ``mix_group_size`` consecutive positions (default 2):
  timm's own ``Mixup`` is applied to each group with numpy seeded from the group's identity, so
  ``mixup_mode='batch'`` means one lambda *per group* (not per batch), and partners are ``i`` and
  ``G-1-i`` inside the group. Every batch size in use (training, cache building) must be a multiple
  of the group size. This is what lets a teacher target cache be built once and replayed.

In both modes each view's augmentation reseeds Python's ``random``, numpy and torch's default
generator from the view identity inside ``__getitem__`` (the generators timm's transforms draw
from); in the main process (``workers=0``) the caller's generator states are restored afterwards, so
data loading never perturbs the trainer's own randomness (dropout, drop-path).

Repeated augmentation works on one process and on datasets smaller than a batch: the epoch has
``len(dataset)`` views as in DeiT, without DeiT's rounding down to a multiple of 256, and an epoch
shorter than one batch yields one smaller batch instead of none.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.utils.data
from PIL import Image, ImageOps
from timm.data import Mixup, create_dataset, create_transform
from timm.data.auto_augment import AugmentOp, AugMixAugment, AutoAugment, RandAugment
from timm.data.distributed_sampler import OrderedDistributedSampler

from .errors import DataError

__all__ = [
    "DataError",
    "DEFAULT_MIX_GROUP_SIZE",
    "ViewLayout",
    "ViewLoader",
    "build_datasets",
    "build_train_loader",
    "build_eval_loader",
    "build_check_loader",
    "build_train_transform",
    "build_eval_transform",
    "build_mixup",
    "make_posterize_safe",
    "safe_posterize",
    "view_seed",
    "view_settings",
]

_logger = logging.getLogger(__name__)

DEFAULT_MIX_GROUP_SIZE = 2

# Stream tags keep the seeds of different consumers of one view identity independent.
_STREAM_ORDER = 1
_STREAM_VIEW = 2
_STREAM_MIX_GROUP = 3
_STREAM_MIX_BATCH = 4
_STREAM_COPIES = 5

_SPLIT_SYNONYMS = {
    "train": ("train", "training"),
    "validation": ("validation", "val", "valid", "eval", "evaluation"),
}


# --------------------------------------------------------------------------------------------------
# Seeds


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def view_seed(seed: int, epoch: int, position: int, stream: int = _STREAM_VIEW) -> int:
    """A 63-bit seed that depends only on ``(seed, epoch, position, stream)``.

    splitmix64 chained over the fields: cheap (about a microsecond) and well mixed, so neighbouring
    positions get unrelated seeds.
    """
    h = 0
    for part in (seed, epoch, position, stream):
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h >> 1


def _seed_all(seed64: int) -> None:
    random.seed(seed64)
    np.random.seed(seed64 & 0xFFFFFFFF)
    # far cheaper than torch.manual_seed, which also walks every accelerator
    torch.default_generator.manual_seed(seed64)


@contextmanager
def _isolated_global_rngs() -> Iterator[None]:
    """Restore python/numpy/torch global generator states on exit when running in the main process.

    In a worker process the states belong to the loader alone, so nothing needs restoring.
    """
    if torch.utils.data.get_worker_info() is not None:
        yield
        return
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


# --------------------------------------------------------------------------------------------------
# Datasets


def _resolve_split(data_dir: str, split: str) -> str:
    direct = os.path.join(data_dir, split)
    if os.path.isdir(direct):
        return direct
    for names in _SPLIT_SYNONYMS.values():
        if split in names:
            for name in names:
                candidate = os.path.join(data_dir, name)
                if os.path.isdir(candidate):
                    return candidate
    present = sorted(d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d)))
    raise DataError(
        f"no '{split}' split folder under {data_dir} (found: {', '.join(present) or 'no folders'}); "
        f"fix: use the ImageFolder layout {data_dir}/{split}/<class>/<image>, or name the split folder "
        f"with --train-split / --val-split.")


def _image_count_under(path: str) -> int:
    from timm.data.readers.img_extensions import get_img_extensions

    exts = get_img_extensions(as_set=True)
    return sum(1 for _, _, files in os.walk(path, followlinks=True) for f in files
               if os.path.splitext(f)[1].lower() in exts)


def _open_split(split_dir: str, class_map: str) -> Any:
    try:
        ds = create_dataset("", root=split_dir, split="", search_split=False, class_map=class_map)
    except RuntimeError as e:  # timm's reader: "Found 0 images in subfolders of ..."
        raise DataError(
            f"{split_dir} holds no images; fix: put images in class folders, "
            f"{split_dir}/<class>/<image>.jpg (timm's ImageFolder layout).") from e
    # An empty class folder silently drops a class and shifts every later class index.
    empty = [d for d in sorted(os.listdir(split_dir))
             if not d.startswith(".") and os.path.isdir(os.path.join(split_dir, d))
             and d not in ds.reader.class_to_idx and _image_count_under(os.path.join(split_dir, d)) == 0]
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(empty)} in {split_dir} hold no images; an empty class would "
            "shift every later class index. fix: add images or remove the empty folder(s).")
    return ds


def _check_image(path: str) -> str | None:
    try:
        with Image.open(path) as img:
            img.verify()  # reads the file and checks its structure without decoding pixels
        return None
    except Exception as e:  # PIL raises many types for broken files
        return f"{type(e).__name__}: {e}"


def _scan_images(ds: Any, split_dir: str, *, skip: bool) -> list[str]:
    """Check every file of ``ds`` opens as an image; drop bad ones when ``skip``, else raise."""
    paths = [p for p, _ in ds.reader.samples]
    workers = min(16, (os.cpu_count() or 1) * 4)  # header reads are I/O bound
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(_check_image, paths, chunksize=64))
    bad = [(p, msg) for p, msg in zip(paths, problems, strict=True) if msg is not None]
    if bad and not skip:
        path, msg = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(
            f"unreadable image {path}{more}: {msg}; fix: delete or replace the file, or pass "
            "--skip-bad-images to train without it.")
    if bad:
        bad_paths = {p for p, _ in bad}
        ds.reader.samples = [s for s in ds.reader.samples if s[0] not in bad_paths]
        if not ds.reader.samples:
            raise DataError(f"every image in {split_dir} is unreadable; fix: check the files.")
        _logger.warning("skipped %d unreadable image(s) in %s, e.g. %s", len(bad), split_dir, bad[0][0])
    return [p for p, _ in bad]


def build_datasets(
    data_dir: str,
    *,
    train_split: str = "train",
    val_split: str = "validation",
    class_map: str = "",
    skip_bad_images: bool = False,
) -> tuple[Any, Any]:
    """Open ``data_dir/<train_split>`` and ``data_dir/<val_split>`` as timm ImageFolder datasets.

    Raises :class:`DataError` naming the fix for a missing or empty directory, train/val class
    folders that differ, and an unreadable image file (named). With ``skip_bad_images`` unreadable
    files are dropped instead; each dataset's ``skipped_files`` lists them. Every file is checked
    (structure read, pixels not decoded) before training starts.
    """
    if not data_dir:
        raise DataError("no data directory given; fix: pass --data-dir DIR (ImageFolder layout "
                        "DIR/train/<class>/<image>, DIR/validation/<class>/<image>).")
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise DataError(f"data directory {data_dir} does not exist; fix: pass --data-dir pointing at a "
                        "folder with train/ and validation/ class folders.")
    split_dirs = [_resolve_split(data_dir, split) for split in (train_split, val_split)]
    datasets = []
    for split_dir in split_dirs:
        ds = _open_split(split_dir, class_map)
        ds.skipped_files = _scan_images(ds, split_dir, skip=skip_bad_images)
        datasets.append(ds)
    train_ds, val_ds = datasets
    train_classes, val_classes = set(train_ds.reader.class_to_idx), set(val_ds.reader.class_to_idx)
    if train_classes != val_classes:
        only_train = sorted(train_classes - val_classes)
        only_val = sorted(val_classes - train_classes)
        raise DataError(
            "train and validation class folders differ: "
            f"only in train: {', '.join(only_train) or '-'}; only in validation: {', '.join(only_val) or '-'}; "
            "fix: give both splits the same class folders, or pass --class-map FILE listing the classes.")
    return train_ds, val_ds


def _load_image(ds: Any, index: int) -> tuple[Image.Image, int]:
    """Decode sample ``index`` of a timm ImageDataset, raising a DataError naming the file.

    timm's own ``__getitem__`` silently substitutes the next sample for an unreadable one, which
    would change a view's content behind the caller's back.
    """
    path, target = ds.reader.samples[index]
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img = img.convert(ds.input_img_mode or "RGB")
    except (OSError, ValueError) as e:
        raise DataError(f"cannot decode image {path}: {e}; fix: delete or replace the file "
                        "(--skip-bad-images skips files whose structure is broken).") from e
    return img, (-1 if target is None else int(target))


def _num_classes(dataset: Any) -> int:
    return len(dataset.reader.class_to_idx)


# --------------------------------------------------------------------------------------------------
# Transforms


def safe_posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's ``posterize`` op that accepts 0 bits as Pillow < 13 did (an all-black image).

    Pillow 13 rejects ``bits=0`` with ``ValueError``; timm's ``PosterizeIncreasing`` asks for it at
    high magnitudes (DeiT's ``rand-m9-mstd0.5-inc1``). Pillow < 13 computed the mask
    ``~(2 ** 8 - 1)``, i.e. every channel 0, which is also what TensorFlow's posterize gives.
    """
    bits = int(bits_to_keep)
    if bits >= 8:
        return img
    if bits >= 1:
        return ImageOps.posterize(img, bits)
    if img.mode in ("L", "RGB"):
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, 1)  # other modes: the closest value Pillow 13 accepts


def make_posterize_safe(transform: Any) -> int:
    """Swap timm's posterize for :func:`safe_posterize` in every augment op inside ``transform``.

    Works on a ``Compose`` (or nested ones) holding timm's RandAugment, AutoAugment or AugMix;
    only the op's function changes, so every random draw stays timm's. Returns the ops patched.
    """
    patched = 0
    stack = [transform]
    while stack:
        t = stack.pop()
        if isinstance(t, AugmentOp):
            if t.name.startswith("Posterize"):
                t.aug_fn = safe_posterize
                patched += 1
        elif isinstance(t, (RandAugment, AugMixAugment)):
            stack.extend(t.ops)
        elif isinstance(t, AutoAugment):
            stack.extend(op for sub in t.policy for op in sub)
        elif hasattr(t, "transforms"):
            stack.extend(t.transforms)
    return patched


def _arg(args: Any, name: str, default: Any = None) -> Any:
    value = getattr(args, name, default)
    return default if value is None else value


def build_train_transform(args: Any, data_config: dict[str, Any]) -> Any:
    """timm's training transform for ``args`` (timm train.py flag semantics), posterize made safe."""
    if _arg(args, "train_interpolation", "random") == "" and "interpolation" in data_config:
        interpolation = data_config["interpolation"]
    else:
        interpolation = _arg(args, "train_interpolation", "random")
    transform = create_transform(
        data_config["input_size"],
        is_training=True,
        no_aug=bool(_arg(args, "no_aug", False)),
        train_crop_mode=getattr(args, "train_crop_mode", None),
        scale=_arg(args, "scale", None),
        ratio=_arg(args, "ratio", None),
        hflip=_arg(args, "hflip", 0.5),
        vflip=_arg(args, "vflip", 0.0),
        color_jitter=_arg(args, "color_jitter", 0.4),
        color_jitter_prob=getattr(args, "color_jitter_prob", None),
        grayscale_prob=_arg(args, "grayscale_prob", 0.0),
        gaussian_blur_prob=_arg(args, "gaussian_blur_prob", 0.0),
        auto_augment=getattr(args, "aa", None),
        interpolation=interpolation,
        mean=data_config["mean"],
        std=data_config["std"],
        re_prob=_arg(args, "reprob", 0.0),
        re_mode=_arg(args, "remode", "pixel"),
        re_count=_arg(args, "recount", 1),
        re_num_splits=0,
        use_prefetcher=False,
    )
    make_posterize_safe(transform)
    return transform


def build_eval_transform(data_config: dict[str, Any]) -> Any:
    """timm's evaluation transform (resize, center crop by ``crop_pct``, normalise)."""
    return create_transform(
        data_config["input_size"],
        is_training=False,
        interpolation=data_config.get("interpolation", "bicubic"),
        mean=data_config["mean"],
        std=data_config["std"],
        crop_pct=data_config.get("crop_pct"),
        crop_mode=data_config.get("crop_mode"),
        use_prefetcher=False,
    )


def _mixup_active(args: Any) -> bool:
    return (_arg(args, "mixup", 0.0) > 0 or _arg(args, "cutmix", 0.0) > 0
            or getattr(args, "cutmix_minmax", None) is not None)


def build_mixup(args: Any, num_classes: int) -> Mixup | None:
    """timm's ``Mixup`` exactly as timm's train.py builds it, or None when mixing is off."""
    if not _mixup_active(args):
        return None
    return Mixup(
        mixup_alpha=_arg(args, "mixup", 0.0),
        cutmix_alpha=_arg(args, "cutmix", 0.0),
        cutmix_minmax=getattr(args, "cutmix_minmax", None),
        prob=_arg(args, "mixup_prob", 1.0),
        switch_prob=_arg(args, "mixup_switch_prob", 0.5),
        mode=_arg(args, "mixup_mode", "batch"),
        label_smoothing=_arg(args, "smoothing", 0.1),
        num_classes=num_classes,
    )


def _repeats(args: Any) -> int:
    value = float(_arg(args, "aug_repeats", 0))
    if value < 0 or not value.is_integer():
        raise DataError(f"--aug-repeats {value:g} is not supported; fix: use a whole number "
                        "(DeiT uses 3; 0 turns repeated augmentation off).")
    return max(1, int(value))


def _mix_group_size(args: Any) -> int:
    g = int(_arg(args, "mix_group_size", DEFAULT_MIX_GROUP_SIZE))
    if g < 2 or g % 2:
        raise DataError(f"mix group size {g} must be an even number >= 2 (timm's Mixup pairs i with G-1-i).")
    return g


def view_settings(args: Any, data_config: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """Every setting that decides what the training views are (for cache fingerprints).

    Plain JSON types only. Two runs with equal settings and equal datasets see identical views.
    """
    interp = _arg(args, "train_interpolation", "random")
    return {
        "seed": int(_arg(args, "seed", 42)),
        "deterministic_aug": bool(_arg(args, "deterministic_aug", False)),
        "aug_repeats": _repeats(args),
        "mix_group_size": _mix_group_size(args),
        "input_size": [int(v) for v in data_config["input_size"]],
        "mean": [float(v) for v in data_config["mean"]],
        "std": [float(v) for v in data_config["std"]],
        "no_aug": bool(_arg(args, "no_aug", False)),
        "train_crop_mode": getattr(args, "train_crop_mode", None),
        "scale": [float(v) for v in _arg(args, "scale", [0.08, 1.0])],
        "ratio": [float(v) for v in _arg(args, "ratio", [3 / 4, 4 / 3])],
        "hflip": float(_arg(args, "hflip", 0.5)),
        "vflip": float(_arg(args, "vflip", 0.0)),
        "color_jitter": _arg(args, "color_jitter", 0.4),
        "color_jitter_prob": getattr(args, "color_jitter_prob", None),
        "grayscale_prob": float(_arg(args, "grayscale_prob", 0.0)),
        "gaussian_blur_prob": float(_arg(args, "gaussian_blur_prob", 0.0)),
        "aa": getattr(args, "aa", None),
        "train_interpolation": data_config.get("interpolation") if interp == "" else interp,
        "reprob": float(_arg(args, "reprob", 0.0)),
        "remode": _arg(args, "remode", "pixel"),
        "recount": int(_arg(args, "recount", 1)),
        "mixup": float(_arg(args, "mixup", 0.0)),
        "cutmix": float(_arg(args, "cutmix", 0.0)),
        "cutmix_minmax": getattr(args, "cutmix_minmax", None),
        "mixup_prob": float(_arg(args, "mixup_prob", 1.0)),
        "mixup_switch_prob": float(_arg(args, "mixup_switch_prob", 0.5)),
        "mixup_mode": _arg(args, "mixup_mode", "batch"),
        "mixup_off_epoch": int(_arg(args, "mixup_off_epoch", 0)),
        "smoothing": float(_arg(args, "smoothing", 0.1)),
        "num_classes": int(num_classes),
    }


# --------------------------------------------------------------------------------------------------
# Which sample each position of an epoch shows


class ViewLayout:
    """Maps ``(epoch, position)`` to a sample index and a repeated-augmentation copy.

    An epoch has ``num_samples`` positions (DeiT's epoch length, whatever the repeat count).

    * ``grouped=False`` (timm mode): DeiT's ``RASampler`` order: a seeded permutation with each
      index repeated ``repeats`` times in a row, so round-robin dealing sends the copies of an image
      to different ranks.
    * ``grouped=True`` (deterministic views): the permutation is cut into chunks of
      ``group_size * repeats`` images; each chunk is shown ``repeats`` times, each time in its own
      seeded order. Mix groups of ``group_size`` consecutive positions then always hold different
      images, and an image meets a different partner in each copy.
    """

    def __init__(self, num_samples: int, *, seed: int, repeats: int = 1, group_size: int = 1,
                 grouped: bool = False) -> None:
        if num_samples < 1:
            raise DataError("the training set is empty; fix: add images.")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.repeats = int(repeats)
        self.group_size = int(group_size) if grouped else 1
        self.grouped = grouped

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(sample_index, copy)`` int64 arrays for the ``num_samples`` positions of ``epoch``."""
        n, r = self.num_samples, self.repeats
        rng = np.random.default_rng(view_seed(self.seed, epoch, 0, _STREAM_ORDER))
        perm = rng.permutation(n)
        if not self.grouped:
            samples = np.repeat(perm, r)[:n]
            copies = np.tile(np.arange(r), n)[:n]
            return samples.astype(np.int64), copies.astype(np.int64)
        chunk = self.group_size * r
        # ceil(n / r) images cover the epoch's n positions; whole chunks, wrapping like DeiT's padding
        n_chunks = math.ceil(math.ceil(n / r) / chunk)
        images = np.resize(perm, n_chunks * chunk).reshape(n_chunks, 1, chunk)
        shown = np.broadcast_to(images, (n_chunks, r, chunk))
        copy_rng = np.random.default_rng(view_seed(self.seed, epoch, 0, _STREAM_COPIES))
        shown = copy_rng.permuted(shown, axis=2)
        copies = np.broadcast_to(np.arange(r).reshape(1, r, 1), shown.shape)
        return shown.reshape(-1)[:n].astype(np.int64), copies.reshape(-1)[:n].astype(np.int64)

    def positions_per_rank(self, world_size: int, mixing: bool) -> int:
        """Views each rank processes per epoch: whole mix groups, equal on every rank."""
        unit = self.group_size
        per_rank = (self.num_samples // (unit * world_size)) * unit
        if mixing and not self.grouped:
            per_rank -= per_rank % 2  # timm's Mixup needs an even batch
        return per_rank

    def rank_positions(self, rank: int, world_size: int, mixing: bool) -> np.ndarray:
        """Positions of the epoch that ``rank`` processes, in order (the same set every epoch)."""
        per_rank = self.positions_per_rank(world_size, mixing)
        if per_rank == 0:
            need = self.group_size * world_size * (2 if mixing and not self.grouped else 1)
            raise DataError(
                f"the training set has {self.num_samples} images, fewer than the {need} one epoch needs "
                f"across {world_size} process(es); fix: add images or use fewer processes.")
        unit = self.group_size
        groups = rank + world_size * np.arange(per_rank // unit)
        return (groups[:, None] * unit + np.arange(unit)[None, :]).reshape(-1)


# --------------------------------------------------------------------------------------------------
# Loaders


class _ViewDataset(torch.utils.data.Dataset):
    """Loads view keys ``(epoch, position, sample_index)``; reseeds from the view's identity."""

    def __init__(self, dataset: Any, transform: Any, seed: int) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int, int, int]:
        epoch, position, index = key
        img, target = _load_image(self.dataset, index)
        with _isolated_global_rngs():
            _seed_all(view_seed(self.seed, epoch, position, _STREAM_VIEW))
            img = self.transform(img)
        return img, target, position, epoch


class _ViewBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's batches of view keys for the current epoch."""

    def __init__(self, layout: ViewLayout, *, batch_size: int, rank: int, world_size: int,
                 mixing: bool, drop_last: bool = True) -> None:
        self.layout = layout
        self.batch_size = batch_size
        self.positions = layout.rank_positions(rank, world_size, mixing)
        n = len(self.positions)
        # timm drops the last partial batch; a whole epoch shorter than a batch still trains once
        self.num_batches = n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        samples, _ = self.layout.epoch(self.epoch)
        positions = self.positions
        for b in range(self.num_batches):
            chunk = positions[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(self.epoch, int(p), int(samples[p])) for p in chunk]


class _MixCollate:
    """Stacks a batch and applies timm's Mixup, seeded by view identity (groups) or by batch."""

    def __init__(self, mixup: Mixup | None, *, seed: int, group_size: int | None,
                 mixup_off_epoch: int) -> None:
        self.mixup = mixup
        self.seed = seed
        self.group_size = group_size  # None: timm's batch-wide mixing
        self.mixup_off_epoch = mixup_off_epoch

    def __call__(self, batch: list[tuple[torch.Tensor, int, int, int]]) -> tuple[torch.Tensor, ...]:
        inputs = torch.stack([b[0] for b in batch])
        targets = torch.tensor([b[1] for b in batch], dtype=torch.int64)
        positions = torch.tensor([b[2] for b in batch], dtype=torch.int64)
        if self.mixup is None:
            return inputs, targets, positions
        return (*self.mix(inputs, targets, positions, batch[0][3]), positions)

    def mix(self, inputs: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor,
            epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        mixup = self.mixup
        assert mixup is not None
        mixup.mixup_enabled = not (self.mixup_off_epoch and epoch >= self.mixup_off_epoch)
        with _isolated_global_rngs():
            if self.group_size is None:
                np.random.seed(view_seed(self.seed, epoch, int(positions[0]), _STREAM_MIX_BATCH) & 0xFFFFFFFF)
                return mixup(inputs, targets)
            g = self.group_size
            mixed_targets = []
            for start in range(0, len(inputs), g):
                group = int(positions[start]) // g
                np.random.seed(view_seed(self.seed, epoch, group, _STREAM_MIX_GROUP) & 0xFFFFFFFF)
                part, part_targets = mixup(inputs[start:start + g], targets[start:start + g])
                inputs[start:start + g] = part
                mixed_targets.append(part_targets)
            return inputs, torch.cat(mixed_targets)


class ViewLoader:
    """The training loader: ``set_epoch(e)``, ``len()``, yields ``(inputs, targets, view_index)``.

    ``view_index`` holds each view's position in the epoch (global across ranks); with the epoch it
    identifies the view. ``targets`` are soft ``(B, C)`` when Mixup/CutMix is on, else int64.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, batch_sampler: _ViewBatchSampler,
                 layout: ViewLayout, mixup: Mixup | None, settings: dict[str, Any]) -> None:
        self.loader = loader
        self.batch_sampler = batch_sampler
        self.layout = layout
        self.mixup = mixup
        self.settings = settings

    @property
    def mixup_active(self) -> bool:
        return self.mixup is not None

    @property
    def dataset(self) -> Any:
        return self.loader.dataset.dataset

    @property
    def epoch(self) -> int:
        return self.batch_sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def sample_indices(self, epoch: int, view_index: torch.Tensor | np.ndarray) -> np.ndarray:
        """The dataset index each view of ``epoch`` shows (for checks against a cache)."""
        return self.layout.epoch(epoch)[0][np.asarray(view_index)]

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return iter(self.loader)


def _check_num_classes(args: Any, dataset: Any) -> int:
    found = _num_classes(dataset)
    wanted = getattr(args, "num_classes", None)
    if wanted is not None and int(wanted) != found:
        raise DataError(f"--num-classes {wanted} but the training set has {found} class folders; "
                        f"fix: drop --num-classes or set it to {found}.")
    return found


def build_train_loader(args: Any, dataset: Any, data_config: dict[str, Any], *, rank: int = 0,
                       world_size: int = 1, drop_last: bool = True) -> ViewLoader:
    """The training loader for ``dataset`` with timm's transforms and Mixup (see module docstring).

    ``drop_last=False`` keeps the last partial batch (made of whole mix groups), so every position of
    the epoch is produced: what a teacher target cache needs.
    """
    num_classes = _check_num_classes(args, dataset)
    settings = view_settings(args, data_config, num_classes)
    deterministic = settings["deterministic_aug"]
    mixup = build_mixup(args, num_classes)
    group = settings["mix_group_size"]
    batch_size = int(_arg(args, "batch_size", 128))
    if batch_size < 1:
        raise DataError(f"--batch-size {batch_size} must be positive.")
    if deterministic and mixup is not None and batch_size % group:
        raise DataError(
            f"--batch-size {batch_size} is not a multiple of the mix group size {group}; "
            f"--deterministic-aug mixes in fixed groups of {group}. fix: use a batch size divisible by {group}.")
    if mixup is not None and not deterministic and batch_size % 2:
        raise DataError(f"--batch-size {batch_size} is odd; timm's Mixup/CutMix needs an even batch. "
                        "fix: use an even batch size.")
    layout = ViewLayout(len(dataset), seed=settings["seed"], repeats=settings["aug_repeats"],
                        group_size=group, grouped=deterministic)
    batch_sampler = _ViewBatchSampler(layout, batch_size=batch_size, rank=rank, world_size=world_size,
                                      mixing=mixup is not None, drop_last=drop_last)
    views = _ViewDataset(dataset, build_train_transform(args, data_config), settings["seed"])
    collate = _MixCollate(mixup, seed=settings["seed"], group_size=group if deterministic else None,
                          mixup_off_epoch=settings["mixup_off_epoch"])
    workers = int(_arg(args, "workers", 4))
    loader = torch.utils.data.DataLoader(
        views,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=bool(_arg(args, "pin_mem", False)) and torch.cuda.is_available(),
        persistent_workers=workers > 0,
        generator=torch.Generator(),  # keeps the loader from drawing on the global generator
    )
    return ViewLoader(loader, batch_sampler, layout, mixup, settings)


class _EvalDataset(torch.utils.data.Dataset):
    def __init__(self, dataset: Any, transform: Any) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, target = _load_image(self.dataset, index)
        return self.transform(img), target


def build_eval_loader(args: Any, dataset: Any, data_config: dict[str, Any], *, rank: int = 0,
                      world_size: int = 1) -> torch.utils.data.DataLoader:
    """In-order evaluation loader with timm's eval transform, yielding ``(inputs, targets)``.

    With several processes, timm's ``OrderedDistributedSampler`` splits the set (padding the last
    rank by wrapping, as timm does).
    """
    sampler = (OrderedDistributedSampler(dataset, num_replicas=world_size, rank=rank)
               if world_size > 1 else None)
    batch_size = int(_arg(args, "validation_batch_size", 0) or _arg(args, "batch_size", 128))
    workers = int(_arg(args, "workers", 4))
    return torch.utils.data.DataLoader(
        _EvalDataset(dataset, build_eval_transform(data_config)),
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=workers,
        drop_last=False,
        pin_memory=bool(_arg(args, "pin_mem", False)) and torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )


def build_check_loader(
    dataset: Any,
    data_config: dict[str, Any],
    *,
    max_images: int = 512,
    batch_size: int = 64,
    workers: int = 0,
    seed: int = 0,
) -> torch.utils.data.DataLoader:
    """A loader for the teacher check: a seeded random subset of ``dataset`` (at most ``max_images``,
    drawn without replacement) with timm's eval transform for ``data_config``, yielding ``(inputs, targets)``.

    The subset depends only on ``(len(dataset), max_images, seed)``; its indices are read in file order.
    """
    if int(max_images) < 1:
        raise DataError(f"--teacher-check-images {max_images} must be >= 1.")
    if int(batch_size) < 1:
        raise DataError(f"batch size {batch_size} must be >= 1.")
    n = len(dataset)
    if n == 0:
        raise DataError("the validation split holds no images, so the teacher cannot be checked; fix: add "
                        "images (or pass --no-teacher-check).")
    count = min(n, int(max_images))
    indices = np.sort(np.random.default_rng(int(seed)).choice(n, size=count, replace=False)).tolist()
    subset = torch.utils.data.Subset(_EvalDataset(dataset, build_eval_transform(data_config)), indices)
    # Its own generator: checking the teacher must not move the global generator the student's training draws on.
    return torch.utils.data.DataLoader(subset, batch_size=int(batch_size), shuffle=False,
                                       num_workers=int(workers), drop_last=False, generator=torch.Generator())
