"""What a training view is: its identity ``(seed, epoch, position)``, the settings that decide it, and
which sample each position of an epoch shows (see :mod:`timm_deit_distill.data` for the two modes).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.utils.data

from ..errors import DataError

__all__ = ["AugmentSettings", "ViewSettings", "ViewLayout", "view_seed", "view_seeds", "seed_all", "isolated_global_rngs",
           "STREAM_ORDER", "STREAM_VIEW", "STREAM_MIX_GROUP", "STREAM_MIX_BATCH", "STREAM_COPIES"]

# Stream tags keep the seeds of different consumers of one view identity independent.
STREAM_ORDER = 1
STREAM_VIEW = 2
STREAM_MIX_GROUP = 3
STREAM_MIX_BATCH = 4
STREAM_COPIES = 5


# --------------------------------------------------------------------------------------------------
# Seeds


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def view_seed(seed: int, epoch: int, position: int, stream: int = STREAM_VIEW) -> int:
    """A 63-bit seed that depends only on ``(seed, epoch, position, stream)``.

    splitmix64 chained over the fields: cheap (about a microsecond) and well mixed, so neighbouring
    positions get unrelated seeds.
    """
    h = 0
    for part in (seed, epoch, position, stream):
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h >> 1


def _splitmix64_array(x: np.ndarray) -> np.ndarray:
    # uint64 arithmetic wraps modulo 2**64, which is what the masks do in _splitmix64
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def view_seeds(seed: int, epoch: int, positions: Sequence[int], stream: int = STREAM_VIEW) -> list[int]:
    """:func:`view_seed` of many positions at once (equal to it position by position).

    A loader computes a batch's seeds in one go: a quarter of the per-view cost of the scalar version.
    """
    h = 0
    for part in (seed, epoch):
        h = _splitmix64(h ^ (int(part) & _MASK64))
    x = np.asarray(positions, dtype=np.int64).astype(np.uint64)  # positions are >= 0
    x = _splitmix64_array(np.uint64(h) ^ x)
    x = _splitmix64_array(x ^ np.uint64(int(stream) & _MASK64))
    return (x >> np.uint64(1)).tolist()


def seed_all(seed64: int) -> None:
    random.seed(seed64)
    np.random.seed(seed64 & 0xFFFFFFFF)
    # far cheaper than torch.manual_seed, which also walks every accelerator
    torch.default_generator.manual_seed(seed64)


@contextmanager
def isolated_global_rngs() -> Iterator[None]:
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
# Settings


@dataclass(frozen=True)
class AugmentSettings:
    """Every flag that decides what a training view is, named and valued as timm's train.py flags.

    The values are the command line's (its parser and the recipes hold the defaults; nothing here repeats
    them) and reach timm's ``create_transform`` and ``Mixup`` as given. Made only with valid values:
    ``aug_repeats`` (DeiT's repeated augmentation; 0 and 1 are off) must be whole and ``mix_group_size``
    even, else :class:`DataError`.
    """

    seed: int
    deterministic_aug: bool
    aug_repeats: float
    mix_group_size: int
    no_aug: bool
    train_crop_mode: str | None
    scale: Sequence[float]
    ratio: Sequence[float]
    hflip: float
    vflip: float
    color_jitter: float
    color_jitter_prob: float | None
    grayscale_prob: float | None
    gaussian_blur_prob: float | None
    aa: str | None
    train_interpolation: str
    reprob: float
    remode: str
    recount: int
    mixup: float
    cutmix: float
    cutmix_minmax: Sequence[float] | None
    mixup_prob: float
    mixup_switch_prob: float
    mixup_mode: str
    mixup_off_epoch: int
    smoothing: float

    def __post_init__(self) -> None:
        repeats = float(self.aug_repeats)
        if repeats < 0 or not repeats.is_integer():
            raise DataError(f"--aug-repeats {repeats:g} is not supported; fix: use a whole number >= 0 "
                            "(DeiT uses 3; 0 turns repeated augmentation off).")
        g = int(self.mix_group_size)
        if g < 2 or g % 2:
            raise DataError(f"--mix-group-size {g} must be an even number >= 2 (timm's Mixup pairs i with G-1-i).")

    @property
    def repeats(self) -> int:
        """Copies of each image per epoch (1: no repeated augmentation)."""
        return max(1, int(float(self.aug_repeats)))

    @property
    def mixing(self) -> bool:
        """Whether Mixup/CutMix is on (timm's rule)."""
        return self.mixup > 0 or self.cutmix > 0 or self.cutmix_minmax is not None


@dataclass(frozen=True)
class ViewSettings:
    """Everything that decides what the training views are: the flags, the student's data config
    (input size, normalisation, the interpolation ``train_interpolation ''`` stands for) and the class count.

    Read by the training loader, Mixup and the teacher target cache's fingerprint; two runs with equal view
    settings and equal datasets see identical views.
    """

    augment: AugmentSettings
    input_size: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str | None
    num_classes: int

    @classmethod
    def resolve(cls, augment: AugmentSettings, data_config: Mapping[str, Any], num_classes: int) -> ViewSettings:
        """The view settings of ``augment`` for a student whose timm data config is ``data_config``."""
        return cls(augment=augment, input_size=tuple(data_config["input_size"]), mean=tuple(data_config["mean"]),
                   std=tuple(data_config["std"]), interpolation=data_config.get("interpolation"),
                   num_classes=int(num_classes))

    @property
    def train_interpolation(self) -> str | None:
        """The training transform's interpolation: the flag's, or the data config's for ``''``."""
        return self.interpolation if self.augment.train_interpolation == "" else self.augment.train_interpolation

    def deterministic(self) -> ViewSettings:
        """These settings with ``--deterministic-aug`` on: the only views a teacher target cache can replay."""
        return replace(self, augment=replace(self.augment, deterministic_aug=True))

    def fingerprint(self) -> dict[str, Any]:
        """The settings as plain JSON values: the ``views`` of a teacher target cache's fingerprint.

        Keys and values are those every cache so far recorded (a cache built before is still replayed):
        ``grayscale_prob`` / ``gaussian_blur_prob`` unset (off) are recorded as 0.0, repeats as the copy count.
        """
        a = self.augment
        return {
            "seed": int(a.seed),
            "deterministic_aug": bool(a.deterministic_aug),
            "aug_repeats": a.repeats,
            "mix_group_size": int(a.mix_group_size),
            "input_size": [int(v) for v in self.input_size],
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "no_aug": bool(a.no_aug),
            "train_crop_mode": a.train_crop_mode,
            "scale": [float(v) for v in a.scale],
            "ratio": [float(v) for v in a.ratio],
            "hflip": float(a.hflip),
            "vflip": float(a.vflip),
            "color_jitter": a.color_jitter,
            "color_jitter_prob": a.color_jitter_prob,
            "grayscale_prob": float(a.grayscale_prob or 0.0),
            "gaussian_blur_prob": float(a.gaussian_blur_prob or 0.0),
            "aa": a.aa,
            "train_interpolation": self.train_interpolation,
            "reprob": float(a.reprob),
            "remode": a.remode,
            "recount": int(a.recount),
            "mixup": float(a.mixup),
            "cutmix": float(a.cutmix),
            "cutmix_minmax": a.cutmix_minmax,
            "mixup_prob": float(a.mixup_prob),
            "mixup_switch_prob": float(a.mixup_switch_prob),
            "mixup_mode": a.mixup_mode,
            "mixup_off_epoch": int(a.mixup_off_epoch),
            "smoothing": float(a.smoothing),
            "num_classes": int(self.num_classes),
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
        rng = np.random.default_rng(view_seed(self.seed, epoch, 0, STREAM_ORDER))
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
        copy_rng = np.random.default_rng(view_seed(self.seed, epoch, 0, STREAM_COPIES))
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
