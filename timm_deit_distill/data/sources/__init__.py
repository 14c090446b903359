"""timm's dataset sources, opened through timm's own ``create_dataset`` and checked before any work.

``--dataset`` takes timm train.py's names; every source is read by timm's reader for it, with train.py's
keywords. What this package adds is the checks timm leaves out (each one line naming the fix, before any work
where it can be known then) and one way for the rest of the package to ask any source for a sample, its classes
and its identity.

In the manner of timm's ``data/readers/``: one module per kind of source, each a :class:`~.base.Source` subclass
with one interface, registered below under its ``--dataset`` prefix (:data:`SOURCES`, the one list of them):

=================  ===================================  ======  ============================================
``--dataset``      what timm reads                      index   ``--data-dir``
=================  ===================================  ======  ============================================
'' (empty)         image folders ``DIR/<split>/<class>``  stable  the folder holding the split folders
                   or image tars ``DIR/<split>.tar``
                   (:mod:`.source_folder`, :mod:`.source_tar`)
``hfds/NAME``      Hugging Face datasets (map-style):   stable  the datasets cache dir (default: HF's)
                   a Hub id, a local parquet folder or
                   a ``save_to_disk`` folder (:mod:`.source_hfds`)
``hfids/NAME``     the same, streamed (:mod:`.source_hfids`)  none    the datasets cache dir (default: HF's)
``wds/NAME``       WebDataset shards + timm _info.json   none    the shard folder or URL prefix
                   (:mod:`.source_wds`)
``torch/NAME``     torchvision's datasets               stable  torchvision's root
                   (:mod:`.source_torch`)
=================  ===================================  ======  ============================================

Sources with a stable index (map-style) get everything the package does with views: deterministic views,
the teacher target cache, exact resume. Streams (loaded by :mod:`..streams`) are read as timm's loader reads them;
their views are not a function of a stable identity, so ``--deterministic-aug`` and ``--distill-cache`` are
refused on them (:func:`check_views_supported`).

:func:`open_source` is the one road from :class:`DataSettings` to checked training and validation splits. Every
dataset opened there carries a :class:`SourceInfo` as ``dataset.source_info``; the functions here
(:func:`load_image`, :func:`label_names`, :func:`check_num_classes`, :func:`dataset_fingerprint`, ...) answer for
any of them by asking its source. Adding a source: a ``source_NAME.py`` module with its :class:`~.base.Source`
subclass, its entry in :data:`SOURCES`, its test.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from PIL import Image

from ...errors import DataError
from .base import (
    SPLIT_SYNONYMS,
    TFDS_REFUSAL,
    DataSettings,
    Source,
    SourceInfo,
    StreamSource,
    check_views_supported,
    register,
    registered,
    resolve_input_img_mode,
    source_for,
    source_of,
    split_dataset_name,
)
from .checks import check_same_classes, class_difference, short_value
from .source_folder import FolderSource
from .source_hfds import HfdsSource
from .source_hfids import HfidsSource
from .source_torch import TorchSource
from .source_wds import WdsSource

__all__ = [
    "SOURCES", "Source", "StreamSource", "SourceInfo", "DataSettings", "TFDS_REFUSAL", "SPLIT_SYNONYMS",
    "source_for", "source_of", "split_dataset_name", "resolve_input_img_mode", "check_views_supported",
    "open_source", "open_split", "is_streamed", "load_image", "image_loader", "label_names", "check_num_classes",
    "dataset_fingerprint", "sample_name", "source_size", "short_value", "class_difference", "check_same_classes",
    "dataset_help", "docs_table", "register", "registered",
]

# The sources --dataset names, by prefix, in the order messages, --help and docs/data.md list them.
SOURCES: tuple[Source, ...] = (FolderSource(), HfdsSource(), HfidsSource(), WdsSource(), TorchSource())
register(*SOURCES)


# --- the one road ----------------------------------------------------------------------------------------------


def open_source(data: DataSettings, *, num_classes: int | None = None, batch_size: int, seed: int) -> tuple[Any, Any]:
    """The training and validation splits of ``data``, every check done, the two splits' classes compared.

    ``num_classes`` is ``--num-classes`` (needed by sources with no class list: wds/, a non-ClassLabel
    column); ``batch_size`` and ``seed`` size and order a stream's epochs (timm's train.py passes them).
    Raises :class:`DataError` naming the fix. Build streams after the process group is up (their readers read
    the rank and world size when made, as in timm).
    """
    source = data.source
    source.require_extra()
    source.check_split(data, data.train_split, training=True)
    source.check_split(data, data.val_split, training=False)
    train = open_split(data, data.train_split, training=True, num_classes=num_classes, batch_size=batch_size,
                       seed=seed)
    val = open_split(data, data.val_split, training=False, num_classes=num_classes, batch_size=batch_size, seed=seed)
    _check_same_classes(train, val, data)
    return train, val


def open_split(data: DataSettings, split: str, *, training: bool, num_classes: int | None = None, batch_size: int,
               seed: int) -> Any:
    """One split of ``data`` (``training`` picks timm's training mode for streams), checked; see :func:`open_source`."""
    source = data.source
    source.require_extra()
    return source.open_split(data, split, training=training, num_classes=num_classes, batch_size=batch_size,
                             seed=seed)


def _check_same_classes(train: Any, val: Any, data: DataSettings) -> None:
    a, b = source_of(train).class_names(train), source_of(val).class_names(val)
    check_same_classes(a, b, f"the {data.train_split} split", f"the {data.val_split} split",
                       "give both splits the same classes in the same order, or pass --class-map FILE (the class "
                       "names, one per line, in the order to train).")
    na = len(a) if a is not None else getattr(getattr(train, "source_info", None), "num_classes", None)
    nb = len(b) if b is not None else getattr(getattr(val, "source_info", None), "num_classes", None)
    if na is not None and nb is not None and na != nb:
        raise DataError(f"the {data.train_split} split has {na} classes but {data.val_split} has {nb}; fix: give "
                        "both splits the same classes.")


# --- what the rest of the package asks of any opened dataset ---------------------------------------------------


def is_streamed(dataset: Any) -> bool:
    """Whether ``dataset`` is a stream (wds/, hfids/), read in order with no index."""
    return source_of(dataset).streamed


def load_image(dataset: Any, index: int) -> tuple[Image.Image, int]:
    """Decode sample ``index`` of any map-style dataset, raising :class:`DataError` naming it (never a substitute)."""
    return source_of(dataset).load(dataset, index)


def image_loader(dataset: Any) -> Callable[[int], tuple[Image.Image, int]]:
    """:func:`load_image` bound to ``dataset``, its source looked up once (a loader calls it per image)."""
    return functools.partial(source_of(dataset).load, dataset)


def label_names(dataset: Any) -> list[str]:
    """The class names of any dataset in class-index order; [] for a source that has none (wds/, an int column)."""
    return source_of(dataset).class_names(dataset) or []


def check_num_classes(dataset: Any, wanted: int | None) -> int:
    """The dataset's class count; :class:`DataError` when ``wanted`` (``--num-classes``) is another.

    A source with no class list (wds/, an integer column) has the count it was opened with (``--num-classes``).
    """
    return source_of(dataset).check_num_classes(dataset, wanted)


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """The training set's identity, for resume checks and cache fingerprints.

    An image folder: every file (path relative to the split folder, size, class), the keys it always had (caches
    and checkpoints written before keep matching). Any other source: the source (its --dataset spec, split, what
    it is read from: data files and sizes, a Hub revision, shards) and its samples (every target in order for a
    map-style source) and class names.
    """
    return source_of(dataset).fingerprint(dataset)


def sample_name(dataset: Any, index: int) -> str:
    """What to call sample ``index`` in a message: its file, its tar member, or its row of the split."""
    return source_of(dataset).sample_name(dataset, index)


def source_size(dataset: Any) -> int:
    """Samples in the split: every image of a map-style source, the split's sample count of a stream."""
    return source_of(dataset).size(dataset)


# --- the list, said -------------------------------------------------------------------------------------------


def dataset_help() -> str:
    """``--dataset``'s help, from the registry (:data:`SOURCES`)."""
    streams = " and ".join(f"{s.prefix}/" for s in registered() if s.streamed)
    return (f"timm's dataset source TYPE/NAME: {'; '.join(s.help for s in registered())}. Deterministic views and the "
            f"teacher cache need a stable index: not on the streams {streams}. {TFDS_REFUSAL}")


def docs_table() -> str:
    """docs/data.md's table of sources (markdown), from the registry (:data:`SOURCES`)."""
    rows = ["| source | `--deterministic-aug`, `--distill-cache`, `cache build`, `--aug-repeats` | resume | extra |",
            "|---|---|---|---|"]
    for s in registered():
        views = "refused: no stable sample index" if s.streamed else "yes"
        rows.append(f"| {s.docs_row} | {views} | {s.docs_resume} | {f'`[{s.extra[1]}]`' if s.extra else '—'} |")
    return "\n".join(rows)
