"""Hugging Face datasets, streamed (``--dataset hfids/NAME``), through timm's ``ReaderHfids`` (datasets streaming).

Checked before any work: the split, the image and target columns, the class names the split's own files declare,
and the sample count, against the row counts of local parquet / arrow files; an epoch is sized by the dataset
card's split sizes or ``--train-num-samples``. In flight, a target that is not a class index is named by its
position in the stream.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from ...errors import DataError
from ._hf import declared_classes, hf_error, read_with_declared_classes
from .base import DataSettings, SourceInfo, StreamSource
from .checks import short_value

__all__ = ["HfidsSource"]


class HfidsSource(StreamSource):
    """``hfids/NAME``: a Hugging Face dataset, streamed."""

    kind: ClassVar[str] = "hfids"
    prefix: ClassVar[str] = "hfids"
    extra: ClassVar[tuple[str, str] | None] = ("datasets", "hf")
    what: ClassVar[str] = "hfids/"
    timm_reader: ClassVar[str | None] = "ReaderHfids"
    help: ClassVar[str] = "hfids/NAME the same, streamed"
    docs_row: ClassVar[str] = "`hfids/` (streamed Hugging Face datasets)"
    download_use: ClassVar[str] = "hfids/ (a local prepared copy)"

    def downloads(self, data: DataSettings) -> bool:
        return True

    def check_skip_bad_images(self, data: DataSettings) -> None:
        raise DataError("--skip-bad-images cannot skip on hfids/: datasets decodes the image inside its stream, so "
                        "an unreadable one stops the stream and cannot be named or passed over. fix: drop it, or "
                        "read the data map-style (hfds/), where bad images are found and skipped before training.")

    def open_split(self, data: DataSettings, split: str, *, training: bool, num_classes: int | None,
                   batch_size: int, seed: int) -> Any:
        """timm's ReaderHfids (datasets streaming), checked (see the module docstring)."""
        from timm.data import create_dataset

        num_samples = data.train_num_samples if training else data.val_num_samples
        kwargs = dict(root=data.data_dir, split=split, is_training=training, batch_size=batch_size, seed=seed,
                      repeats=0, class_map=data.class_map or None, input_img_mode=data.input_img_mode,
                      input_key=data.input_key, target_key=data.target_key, num_samples=num_samples,
                      download=data.download, trust_remote_code=False)
        ds = _create(data, split, kwargs, training=training)
        reader = ds.reader
        builder = reader.builder
        files = _check_columns(data, split, reader)
        names = [n for n, _ in sorted(reader.class_to_idx.items(), key=lambda kv: kv[1])] or None
        features = builder.info.features
        count = len(names) if names else _unnamed_class_count(data, (features or {}).get(reader.target_key),
                                                              reader.target_key, num_classes)
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
            self.refuse_overstated(data, split, data.name, int(reader.num_samples), counted, f"its {len(files)} data "
                                   f"file(s) under {data.name} (their row counts)", training=training)
        ds.source_info = SourceInfo(
            source=self, spec=data.dataset, split=split, location=data.name, input_img_mode=data.input_img_mode,
            classes=names, num_classes=int(count), identity=identity, counted=counted,
            reopen=functools.partial(create_dataset, data.dataset, **kwargs))
        return ds

    def count_claim(self, root: str, flag: str) -> tuple[str, str]:
        return ("its dataset card gives", f"correct the split's num_examples in the dataset card (README.md), or pass "
                f"{flag} {{found}}")

    # --- loading -------------------------------------------------------------------------------------------

    def count_passes(self, reader: Any, count: Callable[[Any], Any]) -> None:
        if not isinstance(reader.ds, _CountedPasses):
            reader.ds = _CountedPasses(reader.ds, count)

    def check_topology(self, ds: Any, *, workers: int, world_size: int, training: bool) -> None:
        """Refuse more training loader workers than the process's shards (a worker without one has no data)."""
        info: SourceInfo = ds.source_info
        shards = int(info.identity["shards"])
        per_rank = shards // world_size if shards % world_size == 0 else shards
        if training and workers > 1 and per_rank < workers:
            raise DataError(f"--dataset {info.spec} split {info.split} has {shards} shard(s), {per_rank} per process, "
                            f"fewer than --workers {workers}: a worker without a shard has no data (timm stops in the "
                            f"worker). fix: --workers {per_rank} or fewer, or a dataset with more files.")

    def check_stream_target(self, info: SourceInfo, target: Any, position: int, worker: int) -> None:
        """datasets yields the target column as it is: refused unless a class index below the class count."""
        n = info.num_classes
        if not isinstance(target, int) or (n is not None and not 0 <= target < n):
            raise DataError(f"--dataset {info.spec} split {info.split}: target {short_value(target)} at position "
                            f"{position} of loader worker {worker} is not a class index below {n}; fix: --target-key "
                            "naming the class column, or --num-classes.")


class _CountedPasses:
    """A datasets IterableDataset whose every pass (timm's hfids reader iterates it once a pass) goes through
    ``count``; anything else is the dataset's."""

    def __init__(self, ds: Any, count: Any) -> None:
        self.ds, self.count = ds, count

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ds, name)

    def __iter__(self) -> Iterator[Any]:
        return self.count(iter(self.ds))


def _create(data: DataSettings, split: str, kwargs: dict[str, Any], *, training: bool) -> Any:
    """timm's create_dataset for ``data``, datasets' errors said in one line."""
    from timm.data import create_dataset

    try:
        return create_dataset(data.dataset, **kwargs)
    except ValueError as e:
        if "length is unknown" in str(e):
            flag = "--train-num-samples" if training else "--val-num-samples"
            raise DataError(f"--dataset {data.dataset} split {split}: its size is unknown (no dataset card with split "
                            f"sizes, nothing prepared in the cache) and a stream's epochs must be sized before "
                            f"training; fix: pass {flag} N.") from None
        raise hf_error(data, split, e) from None
    except Exception as e:  # datasets raises FileNotFoundError, ConnectionError and its own
        raise hf_error(data, split, e) from None


def _check_columns(data: DataSettings, split: str, reader: Any) -> list[str]:
    """Check the split and the image and target columns, and read the split's labels with the class names its own
    files declare; returns those files (local data; [] for a Hub id)."""
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
    files = ([os.fspath(f) for f in (builder.config.data_files or {}).get(split) or []]
             if os.path.exists(data.name) else [])
    read_with_declared_classes(reader, declared_classes(data, split, files, target_key), data, split)
    return files


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
        raise hf_error(data, split, e) from None
    return list(row)
