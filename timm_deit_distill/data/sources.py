"""timm's dataset sources, opened through timm's own ``create_dataset`` and checked before any work.

``--dataset`` takes timm train.py's names; every source is read by timm's reader for it, with train.py's
keywords. What this module adds is the checks timm leaves out (each one line naming the fix, before any
work where it can be known then) and one way for the rest of the package to ask any source for a sample,
its classes and its identity:

=================  ====================================  ======  ===========================================
``--dataset``      what timm reads                       index   ``--data-dir``
=================  ====================================  ======  ===========================================
'' (empty)         image folders ``DIR/<split>/<class>``  stable  the folder holding the split folders
                   or image tars ``DIR/<split>.tar``
``hfds/NAME``      Hugging Face datasets (map-style):    stable  the datasets cache dir (default: HF's)
                   a Hub id, a local parquet folder or
                   a ``save_to_disk`` folder
``torch/NAME``     torchvision's datasets                stable  torchvision's root
``hfids/NAME``     Hugging Face datasets, streamed       none    the datasets cache dir (default: HF's)
``wds/NAME``       WebDataset shards + timm _info.json   none    the shard folder or URL prefix
=================  ====================================  ======  ===========================================

Sources with a stable index (map-style) get everything the package does with views: deterministic views,
the teacher target cache, exact resume. Streams (:mod:`.streams`) are read as timm's loader reads them;
their views are not a function of a stable identity, so ``--deterministic-aug`` and ``--distill-cache`` are
refused on them (:func:`check_views_supported`).

:mod:`.opening` opens them (``open_source``, ``open_split``). Every dataset opened there carries a
:class:`SourceInfo` as ``dataset.source_info``; the helpers here (:func:`load_image`, :func:`label_names`,
:func:`check_num_classes`, :func:`dataset_fingerprint`, ...) answer for any source, image folders included.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError
from . import datasets as _folders

__all__ = [
    "DataSettings", "SourceInfo", "SOURCE_PREFIXES", "STREAM_PREFIXES", "TFDS_REFUSAL", "split_dataset_name",
    "resolve_input_img_mode", "check_views_supported", "source_kind", "is_streamed",
    "load_image", "image_loader", "label_names", "check_num_classes", "dataset_fingerprint", "load_sample", "sample_name",
    "class_names", "source_fingerprint", "source_size", "short_value", "class_difference", "check_same_classes",
]

_logger = logging.getLogger(__name__)

SOURCE_PREFIXES = ("hfds", "hfids", "wds", "torch")
STREAM_PREFIXES = ("wds", "hfids")
_FOLDER_NAMES = ("", "folder", "imagefolder", "image_folder")
TFDS_REFUSAL = ("tfds/ (TensorFlow datasets) is not supported: it needs TensorFlow and tensorflow-datasets, far "
                "heavier than the other sources' extras, for data the Hugging Face Hub also serves as parquet "
                "(hfds/, hfids/) or WebDataset shards (wds/)")
# Pillow modes a model can take, with their channel counts (what --in-chans must then be).
_IMAGE_MODES = {"RGB": 3, "L": 1, "RGBA": 4, "CMYK": 4, "YCbCr": 3, "LAB": 3, "HSV": 3}
# torchvision datasets timm's create_dataset knows; cifar10/100 unpickle their batch files, which this package
# never does (weights_only everywhere).
_TORCH_SAFE = ("mnist", "kmnist", "fashion_mnist", "qmnist", "places365", "inaturalist", "inat", "imagenet",
               "image_folder", "folder")
_TORCH_PICKLED = ("cifar10", "cifar100")
_TORCH_DOWNLOADS = ("mnist", "kmnist", "fashion_mnist", "qmnist", "places365", "inaturalist", "inat")
_SPLIT_SYNONYMS = _folders._SPLIT_SYNONYMS
# How much of a sample value a message quotes: an image column's bytes would make a line of kilobytes.
_VALUE_CHARS = 60


# ------------------------------------------------------------------------------------------------------------
# Settings


def split_dataset_name(dataset: str) -> tuple[str, str]:
    """``--dataset`` as ``(prefix, name)``: ``''`` for image folders/tars, else hfds, hfids, wds or torch.

    Refuses (:class:`DataError`) ``tfds/`` (see :data:`TFDS_REFUSAL`), an unknown prefix, and a bare name other
    than timm's folder spellings (timm would silently read an image folder for it).
    """
    dataset = dataset or ""
    prefix, sep, name = dataset.partition("/")
    prefix = prefix.lower()
    if not sep:
        if dataset.lower() in _FOLDER_NAMES:
            return "", ""
        hint = f" Did you mean torch/{dataset.lower()}?" if dataset.lower() in (*_TORCH_SAFE, *_TORCH_PICKLED) else ""
        raise DataError(f"--dataset {dataset!r} names no source: timm reads TYPE/NAME (hfds/NAME, hfids/NAME, "
                        f"wds/NAME, torch/NAME) or '' for image folders.{hint} fix: add the type, or leave "
                        "--dataset empty for an image folder.")
    if prefix == "tfds":
        raise DataError(f"--dataset {dataset}: {TFDS_REFUSAL}. fix: use one of those.")
    if prefix not in SOURCE_PREFIXES:
        raise DataError(f"--dataset {dataset}: unknown source type {prefix!r}; timm reads hfds/, hfids/, wds/ and "
                        "torch/ (tfds/ is not supported), or '' for image folders. fix: use one of those.")
    if not name:
        raise DataError(f"--dataset {dataset}: the source needs a name after '{prefix}/' (e.g. {prefix}/"
                        f"{'mnist' if prefix == 'torch' else 'imagenet-1k'}); fix: add the name.")
    if prefix == "torch":
        name = name.lower()  # timm lower-cases torch/ names only
        if name in _TORCH_PICKLED:
            raise DataError(f"--dataset {dataset}: torchvision's {name.upper()} unpickles its batch files, which "
                            "can run code; this package never unpickles. fix: convert it to an image folder, or read "
                            "it from the Hub (e.g. --dataset hfds/uoft-cs/cifar10).")
        if name not in _TORCH_SAFE:
            raise DataError(f"--dataset {dataset}: timm knows no torchvision dataset {name!r}; it reads "
                            f"{', '.join(n for n in _TORCH_SAFE if n not in ('inat', 'folder'))}; fix: use one of those, or hfds/ for "
                            "data on the Hub.")
    return prefix, name


def resolve_input_img_mode(flag: str | None, in_chans: int) -> str:
    """The mode images are converted to: ``--input-img-mode``, else timm's rule (RGB for 3 channels, L for 1).

    Refused when the mode's channel count is not the model's (timm fails in the first batch instead).
    """
    if flag is None:
        if in_chans not in (1, 3):
            raise DataError(f"--in-chans {in_chans}: timm reads images as RGB (3 channels) or L (1); fix: pass "
                            "--input-img-mode with a mode of that many channels (e.g. RGBA or CMYK for 4).")
        return "RGB" if in_chans == 3 else "L"
    if flag not in _IMAGE_MODES:
        raise DataError(f"--input-img-mode {flag!r} is not a Pillow mode a model can take; use one of "
                        f"{', '.join(_IMAGE_MODES)}; fix: use one of those.")
    if _IMAGE_MODES[flag] != in_chans:
        raise DataError(f"--input-img-mode {flag} gives {_IMAGE_MODES[flag]} channel(s) but the model takes "
                        f"{in_chans}; fix: set --in-chans {_IMAGE_MODES[flag]} or use a {in_chans}-channel mode "
                        f"({', '.join(m for m, c in _IMAGE_MODES.items() if c == in_chans) or 'none'}).")
    return flag


@dataclass(frozen=True)
class DataSettings:
    """Where the data is and how timm reads it: ``--dataset`` and timm train.py's flags for it.

    ``input_img_mode`` is the resolved mode (:func:`resolve_input_img_mode`). Made only with flags that mean
    something for the source, else :class:`DataError` naming the flag (timm ignores most of them silently).
    """

    data_dir: str | None
    train_split: str
    val_split: str
    class_map: str
    skip_bad_images: bool
    dataset: str
    train_num_samples: int | None
    val_num_samples: int | None
    input_key: str | None
    target_key: str | None
    input_img_mode: str
    download: bool
    # how the command names its split flags, for messages (eval has one --split)
    split_flags: str = "--train-split / --val-split"

    def __post_init__(self) -> None:
        _check_source_flags(self)

    @property
    def prefix(self) -> str:
        """The source type: '' (folder/tar), hfds, hfids, wds or torch."""
        return split_dataset_name(self.dataset)[0]

    @property
    def name(self) -> str:
        return split_dataset_name(self.dataset)[1]

    @property
    def streamed(self) -> bool:
        """Whether the source is a stream (wds/, hfids/): no stable sample index."""
        return self.prefix in STREAM_PREFIXES


def _check_source_flags(data: DataSettings) -> None:
    prefix, _ = split_dataset_name(data.dataset)
    what = {"": "an image folder", "hfds": "hfds/ (map-style)", "torch": "torch/", "wds": "wds/",
            "hfids": "hfids/"}[prefix]
    for flag, value in (("--train-num-samples", data.train_num_samples), ("--val-num-samples", data.val_num_samples)):
        if value is not None and value < 1:
            raise DataError(f"{flag} {value} must be >= 1; fix: a positive sample count.")
        if value is not None and prefix not in STREAM_PREFIXES:
            raise DataError(f"{flag} {value} does nothing for {what}: timm reads every sample of a map-style source; "
                            "it sizes streamed sources (wds/, hfids/). fix: drop it.")
    if data.download and not (prefix == "hfids" or (prefix == "torch" and data.name in _TORCH_DOWNLOADS)):
        why = ("datasets downloads a Hub dataset whenever it is online" if prefix == "hfds"
               else "there is nothing timm could download")
        raise DataError(f"--dataset-download does nothing for {what}{' ' + data.name if prefix == 'torch' else ''}: "
                        f"{why}. It applies to torch/ datasets torchvision downloads and to hfids/ (a local "
                        "prepared copy). fix: drop it.")
    if data.class_map and prefix in ("torch", "wds"):
        why = ("torchvision fixes the classes" if prefix == "torch"
               else "wds/ targets are integers with no class names for a name map to match")
        raise DataError(f"--class-map {data.class_map} does not work for {what}: {why}. fix: drop it.")
    if data.input_key is not None:
        key = data.input_key
        if prefix in ("", "torch"):
            if prefix == "torch":
                raise DataError(f"--input-key {key}: torchvision datasets take no keys. fix: drop it.")
            bad = [e for e in key.split(";") if not e.startswith(".")]
            if bad:
                raise DataError(f"--input-key {key}: for an image folder timm reads it as file extensions with the "
                                f"dot, ';'-separated; {bad[0]!r} has none. fix: --input-key "
                                f"{';'.join(e if e.startswith('.') else '.' + e for e in key.split(';'))}")
        elif prefix == "wds" and "jpg" not in key.split(";"):
            # timm's wds decoder always stores the image under 'jpg' and then renames input_key: without it, no
            # sample is found (a timm bug); the alternatives are tried in order.
            raise DataError(f"--input-key {key}: timm's wds/ reader finds the image only when the alternatives "
                            f"include jpg (it renames its decoded 'jpg' by this key). fix: --input-key {key};jpg")
    if data.target_key is not None:
        if prefix in ("", "torch"):
            why = "takes the class from the folder name" if prefix == "" else "takes no keys"
            raise DataError(f"--target-key {data.target_key}: {what} {why}; it names a column of hfds/ / hfids/ data "
                            "or a json field of wds/ shards. fix: drop it.")
        if "," in data.target_key:
            raise DataError(f"--target-key {data.target_key}: several fields make a multi-label target, which "
                            "DeiT's single-label loss cannot train. fix: name one field.")
    if data.skip_bad_images and prefix == "hfids":
        raise DataError("--skip-bad-images cannot skip on hfids/: datasets decodes the image inside its stream, so "
                        "an unreadable one stops the stream and cannot be named or passed over. fix: drop it, or "
                        "read the data map-style (hfds/), where bad images are found and skipped before training.")


def check_views_supported(dataset: str, *, deterministic_aug: bool, distill_cache: bool, aug_repeats: int,
                          what: str | None = None) -> None:
    """Refuse on a stream (``--dataset`` wds/ or hfids/) what needs a stable sample index: ``--deterministic-aug``,
    ``--distill-cache`` (``what`` names another asker, e.g. ``cache build``), DeiT's repeated augmentation
    (``--aug-repeats``)."""
    prefix, _ = split_dataset_name(dataset)
    if prefix not in STREAM_PREFIXES:
        return
    if deterministic_aug or distill_cache:
        flag = what or ("--distill-cache" if distill_cache else "--deterministic-aug")
        raise DataError(
            f"{flag} needs every view to be a function of a stable sample index, which {prefix}/ streams do not "
            "have: timm's stream readers yield (image, target) without the sample's key and shuffle inside each "
            f"loader worker. fix: {'drop it, or ' if what is None else ''}read the data map-style (hfds/, an image "
            "folder or tar, torch/), which supports deterministic views and the teacher target cache.")
    if aug_repeats > 1:
        raise DataError(f"--aug-repeats {aug_repeats}: repeated augmentation deals copies of each indexed image to "
                        f"the processes, and {prefix}/ streams have no index (timm refuses it on streams too). fix: "
                        "drop it, or read the data map-style (hfds/, an image folder or tar, torch/).")


def short_value(value: Any) -> str:
    """A sample value as a message quotes it: its type and a repr cut to about 60 characters."""
    text = repr(value)
    if len(text) > _VALUE_CHARS:
        text = text[:_VALUE_CHARS - 3] + "..."
    return f"{type(value).__name__} {text}"


def class_difference(first: Sequence[str], second: Sequence[str], first_what: str, second_what: str) -> str | None:
    """Where two class lists (names in index order) first differ, said in words; None when they are the same.

    E.g. "class 0 is '0' in train but '9' in validation (10 and 10 classes, the same names in another order)".
    """
    first, second = [str(n) for n in first], [str(n) for n in second]
    if first == second:
        return None
    i = next((i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b), min(len(first), len(second)))
    name_a = repr(first[i]) if i < len(first) else "missing"
    name_b = repr(second[i]) if i < len(second) else "missing"
    how = ", the same names in another order" if sorted(first) == sorted(second) else ""
    return (f"class {i} is {name_a} in {first_what} but {name_b} in {second_what} ({len(first)} and {len(second)} "
            f"classes{how})")


def check_same_classes(first: Sequence[str] | None, second: Sequence[str] | None, first_what: str, second_what: str,
                       fix: str) -> None:
    """Refuse (:class:`DataError`) two class lists that differ, naming the first differing class and ``fix``;
    nothing to compare when either is unknown (None or empty)."""
    if not first or not second:
        return
    difference = class_difference(first, second, first_what, second_what)
    if difference is not None:
        raise DataError(f"different classes: {difference}; fix: {fix}")


# ------------------------------------------------------------------------------------------------------------
# What an opened dataset carries


@dataclass
class SourceInfo:
    """What the package knows about an opened dataset beyond timm's object (``dataset.source_info``)."""

    kind: str  # folder, tar, hfds, torch, wds, hfids
    spec: str  # the --dataset value (or 'folder' / 'tar')
    split: str  # the split asked for
    location: str  # the split folder or tar, the dataset name, the shard root
    input_img_mode: str
    classes: list[str] | None  # class names in index order; None when the source has none
    num_classes: int | None
    identity: dict[str, Any] = field(default_factory=dict)  # what the fingerprint records beyond the samples
    reopen: Callable[..., Any] | None = None  # streams: a fresh dataset of the same split (overrides as kwargs)
    skip_bad_images: bool = False
    # streams: the samples the split was found to hold before reading it (local shards' tar headers, local parquet
    # metadata); None where that is not known (remote data), so an epoch says what it saw instead
    counted: int | None = None

    @property
    def streamed(self) -> bool:
        return self.kind in STREAM_PREFIXES


def source_kind(dataset: Any) -> str:
    """folder, tar, hfds, torch, wds or hfids: what ``dataset`` is (a timm ImageDataset is a folder by default)."""
    info = getattr(dataset, "source_info", None)
    if info is not None:
        return info.kind
    reader = getattr(dataset, "reader", None)
    name = type(reader).__name__
    return {"ReaderImageInTar": "tar", "ReaderHfds": "hfds", "ReaderWds": "wds", "ReaderHfids": "hfids"}.get(
        name, "folder" if reader is not None else "torch")


def is_streamed(dataset: Any) -> bool:
    """Whether ``dataset`` is a stream (wds/, hfids/), read in order with no index."""
    return source_kind(dataset) in STREAM_PREFIXES


def _mode(dataset: Any) -> str:
    info = getattr(dataset, "source_info", None)
    return info.input_img_mode if info is not None else (getattr(dataset, "input_img_mode", None) or "RGB")


def sample_name(dataset: Any, index: int) -> str:
    """What to call sample ``index`` in a message: its file, its tar member, or its row of the split."""
    kind = source_kind(dataset)
    if kind == "folder":
        return str(dataset.reader.samples[index][0])
    if kind == "tar":
        return f"{dataset.reader.root}:{dataset.reader.filename(index)}"
    info = dataset.source_info
    if kind == "hfds":
        return f"{info.spec} split {info.split} row {index}"
    samples = getattr(dataset, "samples", None) or getattr(dataset, "imgs", None)
    if samples is not None:
        return str(samples[index][0])
    return f"{info.spec} split {info.split} item {index}"


def load_sample(dataset: Any, index: int) -> tuple[Image.Image, int]:
    """Decode sample ``index`` of a map-style dataset (tar, hfds, torch/; folders: ``load_image``) in its mode.

    Raises :class:`DataError` naming the sample, where timm would silently substitute the next one.
    """
    kind = source_kind(dataset)
    mode = _mode(dataset)
    try:
        if kind == "torch":
            img, target = dataset[index]  # its transform was removed when opened: a PIL image
            return img.convert(mode), int(target)
        f, target = dataset.reader[index]
        with Image.open(f) as img:
            out = img.convert(mode)
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot decode image {sample_name(dataset, index)}: {e}; fix: replace it, or pass "
                        "--skip-bad-images (bad images are then found and skipped before training).") from e
    return out, (-1 if target is None else int(target))


def class_names(dataset: Any) -> list[str] | None:
    """The class names of any opened dataset in index order, or None when the source has none (wds/, a
    non-ClassLabel column)."""
    info = getattr(dataset, "source_info", None)
    if info is not None:
        return info.classes
    kind = source_kind(dataset)
    if kind == "tar":
        mapping = dataset.reader.class_name_to_idx
    elif kind == "torch":
        return [str(c) for c in dataset.classes]
    else:
        mapping = getattr(dataset.reader, "class_to_idx", None) or {}
    return [str(n) for n, _ in sorted(mapping.items(), key=lambda kv: kv[1])] or None


def source_size(dataset: Any) -> int:
    """Samples in the split: every image of a map-style source, the split's sample count of a stream."""
    info = getattr(dataset, "source_info", None)
    if info is not None and info.streamed:
        return int(info.identity["num_samples"])
    return len(dataset)


def source_fingerprint(dataset: Any) -> dict[str, Any]:
    """The identity of a dataset that is not a plain image folder (folders: ``dataset_fingerprint``).

    The source (its --dataset spec, split, what it is read from: data files and sizes, a Hub revision, shards)
    and its samples: every target in order (map-style) and the class names.
    """
    info = dataset.source_info
    classes = info.classes or [str(i) for i in range(info.num_classes or 0)]
    out: dict[str, Any] = {
        "source": info.spec,
        "split": info.split,
        "num_samples": source_size(dataset),
        "num_classes": len(classes),
        "classes_sha256": hashlib.sha256("\n".join(classes).encode()).hexdigest(),
        **info.identity,
    }
    if not info.streamed:
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(_targets(dataset), dtype=np.int64).tobytes())
        out["targets_sha256"] = digest.hexdigest()
    return out


def _targets(dataset: Any) -> np.ndarray:
    kind = source_kind(dataset)
    if kind == "tar":
        return np.asarray(dataset.reader.targets)
    if kind == "hfds":
        reader = dataset.reader
        return np.asarray([-1 if t is None else t for t in reader.iter_targets()])
    targets = getattr(dataset, "targets", None)
    if targets is None and hasattr(dataset, "index"):  # INaturalist: (category, file) per sample
        targets = [c for c, _ in dataset.index]
    return np.asarray(targets)


# --- what the rest of the package asks of any dataset (image folders: :mod:`.datasets`, unchanged) ----------


def load_image(dataset: Any, index: int) -> tuple[Image.Image, int]:
    """Decode sample ``index`` of any map-style dataset, raising :class:`DataError` naming it (never a substitute)."""
    return image_loader(dataset)(index)


def image_loader(dataset: Any) -> Callable[[int], tuple[Image.Image, int]]:
    """:func:`load_image` bound to ``dataset``, its source's kind looked up once (a loader calls it per image)."""
    if source_kind(dataset) == "folder":
        return functools.partial(_folders.load_image, dataset)
    return functools.partial(load_sample, dataset)


def label_names(dataset: Any) -> list[str]:
    """The class names of any dataset in class-index order; [] for a source that has none (wds/, an int column)."""
    if source_kind(dataset) == "folder":
        return _folders.label_names(dataset)
    return class_names(dataset) or []


def check_num_classes(dataset: Any, wanted: int | None) -> int:
    """The dataset's class count; :class:`DataError` when ``wanted`` (``--num-classes``) is another.

    A source with no class list (wds/, an integer column) has the count it was opened with (``--num-classes``).
    """
    if source_kind(dataset) == "folder":
        return _folders.check_num_classes(dataset, wanted)
    info = dataset.source_info
    names = class_names(dataset)
    found = len(names) if names is not None else info.num_classes
    if found is None:
        raise DataError(f"--dataset {info.spec} carries no class list; fix: pass --num-classes N.")
    if wanted is not None and int(wanted) != found:
        what = "class names" if names is not None else "classes"
        raise DataError(f"--num-classes {wanted} but --dataset {info.spec} split {info.split} has {found} {what}; "
                        f"fix: drop --num-classes or set it to {found}.")
    return found


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """The training set's identity, for resume checks and cache fingerprints.

    An image folder: every file (path relative to the split folder, size, class), the keys it always had (caches
    and checkpoints written before keep matching). Any other source: :func:`source_fingerprint`.
    """
    if source_kind(dataset) == "folder":
        return _folders.dataset_fingerprint(dataset)
    return source_fingerprint(dataset)
