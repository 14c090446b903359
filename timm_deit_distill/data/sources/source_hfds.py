"""Hugging Face datasets, map-style (``--dataset hfds/NAME``): a Hub id read from the datasets cache, a local parquet
folder or a ``save_to_disk`` folder, through timm's ``ReaderHfds``. Checked before any work: the split, the image
and target columns, the class names the split's own files declare, every label (one value per distinct label,
read from the label column alone) and every image (``--skip-bad-images`` drops unreadable ones).
"""

from __future__ import annotations

import io
import os
from typing import Any, ClassVar

import numpy as np

from ...errors import DataError
from ._hf import declared_classes, hf_error, read_with_declared_classes
from .base import DataSettings, Source, SourceInfo
from .checks import scan, short_value

__all__ = ["HfdsSource"]


class HfdsSource(Source):
    """``hfds/NAME``: a Hugging Face dataset read map-style."""

    kind: ClassVar[str] = "hfds"
    prefix: ClassVar[str] = "hfds"
    extra: ClassVar[tuple[str, str] | None] = ("datasets", "hf")
    what: ClassVar[str] = "hfds/ (map-style)"
    timm_reader: ClassVar[str | None] = "ReaderHfds"
    help: ClassVar[str] = ("hfds/NAME a Hugging Face dataset (a Hub id, a local parquet or save_to_disk folder; "
                           "--data-dir is the datasets cache)")
    docs_row: ClassVar[str] = "`hfds/` (map-style Hugging Face datasets)"
    no_download: ClassVar[str] = "datasets downloads a Hub dataset whenever it is online"

    def open_split(self, data: DataSettings, split: str, *, training: bool, num_classes: int | None,
                   batch_size: int, seed: int) -> Any:
        """timm's ReaderHfds (map-style, ``is_training=False``: the package orders the samples), checked: the
        image and target columns, the split's own class names, every label, every image."""
        from timm.data import create_dataset

        try:
            ds = create_dataset(data.dataset, root=data.data_dir, split=split, is_training=False,
                                class_map=data.class_map or None, input_img_mode=data.input_img_mode,
                                input_key=data.input_key, target_key=data.target_key, trust_remote_code=False)
        except DataError:
            raise
        except Exception as e:  # datasets raises ValueError, FileNotFoundError, ConnectionError and its own
            raise hf_error(data, split, e) from None
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
            raise DataError(f"--dataset {data.dataset} has no target column {target_key!r} (columns: "
                            f"{', '.join(columns)}); fix: --target-key COLUMN.")
        files = _local_data_files(data.name, split, data.data_dir)
        read_with_declared_classes(reader, declared_classes(data, split, files, target_key), data, split)
        names = [n for n, _ in sorted(reader.class_to_idx.items(), key=lambda kv: kv[1])] or None
        count = len(names) if names else _integer_class_count(data, table.column(target_key), target_key, num_classes)
        _check_hfds_targets(data, split, reader, count)
        ds.source_info = SourceInfo(
            source=self, spec=data.dataset, split=split, location=data.name, input_img_mode=data.input_img_mode,
            classes=names, num_classes=count, skip_bad_images=data.skip_bad_images,
            identity=_hf_identity(data.name, split, reader.dataset, files))

        def raw(i: int) -> Any:
            image = reader.dataset[i][input_key]
            return io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]

        scan(ds, raw, threads=True)
        return ds

    def targets(self, ds: Any) -> np.ndarray:
        return np.asarray([-1 if t is None else t for t in ds.reader.iter_targets()])

    def sample_name(self, ds: Any, index: int) -> str:
        info = ds.source_info
        return f"{info.spec} split {info.split} row {index}"

    def drop(self, ds: Any, keep: np.ndarray) -> None:
        ds.reader.dataset = ds.reader.dataset.select(keep)


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
