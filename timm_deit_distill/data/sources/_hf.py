"""What the Hugging Face datasets sources (``hfds/``, ``hfids/``) share: the class names each split's own files
declare, and datasets' errors said in one line."""

from __future__ import annotations

import logging
import os
import types
from typing import Any

from ...errors import DataError
from .base import DataSettings
from .checks import check_same_classes

__all__ = ["declared_classes", "read_with_declared_classes", "hf_error"]

_logger = logging.getLogger(__name__)


def _file_schema(path: str) -> Any | None:
    """The arrow schema of a parquet or arrow data file (its footer or stream header only); None for another
    format or a file pyarrow cannot read (datasets names that one itself)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.endswith(".parquet"):
            return pq.read_schema(path)
        if path.endswith(".arrow"):
            with pa.memory_map(path) as source:
                return pa.ipc.open_stream(source).schema
    except (OSError, pa.ArrowException):
        return None
    return None


def declared_classes(data: DataSettings, split: str, files: list[str], target_key: str) -> list[str] | None:
    """The class names the split's own data files declare for ``target_key`` (a ClassLabel in the features datasets
    wrote into each file), checked to be one list; None when no file declares any.

    datasets reads every split with the features of the first file it prepares, so a split whose files name the
    classes in another order (or more of them) would otherwise have its labels read with another split's names.
    """
    import datasets
    from timm.data.readers._hfds import get_class_labels  # the rule timm's readers name classes by

    found: list[str] | None = None
    where = ""
    for path in files:
        schema = _file_schema(path)
        if schema is None or b"huggingface" not in (schema.metadata or {}):
            continue
        features = datasets.Features.from_arrow_schema(schema)
        mapping = get_class_labels(types.SimpleNamespace(features=features), target_key)
        names = [n for n, _ in sorted(mapping.items(), key=lambda kv: kv[1])] or None
        if names is None:
            continue
        if found is None:
            found, where = names, path
            continue
        check_same_classes(found, names, where, path, "write every file of a split with one ClassLabel (the same "
                           "names in the same order).")
    return found


def read_with_declared_classes(reader: Any, declared: list[str] | None, data: DataSettings, split: str) -> None:
    """Make timm's reader name ``split``'s labels as its own files do (see :func:`declared_classes`): the names a
    class map remaps by, and without one the split's classes."""
    if declared is None or list(reader._source_names.values()) == declared:
        return
    if reader._source_names:  # else the files are the only place that names the classes (no dataset card)
        _logger.debug("--dataset %s split %s: its files name the classes otherwise than the features datasets "
                     "reports (another split's); its labels are read with its own names.", data.dataset, split)
    reader._source_names = dict(enumerate(declared))
    if not reader.remap_class:
        reader.class_to_idx = {name: i for i, name in enumerate(declared)}


def hf_error(data: DataSettings, split: str, e: Exception) -> DataError:
    """datasets' own errors about a name, a split or a cache, as one line with the fix."""
    text = " ".join(str(e).split())
    name = data.name
    if "save_to_disk" in text:
        parent = os.path.dirname(os.path.abspath(name))
        return DataError(f"--dataset {data.dataset}: this folder is one split of a save_to_disk DatasetDict; fix: "
                         f"--dataset {data.prefix}/{parent} (the folder holding dataset_dict.json).")
    if "Unknown split" in text or "Bad split" in text:
        return DataError(f"--dataset {data.dataset} has no split {split!r} ({text}); fix: name an existing split with "
                         f"{data.split_flags}.")
    if "OfflineModeIsEnabled" in text or "couldn't be found" in text.lower() or isinstance(e, (ConnectionError,
                                                                                                FileNotFoundError)):
        where = f"--data-dir {data.data_dir}" if data.data_dir else "the default datasets cache (HF_DATASETS_CACHE)"
        return DataError(f"--dataset {data.dataset}: not found locally and the Hub cannot be reached ({text[:200]}); "
                         f"fix: check the name, go online once to cache it, or point --data-dir at the datasets cache "
                         f"it was loaded into (now: {where}).")
    if "NonMatchingSplitsSizes" in type(e).__name__ or "expected" in text and "recorded" in text:
        return DataError(f"--dataset {data.dataset}: its files do not match the split sizes its card records "
                         f"({text[:300]}); fix: download it again, or correct the card.")
    return DataError(f"--dataset {data.dataset} split {split}: {type(e).__name__}: {text[:300]}")
