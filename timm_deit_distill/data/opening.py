"""Opening timm's dataset sources: ``--dataset`` through timm's ``create_dataset`` with train.py's keywords, every
check timm leaves out done first (see :mod:`.sources` for what each source is and what the package asks of it).

Each check is one line naming the fix, made before any work where it can be known then: a missing split (timm
reads a missing split folder as the whole root, ignores a tar's split, and gives torchvision's test set for any
unknown name), flags a source ignores, a key the data lacks, class names that differ between the splits (for
Hugging Face data, the names each split's own files declare), a label outside the classes, an unreadable image
(named; ``--skip-bad-images`` skips it), a missing extra, and for streams the _info.json, every local shard, safe
shard names and a sample count above what local data holds. What can only be known in flight (a corrupt sample
inside a shard, the distinct samples of a remote stream) is named by :mod:`.streams`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import tarfile
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError
from . import datasets as _folders
from .sources import (
    _SPLIT_SYNONYMS,
    _TORCH_DOWNLOADS,
    DataSettings,
    SourceInfo,
    _targets,
    check_same_classes,
    class_names,
    sample_name,
    short_value,
)

__all__ = ["open_source", "open_split"]

_logger = logging.getLogger(__name__)

_EXTRAS = {"hfds": ("datasets", "hf"), "hfids": ("datasets", "hf"), "wds": ("webdataset", "wds")}
_INFO_NAMES = ("_info.json", "info.json")
_REMOTE = ("http://", "https://", "hf://", "s3://", "gs://")
_WDS_META = re.compile(r"__[^/]*__($|/)")  # tar members webdataset skips (its tar_file_iterator's skip_meta)


def _require_extra(prefix: str) -> None:
    module, extra = _EXTRAS.get(prefix, (None, None))
    if module and importlib.util.find_spec(module) is None:
        raise DataError(f"--dataset {prefix}/... needs the {module} package; fix: pip install "
                        f"'timm-deit-distill[{extra}]'.")


def open_source(data: DataSettings, *, num_classes: int | None, batch_size: int, seed: int) -> tuple[Any, Any]:
    """The training and validation splits of ``data``, every check done (see the module docstring).

    ``num_classes`` is ``--num-classes`` (needed by sources with no class list: wds/, a non-ClassLabel
    column); ``batch_size`` and ``seed`` size and order a stream's epochs (timm's train.py passes them).
    Raises :class:`DataError` naming the fix. Build streams after the process group is up (their readers read
    the rank and world size when made, as in timm).
    """
    prefix = data.prefix
    _require_extra(prefix)
    train = open_split(data, data.train_split, training=True, num_classes=num_classes, batch_size=batch_size,
                       seed=seed)
    val = open_split(data, data.val_split, training=False, num_classes=num_classes, batch_size=batch_size, seed=seed)
    _check_same_classes(train, val, data)
    return train, val


def open_split(data: DataSettings, split: str, *, training: bool, num_classes: int | None, batch_size: int,
               seed: int) -> Any:
    """One split of ``data`` (``training`` picks timm's training mode for streams), checked; see :func:`open_source`."""
    prefix = data.prefix
    _require_extra(prefix)
    if prefix == "":
        return _open_local(data, split)
    if prefix == "torch":
        return _open_torch(data, split)
    if prefix == "hfds":
        return _open_hfds(data, split, num_classes=num_classes)
    if prefix == "wds":
        return _open_wds(data, split, training=training, num_classes=num_classes, batch_size=batch_size, seed=seed)
    return _open_hfids(data, split, training=training, num_classes=num_classes, batch_size=batch_size, seed=seed)


def _check_same_classes(train: Any, val: Any, data: DataSettings) -> None:
    a, b = class_names(train), class_names(val)
    check_same_classes(a, b, f"the {data.train_split} split", f"the {data.val_split} split",
                       "give both splits the same classes in the same order, or pass --class-map FILE (the class "
                       "names, one per line, in the order to train).")
    na = len(a) if a is not None else getattr(getattr(train, "source_info", None), "num_classes", None)
    nb = len(b) if b is not None else getattr(getattr(val, "source_info", None), "num_classes", None)
    if na is not None and nb is not None and na != nb:
        raise DataError(f"the {data.train_split} split has {na} classes but {data.val_split} has {nb}; fix: give both "
                        "splits the same classes.")


# --- image folders and image tars ---------------------------------------------------------------------------

def _resolve_local_split(data_dir: str, split: str, split_flags: str) -> tuple[str, str]:
    """``(path, 'folder'|'tar')`` of a split under ``data_dir``: ``DIR/<split>/`` or ``DIR/<split>.tar``
    (timm's split synonyms included). timm itself ignores the split of a tar and reads a missing split folder
    as the whole root; both are refused here."""
    names = next((names for names in _SPLIT_SYNONYMS.values() if split in names), ())
    for name in (split, *[n for n in names if n != split]):
        path = os.path.join(data_dir, name)
        if os.path.isdir(path):
            return path, "folder"
        if os.path.isfile(path + ".tar"):
            return path + ".tar", "tar"
    present = sorted(d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d))
                     or d.endswith(".tar"))
    raise DataError(
        f"no '{split}' split folder or tar under {data_dir} (found: {', '.join(present) or 'nothing'}); fix: use the layout "
        f"{data_dir}/{split}/<class>/<image> (or {data_dir}/{split}.tar), or name the split with {split_flags}.")


def _open_local(data: DataSettings, split: str) -> Any:
    data_dir = data.data_dir
    if not data_dir:
        raise DataError("no data directory given; fix: pass --data-dir DIR (image folders DIR/train/<class>/<image>, "
                        "DIR/validation/<class>/<image>, or DIR/train.tar and DIR/validation.tar).")
    data_dir = os.fspath(data_dir)
    if os.path.isfile(data_dir) and data_dir.endswith(".tar"):
        raise DataError(f"--data-dir {data_dir} is one tar: timm would read it for every split (training and "
                        "validation on the same images). fix: pass the folder holding train.tar and validation.tar.")
    if not os.path.isdir(data_dir):
        raise DataError(f"data directory {data_dir} does not exist; fix: pass --data-dir pointing at a folder with "
                        "train/ and validation/ class folders (or train.tar and validation.tar).")
    path, kind = _resolve_local_split(data_dir, split, data.split_flags)
    if kind == "folder" and not _has_images_or_folders(path) and _tars_in(path):
        return _open_tar(data, path, split)  # one tar per class (ImageNet's train/ download)
    if kind == "folder":
        ds = _folders.open_image_folder(path, class_map=data.class_map, input_key=data.input_key,
                               skip_bad_images=data.skip_bad_images)
        ds.input_img_mode = data.input_img_mode
        return ds
    return _open_tar(data, path, split)


def _tars_in(path: str) -> list[str]:
    return sorted(f for f in os.listdir(path) if f.endswith(".tar"))


def _has_images_or_folders(path: str) -> bool:
    return any(not f.endswith(".tar") and not f.startswith(".") for f in os.listdir(path))


def _open_tar(data: DataSettings, path: str, split: str) -> Any:
    from timm.data import ImageDataset
    from timm.data.readers.reader_image_in_tar import ReaderImageInTar

    if data.input_key is not None:
        raise DataError(f"--input-key {data.input_key}: timm's tar reader takes no keys ({path}). fix: drop it.")
    class_map = os.path.abspath(data.class_map) if data.class_map and os.path.exists(data.class_map) else data.class_map
    try:
        # cache_tarinfo=False: timm would otherwise write and unpickle a tar index beside tars over 10 GB.
        reader = ReaderImageInTar(path, class_map=class_map, cache_tarinfo=False)
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"cannot read the tar {path}: {type(e).__name__}: {e}; fix: replace the file.") from e
    except (ValueError, AssertionError) as e:  # zip(*[]) of an empty tar; a class map it cannot find
        raise DataError(f"{path} holds no images timm can read ({e or type(e).__name__}); fix: put class folders "
                        "of images in the tar (<class>/<image>.jpg).") from e
    ds = ImageDataset(path, reader=reader, input_img_mode=data.input_img_mode)
    names = [n for n, _ in sorted(reader.class_name_to_idx.items(), key=lambda kv: kv[1])]
    files = [path] if os.path.isfile(path) else [os.path.join(path, f) for f in _tars_in(path)]
    ds.source_info = SourceInfo(
        kind="tar", spec="tar", split=split, location=path, input_img_mode=data.input_img_mode, classes=names,
        num_classes=len(names), skip_bad_images=data.skip_bad_images,
        identity={"files": [[os.path.basename(f), os.path.getsize(f)] for f in files],
                  "members_sha256": hashlib.sha256("\n".join(
                      f"{reader.filename(i)}\t{reader.samples[i][0].size}" for i in range(len(reader))).encode()
                  ).hexdigest()})
    _scan(ds, lambda i: reader[i][0], threads=False)
    _close_tars(reader)
    return ds


def _close_tars(reader: Any) -> None:
    """Drop the tar handles a scan opened: a handle inherited by forked loader workers shares its file offset."""
    states = [reader.tar_state] if reader.root_is_tar else list(reader.tar_state.values())
    for state in states:
        if state.tf is not None:
            state.tf.close()
            state.tf = None
        for child in state.children.values():
            child.tf = None


def _verify(opener: Callable[[], Any]) -> str | None:
    try:
        with Image.open(opener()) as img:  # a path is opened and closed by Pillow
            img.verify()  # reads and checks the structure without decoding pixels
        return None
    except Exception as e:  # PIL raises many types for broken files
        return f"{type(e).__name__}: {e}"


def _scan(ds: Any, opener: Callable[[int], Any], *, threads: bool) -> None:
    """Check every sample opens as an image; drop bad ones under --skip-bad-images, else refuse naming the first."""
    info: SourceInfo = ds.source_info
    n = len(ds)
    if threads:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 4)) as pool:
            problems = list(pool.map(lambda i: _verify(lambda: opener(i)), range(n), chunksize=64))
    else:
        problems = [_verify(lambda i=i: opener(i)) for i in range(n)]
    bad = [i for i, p in enumerate(problems) if p is not None]
    ds.skipped_files = []
    if not bad:
        return
    first = sample_name(ds, bad[0])
    if not info.skip_bad_images:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"unreadable image {first}{more}: {problems[bad[0]]}; fix: replace it, or pass "
                        "--skip-bad-images to train without it.")
    if len(bad) == n:
        raise DataError(f"every image of {info.location} split {info.split} is unreadable; fix: check the data.")
    ds.skipped_files = [sample_name(ds, i) for i in bad]
    keep = np.setdiff1d(np.arange(n), np.asarray(bad))
    if info.kind == "tar":
        ds.reader.samples, ds.reader.targets = ds.reader.samples[keep], ds.reader.targets[keep]
    elif info.kind == "hfds":
        ds.reader.dataset = ds.reader.dataset.select(keep)
    else:
        for attr in ("samples", "imgs", "targets"):
            if isinstance(getattr(ds, attr, None), list):
                values = getattr(ds, attr)
                setattr(ds, attr, [values[i] for i in keep])
    info.identity["skipped"] = len(bad)
    _logger.warning("skipped %d unreadable image(s) in %s split %s, e.g. %s", len(bad), info.location, info.split,
                    first)


# --- hfds/ ---------------------------------------------------------------------------------------------------

def _hf_identity(name: str, split: str, dataset: Any, files: list[str]) -> dict[str, Any]:
    """A Hub dataset by the cache folder its version was prepared in (named by its revision); a local one by its
    data files' names and sizes (``files``: :func:`_local_data_files`)."""
    identity: dict[str, Any] = {"config": dataset.info.config_name}
    if not os.path.exists(name):
        cached = [f["filename"] for f in dataset.cache_files]
        identity["revision"] = os.path.basename(os.path.dirname(cached[0])) if cached else None
        return identity
    root = os.path.abspath(name)
    identity["files"] = [[os.path.relpath(f, root), os.path.getsize(f)] for f in files]
    return identity


def _local_data_files(name: str, split: str, cache_dir: str | None) -> list[str]:
    """The data files datasets reads for ``split`` of a local folder (parquet shards, save_to_disk arrow files, ...);
    [] for a Hub id."""
    if not os.path.exists(name):
        return []
    import datasets

    builder = datasets.load_dataset_builder(name, cache_dir=cache_dir)
    return [os.fspath(f) for f in (builder.config.data_files or {}).get(split) or []]


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


def _declared_classes(data: DataSettings, split: str, files: list[str], target_key: str) -> list[str] | None:
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


def _read_with_declared_classes(reader: Any, declared: list[str] | None, data: DataSettings, split: str) -> None:
    """Make timm's reader name ``split``'s labels as its own files do (see :func:`_declared_classes`): the names a
    class map remaps by, and without one the split's classes."""
    if declared is None or list(reader._source_names.values()) == declared:
        return
    if reader._source_names:  # else the files are the only place that names the classes (no dataset card)
        _logger.debug("--dataset %s split %s: its files name the classes otherwise than the features datasets "
                     "reports (another split's); its labels are read with its own names.", data.dataset, split)
    reader._source_names = dict(enumerate(declared))
    if not reader.remap_class:
        reader.class_to_idx = {name: i for i, name in enumerate(declared)}


def _hf_error(data: DataSettings, split: str, e: Exception) -> DataError:
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
        return DataError(f"--dataset {data.dataset}: its files do not match the split sizes its card records ({text[:300]}); "
                         "fix: download it again, or correct the card.")
    return DataError(f"--dataset {data.dataset} split {split}: {type(e).__name__}: {text[:300]}")


def _integer_class_count(data: DataSettings, column: Any, target_key: str, num_classes: int | None) -> int:
    """The class count of a target column without class names: an integer column, counted by ``--num-classes``."""
    import pyarrow as pa

    if not pa.types.is_integer(column.type):
        head = column.slice(0, 64).drop_null()
        example = f", e.g. {short_value(head[0].as_py())}" if len(head) else ""
        raise DataError(f"--dataset {data.dataset}: column {target_key!r} is not a class label ({column.type}"
                        f"{example}); fix: --target-key naming an integer or ClassLabel column.")
    if num_classes is None:
        raise DataError(f"--dataset {data.dataset}: column {target_key!r} holds integers with no class names (not "
                        "a ClassLabel); fix: pass --num-classes N.")
    return num_classes


def _check_hfds_targets(data: DataSettings, split: str, reader: Any, count: int) -> None:
    """Every label of ``split`` is a class index below ``count`` once timm's reader has read it (a class map
    applied): refused naming the first row that is not, which training would meet as an index error (or a
    class map's KeyError) in its first epoch. Read from the label column alone, one value per distinct label."""
    import pyarrow.compute as pc

    key = reader.label_key
    column = reader.dataset.data.column(key)
    where = f"--dataset {data.dataset} split {split}"
    if column.null_count:
        row = pc.index(pc.is_null(column), True).as_py()
        raise DataError(f"{where} row {row} has no label (null in column {key!r}); fix: train and evaluate on "
                        "labelled rows (filter the others out).")
    values = sorted(pc.unique(column).to_pylist())
    for value in values:
        problem = _target_problem(data, reader, value, count, values[-1])
        if problem is not None:
            row = pc.index(column, value).as_py()
            raise DataError(f"{where} row {row} {problem}")


def _target_problem(data: DataSettings, reader: Any, value: Any, count: int, largest: Any) -> str | None:
    """What is wrong with the raw label ``value`` as timm's hfds reader reads it ("has ...; fix: ..."), or None."""
    if isinstance(value, int) and value < 0:
        return (f"has label {value}, which datasets writes for an unlabelled row; fix: train and evaluate on "
                "labelled splits (a Hub dataset's test split often has no labels), or filter these rows out.")
    try:
        target = reader._get_target({reader.label_key: value})
    except (KeyError, IndexError):
        name = reader._source_names.get(value, value)
        return (f"has class {name!r}, which --class-map {data.class_map} does not list; fix: add the "
                "class to the class map, or filter its rows out.")
    if 0 <= target < count:
        return None
    if reader._source_names and not reader.remap_class:
        return (f"has label {target}, outside the {count} classes its ClassLabel names; fix: correct the labels "
                "or the ClassLabel's names.")
    return (f"has label {target}, outside the {count} classes of --num-classes {count}; fix: set --num-classes "
            f"above the largest label ({largest}).")


def _open_hfds(data: DataSettings, split: str, *, num_classes: int | None) -> Any:
    from timm.data import create_dataset

    try:
        ds = create_dataset(data.dataset, root=data.data_dir, split=split, is_training=False,
                            class_map=data.class_map or None, input_img_mode=data.input_img_mode,
                            input_key=data.input_key, target_key=data.target_key, trust_remote_code=False)
    except DataError:
        raise
    except Exception as e:  # datasets raises ValueError, FileNotFoundError, ConnectionError and its own
        raise _hf_error(data, split, e) from None
    reader = ds.reader
    table = reader.dataset.data
    input_key, target_key = reader.image_key, reader.label_key
    columns = [c for c in reader.dataset.column_names if c != input_key] + (
        [input_key] if table.column(input_key).null_count < len(reader) else [])
    if table.column(input_key).null_count == len(reader) and len(reader):
        # datasets' cast_column adds a missing column as all-null instead of failing
        raise DataError(f"--dataset {data.dataset} has no image column {input_key!r} (columns: "
                        f"{', '.join(c for c in columns if c != input_key)}); fix: --input-key COLUMN.")
    if target_key not in reader.dataset.column_names:
        raise DataError(f"--dataset {data.dataset} has no target column {target_key!r} (columns: {', '.join(columns)}); "
                        "fix: --target-key COLUMN.")
    files = _local_data_files(data.name, split, data.data_dir)
    _read_with_declared_classes(reader, _declared_classes(data, split, files, target_key), data, split)
    names = [n for n, _ in sorted(reader.class_to_idx.items(), key=lambda kv: kv[1])] or None
    count = len(names) if names else _integer_class_count(data, table.column(target_key), target_key, num_classes)
    _check_hfds_targets(data, split, reader, count)
    ds.source_info = SourceInfo(
        kind="hfds", spec=data.dataset, split=split, location=data.name, input_img_mode=data.input_img_mode,
        classes=names, num_classes=count, skip_bad_images=data.skip_bad_images,
        identity=_hf_identity(data.name, split, reader.dataset, files))

    def raw(i: int) -> Any:
        image = reader.dataset[i][input_key]
        return io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]

    _scan(ds, raw, threads=True)
    return ds


# --- torch/ --------------------------------------------------------------------------------------------------

def _open_torch(data: DataSettings, split: str) -> Any:
    from timm.data import create_dataset

    name = data.name
    # timm picks the train set for train/training and the test set for every other string, typos included
    if name not in ("imagenet", "image_folder", "folder", "places365", "inaturalist", "inat") and split not in (
            *_SPLIT_SYNONYMS["train"], *_SPLIT_SYNONYMS["validation"], "test"):
        raise DataError(f"--dataset {data.dataset} has the splits train and test; {split!r} is neither (timm "
                            "would silently read the test set). fix: --train-split train --val-split test (or "
                            "validation, which reads the test set).")
    if not data.data_dir:
        raise DataError(f"--dataset {data.dataset} needs --data-dir (torchvision's root folder).")
    try:
        ds = create_dataset(data.dataset, root=data.data_dir, split=split, download=data.download)
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True to download it"
        hint = " or pass --dataset-download" if name in _TORCH_DOWNLOADS and not data.download else ""
        raise DataError(f"--dataset {data.dataset}: {' '.join(str(e).split())[:200]} (under {data.data_dir}); fix: "
                        f"point --data-dir at torchvision's root for it{hint}.") from None
    except (OSError, ValueError, AssertionError) as e:
        raise DataError(f"--dataset {data.dataset} split {split}: {type(e).__name__}: {e}".rstrip(": ")) from None
    ds.transform = None  # the package applies its own transforms to the PIL image
    ds.target_transform = None
    classes = [str(c) for c in getattr(ds, "classes", [])] or None
    if classes is None and hasattr(ds, "all_categories"):
        classes = [str(c) for c in ds.all_categories]
    train_set = getattr(ds, "train", None)
    ds.source_info = SourceInfo(
        kind="torch", spec=data.dataset, split=split, location=data.data_dir, input_img_mode=data.input_img_mode,
        classes=classes, num_classes=len(classes) if classes else None, skip_bad_images=data.skip_bad_images,
        identity={"torchvision_split": ("train" if train_set else "test") if train_set is not None else split})
    if train_set is False and split in _SPLIT_SYNONYMS["validation"]:
        _logger.info("--dataset %s: split %s reads torchvision's test set (it has no other).", data.dataset, split)
    if classes:
        _check_torch_targets(data, split, ds, len(classes))
    samples = getattr(ds, "samples", None) or getattr(ds, "imgs", None)
    if samples:
        _scan(ds, lambda i: samples[i][0], threads=True)
    else:
        ds.skipped_files = []
    return ds


def _check_torch_targets(data: DataSettings, split: str, ds: Any, count: int) -> None:
    """Every target torchvision read (from its label files: MNIST's idx, ...) is a class index below ``count``;
    refused naming the first sample that is not, which training would meet as an index error."""
    targets = _targets(ds)
    bad = np.flatnonzero((targets < 0) | (targets >= count)) if targets.size else []
    if len(bad):
        raise DataError(f"--dataset {data.dataset} split {split}: sample {int(bad[0])} has label {int(targets[bad[0]])}, "
                        f"outside its {count} classes; fix: repair the label file under --data-dir "
                        f"{data.data_dir}.")


# ------------------------------------------------------------------------------------------------------------
# wds/


def _is_remote(root: str) -> bool:
    return root.startswith(_REMOTE)


def _safe_shard(name: str) -> bool:
    """A shard name from _info.json or a brace pattern: no shell pipe, no absolute path, no escape from the root
    (webdataset runs ``pipe:`` names through a shell)."""
    return not (name.startswith(("pipe:", "/")) or ":" in name.split("/")[0] or ".." in name.split("/"))


def _read_info(root: str) -> dict[str, Any] | None:
    for name in _INFO_NAMES:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    return json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise DataError(f"{path} is not valid JSON ({e}); fix: repair the file.") from None
    return None


def _open_wds(data: DataSettings, split: str, *, training: bool, num_classes: int | None, batch_size: int,
             seed: int) -> Any:
    """``--dataset wds/NAME`` split ``split``: timm's ReaderWds over the shards under ``--data-dir``, checked."""
    from timm.data import create_dataset

    root = data.data_dir
    if not root:
        raise DataError(f"--dataset {data.dataset} needs --data-dir: the folder (or URL prefix) holding the shards "
                        "and timm's _info.json.")
    remote = _is_remote(root)
    if not remote and not os.path.isdir(root):
        raise DataError(f"--data-dir {root} does not exist; fix: point it at the folder holding the shards and "
                        "_info.json.")
    brace = "tar" in split or ".." in split  # timm's test for a brace-expanded shard pattern
    info = None if remote else _read_info(root)
    if not remote and info is None and not brace:
        yaml_only = any(os.path.isfile(os.path.join(root, n)) for n in ("_info.yaml", "info.yaml"))
        why = " (timm 1.0 reads only _info.json / info.json, not _info.yaml)" if yaml_only else ""
        raise DataError(f"{root} has no _info.json{why}; fix: write timm's _info.json (splits.<name>: num_samples, "
                        "filenames, shard_lengths), or give the split as a shard pattern with its sample count, "
                        "e.g. --train-split 'name-train-{0000..0099}.tar|128000'.")
    if info is not None and not brace and split not in (info.get("splits") or {}):
        raise DataError(f"--dataset {data.dataset} has no split {split!r} in {root}/_info.json (splits: "
                        f"{', '.join(info.get('splits') or {}) or 'none'}); fix: name one with "
                        f"{data.split_flags}.")
    if brace and training and "|" not in split and data.train_num_samples is None:
        raise DataError(f"--train-split {split}: a shard pattern needs its sample count to size training epochs "
                        f"(timm's '{split}|N' form); fix: append |N or pass --train-num-samples N.")
    num_samples = data.train_num_samples if training else data.val_num_samples
    kwargs = dict(root=root, split=split, is_training=training, batch_size=batch_size, seed=seed, repeats=0,
                  class_map=None, input_img_mode=data.input_img_mode, input_key=data.input_key,
                  target_key=data.target_key, num_samples=num_samples)
    try:
        ds = create_dataset(data.dataset, **kwargs)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise DataError(f"--dataset {data.dataset} split {split}: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
                        "; fix: check _info.json and the split name.") from None
    reader = ds.reader
    names = list(reader.split_info.filenames)
    unsafe = [n for n in names if not _safe_shard(n)]
    if unsafe:
        raise DataError(f"{root}: shard name {unsafe[0]!r} is not a file under --data-dir (absolute, '..', or a "
                        "pipe:/URL scheme webdataset would open); fix: list shard files relative to the _info.json.")
    if not names:
        raise DataError(f"--dataset {data.dataset} split {split} lists no shards; fix: check _info.json.")
    lengths = list(reader.split_info.shard_lengths)
    sizes: list[int | None] = [None] * len(names)
    if not remote:
        missing = [n for n in names if not os.path.isfile(os.path.join(root, n))]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DataError(f"shard {os.path.join(root, missing[0])}{more} of split {split} is missing (timm would skip "
                            "it and repeat other samples in its place); fix: restore the shard(s) or correct "
                            "_info.json.")
        sizes = [os.path.getsize(os.path.join(root, n)) for n in names]
    classes = None
    if info is not None and isinstance(info.get("classes"), list):  # this package's convention, not timm's
        classes = [str(c) for c in info["classes"]]
    count = len(classes) if classes else (info or {}).get("num_classes") or num_classes
    if count is None:
        raise DataError(f"--dataset {data.dataset} carries no class list (timm's _info.json has none); fix: pass "
                        "--num-classes N (or add \"num_classes\" or a \"classes\" list to _info.json).")
    counted = None
    if not remote:
        _peek_wds(data, os.path.join(root, names[0]))
        counted = _check_wds_count(data, split, root, names, lengths, int(reader.num_samples), training=training)
    ds.source_info = SourceInfo(
        kind="wds", spec=data.dataset, split=split, location=root, input_img_mode=data.input_img_mode,
        classes=classes, num_classes=int(count), skip_bad_images=data.skip_bad_images, counted=counted,
        identity={"num_samples": int(reader.num_samples),
                  "shards": [[n, int(lengths[i]) if i < len(lengths) else None, sizes[i]] for i, n in enumerate(names)]},
        reopen=functools.partial(create_dataset, data.dataset, **kwargs))
    return ds


def _shard_samples(path: str) -> int:
    """The samples webdataset reads from the local shard ``path``: its members grouped by key as webdataset groups
    them, read from the tar headers alone (tarfile seeks past each member's data)."""
    from webdataset.tariterators import group_by_keys

    def members() -> Iterator[dict[str, Any]]:
        with tarfile.open(path) as tar:
            for info in tar:
                if info.isreg() and not _WDS_META.match(info.name):
                    yield {"fname": info.name, "data": b"", "__url__": path}
        yield {}  # the end of a shard, as webdataset marks it

    try:
        return sum(1 for _ in group_by_keys(members()))
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"shard {path} cannot be read: {type(e).__name__}: {e}; fix: replace it.") from None
    except ValueError as e:  # a member name twice in one sample
        raise DataError(f"shard {path}: {' '.join(str(e).split())[:200]}; fix: give each sample's files one name "
                        "each.") from None


def _count_claim(data: DataSettings, split: str, root: str, *, training: bool) -> tuple[str, str]:
    """Who claims a stream's sample count, and how to correct it: ``(words before the count, fix with {found})``."""
    flag = "--train-num-samples" if training else "--val-num-samples"
    if (data.train_num_samples if training else data.val_num_samples) is not None:
        return f"{flag} asks for", f"{flag} {{found}} or fewer (a smaller count samples part of the split each epoch)"
    if "|" in split:
        return "the shard pattern's |N gives", "write |{found} (or less) after the shard pattern"
    if data.prefix == "wds":
        return (f"{root}/_info.json gives", f"correct num_samples and shard_lengths in {root}/_info.json, or pass "
                f"{flag} {{found}}")
    return ("its dataset card gives", f"correct the split's num_examples in the dataset card (README.md), or pass "
            f"{flag} {{found}}")


def _refuse_overstated(data: DataSettings, split: str, root: str, claimed: int, found: int, what: str, *,
                       training: bool) -> None:
    if claimed <= found:
        return  # fewer is timm's sub-sampling
    claim, fix = _count_claim(data, split, root, training=training)
    raise DataError(f"--dataset {data.dataset} split {split}: {claim} {claimed} samples but {what} hold {found}; "
                    f"each epoch would repeat {claimed - found} of them to make up the count. fix: "
                    f"{fix.format(found=found)}.")


def _check_wds_count(data: DataSettings, split: str, root: str, names: list[str], lengths: list[int],
                     claimed: int, *, training: bool) -> int:
    """The samples the split's local shards hold, counted (threads: header reads wait on the disk); a sample count
    or shard length claimed above what they hold is refused."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [os.path.join(root, n) for n in names]
    with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        found = list(pool.map(_shard_samples, paths))
    _refuse_overstated(data, split, root, claimed, sum(found), f"its {len(paths)} shard(s) under {root} (counted "
                       "from the tar headers)", training=training)
    for path, length, count in zip(paths, lengths, found, strict=False):
        if length > count:
            raise DataError(f"--dataset {data.dataset} split {split}: {root}/_info.json gives shard {path} {length} "
                            f"samples but it holds {count} (counted from its tar headers); fix: correct its "
                            "shard_lengths entry.")
    return sum(found)


def _peek_wds(data: DataSettings, shard: str) -> None:
    """Read the first sample of the first shard: the image and target keys must be there (timm drops every
    sample without the image key, one warning each, and trains on nothing)."""
    import webdataset as wds

    try:
        sample = next(iter(wds.DataPipeline(wds.SimpleShardList([shard]), wds.tarfile_to_samples())))
    except StopIteration:
        raise DataError(f"shard {shard} holds no samples; fix: replace it.") from None
    except Exception as e:  # a broken tar
        raise DataError(f"shard {shard} cannot be read: {type(e).__name__}: {e}; fix: replace it.") from None
    members = sorted(k for k in sample if not k.startswith("__"))
    image_keys = (data.input_key or "jpg;png;webp").split(";")
    if not any(k in sample for k in image_keys):
        raise DataError(f"shard {shard}: sample {sample.get('__key__')} has no image under {';'.join(image_keys)} "
                        f"(its members: {', '.join(members)}); fix: --input-key naming the image's extension, e.g. "
                        f"{next((m for m in members if m in ('png', 'jpeg', 'webp', 'jpg')), 'png')};jpg")
    if data.target_key is None and "cls" not in sample:
        raise DataError(f"shard {shard}: sample {sample.get('__key__')} has no .cls target (members: "
                        f"{', '.join(members)}); fix: --target-key naming the class field of its .json.")
    if data.target_key is not None:
        meta = json.loads(sample["json"]) if "json" in sample else None
        if meta is None or data.target_key not in meta:
            have = ", ".join(sorted(meta)) if meta else "no .json sidecar"
            raise DataError(f"shard {shard}: sample {sample.get('__key__')} has no target field {data.target_key!r} "
                            f"({have}); fix: --target-key naming one of its fields.")
        value = meta[data.target_key]
        if not isinstance(value, list) and not _is_integer(value):
            raise DataError(f"shard {shard}: sample {sample.get('__key__')}'s target field {data.target_key!r} is "
                            f"not a class index ({short_value(value)}); fix: --target-key naming the field that "
                            "holds the class index.")


def _is_integer(value: Any) -> bool:
    """Whether timm's wds decoder reads ``value`` as a class index (it calls ``int()`` on it)."""
    try:
        int(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return not isinstance(value, float) or value.is_integer()


# ------------------------------------------------------------------------------------------------------------
# hfids/


def _open_hfids(data: DataSettings, split: str, *, training: bool, num_classes: int | None, batch_size: int,
               seed: int) -> Any:
    """``--dataset hfids/NAME`` split ``split``: timm's ReaderHfids (datasets streaming), checked."""
    from timm.data import create_dataset

    num_samples = data.train_num_samples if training else data.val_num_samples
    kwargs = dict(root=data.data_dir, split=split, is_training=training, batch_size=batch_size, seed=seed, repeats=0,
                  class_map=data.class_map or None, input_img_mode=data.input_img_mode, input_key=data.input_key,
                  target_key=data.target_key, num_samples=num_samples, download=data.download,
                  trust_remote_code=False)
    try:
        ds = create_dataset(data.dataset, **kwargs)
    except ValueError as e:
        if "length is unknown" in str(e):
            flag = "--train-num-samples" if training else "--val-num-samples"
            raise DataError(f"--dataset {data.dataset} split {split}: its size is unknown (no dataset card with split "
                            f"sizes, nothing prepared in the cache) and a stream's epochs must be sized before "
                            f"training; fix: pass {flag} N.") from None
        raise _hf_error(data, split, e) from None
    except Exception as e:  # datasets raises FileNotFoundError, ConnectionError and its own
        raise _hf_error(data, split, e) from None
    reader = ds.reader
    builder = reader.builder
    known = sorted((builder.config.data_files or {}).keys()) or sorted((builder.info.splits or {}).keys())
    if known and split not in known:
        raise DataError(f"--dataset {data.dataset} has no split {split!r} (splits: {', '.join(known)}); fix: name one "
                        f"with {data.split_flags}.")
    input_key, target_key = reader.input_key, reader.target_key
    features = builder.info.features
    columns = list(features) if features else _peek_hfids(data, builder, split)
    for flag, key in (("--input-key", input_key), ("--target-key", target_key)):
        if key not in columns:
            raise DataError(f"--dataset {data.dataset} has no column {key!r} (columns: {', '.join(columns)}); fix: "
                            f"{flag} COLUMN.")
    files = [os.fspath(f) for f in (builder.config.data_files or {}).get(split) or []] if os.path.exists(data.name) else []
    _read_with_declared_classes(reader, _declared_classes(data, split, files, target_key), data, split)
    names = [n for n, _ in sorted(reader.class_to_idx.items(), key=lambda kv: kv[1])] or None
    count = len(names) if names else _unnamed_class_count(data, (features or {}).get(target_key), target_key,
                                                          num_classes)
    stream = builder.as_streaming_dataset(split=split)
    identity: dict[str, Any] = {"num_samples": int(reader.num_samples), "shards": int(stream.num_shards or 1),
                                "config": builder.config.name}
    if os.path.exists(data.name):
        root = os.path.abspath(data.name)
        identity["files"] = [[os.path.relpath(f, root), os.path.getsize(f)] for f in files]
    else:
        identity["revision"] = getattr(builder, "hash", None)
    counted = _rows_in(files) if files else None
    if counted is not None:
        _refuse_overstated(data, split, data.name, int(reader.num_samples), counted, f"its {len(files)} data file(s) "
                           f"under {data.name} (their row counts)", training=training)
    ds.source_info = SourceInfo(
        kind="hfids", spec=data.dataset, split=split, location=data.name, input_img_mode=data.input_img_mode,
        classes=names, num_classes=int(count), identity=identity, counted=counted,
        reopen=functools.partial(create_dataset, data.dataset, **kwargs))
    return ds


def _unnamed_class_count(data: DataSettings, feature: Any, target_key: str, num_classes: int | None) -> int:
    """The class count of a streamed target column without class names: an integer column (``feature``, None when
    the features are not known before streaming), counted by ``--num-classes``."""
    if feature is not None and not str(getattr(feature, "dtype", "")).startswith(("int", "uint")):
        raise DataError(f"--dataset {data.dataset}: column {target_key!r} is not a class label ({feature!r}); "
                        "fix: --target-key naming an integer or ClassLabel column.")
    if num_classes is None:
        raise DataError(f"--dataset {data.dataset}: column {target_key!r} has no class names (no ClassLabel feature); "
                        "fix: pass --num-classes N.")
    return num_classes


def _rows_in(files: list[str]) -> int | None:
    """The rows of local parquet / arrow data files, from their metadata (parquet footers, arrow batch headers);
    None when a file is of another format or pyarrow cannot read it (datasets names that one itself)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = 0
    try:
        for path in files:
            if path.endswith(".parquet"):
                total += pq.ParquetFile(path).metadata.num_rows
            elif path.endswith(".arrow"):
                with pa.memory_map(path) as source:
                    total += sum(batch.num_rows for batch in pa.ipc.open_stream(source))
            else:
                return None
    except (OSError, pa.ArrowException):
        return None
    return total


def _peek_hfids(data: DataSettings, builder: Any, split: str) -> list[str]:
    try:
        row = next(iter(builder.as_streaming_dataset(split=split)))
    except StopIteration:
        raise DataError(f"--dataset {data.dataset} split {split} is empty; fix: check the data files.") from None
    except Exception as e:
        raise _hf_error(data, split, e) from None
    return list(row)
