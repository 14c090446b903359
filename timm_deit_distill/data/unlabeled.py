"""Unlabelled images: opened from a folder (flat or nested) or any map-style source, checked against the labelled
data (not the training split itself, no validation image by content), and loaded beside the labelled batches.

A training batch of ``B`` images holds ``B - u`` labelled views followed by ``u`` unlabelled ones. An epoch is one
pass over the labelled images; the unlabelled ones come from passes of their own (seeded, ordered and augmented
as the labelled views are, under a seed of their own) that continue across epochs: batch ``b`` of epoch ``e`` is
the ``(e * batches_per_epoch + b)``-th unlabelled batch, so a resumed run draws exactly what the uninterrupted one
did. Mixup/CutMix mix within each kind (never a labelled image with an unlabelled one).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import DataError
from .sources import DataSettings, is_streamed, open_split, sample_name, source_of, source_size
from .sources.source_folder import FolderSource, _scan_images
from .views import view_seed

__all__ = ["open_unlabeled", "check_unlabeled", "unlabeled_seed", "unlabeled_view", "MixedLoader", "MixedViews",
           "content_digest", "passes_consumed", "batches_per_pass", "STREAM_UNLABELED"]

_logger = logging.getLogger(__name__)

#: The seed stream of the unlabelled views (:func:`~timm_deit_distill.data.views.view_seed`'s ``stream``).
STREAM_UNLABELED = 6


def unlabeled_seed(seed: int) -> int:
    """The seed the unlabelled views are ordered and augmented under: their own identity, never a labelled view's."""
    return view_seed(int(seed), 0, 0, STREAM_UNLABELED) & 0x7FFFFFFF


def unlabeled_view(view: Any) -> Any:
    """The view settings of the unlabelled images: the run's, under :func:`unlabeled_seed`."""
    return replace(view, augment=replace(view.augment, seed=unlabeled_seed(view.augment.seed)))


def batches_per_pass(num_samples: int, view: Any, batch_size: int, *, world_size: int = 1) -> int:
    """Batches of ``batch_size`` one process draws from one pass over ``num_samples`` images (the training
    loader's own count: per-rank positions, the last partial batch dropped)."""
    from .loaders import _ViewBatchSampler
    from .views import ViewLayout

    a = view.augment
    layout = ViewLayout(int(num_samples), seed=int(a.seed), repeats=a.repeats, group_size=int(a.mix_group_size),
                        grouped=bool(a.deterministic_aug))
    return _ViewBatchSampler(layout, batch_size=int(batch_size), rank=0, world_size=int(world_size),
                             mixing=bool(a.mixing)).num_batches


def passes_consumed(epochs: int, labeled_batches: int, unlabeled_batches: int) -> int:
    """Passes over the unlabelled images (0..P-1, whole or begun) that ``epochs`` epochs of ``labeled_batches``
    batches consume when a pass gives ``unlabeled_batches`` batches: batch ``g`` of the run is of pass
    ``g // unlabeled_batches``."""
    return (int(epochs) * int(labeled_batches) - 1) // int(unlabeled_batches) + 1


def open_unlabeled(data_dir: str | None, dataset: str | None, split: str, *, skip_bad_images: bool,
                   input_img_mode: str, batch_size: int, seed: int) -> Any:
    """The unlabelled images: ``dataset`` (a source --dataset takes, ``data_dir`` its root, ``split`` its split) or,
    without it, the image folder ``data_dir`` (every image under it; class folders allowed, their names ignored).
    :class:`DataError` naming the fix for a missing, empty or unreadable source, or a stream (no index to draw
    from)."""
    if dataset:
        try:
            ds = _open_dataset(data_dir, dataset, split, skip_bad_images=skip_bad_images,
                               input_img_mode=input_img_mode, batch_size=batch_size, seed=seed)
        except DataError as e:  # the sources name the labelled data's flags: name the ones the user gave here
            raise DataError(_UNLABELED_FLAGS.sub(lambda m: "--unlabeled-" + m.group(0)[2:], str(e))) from None
    else:
        ds = _open_folder(str(data_dir), skip_bad_images=skip_bad_images, input_img_mode=input_img_mode)
    if source_size(ds) == 0:
        raise DataError(f"{_name(data_dir, dataset)} holds no images; fix: point it at unlabelled images.")
    return ds


# --dataset / --data-dir as whole flags (not --dataset-download, nor a flag already spelled --unlabeled-...)
_UNLABELED_FLAGS = re.compile(r"(?<![\w-])--(?:dataset|data-dir)(?![\w-])")


def _open_dataset(data_dir: str | None, dataset: str, split: str, *, skip_bad_images: bool, input_img_mode: str,
                  batch_size: int, seed: int) -> Any:
    """Split ``split`` of the map-style source ``dataset`` (``data_dir`` its root), checked as a training split."""
    data = DataSettings(data_dir=data_dir, dataset=dataset, train_split=split, val_split=split,
                        skip_bad_images=skip_bad_images, input_img_mode=input_img_mode,
                        split_flags="--unlabeled-split")
    if data.source.streamed:
        raise DataError(f"--unlabeled-dataset {dataset} is a stream: unlabelled images are drawn by index "
                        "(seeded, resumable); fix: a map-style source (an image folder, hfds/, torch/).")
    data.source.check_split(data, split, training=True)
    return open_split(data, split, training=True, num_classes=None, batch_size=batch_size, seed=seed)


def _name(data_dir: str | None, dataset: str | None) -> str:
    return f"--unlabeled-dataset {dataset}" if dataset else f"--unlabeled-data-dir {data_dir}"


def _open_folder(path: str, *, skip_bad_images: bool, input_img_mode: str) -> Any:
    """Every image under ``path`` as one timm ImageDataset (timm's folder reader; its labels are ignored)."""
    from timm.data import create_dataset

    from .sources.base import SourceInfo

    if not os.path.isdir(path):
        what = "is a file, not a folder" if os.path.exists(path) else "does not exist"
        raise DataError(f"--unlabeled-data-dir {path} {what}; fix: pass a folder of images.")
    try:
        ds = create_dataset("", root=path, split="", search_split=False)
    except RuntimeError:  # timm's reader: "Found 0 images in subfolders of ..."
        raise DataError(f"--unlabeled-data-dir {path} holds no images; fix: point it at a folder of images "
                        "(flat or nested).") from None
    try:
        ds.skipped_files = _scan_images(ds, path, skip=skip_bad_images)
    except DataError as e:
        raise DataError(f"--unlabeled-data-dir: {e}") from None
    ds.input_img_mode = input_img_mode
    ds.source_info = SourceInfo(source=_folder_source(), spec="folder", split="", location=path,
                                input_img_mode=input_img_mode, classes=None, num_classes=None,
                                skip_bad_images=skip_bad_images)
    return ds


def _folder_source() -> FolderSource:
    from .sources import SOURCES

    return next(s for s in SOURCES if isinstance(s, FolderSource))


def _same_split(a: Any, b: Any) -> bool:
    ia, ib = a.source_info, b.source_info
    if ia.kind in ("folder", "tar") and ib.kind in ("folder", "tar"):
        return os.path.realpath(str(ia.location)) == os.path.realpath(str(ib.location))
    return (ia.kind, ia.spec, str(ia.location), ia.split) == (ib.kind, ib.spec, str(ib.location), ib.split)


def content_digest(dataset: Any, index: int, *, file_bytes: bool) -> str:
    """sha256 of sample ``index``: its file's bytes (``file_bytes``: image folders), else its decoded pixels
    (mode, size and bytes), so the same image is found whatever its name."""
    if file_bytes:
        with open(dataset.reader.samples[index][0], "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    img, _ = source_of(dataset).load(dataset, index)
    digest = hashlib.sha256(f"{img.mode}{img.size}".encode())
    digest.update(img.tobytes())
    return digest.hexdigest()


def check_unlabeled(unlabeled: Any, train: Any, val: Any, *, flag: str) -> None:
    """Refuse unlabelled images that are the labelled training split, or that hold a validation image (compared
    by content: the sha256 of the files of two image folders, else of the decoded pixels), naming the first one."""
    if _same_split(unlabeled, train):
        raise DataError(f"{flag} is the labelled training split ({train.source_info.location}): its images already "
                        "carry labels; fix: point it at images without labels.")
    if is_streamed(val):  # a stream has no index to hash; its images cannot be compared before training
        _logger.warning("%s is not compared with the validation images: they are streamed (no index to read them "
                        "by before training); make sure they share no image, or the accuracy is measured on images "
                        "the student learned from.", flag)
        return
    files = unlabeled.source_info.kind == "folder" and val.source_info.kind == "folder"
    seen = {content_digest(val, i, file_bytes=files): i for i in range(len(val))}
    for i in range(len(unlabeled)):
        match = seen.get(content_digest(unlabeled, i, file_bytes=files))
        if match is not None:
            raise DataError(f"{flag}: {sample_name(unlabeled, i)} is the validation image {sample_name(val, match)} "
                            "(same content): the validation accuracy would be measured on images the student "
                            "learned from; fix: remove the validation images from the unlabelled ones.")


@dataclass(frozen=True)
class MixedViews:
    """The view identities of a mixed batch: the labelled views' positions in the epoch, then the unlabelled ones'
    positions in their pass ``unlabeled_pass`` (an unlabelled view is ``(pass, position)`` under its own seed,
    whatever the process count): what a teacher target cache replays."""

    labeled: torch.Tensor
    unlabeled: torch.Tensor
    unlabeled_pass: int


class MixedLoader:
    """The training loader of a run with unlabelled images: each batch is a labelled batch followed by an
    unlabelled one, yielded as ``(inputs, targets, views)`` with ``targets`` the labelled samples' (the first
    ``len(targets)`` of ``inputs``) and ``views`` both kinds' identities (:class:`MixedViews`); ``len()`` and
    ``set_epoch`` are the labelled loader's."""

    def __init__(self, labeled: Any, unlabeled: Any) -> None:
        self.labeled, self.unlabeled = labeled, unlabeled

    @property
    def mixup_active(self) -> bool:
        return self.labeled.mixup_active

    @property
    def batch_sampler(self) -> Any:
        return self.labeled.batch_sampler

    def set_epoch(self, epoch: int) -> None:
        self.labeled.set_epoch(epoch)
        self.unlabeled.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.labeled)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        sampler = self.unlabeled.batch_sampler
        first = sampler.epoch * sampler.per_epoch  # this epoch's first batch in the sequence of unlabelled passes
        for b, ((inputs, targets, views), (more, _, positions)) in enumerate(zip(self.labeled, self.unlabeled,
                                                                                  strict=True)):
            yield torch.cat([inputs, more]), targets, MixedViews(views, positions, (first + b) // sampler.num_batches)
