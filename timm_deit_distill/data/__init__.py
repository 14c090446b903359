"""The data pipeline: timm's dataset sources, timm's transforms and Mixup, DeiT's repeated augmentation.

Split as timm splits ``timm/data``: :mod:`.sources` (``--dataset``: one module per kind of source, in the
manner of timm's ``data/readers/``: image folders and tars, hfds/, hfids/, wds/, torch/, each a class with one
interface behind one lookup, and :func:`open_source`, the one road from :class:`DataSettings` to checked
splits), :mod:`.streams` (the streams' loaders), :mod:`.transforms` (timm's transforms, the Pillow posterize
fix), :mod:`.views` (view identity, seeds, the settings that decide a view), :mod:`.loaders` (the training,
evaluation and check loaders, Mixup), :mod:`.digits` (the bundled digits as an ImageFolder).

For map-style sources (everything but streams), everything random here is a function of ``(seed, epoch)``, so a
run killed and resumed at an epoch boundary sees exactly the same images, augmentations and mixes. Two modes:

* default (timm's behaviour): sample order is a seeded permutation, repeated augmentation follows
  DeiT's ``RASampler`` layout (copies of an image are consecutive and dealt round-robin to ranks),
  Mixup/CutMix is timm's batch-wide ``Mixup`` (one lambda per batch, sample ``i`` mixed with
  ``B-1-i``). Views then depend on ``(seed, epoch)`` and on the batch size and world size.
* ``deterministic_aug`` (:class:`AugmentSettings`): a *view* is identified by ``(seed, epoch, position)``. Its sample
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

from ..errors import DataError
from .loaders import (
    CHECK_IMAGES,
    LoaderSettings,
    ViewLoader,
    build_check_loader,
    build_eval_loader,
    build_mixup,
    build_train_loader,
)
from .sources import (
    SOURCES,
    TFDS_REFUSAL,
    DataSettings,
    check_num_classes,
    check_same_classes,
    check_views_supported,
    dataset_fingerprint,
    dataset_help,
    is_streamed,
    label_names,
    load_image,
    open_source,
    open_split,
    resolve_input_img_mode,
    sample_name,
    source_for,
    source_size,
    split_dataset_name,
)
from .transforms import build_eval_transform, build_train_transform, make_posterize_safe, safe_posterize
from .views import AugmentSettings, ViewLayout, ViewSettings, view_seed

__all__ = [
    "DataError",
    "AugmentSettings",
    "ViewSettings",
    "LoaderSettings",
    "ViewLayout",
    "ViewLoader",
    "DataSettings",
    "open_source",
    "open_split",
    "split_dataset_name",
    "resolve_input_img_mode",
    "check_views_supported",
    "is_streamed",
    "source_size",
    "sample_name",
    "TFDS_REFUSAL",
    "SOURCES",
    "source_for",
    "dataset_help",
    "label_names",
    "check_num_classes",
    "check_same_classes",
    "dataset_fingerprint",
    "load_image",
    "build_train_loader",
    "build_eval_loader",
    "build_check_loader",
    "CHECK_IMAGES",
    "build_train_transform",
    "build_eval_transform",
    "build_mixup",
    "make_posterize_safe",
    "safe_posterize",
    "view_seed",
]
